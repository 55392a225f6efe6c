"""The shared epochs x minibatches loop: coverage of every row each epoch, and the KL-stop mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppo_jax.minibatches import minibatch_epochs

pytestmark = pytest.mark.timeout(120)


def _rows_seen(epochs: int, minibatches: int, rows: int):
    data = {"x": jnp.arange(rows, dtype=jnp.float32), "i": jnp.arange(rows, dtype=jnp.int32)}

    def step(total, mb):
        assert mb["x"].shape == (rows // minibatches,)
        return total + mb["x"].sum(), {"first": mb["i"][0], "sum": mb["x"].sum()}

    return jax.jit(lambda key: minibatch_epochs(step, jnp.float32(0), data, key, epochs=epochs,
                                                minibatches=minibatches))(jax.random.PRNGKey(0))


def test_every_epoch_takes_every_row_once_in_a_fresh_order():
    total, aux = _rows_seen(epochs=3, minibatches=4, rows=32)
    assert float(total) == 3 * sum(range(32))
    assert aux["sum"].shape == (3, 4)
    np.testing.assert_allclose(np.asarray(aux["sum"]).sum(axis=1), sum(range(32)))  # each epoch: all rows
    firsts = np.asarray(aux["first"])
    assert len({tuple(row) for row in firsts}) == 3  # three different orders


def test_rows_beyond_whole_minibatches_are_skipped():
    total, aux = _rows_seen(epochs=2, minibatches=3, rows=10)  # 3 minibatches of 3, one row left out
    assert aux["sum"].shape == (2, 3)
    for epoch_sum in np.asarray(aux["sum"]).sum(axis=1):
        assert sum(range(10)) - 9 <= epoch_sum <= sum(range(10))


def test_a_stop_keeps_the_crossing_step_and_masks_every_later_one():
    data = jnp.ones((8, 1))

    def step(count, mb):
        return count + 1, {"count": (count + 1).astype(jnp.float32)}

    count, aux = jax.jit(lambda key: minibatch_epochs(step, jnp.int32(0), data, key, epochs=2, minibatches=4,
                                                      stop_when=lambda a: a["count"] >= 3))(jax.random.PRNGKey(1))
    assert int(count) == 3  # steps 1-3 applied (the third crossed), the other five masked
    np.testing.assert_array_equal(np.asarray(aux["applied"]), [[1, 1, 1, 0], [0, 0, 0, 0]])
