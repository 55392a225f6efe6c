"""The VecEnv wrappers: truncation's final observation, raw episode statistics, normalisers, clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppo_jax.envs import RunningStats, VecEnv, env_spec, normalize_obs, validate_env_id

pytestmark = pytest.mark.timeout(180)


def run_steps(env, n, action_fn, key=jax.random.PRNGKey(0)):
    obs, state = env.reset(key)

    def step(carry, k):
        obs, state = carry
        nobs, state, reward, term, trunc, info = env.step(k, state, action_fn(obs))
        return (nobs, state), (obs, nobs, reward, term, trunc, info)

    (_, state), out = jax.lax.scan(step, (obs, state), jax.random.split(key, n))
    return state, out


def test_truncation_reports_final_observation_not_reset():
    """Pendulum always truncates at 200 steps; its final observation is the pre-reset state."""
    env = VecEnv("Pendulum-v1", 3)
    _, (obs, nobs, reward, term, trunc, info) = jax.jit(
        lambda: run_steps(env, 201, lambda o: jnp.zeros((3, 1))))()
    trunc, term = np.asarray(trunc), np.asarray(term)
    assert not term.any()
    assert trunc[199].all() and not trunc[:199].any() and not trunc[200].any()
    final = np.asarray(info["final_observation"][199])
    reset = np.asarray(nobs[199])
    assert not np.allclose(final, reset)
    # Elsewhere the final observation is the next observation.
    np.testing.assert_allclose(info["final_observation"][10], nobs[10])
    # Pendulum's observation is (cos, sin, velocity): both lie on the unit circle.
    np.testing.assert_allclose(final[:, 0] ** 2 + final[:, 1] ** 2, 1.0, rtol=1e-5)


def test_episode_statistics_use_raw_rewards_and_finished_episodes_only():
    env = VecEnv("Pendulum-v1", 2, normalize_rewards=True, normalize_observations=True)
    _, (_, _, reward, term, trunc, info) = jax.jit(lambda: run_steps(env, 400, lambda o: jnp.ones((2, 1))))()
    raw = np.asarray(info["raw_reward"])
    done = np.asarray(info["episode_done"])
    assert done.sum() == 4  # two episodes per env in 400 steps
    ep_returns = np.asarray(info["episode_return"])[done]
    np.testing.assert_allclose(sorted(ep_returns), sorted([raw[:200, 0].sum(), raw[:200, 1].sum(),
                                                           raw[200:, 0].sum(), raw[200:, 1].sum()]), rtol=1e-5)
    assert np.all(np.asarray(info["episode_length"])[done] == 200)
    # The reward the agent sees was scaled; the statistics were not.
    assert not np.allclose(np.asarray(reward), raw)


def test_running_stats_match_numpy_over_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=3.0, scale=2.0, size=(n, 4)).astype(np.float32) for n in (5, 17, 64)]
    stats = RunningStats.create((4,))
    for b in batches:
        stats = stats.update(jnp.asarray(b))
    allx = np.concatenate(batches)
    np.testing.assert_allclose(stats.mean, allx.mean(0), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(stats.var, allx.var(0), rtol=1e-3)
    z = normalize_obs(jnp.full((1, 4), 1e6), stats)
    assert float(z.max()) == 10.0  # clipped


def test_reward_scaling_divides_by_std_of_discounted_return():
    """A numpy reference of reward scaling: no mean subtraction, training gamma, reset at episode ends."""
    gamma = 0.9
    env = VecEnv("Pendulum-v1", 2, normalize_rewards=True, gamma=gamma)
    _, (_, _, reward, term, trunc, info) = jax.jit(lambda: run_steps(env, 250, lambda o: jnp.ones((2, 1))))()
    raw, done = np.asarray(info["raw_reward"], np.float64), np.asarray(info["episode_done"])
    ret = np.zeros(2)
    seen = []
    expected = np.zeros_like(raw)
    for t in range(raw.shape[0]):
        ret = ret * gamma + raw[t]
        seen.append(ret.copy())
        allr = np.concatenate(seen)
        # Prior of the running statistics: count 1e-4 at mean 0, var 1.
        n0 = 1e-4
        n = allr.size
        m2 = n0 * 1.0 + ((allr - allr.mean()) ** 2).sum() + n0 * n / (n0 + n) * allr.mean() ** 2
        var = m2 / (n0 + n)
        expected[t] = raw[t] / np.sqrt(var + 1e-8)
        ret = np.where(done[t], 0.0, ret)
    np.testing.assert_allclose(np.asarray(reward), expected, rtol=2e-3)


def test_actions_are_clipped_for_the_env_only():
    env = VecEnv("Pendulum-v1", 2)
    clipped = env.env_action(jnp.array([[5.0], [-0.5]]))
    np.testing.assert_allclose(clipped, [[2.0], [-0.5]])
    spec = env_spec("Pendulum-v1")
    assert spec.continuous and spec.action_dim == 1 and spec.action_high[0] == 2.0


def test_minatar_observations_are_flattened():
    spec = env_spec("Breakout-MinAtar")
    env = VecEnv("Breakout-MinAtar", 2)
    obs, _ = env.reset(jax.random.PRNGKey(0))
    assert obs.shape == (2, spec.obs_dim) and spec.obs_dim == 10 * 10 * 4


def test_unknown_env_lists_valid_ids():
    with pytest.raises(ValueError, match=r"env: unknown environment id 'CartPole-v2'.*CartPole-v1"):
        validate_env_id("CartPole-v2")


def test_restart_begins_fresh_episodes_and_keeps_the_normaliser_statistics():
    env = VecEnv("CartPole-v1", 3, normalize_observations=True, normalize_rewards=True)
    state, _ = jax.jit(lambda: run_steps(env, 40, lambda o: jnp.zeros((3,), jnp.int32)))()
    obs, fresh = jax.jit(env.restart)(jax.random.PRNGKey(5), state)
    np.testing.assert_array_equal(fresh.episode_length, 0)
    np.testing.assert_array_equal(fresh.episode_return, 0.0)
    np.testing.assert_array_equal(fresh.discounted_return, 0.0)
    np.testing.assert_array_equal(fresh.env_state.time, 0)
    # The running statistics go on (with the new observations merged in), not from scratch.
    assert float(fresh.obs_stats.count) == float(state.obs_stats.count) + 3
    assert float(fresh.return_stats.count) == float(state.return_stats.count)
    raw = jnp.stack([fresh.env_state.x, fresh.env_state.x_dot, fresh.env_state.theta, fresh.env_state.theta_dot], 1)
    np.testing.assert_allclose(obs, normalize_obs(raw, fresh.obs_stats), rtol=1e-6)


def test_importing_the_environments_leaves_seaborn_unloaded():
    import subprocess
    import sys

    code = ("import sys; from ppo_jax import envs; envs.available_envs(); import gymnax; "
            "print('seaborn' in sys.modules); "
            "env, params = gymnax.make('Pong-misc'); import gymnax.environments.misc.pong as pong; "
            "print(callable(pong.sns.color_palette))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]  # not loaded at import; still there for gymnax's rendering
