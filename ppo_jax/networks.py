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
import jax.numpy as jnp

from ppo_jax.distributions import Categorical, DiagGaussian
from ppo_jax.orthogonal_init import orthogonal

ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "gelu": nn.gelu}


class MLP(nn.Module):
    """Hidden layers with orthogonal(sqrt 2) init."""

    hidden_sizes: Sequence[int]
    activation: str = "tanh"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for size in self.hidden_sizes:
            x = act(nn.Dense(size, kernel_init=orthogonal(math.sqrt(2)))(x))
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
        x = nn.Conv(self.features, (3, 3), padding="VALID", kernel_init=orthogonal(math.sqrt(2)))(x)
        x = nn.relu(x)
        return x.reshape(x.shape[:-3] + (-1,))


NETWORKS = ("mlp", "cnn", "gru")
"""``mlp``: hidden layers on the flat observation; ``cnn``: :class:`ConvTorso` first, on the frame;
``gru``: :class:`RecurrentActorCritic`, a GRU between an embedding and the hidden layers."""


def _features(obs, obs_shape):
    """The convolutional features of ``obs`` when there is a frame shape (``cnn``), else ``obs``."""
    return obs if not obs_shape else ConvTorso(tuple(obs_shape))(obs)


class PolicyHead(nn.Module):
    """Logits (discrete) or mean plus state-independent log-std (continuous)."""

    action_dim: int
    continuous: bool

    @nn.compact
    def __call__(self, features: jax.Array):
        out = nn.Dense(self.action_dim, kernel_init=orthogonal(0.01))(features)
        if not self.continuous:
            return Categorical(logits=out)
        log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))
        return DiagGaussian(mean=out, log_std=log_std)


class ValueHead(nn.Module):
    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        return nn.Dense(1, kernel_init=orthogonal(1.0))(features)[..., 0]


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


