"""Learning regressions with fixed seeds on CPU (marked slow; still in the default suite)."""

import jax
import numpy as np
import pytest

from ppo_jax import make_train, preset
from ppo_jax.envs import env_spec
from ppo_jax.evaluate import make_evaluate
from ppo_jax.train import init_params, make_network

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def evaluate_seeds(config, state, keys, deterministic=True, episodes=16):
    evaluate = jax.jit(jax.vmap(make_evaluate(config, num_episodes=episodes, deterministic=deterministic)))
    return np.asarray(evaluate(state.params, state.env_state.obs_stats, keys)).mean(axis=1)


def test_cartpole_four_seeds_solve_within_5e5_steps():
    config = preset("CartPole-v1")
    assert config.total_timesteps <= 500_000
    keys = jax.random.split(jax.random.PRNGKey(42), 4)
    out = jax.jit(jax.vmap(make_train(config)))(keys)
    returns = evaluate_seeds(config, out.state, jax.random.split(jax.random.PRNGKey(7), 4))
    assert np.all(returns >= 475), returns


def test_pendulum_improves_clearly_over_random_policy():
    config = preset("Pendulum-v1").replace(total_timesteps=36 * 4096)  # about -135 vs -1150 random
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    out = jax.jit(jax.vmap(make_train(config)))(keys)
    eval_keys = jax.random.split(jax.random.PRNGKey(9), 2)
    trained = evaluate_seeds(config, out.state, eval_keys)
    # The same harness on freshly initialised parameters: the random-policy baseline.
    spec = env_spec(config.env)
    network = make_network(config, spec)
    fresh = jax.vmap(lambda k: init_params(network, spec, k))(keys)
    random_state = out.state.replace(params=fresh)
    baseline = evaluate_seeds(config, random_state, eval_keys, deterministic=False)
    assert np.all(baseline < -900), baseline  # Pendulum's random policy sits near -1200
    assert np.all(trained > baseline + 300), (trained, baseline)


def test_trpo_solves_cartpole_within_5e5_steps():
    config = preset("CartPole-v1", "trpo").replace(total_timesteps=781 * 512)
    keys = jax.random.split(jax.random.PRNGKey(42), 3)
    out = jax.jit(jax.vmap(make_train(config)))(keys)
    returns = evaluate_seeds(config, out.state, jax.random.split(jax.random.PRNGKey(7), 3))
    # Over 16 seeds (split(42, 8) and split(0, 8)): 13 at 475 or more, 14 at 400 or more, the worst
    # 111 (a random policy: 22). A tiny change (the initialiser's rounding) moves one seed from
    # 500 to 111, so the bound is on the best of 3 seeds (all three below 475: about 1 in 150) and
    # on learning at all.
    assert returns.max() >= 475 and returns.min() >= 60, returns
    # Every update's step was accepted inside the trust region.
    assert np.all(np.asarray(out.metrics["kl"]) <= config.trpo_delta + 1e-6)
    assert np.asarray(out.metrics["accepted"]).mean() > 0.9


def test_a2c_solves_cartpole_within_5e5_steps():
    config = preset("CartPole-v1", "a2c").replace(total_timesteps=4687 * 64)  # 8 envs x 8 steps per gradient step
    keys = jax.random.split(jax.random.PRNGKey(42), 2)
    out = jax.jit(jax.vmap(make_train(config)))(keys)
    returns = evaluate_seeds(config, out.state, jax.random.split(jax.random.PRNGKey(7), 2))
    assert np.all(returns >= 400), returns  # 500 on 4 of 4 seeds of split(key, 4) too


def test_reinforce_improves_clearly_over_random():
    config = preset("CartPole-v1", "reinforce").replace(total_timesteps=73 * 2048)  # 73 whole-episode rollouts
    keys = jax.random.split(jax.random.PRNGKey(42), 2)
    out = jax.jit(jax.vmap(make_train(config)))(keys)
    returns = evaluate_seeds(config, out.state, jax.random.split(jax.random.PRNGKey(7), 2))
    # A uniform random policy averages about 22 steps; measured here: 193 and 160 (133 and 128
    # when rollouts continued episodes and long ones gave only their tails).
    assert np.all(returns >= 100), returns
