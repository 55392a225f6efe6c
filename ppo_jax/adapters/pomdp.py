"""Classic-control environments with the velocities hidden: ``pomdp:CartPole-v1`` and the others
of :data:`POSITIONS`.

The observation keeps the positions (angles as their cos and sin where gymnax gives them so)
and drops every velocity. One observation no longer tells where the system is going, so a
memoryless policy cannot balance the pole; a recurrent one can infer the velocities from
successive positions (the partially observed CartPole of recurrent-PPO benchmarks).
Termination, truncation, rewards and the time limit are the underlying environment's.
"""

from __future__ import annotations

import jax.numpy as jnp

POSITIONS = {
    "CartPole-v1": (0, 2),              # x, theta (drops x_dot, theta_dot)
    "Acrobot-v1": (0, 1, 2, 3),         # cos/sin of both joint angles (drops both angular velocities)
    "Pendulum-v1": (0, 1),              # cos, sin theta (drops theta_dot)
    "MountainCar-v0": (0,),             # position (drops velocity)
    "MountainCarContinuous-v0": (0,),
}


class HiddenVelocities:
    """Wraps a gymnax environment, keeping only the observation entries ``keep``."""

    def __init__(self, env, keep: tuple[int, ...]):
        self.env = env
        self.keep = jnp.asarray(keep)

    @property
    def default_params(self):
        return self.env.default_params

    def reset(self, key, params=None):
        obs, state = self.env.reset(key, params)
        return obs[self.keep], state

    def step(self, key, state, action, params=None):
        obs, state, reward, terminated, truncated, info = self.env.step(key, state, action, params)
        info = {**info, "final_observation": info["final_observation"][self.keep]}
        return obs[self.keep], state, reward, terminated, truncated, info

    def observation_space(self, params):
        from gymnax.environments import spaces

        space = self.env.observation_space(params)
        return spaces.Box(jnp.asarray(space.low)[self.keep], jnp.asarray(space.high)[self.keep],
                          (len(self.keep),), space.dtype)

    def action_space(self, params):
        return self.env.action_space(params)


def make(name: str):
    if name not in POSITIONS:
        raise ValueError(f"env: 'pomdp:{name}' is not available; hidden velocities are defined for "
                         f"{', '.join('pomdp:' + k for k in POSITIONS)}")
    from ppo_jax.envs import make_gymnax

    env, params = make_gymnax(name)
    return HiddenVelocities(env, POSITIONS[name]), params
