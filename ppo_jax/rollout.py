"""One ``lax.scan`` over ``num_steps`` steps of ``num_envs`` environments."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from ppo_jax.envs import VecEnv, VecEnvState


@struct.dataclass
class Transition:
    """A time-major batch ``[T, N, ...]`` of what the update rules consume.

    ``next_obs[t]`` is the observation the step actually reached: the final
    observation on an episode end, never the reset observation (the bug of bootstrapping from the next episode), so
    ``V(next_obs)`` is the right bootstrap on truncation and at the rollout's end.
    """

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    next_obs: jax.Array
    episode_return: jax.Array
    episode_length: jax.Array

    @property
    def done(self) -> jax.Array:
        return jnp.logical_or(self.terminated, self.truncated)


@struct.dataclass
class Batch:
    """Flat ``[B, ...]`` samples for an update rule, made from a rollout's transitions.

    ``advantage`` and ``target`` are GAE's (docs/theory.md §4, §5), or for REINFORCE both the
    Monte-Carlo reward-to-go (§1). ``mask`` is 1 on the samples the rule may learn from
    (REINFORCE: the steps whose episode ends inside the rollout); None means all.
    """

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    advantage: jax.Array
    target: jax.Array
    mask: jax.Array | None = None
    first: jax.Array | None = None
    """Recurrent networks: rows are whole environment sequences ``[n, T, ...]`` and ``first[i, t]``
    is true where step ``t`` starts an episode (the hidden state is zeroed there); None otherwise."""
    carry: Any = None
    """Recurrent networks: each sequence's hidden state before its first step (stored at the
    start of the rollout)."""


@struct.dataclass
class Memory:
    """What a recurrent policy carries between steps and rollouts: its hidden state ``carry`` (a
    dict of ``[N, H]``, before any reset) and ``first`` ``[N]``, true where the next observation
    starts an episode."""

    carry: Any
    first: jax.Array


def _env_step(env: VecEnv, keys: jax.Array, env_state: VecEnvState, obs: jax.Array, action, log_prob):
    """One step of every environment: ``(env_state, next_obs, transition)``."""
    next_obs, env_state, reward, terminated, truncated, info = env.step_envs(keys, env_state, action)
    done = jnp.logical_or(terminated, truncated)
    reached = jnp.where(done[:, None], info["final_observation"], next_obs)
    transition = Transition(obs, action, log_prob, reward, terminated, truncated, reached,
                            info["episode_return"], info["episode_length"])
    return env_state, next_obs, transition


def rollout(
    policy_fn: Callable,
    env: VecEnv,
    env_state: VecEnvState,
    obs: jax.Array,
    key: jax.Array,
    num_steps: int,
) -> tuple[VecEnvState, jax.Array, Transition]:
    """Runs the policy for ``num_steps`` steps.

    ``policy_fn(obs) -> distribution`` acts; the log-prob is of the sampled (unclipped)
    action. Values are not computed here: the critic evaluates the whole batch at once
    afterwards, which is cheaper than once per step and gives the same numbers.
    Returns the final env state, the last observation and the ``[T, N]`` transitions.
    """

    def step(carry, step_keys):
        env_state, obs = carry
        dist = policy_fn(obs)
        action = dist.sample(step_keys[0])
        env_state, next_obs, transition = _env_step(env, step_keys[1:], env_state, obs, action, dist.log_prob(action))
        return (env_state, next_obs), transition

    # Row t holds step t's keys: one for the action, one per environment.
    keys = jax.random.split(key, (num_steps, env.num_envs + 1))
    (env_state, obs), transitions = jax.lax.scan(step, (env_state, obs), keys)
    return env_state, obs, transitions


def next_state_values(value_fn: Callable, traj: Transition, values: jax.Array, last_obs: jax.Array,
                      one_cut_per_env: bool) -> jax.Array:
    """``V(next_obs[t])``, ``[T, N]``: the bootstrap values GAE needs (docs/theory.md §4).

    Where an episode goes on, ``next_obs[t]`` is ``obs[t + 1]`` (``last_obs`` after the last
    step), whose value ``values`` already holds; a terminated step's value is multiplied by 0,
    so only a truncated step needs the critic on its own final observation.
    ``one_cut_per_env``: each environment was truncated at most once in the rollout (its
    truncation is a time limit no shorter than the rollout); then the critic sees one final
    observation per environment, not all ``T x N``. Otherwise it sees every ``next_obs``. The
    two agree on every step that is not terminated (the ones GAE reads).
    """
    if not one_cut_per_env:
        return value_fn(traj.next_obs)
    following = jnp.concatenate([values[1:], value_fn(last_obs)[None]])
    cut_at = jnp.argmax(traj.truncated, axis=0)  # [N]; 0 where an environment was not cut
    finals = jnp.take_along_axis(traj.next_obs, cut_at[None, :, None], axis=0)[0]
    return jnp.where(traj.truncated, value_fn(finals)[None], following)


@struct.dataclass
class RecurrentExtras:
    """What a recurrent rollout records besides the transitions, time-major ``[T, N, ...]``: the
    value of each step (from the same hidden state the action saw), ``first`` (the resets), and
    the hidden states after each step (to bootstrap from ``next_obs``)."""

    value: jax.Array
    first: jax.Array
    hiddens: Any


def recurrent_rollout(unroll_fn: Callable, env: VecEnv, env_state: VecEnvState, obs: jax.Array, memory: Memory,
                      key: jax.Array, num_steps: int):
    """:func:`rollout` for a recurrent policy: ``unroll_fn(carry, obs [N, 1, D], reset [N, 1]) ->
    (hiddens, distribution, value)`` (:meth:`ppo_jax.networks.RecurrentActorCritic.unroll`, one
    step). The hidden state is carried from step to step and zeroed where an episode starts.
    Returns ``(env_state, obs, memory, transitions, extras)``."""

    def step(carry, step_keys):
        env_state, obs, memory = carry
        hiddens, dist, value = unroll_fn(memory.carry, obs[:, None], memory.first[:, None])
        action = dist.sample(step_keys[0])[:, 0]
        log_prob = dist.log_prob(action[:, None])[:, 0]
        env_state, next_obs, transition = _env_step(env, step_keys[1:], env_state, obs, action, log_prob)
        after = jax.tree.map(lambda h: h[:, 0], hiddens)
        extras = RecurrentExtras(value[:, 0], memory.first, after)
        return (env_state, next_obs, Memory(after, transition.done)), (transition, extras)

    keys = jax.random.split(key, (num_steps, env.num_envs + 1))
    (env_state, obs, memory), (transitions, extras) = jax.lax.scan(step, (env_state, obs, memory), keys)
    return env_state, obs, memory, transitions, extras
