"""Vectorised gymnax environments with the wrappers gymnax lacks.

One class, :class:`VecEnv`, runs ``num_envs`` copies of a gymnax environment under
``vmap`` and adds, in this order from the inside out:

1. action clipping to the Box bounds (the agent keeps, and is scored on, its unclipped
   action);
2. episode statistics of the *raw* rewards, reported only for finished episodes;
3. running observation normalisation (parallel Welford update, clipped to +-10), applied
   to ``info["final_observation"]`` with the same statistics as the observation;
4. reward scaling by the running std of the discounted return (training gamma, reset at
   episode ends, no mean subtraction).

All state is one flat pytree (:class:`VecEnvState`), so it rides in the training carry
and the normaliser statistics end up in the final train state and checkpoints.
"""

from __future__ import annotations

import difflib
import importlib
import sys
import types
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ppo_jax.adapters import adapter_of
from ppo_jax.run.configure import configure
from ppo_jax.run.named import Named, load_named


def _import_gymnax():
    """``import gymnax`` without loading seaborn and matplotlib.pyplot.

    gymnax imports them at module level for the rendering of a few environments; loading
    them (and the scipy and pandas under seaborn) took 1-2 s of every command's start.
    While gymnax is imported they are stand-ins that import the real module on first use.
    """
    stand_ins = {}
    for name in ("seaborn", "matplotlib.pyplot"):
        if name in sys.modules:
            continue

        def forward(attr, name=name):
            if sys.modules.get(name) is stand_ins[name]:
                del sys.modules[name]
            return getattr(importlib.import_module(name), attr)

        stand_ins[name] = types.ModuleType(name)
        stand_ins[name].__getattr__ = forward
        sys.modules[name] = stand_ins[name]
    try:
        return importlib.import_module("gymnax")
    finally:
        for name, module in stand_ins.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


_gymnax_module = None


def _gymnax():
    """gymnax, imported on first use: it starts JAX's backend when imported, and the XLA flag of
    :func:`ppo_jax.configure` (and a multi-process run's ``jax.distributed.initialize``) must
    come before that."""
    global _gymnax_module
    if _gymnax_module is None:
        configure()
        _gymnax_module = _import_gymnax()
    return _gymnax_module


OBS_CLIP = 10.0
NORM_EPS = 1e-8


def available_envs() -> list[str]:
    """Every environment id this gymnax knows."""
    return list(_gymnax().registered_envs)


ENV_API = ("reset", "step", "observation_space", "action_space", "default_params")
"""What an environment object needs: gymnax's functional API (``reset(key, params) -> (obs,
state)``, ``step(key, state, action, params) -> (obs, state, reward, terminated, truncated,
info)`` with automatic reset, ``observation_space(params)``, ``action_space(params)``,
``default_params``), as gymnax's own ``Environment`` class provides."""

_envs = Named("env", "an environment object")


def register_env(env) -> str:
    """An id for the environment object ``env`` (:data:`ENV_API`), usable as ``config.env`` in
    this process (``make_train(config, env=env)`` does this). A run that must resume in another
    process names a ``module:function`` instead."""
    _check_api(env, type(env).__name__)
    return _envs.give(env, (env, env.default_params))


def _check_api(env, what: str) -> None:
    missing = [name for name in ENV_API if not hasattr(env, name)]
    if missing:
        raise ValueError(f"env: {what} has no {', '.join(missing)}; an environment needs gymnax's functional API: "
                         "reset(key, params), step(key, state, action, params), observation_space(params), "
                         "action_space(params) and default_params")


def user_env(env_id: str):
    """``(env, params)`` of ``module:function`` or ``path/to/file.py:function`` (the function,
    called with no arguments, returns the environment object, or ``(env, params)``), of an
    adapter shipped with the package (``pomdp:CartPole-v1``, :mod:`ppo_jax.adapters`), or of an
    object given to :func:`register_env`. Made once per process."""
    return _envs.get(env_id, _make_env)


def _make_env(env_id: str):
    adapter = adapter_of(env_id)
    if adapter is not None:  # shipped with the package: prefix:name
        env, params = importlib.import_module(adapter.module).make(env_id.partition(":")[2])
        return env, env.default_params if params is None else params
    factory = load_named(env_id, "env")
    try:
        made = factory()
    except Exception as err:
        raise ValueError(f"env: {env_id!r} raised {type(err).__name__}: {err}") from err
    env, params = made if isinstance(made, tuple) and len(made) == 2 else (made, None)
    _check_api(env, f"{env_id!r} returned a {type(env).__name__} that")
    return env, env.default_params if params is None else params


