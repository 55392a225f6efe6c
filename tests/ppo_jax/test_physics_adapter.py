"""The Brax / Playground adapter (ppo_jax.adapters.physics) keeps termination and truncation apart
and reports the observation a step reached before the restart. Checked on a stand-in with the two
libraries' State API written here (CI installs neither library); with Brax installed, also on
brax:hopper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from ppo_jax.adapters.physics import PhysicsEnv

pytestmark = pytest.mark.timeout(300)


@struct.dataclass
class State:
    pipeline_state: jax.Array
    obs: jax.Array
    reward: jax.Array
    done: jax.Array
    metrics: dict
    info: dict


class Falling:
    """Height starts at the reset key's draw in [5, 6) and falls by the action's magnitude plus 1
    a step; the episode terminates below 0 (done = 1.0, as Brax's envs say it)."""

    observation_size = 1
    action_size = 1

    def reset(self, key):
        h = 5.0 + jax.random.uniform(key)
        return State(h, jnp.array([h]), jnp.asarray(0.0), jnp.asarray(0.0), {"steps": jnp.asarray(0)}, {})

    def step(self, state, action):
        h = state.pipeline_state - 1.0 - jnp.abs(action[0])
        return State(h, jnp.array([h]), jnp.asarray(1.0), (h < 0).astype(jnp.float32),
                     {"steps": state.metrics["steps"] + 1}, {})


def test_termination_and_truncation_stay_apart_and_the_final_observation_is_kept():
    env = PhysicsEnv(Falling(), "falling", max_steps=4)
    obs, state = env.reset(jax.random.PRNGKey(0), env.default_params)
    start = float(obs[0])
    step = jax.jit(env.step)
    # Slow fall (action 0): 5.x -> 4.x -> 3.x -> 2.x -> 1.x, the time limit (4 steps) comes first.
    for t in range(4):
        obs, state, reward, terminated, truncated, info = step(jax.random.PRNGKey(t), state, jnp.zeros(1))
    assert not bool(terminated) and bool(truncated)
    np.testing.assert_allclose(info["final_observation"], [start - 4.0], rtol=1e-6)
    np.testing.assert_allclose(obs, [start], rtol=1e-6)  # restarted from the first state
    assert int(state.time) == 0 and int(state.inner.metrics["steps"]) == 0
    # Fast fall (action 2, 3 per step): below 0 at the second step, which terminates.
    obs, state, _, terminated, truncated, _ = step(jax.random.PRNGKey(9), state, jnp.full(1, 2.0))
    assert not bool(terminated | truncated) and int(state.time) == 1
    obs, state, _, terminated, truncated, info = step(jax.random.PRNGKey(10), state, jnp.full(1, 2.0))
    assert bool(terminated) and not bool(truncated)
    np.testing.assert_allclose(info["final_observation"], [start - 6.0], rtol=1e-6)
    np.testing.assert_allclose(obs, [start], rtol=1e-6)
    # A step that terminates exactly at the time limit is a termination, not a truncation.
    env3 = PhysicsEnv(Falling(), "falling", max_steps=2)
    _, s = env3.reset(jax.random.PRNGKey(0))
    _, s, _, _, _, _ = env3.step(None, s, jnp.full(1, 2.0))
    _, s, _, terminated, truncated, _ = env3.step(None, s, jnp.full(1, 2.0))
    assert bool(terminated) and not bool(truncated)


def test_it_trains_through_make_train_with_continuous_actions():
    from ppo_jax import PPOConfig, make_train

    config = PPOConfig(num_envs=4, num_steps=16, total_timesteps=4 * 16 * 3, num_minibatches=2)
    out = jax.jit(make_train(config, env=PhysicsEnv(Falling(), "falling", max_steps=4)))(jax.random.PRNGKey(0))
    assert np.isfinite(np.asarray(out.metrics["total_loss"])).all()
    assert float(out.metrics["episodes_finished"].sum()) > 0


def test_brax_hopper_through_the_adapter():
    pytest.importorskip("brax")
    from ppo_jax.envs import env_spec, make_gymnax

    spec = env_spec("brax:hopper")
    assert spec.continuous and spec.action_dim == 3 and spec.max_steps == 1000
    env, params = make_gymnax("brax:hopper")
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    assert obs.shape == (spec.obs_dim,)
    _, _, reward, terminated, truncated, info = jax.jit(env.step)(jax.random.PRNGKey(1), state,
                                                                  jnp.zeros(3), params)
    assert np.isfinite(float(reward)) and not bool(truncated) and info["final_observation"].shape == obs.shape


def test_a_missing_library_says_which_extra_to_install():
    import importlib.util

    from ppo_jax.adapters import ADAPTERS, SIMULATORS
    from ppo_jax.envs import validate_env_id

    assert SIMULATORS == ("brax", "playground")
    for prefix in SIMULATORS:
        if importlib.util.find_spec(ADAPTERS[prefix].library) is not None:
            continue
        extra = ADAPTERS[prefix].extra
        with pytest.raises(ValueError, match=rf"^env: {prefix} is not installed .*pip install -e \"\.\[{extra}\]\""):
            validate_env_id(f"{prefix}:Anything")


def test_brax_and_playground_runs_stay_in_one_process():
    from ppo_jax.local_processes import plan

    assert plan(["train", "--env", "brax:hopper", "--num-seeds", "4"]) == 1
    assert plan(["study", "--env", "playground:CartpoleBalance", "--num-seeds", "16", "--processes", "1"]) == 1
    with pytest.raises(ValueError, match=r"^processes: brax:hopper runs in one process"):
        plan(["train", "--env", "brax:hopper", "--num-seeds", "4", "--processes", "2"])


def test_bootstrap_values_from_one_final_observation_per_environment_equal_the_full_pass():
    """With at most one truncation per environment in a rollout, the critic needs one final
    observation per environment (ppo_jax.rollout.next_state_values); the bootstraps GAE reads
    are those of the critic on every next observation."""
    from ppo_jax import gae
    from ppo_jax.distributions import DiagGaussian
    from ppo_jax.envs import VecEnv, register_env
    from ppo_jax.rollout import next_state_values, rollout

    env = VecEnv(register_env(PhysicsEnv(Falling(), "falling", max_steps=4)), 64)
    obs, env_state = env.reset(jax.random.PRNGKey(0))
    value_fn = lambda o: jnp.sin(3.0 * o[..., 0]) + 0.1 * o[..., 0] ** 2  # noqa: E731
    policy_fn = lambda o: DiagGaussian(jnp.zeros((o.shape[0], 1)), jnp.full((1,), -0.5))  # noqa: E731
    seen = {"terminated": 0, "truncated": 0}
    for i in range(3):  # later rollouts start mid-episode
        env_state, obs, traj = rollout(policy_fn, env, env_state, obs, jax.random.PRNGKey(i + 1), 4)
        values = value_fn(traj.obs)
        full = value_fn(traj.next_obs)
        one = next_state_values(value_fn, traj, values, obs, one_cut_per_env=True)
        read = ~np.asarray(traj.terminated)  # GAE multiplies a terminated step's bootstrap by 0
        np.testing.assert_array_equal(np.asarray(one)[read], np.asarray(full)[read])
        np.testing.assert_array_equal(next_state_values(value_fn, traj, values, obs, one_cut_per_env=False), full)
        args = (traj.reward, values)
        flags = (traj.terminated, traj.truncated, 0.99, 0.95)
        np.testing.assert_array_equal(gae.gae(*args, one, *flags), gae.gae(*args, full, *flags))
        seen["terminated"] += int(traj.terminated.sum())
        seen["truncated"] += int(traj.truncated.sum())
    assert seen["terminated"] > 10 and seen["truncated"] > 10, seen