def _gate_blocks(init):
    """An initialiser of a ``[fan_in, 3H]`` kernel as three ``[fan_in, H]`` blocks, each drawn as
    ``init`` draws one gate's kernel (the reset, update and candidate gates of a GRU)."""
    def blocks(key, shape, dtype=jnp.float32):
        return jnp.concatenate([init(k, (shape[0], shape[1] // 3), dtype) for k in jax.random.split(key, 3)], -1)

    return blocks


class GRU(nn.Module):
    """A GRU over ``[N, T, E]`` sequences, zeroing an environment's state before a step whose
    ``reset`` is true (a new episode must not see the last one's memory).

    The equations and initialisation of ``flax.linen.GRUCell`` (Cho et al., 2014; docs/theory.md
    §14): ``r = sigmoid(W_ir x + b_ir + W_hr h)``, ``z = sigmoid(W_iz x + b_iz + W_hz h)``,
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) n + z h``. The three gates'
    kernels are stored side by side, and the input projection of the whole sequence is one
    matrix product before the loop over time, which then holds a single ``[H, 3H]`` product per
    step: on XLA:CPU six small products per step (the cell's six Dense layers) cost more than the
    arithmetic.
    """

    features: int

    @nn.compact
    def __call__(self, h, x, reset):
        H = self.features
        w_i = self.param("input_kernel", _gate_blocks(nn.initializers.lecun_normal()), (x.shape[-1], 3 * H))
        b_i = self.param("input_bias", nn.initializers.zeros, (3 * H,))
        w_h = self.param("hidden_kernel", _gate_blocks(orthogonal()), (H, 3 * H))
        b_hn = self.param("hidden_bias", nn.initializers.zeros, (H,))
        xs = x @ w_i + b_i

        def step(h, inputs):
            xt, reset_t = inputs
            h = jnp.where(reset_t[:, None], jnp.zeros_like(h), h)
            hh = h @ w_h
            r = nn.sigmoid(xt[:, :H] + hh[:, :H])
            z = nn.sigmoid(xt[:, H:2 * H] + hh[:, H:2 * H])
            n = jnp.tanh(xt[:, 2 * H:] + r * (hh[:, 2 * H:] + b_hn))
            h = (1.0 - z) * n + z * h
            return h, h

        _, hs = jax.lax.scan(step, h, (jnp.swapaxes(xs, 0, 1), jnp.swapaxes(reset, 0, 1)))
        return jnp.swapaxes(hs, 0, 1)


class RecurrentTorso(nn.Module):
    """Embedding (Dense ``hidden_sizes[0]``, orthogonal sqrt 2), a GRU of that width, the hidden
    layers ``hidden_sizes[1:]``, then the heads named in ``heads``: the recurrent actor-critic of
    PureJaxRL's ``ppo_rnn.py``, with the layer widths of ``config.hidden_sizes``."""

    hidden_sizes: Sequence[int]
    activation: str
    heads: Sequence[str]
    action_dim: int = 1
    continuous: bool = False

    def setup(self):
        self.embed = nn.Dense(self.hidden_sizes[0], kernel_init=orthogonal(math.sqrt(2)))
        self.gru = GRU(self.hidden_sizes[0])
        self.mlp = MLP(tuple(self.hidden_sizes[1:]), self.activation)
        if "policy" in self.heads:
            self.policy_head = PolicyHead(self.action_dim, self.continuous)
        if "value" in self.heads:
            self.value_head = ValueHead()

    def __call__(self, h, obs, reset):
        """``h`` ``[N, H]`` before the first step, ``obs`` ``[N, T, D]``, ``reset`` ``[N, T]`` ->
        (the hidden state after each step ``[N, T, H]``, features ``[N, T, F]``)."""
        hs = self.gru(h, self._embedded(obs), reset)
        return hs, self.mlp(hs)

    def _embedded(self, obs):
        return ACTIVATIONS[self.activation](self.embed(obs))

    def continued(self, hs, obs):
        """Features of each ``obs[...]`` seen right after the state ``hs[...]`` (any equal leading
        axes), with no reset: the final observation of an episode cut there continues that
        episode's memory (bootstrapping a truncation)."""
        x = self._embedded(obs)
        flat = hs.reshape((-1, hs.shape[-1]))
        h = self.gru(flat, x.reshape((flat.shape[0], 1, -1)), jnp.zeros((flat.shape[0], 1), bool))
        return self.mlp(h.reshape(hs.shape))

    def policy(self, features):
        return self.policy_head(features)

    def value(self, features):
        return self.value_head(features)


class RecurrentActorCritic(nn.Module):
    """A recurrent actor-critic (``network="gru"``): ``unroll(carry, obs, reset) -> (hiddens,
    distribution, value)`` over ``[N, T]`` sequences (environment-major) from the hidden state ``carry``.

    ``carry`` is a dict of ``[N, H]`` arrays, one per parameter group (``"all"`` with a shared
    torso, else ``"actor"`` and ``"critic"``, each its own GRU); ``reset[:, t]`` is true where
    ``obs[:, t]`` is an episode's first observation, and zeroes that environment's state before
    the step. Running ``unroll`` one step at a time, feeding each step's last hidden state to the
    next, gives the same numbers as one call on the whole sequence.
    """

    action_dim: int
    continuous: bool
    hidden_sizes: Sequence[int] = (128, 128)
    activation: str = "relu"
    shared_torso: bool = False

    def setup(self):
        body = lambda heads: RecurrentTorso(self.hidden_sizes, self.activation, heads,  # noqa: E731
                                            self.action_dim, self.continuous)
        if self.shared_torso:
            self.torso = body(("policy", "value"))
        else:
            self.actor = body(("policy",))
            self.critic = body(("value",))

    def initial_carry(self, num_envs: int) -> dict:
        groups = ("all",) if self.shared_torso else ("actor", "critic")
        return {g: jnp.zeros((num_envs, self.hidden_sizes[0]), jnp.float32) for g in groups}

    def unroll(self, carry: dict, obs, reset):
        if self.shared_torso:
            hs, features = self.torso(carry["all"], obs, reset)
            return {"all": hs}, self.torso.policy(features), self.torso.value(features)
        ha, fa = self.actor(carry["actor"], obs, reset)
        hc, fc = self.critic(carry["critic"], obs, reset)
        return {"actor": ha, "critic": hc}, self.actor.policy(fa), self.critic.value(fc)

    def continued_value(self, hiddens: dict, obs):
        """``V`` of each ``obs[...]`` right after the hidden state ``hiddens[...]`` (see
        :meth:`RecurrentTorso.continued`)."""
        critic = self.torso if self.shared_torso else self.critic
        group = "all" if self.shared_torso else "critic"
        return critic.value(critic.continued(hiddens[group], obs))

    def __call__(self, carry, obs, reset):
        return self.unroll(carry, obs, reset)


def is_recurrent(network) -> bool:
    return isinstance(network, RecurrentActorCritic)


class UserActorCritic(nn.Module):
    """Your Flax module as the actor-critic: ``module(obs) -> (distribution parameters, value)``.

    ``obs`` arrives in the environment's own shape with leading batch axes (a frame stays a
    frame). The parameters are the logits ``[..., action_dim]`` for discrete actions, or a pair
    ``(mean, log_std)`` for continuous ones (``log_std`` of shape ``[action_dim]`` or like the
    mean); the value is ``[...]`` or ``[..., 1]``. One parameter tree, one optimiser.
    """

    module: nn.Module
    action_dim: int
    continuous: bool
    obs_shape: Sequence[int] = ()

    def __call__(self, obs):
        x = obs.reshape(obs.shape[:-1] + tuple(self.obs_shape)) if self.obs_shape else obs
        head, value = self.module(x)
        if value.ndim == obs.ndim:
            value = value[..., 0]
        if self.continuous:
            mean, log_std = head
            return DiagGaussian(mean=mean, log_std=log_std), value
        return Categorical(logits=head), value

    def policy(self, obs):
        return self(obs)[0]

    def value(self, obs):
        return self(obs)[1]


def forward(network, params, batch):
    """``(distribution, value)`` of a batch's rows: the observations' (``[B, D]``), or for a
    recurrent network the sequences' (``[n, T, D]``, recomputed from their stored hidden state,
    reset where ``batch.first``)."""
    if batch.first is None:
        return network.apply({"params": params}, batch.obs)
    _, dist, value = network.apply({"params": params}, batch.carry, batch.obs, batch.first,
                                   method=RecurrentActorCritic.unroll)
    return dist, value


__all__ = ["ActorCritic", "ConvTorso", "MLP", "NETWORKS", "RecurrentActorCritic", "UserActorCritic", "forward",
           "is_recurrent"]
