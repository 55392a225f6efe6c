"""One ``lax.scan`` over ``num_steps`` steps of ``num_envs`` environments."""

from __future__ import annotations

from typing import Callable

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
        log_prob = dist.log_prob(action)
        next_obs, env_state, reward, terminated, truncated, info = env.step_envs(step_keys[1:], env_state, action)
        done = jnp.logical_or(terminated, truncated)
        reached = jnp.where(done[:, None], info["final_observation"], next_obs)
        transition = Transition(obs, action, log_prob, reward, terminated, truncated, reached,
                                info["episode_return"], info["episode_length"])
        return (env_state, next_obs), transition

    # Row t holds step t's keys: one for the action, one per environment.
    keys = jax.random.split(key, (num_steps, env.num_envs + 1))
    (env_state, obs), transitions = jax.lax.scan(step, (env_state, obs), keys)
    return env_state, obs, transitions
