"""Seeds vmapped in independent groups: the same runs as one vmap, one group per core."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppo_jax import PPOConfig, make_train
from ppo_jax.seed_groups import default_groups, vmap_seeds

pytestmark = pytest.mark.timeout(240)

SMALL = PPOConfig(num_envs=4, num_steps=32, total_timesteps=4 * 32 * 6, update_epochs=2, num_minibatches=2)


def test_groups_compute_what_one_vmap_computes():
    def fn(x, y):
        return {"sum": x.sum() * y, "rows": jnp.tanh(x) + y}

    x = jax.random.normal(jax.random.PRNGKey(0), (6, 5))
    y = jnp.arange(6.0)
    expected = jax.vmap(fn)(x, y)
    for groups in (1, 2, 3, 6):
        got = jax.jit(vmap_seeds(fn, groups))(x, y)
        for k in expected:
            np.testing.assert_array_equal(got[k], expected[k])


def test_training_in_groups_matches_one_vmap_and_repeats_exactly():
    train = make_train(SMALL)
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    plain = jax.jit(jax.vmap(train))(keys)
    grouped = jax.jit(vmap_seeds(train, 2))
    a, b = grouped(keys), grouped(keys)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)  # same command, same numbers
    # A vmapped op's batch size changes its float32 rounding, nothing else: each seed is the same run.
    for x, y in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(plain.state.params)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.metrics["episode_return"], plain.metrics["episode_return"], rtol=1e-4)
    p = jax.tree.leaves(a.state.params)[0]
    assert not np.allclose(p[0], p[2])  # the groups hold different seeds, not copies of one


def test_groups_must_divide_the_seeds():
    with pytest.raises(ValueError, match="groups: 3 groups do not divide 4 seeds"):
        vmap_seeds(lambda x: x * 2, 3)(jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="groups: must be >= 1"):
        vmap_seeds(lambda x: x, 0)


def test_default_groups_one_per_core_that_divides_the_seeds(monkeypatch):
    monkeypatch.delenv("PPO_JAX_SEED_GROUPS", raising=False)
    assert default_groups(8, cores=2) == 2
    assert default_groups(3, cores=2) == 1
    assert default_groups(1, cores=2) == 1
    assert default_groups(12, cores=8) == 6
    monkeypatch.setenv("PPO_JAX_SEED_GROUPS", "1")
    assert default_groups(8, cores=2) == 1
    monkeypatch.setenv("PPO_JAX_SEED_GROUPS", "3")
    with pytest.raises(ValueError, match="PPO_JAX_SEED_GROUPS: must be a divisor of --num-seeds 8"):
        default_groups(8, cores=2)


@pytest.mark.timeout(240)
def test_eight_seeds_by_64_envs_in_two_groups_do_not_hang():
    """The default multi-seed program of one process on 2 cores, on the shape that deadlocked
    XLA:CPU's concurrent scheduler: two independent groups run side by side here."""
    cfg = PPOConfig(num_envs=64, num_steps=16, total_timesteps=64 * 16 * 3, update_epochs=1, num_minibatches=4)
    out = jax.jit(vmap_seeds(make_train(cfg), 2))(jax.random.split(jax.random.PRNGKey(0), 8))
    assert out.metrics["total_loss"].shape == (8, 3)
    assert np.all(np.isfinite(out.metrics["total_loss"]))
