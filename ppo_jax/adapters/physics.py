"""Brax and MuJoCo Playground environments with gymnax's functional API: ``brax:hopper``,
``playground:CartpoleBalance`` (optional extras: ``pip install -e ".[brax]"`` or ``".[playground]"``).

Both libraries step a ``State`` with ``obs``, ``reward`` and ``done``, and leave the time limit
and the automatic reset to training wrappers that merge the two ways an episode ends into
``done``. This adapter wraps the bare environment and keeps them apart: ``terminated`` is the
environment's own ``done`` (the hopper fell), ``truncated`` is the time limit reached first (so
the step is bootstrapped); ``info["final_observation"]`` is the observation the step reached,
before the reset. As Brax's own training wrapper does, an environment that ends restarts from
the first state of its first reset (drawn per environment from its key), which spares a reset
computed at every step of every environment.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Params:
    max_steps_in_episode: int = 1000


@struct.dataclass
class AdapterState:
    inner: Any
    first: Any
    time: jax.Array


class PhysicsEnv:
    """A Brax or Playground environment (``reset(key) -> State``, ``step(State, action) -> State``)
    behind gymnax's API."""

    def __init__(self, env, name: str, max_steps: int):
        self.env, self.name = env, name
        self._params = Params(max_steps)

    @property
    def default_params(self):
        return self._params

    def _obs(self, state):
        if isinstance(state.obs, dict):
            raise ValueError(f"env: {self.name!r} observes a dict ({', '.join(state.obs)}); only array "
                             "observations are supported")
        return state.obs

    def reset(self, key, params=None):
        state = self.env.reset(key)
        return self._obs(state), AdapterState(state, state, jnp.asarray(0, jnp.int32))

    def step(self, key, state: AdapterState, action, params=None):
        params = params or self._params
        stepped = self.env.step(state.inner, action)
        time = state.time + 1
        terminated = stepped.done > 0.5
        truncated = jnp.logical_and(time >= params.max_steps_in_episode, jnp.logical_not(terminated))
        done = jnp.logical_or(terminated, truncated)
        # The first state's metrics and info are the ones the environment's reset made; the
        # stepped state's may have been updated (same structure), and both continue from here.
        restart = jax.tree.map(lambda a, b: jnp.where(done, a, b), state.first, stepped)
        out = AdapterState(restart, state.first, jnp.where(done, 0, time))
        return (self._obs(restart), out, stepped.reward, terminated, truncated,
                {"final_observation": self._obs(stepped)})

    def observation_space(self, params):
        from gymnax.environments import spaces

        size = self.env.observation_size
        if not isinstance(size, int):
            raise ValueError(f"env: {self.name!r} observes {size}; only flat array observations are supported")
        return spaces.Box(-jnp.inf, jnp.inf, (size,), jnp.float32)

    def action_space(self, params):
        from gymnax.environments import spaces

        return spaces.Box(-1.0, 1.0, (self.env.action_size,), jnp.float32)


def _missing(prefix: str, err: ImportError) -> ValueError:
    from ppo_jax.adapters import ADAPTERS

    return ValueError(f"env: {prefix} is not installed ({err}); install the extra: "
                      f"pip install -e \".[{ADAPTERS[prefix].extra}]\"")


def make_brax(name: str, backend: str = "positional", max_steps: int = 1000):
    """``brax:<name>`` (hopper, ant, halfcheetah, ...), on Brax's ``positional`` pipeline (the
    fastest on a CPU; ``brax:hopper@mjx`` names another)."""
    name, _, chosen = name.partition("@")
    try:
        from brax import envs
    except ImportError as err:
        raise _missing("brax", err) from err
    if name not in envs._envs:
        raise ValueError(f"env: 'brax:{name}' is not a Brax environment; Brax has {', '.join(sorted(envs._envs))}")
    return PhysicsEnv(envs.get_environment(name, backend=chosen or backend), f"brax:{name}", max_steps), None


def make_playground(name: str, impl: str = "jax"):
    """``playground:<name>`` (CartpoleBalance, ...): the episode length of the environment's default
    config, on MJX's JAX implementation (the default ``warp`` one runs as a foreign function that
    does not batch under ``vmap`` inside a scan; ``playground:CartpoleBalance@warp`` asks for it)."""
    name, _, chosen = name.partition("@")
    try:
        from mujoco_playground import registry
    except ImportError as err:
        raise _missing("playground", err) from err
    if name not in registry.ALL_ENVS:
        raise ValueError(f"env: 'playground:{name}' is not a Playground environment; it has "
                         f"{', '.join(sorted(registry.ALL_ENVS))}")
    config = registry.get_default_config(name)
    env = registry.load(name, config_overrides={"impl": chosen or impl})
    return PhysicsEnv(env, f"playground:{name}", int(config.episode_length)), None
