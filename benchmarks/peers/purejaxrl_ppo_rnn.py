"""Run PureJaxRL's own recurrent PPO (``purejaxrl/ppo_rnn.py`` of a checkout you fetch) and print
one JSON line: the peer's side of ``benchmarks/ppo_vs_purejaxrl.py --variant rnn``.

The same protocol as ``purejaxrl_ppo.py`` (beside this file, whose stand-ins for brax and navix it
reuses): compile ahead of time, ``--runs`` timed executions, ``sps`` = environment steps over all
seeds / the last run's seconds. The learning result is the training-time return: the mean return
of the episodes that finished in the last 10 updates (``final_return_per_seed``), which ours
reports the same way, so the two need no common evaluation of a recurrent policy.

``ppo_rnn.py`` calls flax's GRUCell as flax before 0.8 had it (``nn.GRUCell()`` with the width
taken from the carry, ``GRUCell.initialize_carry(key, batch_dims, size)``); the peer's
interpreter has a current flax, so this runner gives the module that API: a GRUCell of the
script's 128 features whose initial carry is zeros, as the old one's was. The computation is
the script's own.
"""

from __future__ import annotations

import json
import os
import platform
import sys

# PureJaxRL's configuration, from the __main__ block of its ppo_rnn.py (DEBUG off: no host callback).
CONFIG = {"LR": 2.5e-4, "NUM_ENVS": 4, "NUM_STEPS": 128, "TOTAL_TIMESTEPS": 5e5, "UPDATE_EPOCHS": 4,
          "NUM_MINIBATCHES": 4, "GAMMA": 0.99, "GAE_LAMBDA": 0.95, "CLIP_EPS": 0.2, "ENT_COEF": 0.01,
          "VF_COEF": 0.5, "MAX_GRAD_NORM": 0.5, "ENV_NAME": "CartPole-v1", "ANNEAL_LR": True, "DEBUG": False}
LAST_UPDATES = 10


def _old_gru_api(peer) -> None:
    """The flax < 0.8 GRUCell API the script calls, on a current flax (see the module's doc)."""
    import types

    import flax.linen as nn
    import jax.numpy as jnp

    class GRUCell(nn.GRUCell):
        features: int = 128

        @staticmethod
        def initialize_carry(rng, batch_dims, size):
            return jnp.zeros(tuple(batch_dims) + (size,))

    names = {k: getattr(nn, k) for k in dir(nn) if not k.startswith("__")}
    peer.nn = types.SimpleNamespace(**{**names, "GRUCell": GRUCell})


def main() -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from purejaxrl_ppo import parse_args, stand_in_modules  # beside this file
    from timing import time_seeds

    args, source = parse_args(__doc__, "ppo_rnn.py")
    import jax
    import numpy as np

    made = stand_in_modules(["brax.envs.wrappers.training", "navix"])
    sys.path.insert(0, os.path.dirname(source))
    import ppo_rnn as peer  # PureJaxRL's module, from the checkout

    _old_gru_api(peer)

    config = {**CONFIG, "ENV_NAME": args.env, "TOTAL_TIMESTEPS": args.total_timesteps, "NUM_ENVS": args.num_envs}
    train = peer.make_train(config)
    steps_per_seed = int(config["NUM_UPDATES"] * config["NUM_STEPS"] * config["NUM_ENVS"])
    seeds = args.seeds
    out, compile_s, run_times = time_seeds(train, seeds, args.seed0, args.runs)
    info = out["metric"]  # [seeds, updates, steps, envs]
    ret = np.asarray(info["returned_episode_returns"])[:, -LAST_UPDATES:]
    ended = np.asarray(info["returned_episode"])[:, -LAST_UPDATES:]
    returns = [float((r * e).sum() / max(e.sum(), 1)) for r, e in zip(ret, ended)]
    print(json.dumps({
        "peer": "purejaxrl/ppo_rnn.py", "env": args.env, "seeds": seeds, "steps_per_seed": steps_per_seed,
        "compile_s": compile_s, "run_s": run_times[-1], "run_times_s": run_times,
        "sps": steps_per_seed * seeds / run_times[-1], "final_return_mean": float(np.mean(returns)),
        "final_return_per_seed": returns, "eval": f"episodes that ended in the last {LAST_UPDATES} updates",
        "stand_ins": made, "python": platform.python_version(), "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "versions": {"jax": jax.__version__},
    }), flush=True)


if __name__ == "__main__":
    main()