def is_user_env(env_id: str) -> bool:
    """Whether ``env_id`` names a user's environment (``module:function``, a registered object), not a gymnax id."""
    return ":" in env_id


def validate_env_id(env_id: str) -> None:
    """Raises ValueError naming the field and listing the valid ids (a user's environment: that
    it loads and has gymnax's API)."""
    if is_user_env(env_id):
        user_env(env_id)
        return
    valid = available_envs()
    if env_id not in valid:
        close = difflib.get_close_matches(env_id, valid, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"env: unknown environment id {env_id!r}.{hint} Valid ids: {', '.join(valid)}")


@struct.dataclass
class RunningStats:
    """Running mean and (population) variance, merged batch by batch (Chan et al.'s parallel Welford)."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array

    @classmethod
    def create(cls, shape: tuple[int, ...]) -> "RunningStats":
        return cls(jnp.zeros(shape, jnp.float32), jnp.ones(shape, jnp.float32), jnp.asarray(1e-4, jnp.float32))

    def update(self, batch: jax.Array) -> "RunningStats":
        """Merges a batch whose leading axis indexes samples."""
        b_mean = batch.mean(axis=0)
        b_var = batch.var(axis=0)
        b_count = jnp.asarray(batch.shape[0], jnp.float32)
        delta = b_mean - self.mean
        total = self.count + b_count
        mean = self.mean + delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + jnp.square(delta) * self.count * b_count / total
        return RunningStats(mean, m2 / total, total)


def normalize_obs(obs: jax.Array, stats: RunningStats) -> jax.Array:
    return jnp.clip((obs - stats.mean) / jnp.sqrt(stats.var + NORM_EPS), -OBS_CLIP, OBS_CLIP)


@struct.dataclass
class VecEnvState:
    env_state: Any
    obs_stats: RunningStats
    return_stats: RunningStats
    discounted_return: jax.Array
    episode_return: jax.Array
    episode_length: jax.Array


@dataclass(frozen=True)
class EnvSpec:
    """What the agent needs to know about an environment."""

    env_id: str
    obs_dim: int
    action_dim: int  # number of actions (discrete) or action dimensions (continuous)
    continuous: bool
    action_low: np.ndarray | None
    action_high: np.ndarray | None
    max_steps: int
    obs_shape: tuple[int, ...] = ()
    """The observation's own shape (a MinAtar frame is ``(10, 10, C)``); the agent sees it flat."""


def make_gymnax(env_id: str):
    """``(env, params)``: a gymnax environment by id, or a user's (:func:`user_env`)."""
    validate_env_id(env_id)
    if is_user_env(env_id):
        return user_env(env_id)
    return _gymnax().make(env_id)


def env_spec(env_id: str) -> EnvSpec:
    env, params = make_gymnax(env_id)
    obs_shape = env.observation_space(params).shape
    space = env.action_space(params)
    spaces = _gymnax().environments.spaces
    if isinstance(space, spaces.Discrete):
        return EnvSpec(env_id, int(np.prod(obs_shape)), int(space.n), False, None, None, _time_limit(params),
                       tuple(int(d) for d in obs_shape))
    if isinstance(space, spaces.Box):
        shape = space.shape if len(space.shape) else (1,)
        low = np.broadcast_to(np.asarray(space.low, np.float32), shape).copy()
        high = np.broadcast_to(np.asarray(space.high, np.float32), shape).copy()
        return EnvSpec(env_id, int(np.prod(obs_shape)), int(np.prod(shape)), True, low, high, _time_limit(params),
                       tuple(int(d) for d in obs_shape))
    raise ValueError(f"env: {env_id!r} has an action space of type {type(space).__name__}; "
                     "only Discrete and Box are supported")


def _time_limit(params) -> int:
    """The episode's step limit (gymnax's ``max_steps_in_episode``; 0 where a user's environment has none)."""
    return int(getattr(params, "max_steps_in_episode", 0) or 0)


