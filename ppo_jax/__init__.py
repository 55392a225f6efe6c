"""PPO and the policy-gradient family on vectorised gymnax environments, in JAX."""

import os as _os

# XLA:CPU's concurrency-optimised scheduler can deadlock vmapped programs
# that contain a batched QR (orthogonal init) on a 2-core machine. Turning it off cost
# nothing measurable; it only has effect if set before the CPU backend starts.
_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
if "xla_cpu_enable_concurrency_optimized_scheduler" not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = (_os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

# Imported on first use, not here: gymnax starts the XLA backend when imported, and a
# multi-process run must call jax.distributed.initialize before that
# (ppo_jax.distributed.initialize_from_env, which imports only jax).
_EXPORTS = {"HParams": "config", "PPOConfig": "config", "preset": "config", "stack_hparams": "config",
            "TrainOutput": "train", "TrainState": "train", "make_train": "train", "vmap_seeds": "seed_groups"}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"ppo_jax.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'ppo_jax' has no attribute {name!r}")


__all__ = ["PPOConfig", "HParams", "preset", "stack_hparams", "make_train", "TrainOutput", "TrainState", "vmap_seeds"]
__version__ = "0.1.0"
