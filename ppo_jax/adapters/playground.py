"""``playground:<name>``: a MuJoCo Playground environment (:mod:`ppo_jax.adapters.physics`)."""

from ppo_jax.adapters.physics import make_playground as make

__all__ = ["make"]
