"""GRPO and RLOO advantages against numpy, equal rewards give zero, and RLOO's policy gradient
is unbiased on a bandit (exact expectation over every group of samples)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.group_advantages import group_advantages, to_tokens

pytestmark = pytest.mark.timeout(120)


def test_advantages_match_numpy_and_an_equal_group_gives_zero():
    rewards = np.array([1.0, 0.0, 0.5, 2.0,   3.0, 3.0, 3.0, 3.0,   -1.0, 4.0, 0.0, 0.0], np.float32)
    g = rewards.reshape(3, 4)
    mean = g.mean(axis=1, keepdims=True)
    loo = np.array([[(row.sum() - x) / 3 for x in row] for row in g])
    want = {"grpo": (g - mean) / (g.std(axis=1, ddof=1, keepdims=True) + 1e-4),
            "grpo-unscaled": g - mean,
            "rloo": g - loo}
    for estimator, expected in want.items():
        got = np.asarray(group_advantages(jnp.asarray(rewards), 4, estimator)).reshape(3, 4)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=estimator)
        assert np.all(np.isfinite(got)) and np.all(got[1] == 0.0), estimator
    mask = jnp.asarray([[1, 1, 0]] * 12)
    tokens = to_tokens(group_advantages(jnp.asarray(rewards), 4, "rloo"), mask)
    assert tokens.shape == (12, 3) and np.all(np.asarray(tokens)[:, 2] == 0.0)


def test_rloo_policy_gradient_is_unbiased_on_a_bandit():
    theta = jnp.asarray([0.3, -0.5, 0.1])
    reward = np.array([1.0, 0.2, -0.7])
    probs = np.asarray(jax.nn.softmax(theta), np.float64)
    grad_log = lambda a: np.asarray(jax.grad(lambda t: jax.nn.log_softmax(t)[a])(theta), np.float64)  # noqa: E731
    exact = sum(probs[a] * reward[a] * grad_log(a) for a in range(3))
    group = 3
    expected = {"rloo": np.zeros(3), "grpo-unscaled": np.zeros(3)}
    for actions in itertools.product(range(3), repeat=group):  # every group of samples, with its probability
        p = np.prod(probs[list(actions)])
        for estimator in expected:
            adv = np.asarray(group_advantages(jnp.asarray(reward[list(actions)]), group, estimator), np.float64)
            expected[estimator] += p * np.mean([adv[i] * grad_log(a) for i, a in enumerate(actions)], axis=0)
    np.testing.assert_allclose(expected["rloo"], exact, rtol=1e-5, atol=1e-7)
    # Centring on the group's own mean includes r_i in its baseline: the gradient shrinks by (G-1)/G.
    np.testing.assert_allclose(expected["grpo-unscaled"], exact * (group - 1) / group, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kwargs,message", [
    ({"group_size": 1}, "group_size: must be at least 2"),
    ({"group_size": 5}, "group_size: 5 does not divide the 12 responses"),
    ({"group_size": 4, "estimator": "ppo"}, "estimator: must be one of grpo, grpo-unscaled, rloo"),
])
def test_bad_groups_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        group_advantages(jnp.zeros(12), **kwargs)
