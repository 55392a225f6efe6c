"""Flax linen actor-critic modules with orthogonal initialisation.

Gains follow "The 37 implementation details of PPO": sqrt(2) on hidden layers, 0.01 on
the policy head (a near-uniform initial policy), 1.0 on the value head. The Gaussian
policy's log-std is a learned, state-independent parameter.

Two layouts, chosen by ``shared_torso``:

- separate: parameters ``{"actor": ..., "critic": ...}``, each trained by its
  own optimiser with its own learning rate;
- shared torso: one torso, two heads, one optimiser.

With a frame shape (``network="cnn"``) each torso starts with :class:`ConvTorso` on the
observation, which arrives flat (as the rollout and the normaliser keep it) and is reshaped.
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


class ConvTorso(nn.Module):
    """A MinAtar-style convolutional torso: the flat observation back to its ``(H, W, C)`` frame,
    one 3x3 convolution (valid padding, ReLU, orthogonal sqrt 2 init), flattened for the MLP
    that follows (Young and Tian's MinAtar networks; gymnax's benchmark agents)."""

    obs_shape: Sequence[int]
    features: int = 16

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        x = obs.reshape(obs.shape[:-1] + tuple(self.obs_shape))
        x = nn.Conv(self.features, (3, 3), padding="VALID", kernel_init=nn.initializers.orthogonal(math.sqrt(2)))(x)
        x = nn.relu(x)
        return x.reshape(x.shape[:-3] + (-1,))


NETWORKS = ("mlp", "cnn")
"""``mlp``: hidden layers on the flat observation; ``cnn``: :class:`ConvTorso` first, on the frame."""


def _features(obs, obs_shape):
    """The convolutional features of ``obs`` when there is a frame shape (``cnn``), else ``obs``."""
    return obs if not obs_shape else ConvTorso(tuple(obs_shape))(obs)


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
    obs_shape: Sequence[int] = ()
    """The observation's frame shape for a convolutional torso (``cnn``); empty: an MLP alone."""

    @nn.compact
    def __call__(self, obs):
        features = MLP(self.hidden_sizes, self.activation)(_features(obs, self.obs_shape))
        return PolicyHead(self.action_dim, self.continuous)(features)


class Critic(nn.Module):
    hidden_sizes: Sequence[int]
    activation: str
    obs_shape: Sequence[int] = ()

    @nn.compact
    def __call__(self, obs):
        return ValueHead()(MLP(self.hidden_sizes, self.activation)(_features(obs, self.obs_shape)))


class ActorCritic(nn.Module):
    """``policy(obs) -> distribution``, ``value(obs) -> V(s)``, ``__call__`` gives both."""

    action_dim: int
    continuous: bool
    hidden_sizes: Sequence[int] = (64, 64)
    activation: str = "tanh"
    shared_torso: bool = False
    obs_shape: Sequence[int] = ()
    """The observation's frame shape ``(H, W, C)`` for a convolutional torso (``cnn``); empty: MLPs alone."""

    def setup(self):
        if self.shared_torso:
            self.conv = ConvTorso(tuple(self.obs_shape)) if self.obs_shape else None
            self.torso = MLP(self.hidden_sizes, self.activation)
            self.policy_head = PolicyHead(self.action_dim, self.continuous)
            self.value_head = ValueHead()
        else:
            self.actor = Actor(self.action_dim, self.continuous, self.hidden_sizes, self.activation, self.obs_shape)
            self.critic = Critic(self.hidden_sizes, self.activation, self.obs_shape)

    def _shared(self, obs):
        return self.torso(obs if self.conv is None else self.conv(obs))

    def policy(self, obs):
        if self.shared_torso:
            return self.policy_head(self._shared(obs))
        return self.actor(obs)

    def value(self, obs):
        if self.shared_torso:
            return self.value_head(self._shared(obs))
        return self.critic(obs)

    def __call__(self, obs):
        if self.shared_torso:
            h = self._shared(obs)
            return self.policy_head(h), self.value_head(h)
        return self.actor(obs), self.critic(obs)


__all__ = ["ActorCritic", "ConvTorso", "MLP", "NETWORKS"]