class VecEnv:
    """``num_envs`` auto-resetting copies of a gymnax env, with the wrappers listed in the module doc.

    ``gamma`` may be a traced value (it is a hyperparameter of the run).
    """

    def __init__(self, env_id: str, num_envs: int, *, normalize_observations: bool = False,
                 normalize_rewards: bool = False, gamma: float | jax.Array = 0.99):
        self.env, self.params = make_gymnax(env_id)
        self.spec = env_spec(env_id)
        self.num_envs = num_envs
        self.normalize_observations = normalize_observations
        self.normalize_rewards = normalize_rewards
        self.gamma = gamma
        self._reset = jax.vmap(self.env.reset, in_axes=(0, None))
        self._step = jax.vmap(self.env.step, in_axes=(0, 0, 0, None))

    def _flat(self, obs: jax.Array) -> jax.Array:
        return obs.reshape((self.num_envs, -1)).astype(jnp.float32)

    def env_action(self, action: jax.Array) -> jax.Array:
        """The action the environment receives: clipped into a Box's bounds (policy keeps the raw one)."""
        if not self.spec.continuous:
            return action
        clipped = jnp.clip(action, self.spec.action_low, self.spec.action_high)
        space_shape = self.env.action_space(self.params).shape
        return clipped.reshape((self.num_envs,) + tuple(space_shape))

    def reset(self, key: jax.Array) -> tuple[jax.Array, VecEnvState]:
        return self._start(key, None)

    def restart(self, key: jax.Array, state: VecEnvState) -> tuple[jax.Array, VecEnvState]:
        """Fresh episodes in every environment, keeping the running normaliser statistics
        (for update rules that learn from whole episodes only)."""
        return self._start(key, state)

    def _start(self, key: jax.Array, state: VecEnvState | None) -> tuple[jax.Array, VecEnvState]:
        """Fresh episodes, with ``state``'s normaliser statistics or (None) new ones."""
        obs, env_state = self._reset(jax.random.split(key, self.num_envs), self.params)
        obs = self._flat(obs)
        zeros = jnp.zeros((self.num_envs,), jnp.float32)
        obs_stats, return_stats = ((RunningStats.create(obs.shape[1:]), RunningStats.create(())) if state is None
                                   else (state.obs_stats, state.return_stats))
        state = VecEnvState(env_state, obs_stats, return_stats, zeros, zeros, jnp.zeros((self.num_envs,), jnp.int32))
        if self.normalize_observations:
            state = state.replace(obs_stats=state.obs_stats.update(obs))
            obs = normalize_obs(obs, state.obs_stats)
        return obs, state

    def step(self, key: jax.Array, state: VecEnvState, action: jax.Array):
        """Returns ``obs, state, reward, terminated, truncated, info``.

        ``info`` holds ``final_observation`` (normalised like ``obs``), the ``raw_reward``,
        and ``episode_return`` / ``episode_length`` / ``episode_done``: the totals of
        episodes that finished at this step (only meaningful where ``episode_done``).
        """
        return self.step_envs(jax.random.split(key, self.num_envs), state, action)

    def step_envs(self, keys: jax.Array, state: VecEnvState, action: jax.Array):
        """:meth:`step` with one key per environment, already split (the rollout splits all
        of its steps' keys in one call before its loop, instead of once per step)."""
        obs, env_state, reward, terminated, truncated, info = self._step(
            keys, state.env_state, self.env_action(action), self.params)
        obs, final_obs = self._flat(obs), self._flat(info["final_observation"])
        reward = reward.astype(jnp.float32)
        done = jnp.logical_or(terminated, truncated)
        episode_return = state.episode_return + reward
        episode_length = state.episode_length + 1
        out_info = {"raw_reward": reward, "episode_return": episode_return,
                    "episode_length": episode_length, "episode_done": done}
        state = state.replace(env_state=env_state,
                              episode_return=jnp.where(done, 0.0, episode_return),
                              episode_length=jnp.where(done, 0, episode_length))
        if self.normalize_observations:
            obs_stats = state.obs_stats.update(obs)
            obs, final_obs = normalize_obs(obs, obs_stats), normalize_obs(final_obs, obs_stats)
            state = state.replace(obs_stats=obs_stats)
        if self.normalize_rewards:
            disc = state.discounted_return * self.gamma + reward
            return_stats = state.return_stats.update(disc)
            reward = reward / jnp.sqrt(return_stats.var + NORM_EPS)
            state = state.replace(return_stats=return_stats, discounted_return=jnp.where(done, 0.0, disc))
        out_info["final_observation"] = final_obs
        return obs, state, reward, terminated.astype(bool), truncated.astype(bool), out_info
