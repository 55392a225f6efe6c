"""Flax linen actor-critic modules with orthogonal initialisation.

Gains follow "The 37 implementation details of PPO": sqrt(2) on hidden layers, 0.01 on
the policy head (a near-uniform initial policy), 1.0 on the value head. The Gaussian
policy's log-std is a learned, state-independent parameter.

Two layouts, chosen by ``shared_torso``:

- separate: parameters ``{"actor": ..., "critic": ...}``, each trained by its
  own optimiser with its own learning rate;
- shared torso: one torso, two heads, one optimiser.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax

from ppo_jax.distributions import Categorical, DiagGaussian

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "gelu": nn.gelu}


class MLP(nn.Module):
    """Hidden layers with orthogonal(sqrt 2) init."""

    hidden_sizes: Sequence[int]
    activation: str = "tanh"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for size in self.hidden_sizes:
            x = act(nn.Dense(size, kernel_init=nn.initializers.orthogonal(math.sqrt(2)))(x))
        return x


class PolicyHead(nn.Module):
    """Logits (discrete) or mean plus state-independent log-std (continuous)."""

    action_dim: int
    continuous: bool

    @nn.compact
    def __call__(self, features: jax.Array):
        out = nn.Dense(self.action_dim, kernel_init=nn.initializers.orthogonal(0.01))(features)
        if not self.continuous:
            return Categorical(logits=out)
        log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))
        return DiagGaussian(mean=out, log_std=log_std)


class ValueHead(nn.Module):
    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        return nn.Dense(1, kernel_init=nn.initializers.orthogonal(1.0))(features)[..., 0]


class Actor(nn.Module):
    action_dim: int
    continuous: bool
    hidden_sizes: Sequence[int]
    activation: str

    @nn.compact
    def __call__(self, obs):
        return PolicyHead(self.action_dim, self.continuous)(MLP(self.hidden_sizes, self.activation)(obs))


class Critic(nn.Module):
    hidden_sizes: Sequence[int]
    activation: str

    @nn.compact
    def __call__(self, obs):
        return ValueHead()(MLP(self.hidden_sizes, self.activation)(obs))


class ActorCritic(nn.Module):
    """``policy(obs) -> distribution``, ``value(obs) -> V(s)``, ``__call__`` gives both."""

    action_dim: int
    continuous: bool
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"
    shared_torso: bool = False

    def setup(self):
        if self.shared_torso:
            self.torso = MLP(self.hidden_sizes, self.activation)
            self.policy_head = PolicyHead(self.action_dim, self.continuous)
            self.value_head = ValueHead()
        else:
            self.actor = Actor(self.action_dim, self.continuous, self.hidden_sizes, self.activation)
            self.critic = Critic(self.hidden_sizes, self.activation)

    def policy(self, obs):
        if self.shared_torso:
            return self.policy_head(self.torso(obs))
        return self.actor(obs)

    def value(self, obs):
        if self.shared_torso:
            return self.value_head(self.torso(obs))
        return self.critic(obs)

    def __call__(self, obs):
        if self.shared_torso:
            h = self.torso(obs)
            return self.policy_head(h), self.value_head(h)
        return self.actor(obs), self.critic(obs)


__all__ = ["ActorCritic", "MLP"]
