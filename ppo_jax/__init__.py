"""PPO and the policy-gradient family on vectorised gymnax environments, in JAX.

Importing it changes no global state; :func:`configure` (called by the commands and by
``make_train``) sets the XLA flag and PRNG lowering the library relies on."""

# Imported on first use, not here: gymnax starts the XLA backend when imported, and a
# multi-process run must call jax.distributed.initialize before that
# (ppo_jax.distributed.initialize_from_env, which imports only jax).
_EXPORTS = {"HParams": "config", "PPOConfig": "config", "preset": "config", "stack_hparams": "config",
            "TrainOutput": "train", "TrainState": "train", "make_train": "train", "vmap_seeds": "seed_groups",
            "configure": "run.configure"}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"ppo_jax.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'ppo_jax' has no attribute {name!r}")


__all__ = ["configure", "PPOConfig", "HParams", "preset", "stack_hparams", "make_train", "TrainOutput", "TrainState", "vmap_seeds"]
__version__ = "0.1.0"
