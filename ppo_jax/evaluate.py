"""Evaluation episodes on a fresh environment with their own key (never the training envs' state or stream).

The loop is a ``lax.scan`` bounded by the environment's time limit (or ``max_steps``), so
an environment that never ends cannot hang it. Observations are normalised with the
frozen training statistics; nothing is updated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ppo_jax.config import PPOConfig
from ppo_jax.envs import RunningStats, VecEnv, env_spec, normalize_obs
from ppo_jax.networks import RecurrentActorCritic, is_recurrent
from ppo_jax.rollout import Memory


def make_evaluate(config: PPOConfig, num_episodes: int = 16, deterministic: bool = True,
                  max_steps: int | None = None):
    """Returns ``evaluate(params, obs_stats, key) -> [num_episodes]`` raw episode returns.

    ``deterministic`` acts with the distribution's mode (argmax / mean), else samples.
    Each episode counts only the rewards up to its first end.
    """
    from ppo_jax.train import make_network

    spec = env_spec(config.env)
    network = make_network(config, spec)
    steps = int(max_steps or spec.max_steps)
    if steps <= 0:
        raise ValueError(f"max_steps: must be positive, got {steps}")

    def evaluate(params, obs_stats: RunningStats, key: jax.Array) -> jax.Array:
        env = VecEnv(config.env, num_episodes)
        k_reset, k_run = jax.random.split(key)
        obs, env_state = env.reset(k_reset)

        def step(carry, step_key):
            obs, env_state, alive, total, memory = carry
            k_act, k_env = jax.random.split(step_key)
            x = normalize_obs(obs, obs_stats) if config.normalize_observations else obs
            if memory is None:
                dist = network.apply({"params": params}, x, method="policy")
                action = dist.mode() if deterministic else dist.sample(k_act)
            else:
                hiddens, dist, _ = network.apply({"params": params}, memory.carry, x[:, None], memory.first[:, None],
                                                 method=RecurrentActorCritic.unroll)
                action = (dist.mode() if deterministic else dist.sample(k_act))[:, 0]
            obs, env_state, _, terminated, truncated, info = env.step(k_env, env_state, action)
            total = total + alive * info["raw_reward"]
            done = jnp.logical_or(terminated, truncated)
            alive = alive * (1.0 - done.astype(jnp.float32))
            if memory is not None:
                memory = Memory(jax.tree.map(lambda h: h[:, 0], hiddens), done)
            return (obs, env_state, alive, total, memory), None

        memory = None
        if is_recurrent(network):
            memory = Memory(network.initial_carry(num_episodes), jnp.ones((num_episodes,), bool))
        init = (obs, env_state, jnp.ones((num_episodes,)), jnp.zeros((num_episodes,)), memory)
        (_, _, _, total, _), _ = jax.lax.scan(step, init, jax.random.split(k_run, steps))
        return total

    return evaluate
