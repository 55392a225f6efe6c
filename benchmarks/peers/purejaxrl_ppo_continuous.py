"""Run PureJaxRL's own continuous-action PPO on Brax (``purejaxrl/ppo_continuous_action.py`` of a
checkout you fetch) and print one JSON line: the peer's side of ``benchmarks/ppo_vs_purejaxrl.py
--variant continuous``.

The same protocol as ``purejaxrl_ppo.py`` (beside this file): compile ahead of time, ``--runs``
timed executions, ``sps`` = environment steps over all seeds / the last run's seconds, and the
final policy's return over 64 fresh episodes per seed (actions sampled, the observations
normalised with the run's final statistics, as the script's wrapper does), which ours reports
the same way. (The training-time return of the last updates does not serve here: with 2048
environments a CPU budget gives each a few hundred steps per 10 updates, so it counts only the
episodes short enough to end in the window.)

The script's ``wrappers.py`` imports navix at module level, which this variant does not use; an
empty module stands in for it when it is not installed. Brax must be installed in the peer's
interpreter (``setup_purejaxrl.sh`` does).
"""

from __future__ import annotations

import json
import os
import platform
import sys

# PureJaxRL's configuration, from the __main__ block of its ppo_continuous_action.py (DEBUG off:
# no host callback); only the budget and the number of environments come from the command line.
CONFIG = {"LR": 3e-4, "NUM_ENVS": 2048, "NUM_STEPS": 10, "TOTAL_TIMESTEPS": 5e7, "UPDATE_EPOCHS": 4,
          "NUM_MINIBATCHES": 32, "GAMMA": 0.99, "GAE_LAMBDA": 0.95, "CLIP_EPS": 0.2, "ENT_COEF": 0.0,
          "VF_COEF": 0.5, "MAX_GRAD_NORM": 0.5, "ACTIVATION": "tanh", "ENV_NAME": "hopper", "ANNEAL_LR": False,
          "NORMALIZE_ENV": True, "DEBUG": False}
EVAL_EPISODES = 64


def evaluate(peer_wrappers, env_name, network, params, obs_mean, obs_var, keys, episodes: int):
    """Mean return of ``episodes`` fresh episodes per seed (up to the 1000-step limit), actions
    sampled and clipped to [-1, 1] as in training."""
    import jax
    import jax.numpy as jnp

    env = peer_wrappers.BraxGymnaxWrapper(env_name)

    def one_seed(p, mean, var, key):
        key, reset_key = jax.random.split(key)
        obs, state = jax.vmap(env.reset)(jax.random.split(reset_key, episodes))

        def step(carry, _):
            obs, state, ret, alive, key = carry
            key, act_key = jax.random.split(key)
            pi, _ = network.apply(p, (obs - mean) / jnp.sqrt(var + 1e-8))
            action = jnp.clip(pi.sample(seed=act_key), -1.0, 1.0)
            obs, state, reward, done, _ = jax.vmap(env.step, in_axes=(None, 0, 0))(key, state, action)
            ret = ret + reward * alive
            return (obs, state, ret, alive * (1.0 - done.astype(jnp.float32)), key), None

        init = (obs, state, jnp.zeros(episodes), jnp.ones(episodes), key)
        (_, _, ret, _, _), _ = jax.lax.scan(step, init, None, 1000)
        return ret.mean()

    return jax.jit(jax.vmap(one_seed))(params, obs_mean, obs_var, keys)


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from purejaxrl_ppo import parse_args, stand_in_modules  # beside this file
    from timing import time_seeds

    args, source = parse_args(__doc__, "ppo_continuous_action.py")
    import jax
    import numpy as np

    made = stand_in_modules(["navix"])
    sys.path.insert(0, os.path.dirname(source))
    import ppo_continuous_action as peer  # PureJaxRL's module, from the checkout

    config = {**CONFIG, "ENV_NAME": args.env, "TOTAL_TIMESTEPS": args.total_timesteps, "NUM_ENVS": args.num_envs}
    train = peer.make_train(config)
    steps_per_seed = int(config["NUM_UPDATES"] * config["NUM_STEPS"] * config["NUM_ENVS"])
    seeds = args.seeds
    out, compile_s, run_times = time_seeds(train, seeds, args.seed0, args.runs)
    import wrappers  # the script's, beside it

    train_state, env_state = out["runner_state"][0], out["runner_state"][1]
    obs_stats = env_state.env_state  # NormalizeVecReward(NormalizeVecObservation(...)), seeds leading
    network = peer.ActorCritic(wrappers.BraxGymnaxWrapper(args.env).action_size, activation=config["ACTIVATION"])
    # The script keeps its statistics per environment, every row the same: row 0 is the run's.
    returns = np.asarray(evaluate(wrappers, args.env, network, train_state.params, obs_stats.mean[:, 0],
                                  obs_stats.var[:, 0],
                                  jax.random.split(jax.random.PRNGKey(args.seed0 + 777), seeds), EVAL_EPISODES))
    from importlib.metadata import version

    print(json.dumps({
        "peer": "purejaxrl/ppo_continuous_action.py", "env": args.env, "seeds": seeds,
        "steps_per_seed": steps_per_seed, "compile_s": compile_s, "run_s": run_times[-1], "run_times_s": run_times,
        "sps": steps_per_seed * seeds / run_times[-1], "final_return_mean": float(returns.mean()),
        "final_return_per_seed": returns.tolist(), "eval": f"{EVAL_EPISODES} episodes per seed, sampled actions",
        "stand_ins": made, "python": platform.python_version(), "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "versions": {name: version(name) for name in ("jax", "flax", "brax", "gymnax")},
    }), flush=True)


if __name__ == "__main__":
    main()
