"""The supervised loop's pieces and the one gradient step every supervised and RLHF update uses."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ppo_jax.optim import gradient_step
from rlhf_jax.supervised import epoch_batches, fit, holdout_split, sampled_batches
from rlhf_jax.updates import UPDATES

pytestmark = pytest.mark.timeout(120)


def test_gradient_step_is_value_and_grad_then_one_optimiser_step():
    tx = optax.adam(0.1)
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
    x = jnp.array([[1.0, 2.0], [3.0, -1.0]])

    def loss(p, x):
        return jnp.mean((x @ p["w"] + p["b"]) ** 2)

    new, state, value, aux = gradient_step(loss, tx)(params, tx.init(params), x)
    grads = jax.grad(loss)(params, x)
    updates, want_state = tx.update(grads, tx.init(params), params)
    jax.tree.map(np.testing.assert_allclose, new, optax.apply_updates(params, updates))
    jax.tree.map(np.testing.assert_allclose, state, want_state)
    assert aux is None and np.isclose(value, loss(params, x))
    _, _, _, aux = gradient_step(lambda p, x: (loss(p, x), {"n": x.shape[0]}), tx, has_aux=True)(
        params, tx.init(params), x)
    assert aux == {"n": 2}


def test_holdout_split_partitions_the_rows_and_keeps_at_least_one_when_asked():
    _, held, train = holdout_split(50, 0.1, 3, at_least_one=False)
    assert len(held) == 5 and sorted([*held, *train]) == list(range(50))
    _, held, _ = holdout_split(4, 0.1, 3, at_least_one=True)
    assert len(held) == 1
    _, held, _ = holdout_split(4, 0.1, 3, at_least_one=False)
    assert len(held) == 0


def test_epoch_batches_visit_each_row_at_most_once_per_epoch_in_a_new_order():
    rows = np.arange(10, 33)  # 23 rows: 5 batches of 4 per epoch, 3 rows left out each time
    batches = list(epoch_batches(np.random.default_rng(0), rows, 4, 2))
    assert len(batches) == 10
    for epoch in (batches[:5], batches[5:]):
        seen = np.concatenate(epoch)
        assert len(set(seen)) == 20 and set(seen) <= set(rows)
    assert not np.array_equal(np.concatenate(batches[:5]), np.concatenate(batches[5:]))
    drawn = list(sampled_batches(np.random.default_rng(0), 7, 5, 3))
    assert len(drawn) == 3 and all(b.shape == (5,) and b.max() < 7 for b in drawn)


def test_fit_evaluates_where_asked_with_the_steps_since_the_last_evaluation():
    def step(params, opt_state, x):
        return params + x, opt_state, params + x, {"accuracy": 1.0}

    seen = []
    params, losses, history = fit(step, 0.0, None, [(1.0,), (2.0,), (3.0,), (4.0,)], 4,
                                  evaluate_at=lambda s: s % 2 == 0,
                                  evaluate=lambda s, p, losses, auxes: {"step": s, "p": p, "n": len(losses)},
                                  progress=lambda s, n, loss: seen.append((s, n, loss)))
    assert params == 10.0 and losses == [1.0, 3.0, 6.0, 10.0]
    assert history == [{"step": 2, "p": 3.0, "n": 2}, {"step": 4, "p": 10.0, "n": 2}]
    assert seen[-1] == (4, 4, 10.0)


def test_every_rlhf_algorithm_has_an_update_rule():
    from rlhf_jax.ppo_trainer import ALGOS, RLHFConfig

    assert set(ALGOS) == set(UPDATES) == {"ppo", "grpo", "rloo"}
    with pytest.raises(ValueError, match="algo"):
        RLHFConfig(algo="nope").validate()
