"""Minibatch plumbing: the epoch's row order and the packed gather."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppo_jax.packing import PACKED_SORT_MAX_ROWS, permute_rows, shuffled_indices

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("n", [1, 2, 7, 512, PACKED_SORT_MAX_ROWS, PACKED_SORT_MAX_ROWS + 3])
def test_shuffled_indices_is_a_permutation(n):
    perms = np.asarray(jax.jit(jax.vmap(lambda k: shuffled_indices(k, n)))(jax.random.split(jax.random.PRNGKey(0), 3)))
    for p in perms:
        np.testing.assert_array_equal(np.sort(p), np.arange(n))
    if n >= 7:
        assert not np.array_equal(perms[0], perms[1])  # other keys, other orders


def test_shuffled_indices_draws_every_order_equally_often():
    draws = 24_000
    perms = np.asarray(jax.jit(jax.vmap(lambda k: shuffled_indices(k, 4)))(
        jax.random.split(jax.random.PRNGKey(1), draws)))
    counts = {order: 0 for order in itertools.permutations(range(4))}
    for p in map(tuple, perms):
        counts[p] += 1
    expected = draws / 24
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 60, chi2  # 23 degrees of freedom: P(chi2 > 60) ~ 4e-5 for a uniform draw
    # Every position is equally likely for a row of a larger batch too.
    keys = jax.random.split(jax.random.PRNGKey(2), 2000)
    big = np.asarray(jax.jit(jax.vmap(lambda k: shuffled_indices(k, 512)))(keys))
    position_of_row_0 = np.argmax(big == 0, axis=1)
    assert abs(position_of_row_0.mean() - 255.5) < 15  # sd of the mean ~ 148 / sqrt(2000) = 3.3


def test_permute_rows_reorders_every_leaf_alike():
    tree = {"a": jnp.arange(10.0), "b": jnp.arange(20).reshape(10, 2), "c": jnp.arange(10.0)[:, None] * 2}
    perm = shuffled_indices(jax.random.PRNGKey(3), 10)
    out = permute_rows(tree, perm)
    for k in tree:
        np.testing.assert_array_equal(out[k], np.asarray(tree[k])[np.asarray(perm)])
