"""Run PureJaxRL's own PPO (``purejaxrl/ppo.py`` of a checkout you fetch) and print one JSON line.

The peer's side of ``benchmarks/ppo_vs_purejaxrl.py``. Nothing of PureJaxRL lives in this
repository: ``--src`` is the root of a checkout (``git clone
https://github.com/luchris429/purejaxrl``), and this script runs under the peer's own
interpreter, which ``setup_purejaxrl.sh`` makes (PureJaxRL steps gymnax 0.0.9's environments,
whose ``step`` returns five values, not gymnax 1.x's six).

What it measures, the same protocol as ours in ``ppo_vs_purejaxrl.py``:

- ``compile_s``: ``jit(make_train(config))`` lowered and compiled ahead of time (``jit(vmap(...))``
  over seeds when ``--seeds`` > 1);
- ``run_times_s``: ``--runs`` executions of the compiled program (the last one on the reported
  keys), ``sps`` = environment steps over all seeds / the last run's seconds;
- ``final_return_per_seed``: the final policy's return over 64 episodes per seed, actions
  sampled, so that a faster run that learned less shows.

PureJaxRL's ``wrappers.py`` imports brax and navix at module level, which its CartPole PPO does
not use; when they are not installed, empty modules stand in for them in this process only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import types

# PureJaxRL's CartPole configuration, from the __main__ block of its ppo.py.
CONFIG = {"LR": 2.5e-4, "NUM_ENVS": 4, "NUM_STEPS": 128, "TOTAL_TIMESTEPS": 5e5, "UPDATE_EPOCHS": 4,
          "NUM_MINIBATCHES": 4, "GAMMA": 0.99, "GAE_LAMBDA": 0.95, "CLIP_EPS": 0.2, "ENT_COEF": 0.01,
          "VF_COEF": 0.5, "MAX_GRAD_NORM": 0.5, "ACTIVATION": "tanh", "ENV_NAME": "CartPole-v1",
          "ANNEAL_LR": True, "DEBUG": False}
EVAL_EPISODES = 64


def stand_in_modules(names: list[str]) -> list[str]:
    """Empty packages for the modules in ``names`` that are not installed (and their parents);
    returns the ones it made."""
    import importlib.util

    made = []
    for dotted in names:
        if importlib.util.find_spec(dotted.split(".")[0]) is not None:
            continue
        parts = dotted.split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            if name not in sys.modules:
                module = types.ModuleType(name)
                module.__path__ = []
                sys.modules[name] = module
                if depth > 1:
                    setattr(sys.modules[".".join(parts[:depth - 1])], parts[depth - 1], module)
        made.append(dotted)
    training = sys.modules.get("brax.envs.wrappers.training")
    if training is not None and not hasattr(training, "EpisodeWrapper"):
        training.EpisodeWrapper = training.AutoResetWrapper = object  # names wrappers.py imports
    return made


def evaluate(network, params, env, env_params, keys, episodes: int):
    """Mean return of ``episodes`` fresh episodes per seed, actions sampled from the policy."""
    import jax
    import jax.numpy as jnp

    steps = int(env_params.max_steps_in_episode)

    def one_seed(p, key):
        key, reset_key = jax.random.split(key)
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(reset_key, episodes), env_params)

        def step(carry, _):
            obs, state, ret, alive, key = carry
            key, act_key, step_key = jax.random.split(key, 3)
            pi, _ = network.apply(p, obs)
            obs, state, reward, done, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(step_key, episodes), state, pi.sample(seed=act_key), env_params)
            ret = ret + reward * alive
            return (obs, state, ret, alive * (1.0 - done.astype(jnp.float32)), key), None

        init = (obs, state, jnp.zeros(episodes), jnp.ones(episodes), key)
        (_, _, ret, _, _), _ = jax.lax.scan(step, init, None, steps)
        return ret.mean()

    return jax.jit(jax.vmap(one_seed))(params, keys)


def parse_args(doc: str, script: str) -> tuple[argparse.Namespace, str]:
    """The arguments of a peer runner of PureJaxRL's ``purejaxrl/<script>`` and that script's path."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help=f"root of a PureJaxRL checkout (holds purejaxrl/{script})")
    p.add_argument("--env", default="CartPole-v1", help="the environment as the script names it (a gymnax id; a Brax name for the continuous script)")
    p.add_argument("--total-timesteps", type=float, default=5e5)
    p.add_argument("--num-envs", type=int, default=4)
    p.add_argument("--seeds", type=int, default=1, help="more than 1: jit(vmap(train)) over the seeds")
    p.add_argument("--seed0", type=int, default=0)
    p.add_argument("--runs", type=int, default=2, help="timed executions after the compile")
    args = p.parse_args()
    source = os.path.join(args.src, "purejaxrl", script)
    if not os.path.exists(source):
        p.error(f"--src: {source} does not exist")
    return args, source


def main() -> None:
    args, source = parse_args(__doc__, "ppo.py")

    import jax
    import numpy as np

    made = stand_in_modules(["brax.envs.wrappers.training", "navix"])
    sys.path.insert(0, os.path.dirname(source))
    sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))
    import gymnax
    import ppo as peer  # PureJaxRL's module, from the checkout
    from timing import compile_and_time  # beside this file

    config = {**CONFIG, "ENV_NAME": args.env, "TOTAL_TIMESTEPS": args.total_timesteps, "NUM_ENVS": args.num_envs}
    train = peer.make_train(config)  # adds NUM_UPDATES and MINIBATCH_SIZE to config
    steps_per_seed = int(config["NUM_UPDATES"] * config["NUM_STEPS"] * config["NUM_ENVS"])
    seeds = args.seeds
    if seeds == 1:
        fn, keys, warm = jax.jit(train), jax.random.PRNGKey(args.seed0), jax.random.PRNGKey(args.seed0 + 10_000)
    else:
        fn = jax.jit(jax.vmap(train))
        keys = jax.random.split(jax.random.PRNGKey(args.seed0), seeds)
        warm = jax.random.split(jax.random.PRNGKey(args.seed0 + 10_000), seeds)
    out, compile_s, run_times = compile_and_time(fn, keys, warm, args.runs)  # as ours is timed

    env, env_params = gymnax.make(args.env)
    network = peer.ActorCritic(env.action_space(env_params).n, activation=config["ACTIVATION"])
    params = out["runner_state"][0].params
    if seeds == 1:
        params = jax.tree_util.tree_map(lambda x: x[None], params)
    returns = np.asarray(evaluate(network, params, env, env_params,
                                  jax.random.split(jax.random.PRNGKey(args.seed0 + 777), seeds), EVAL_EPISODES))

    def version(name):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(name)
        except PackageNotFoundError:
            return None

    print(json.dumps({
        "peer": "purejaxrl/ppo.py", "env": args.env, "seeds": seeds, "steps_per_seed": steps_per_seed,
        "compile_s": compile_s, "run_s": run_times[-1], "run_times_s": run_times,
        "sps": steps_per_seed * seeds / run_times[-1], "final_return_mean": float(returns.mean()),
        "final_return_per_seed": returns.tolist(), "eval": f"{EVAL_EPISODES} episodes per seed, sampled actions",
        "stand_ins": made, "python": platform.python_version(), "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "versions": {name: version(name) for name in ("jax", "jaxlib", "flax", "optax", "distrax", "gymnax")},
    }), flush=True)


if __name__ == "__main__":
    main()
