"""``brax:<name>``: a Brax environment (:mod:`ppo_jax.adapters.physics`)."""

from ppo_jax.adapters.physics import make_brax as make

__all__ = ["make"]
