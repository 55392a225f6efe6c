"""Action distributions (docs/theory.md §6): categorical over logits, diagonal Gaussian with a learned log-std.

Small pytree classes so that a distribution can cross ``jit``/``vmap`` boundaries.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Categorical:
    """Categorical policy ``pi(a|s) = softmax(logits)_a`` over the last axis."""

    logits: jax.Array

    @property
    def log_probs_all(self) -> jax.Array:
        return jax.nn.log_softmax(self.logits.astype(jnp.float32), axis=-1)

    def log_prob(self, action: jax.Array) -> jax.Array:
        logp = self.log_probs_all
        batch = jnp.broadcast_shapes(action.shape, logp.shape[:-1])
        idx = jnp.broadcast_to(action.astype(jnp.int32), batch)[..., None]
        return jnp.take_along_axis(jnp.broadcast_to(logp, batch + logp.shape[-1:]), idx, axis=-1)[..., 0]

    def entropy(self) -> jax.Array:
        logp = self.log_probs_all
        return -jnp.sum(jnp.exp(logp) * logp, axis=-1)

    def sample(self, key: jax.Array) -> jax.Array:
        return jax.random.categorical(key, self.logits, axis=-1)

    def mode(self) -> jax.Array:
        return jnp.argmax(self.logits, axis=-1)

    def kl(self, other: "Categorical") -> jax.Array:
        """Exact ``KL(self || other)`` (docs/theory.md §8)."""
        p = self.log_probs_all
        return jnp.sum(jnp.exp(p) * (p - other.log_probs_all), axis=-1)


@struct.dataclass
class DiagGaussian:
    """Diagonal Gaussian policy ``N(mean, exp(log_std)^2)``; actions have the last axis as dimension."""

    mean: jax.Array
    log_std: jax.Array

    def log_prob(self, action: jax.Array) -> jax.Array:
        z = (action - self.mean) * jnp.exp(-self.log_std)
        per_dim = -0.5 * jnp.square(z) - self.log_std - 0.5 * math.log(2 * math.pi)
        return jnp.sum(per_dim, axis=-1)

    def entropy(self) -> jax.Array:
        per_dim = self.log_std + 0.5 * (1.0 + math.log(2 * math.pi))
        return jnp.sum(jnp.broadcast_to(per_dim, self.mean.shape), axis=-1)

    def sample(self, key: jax.Array) -> jax.Array:
        return self.mean + jnp.exp(self.log_std) * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def mode(self) -> jax.Array:
        return self.mean

    def kl(self, other: "DiagGaussian") -> jax.Array:
        """Exact ``KL(self || other)``."""
        var_ratio = jnp.exp(2 * (self.log_std - other.log_std))
        t = jnp.square((self.mean - other.mean) * jnp.exp(-other.log_std))
        per_dim = 0.5 * (var_ratio + t - 1.0) - (self.log_std - other.log_std)
        return jnp.sum(jnp.broadcast_to(per_dim, self.mean.shape), axis=-1)
