"""GAE (docs/theory.md §4): golden values, the three forms' equivalence, special cases, truncation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppo_jax import gae as G

pytestmark = pytest.mark.timeout(120)

FORMS = {"C (scan)": G.gae, "A (direct sum)": G.gae_direct_sum, "B (lambda-return)": G.gae_lambda_return}

JITTED = {name: jax.jit(fn) for name, fn in FORMS.items()}


def numpy_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    """Plain-loop reference of the TD error with termination masking (no JAX)."""
    T = len(rewards)
    adv = np.zeros_like(rewards, dtype=np.float64)
    nxt = np.zeros_like(rewards[0], dtype=np.float64)
    for t in reversed(range(T)):
        delta = rewards[t] + gamma * (1 - terminated[t]) * next_values[t] - values[t]
        nxt = delta + gamma * lam * (1 - np.maximum(terminated[t], truncated[t])) * nxt
        adv[t] = nxt
    return adv


@pytest.mark.parametrize("form", FORMS)
def test_golden_listing1(form):
    rewards = jnp.array([1.0, 0.5, 2.0, -1.0, 0.0])
    values = jnp.array([10.0, 9.5, 9.0, 8.0, 7.5, 0.0])
    none = jnp.zeros(5, bool)
    adv = FORMS[form](rewards, values[:-1], values[1:], none, none, 0.99, 0.95)
    np.testing.assert_allclose(adv, [-6.04421229, -6.85721668, -7.19533937, -8.62875, -7.5], rtol=1e-6, atol=1e-5)
    returns = G.value_targets(adv, values[:-1])
    np.testing.assert_allclose(returns, [3.95578771, 2.64278332, 1.80466063, -0.62875, 0.0], atol=1e-5)


@st.composite
def trajectories(draw):
    T = draw(st.sampled_from([1, 2, 9, 24]))  # few shapes: each one compiles
    N = draw(st.sampled_from([1, 3]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(T, N)).astype(np.float32)
    values = rng.normal(size=(T, N)).astype(np.float32)
    terminated = rng.random((T, N)) < draw(st.floats(0, 0.4))
    truncated = rng.random((T, N)) < draw(st.floats(0, 0.4))
    # A consistent rollout: inside an episode the next state's value is V(s_{t+1});
    # at an episode end (and after the last step) it is V(final_observation), anything.
    final_values = rng.normal(size=(T, N)).astype(np.float32)
    shifted = np.concatenate([values[1:], final_values[-1:]], axis=0)
    next_values = np.where(terminated | truncated, final_values, shifted)
    gamma = draw(st.floats(0.0, 1.0))
    lam = draw(st.floats(0.0, 1.0))
    return rewards, values, next_values, terminated, truncated, gamma, lam


@settings(max_examples=60, deadline=None)
@given(trajectories())
def test_three_forms_agree_with_episode_ends(data):
    """docs/theory.md §4: forms A, B and C agree, episode ends included."""
    rewards, values, next_values, term, trunc, gamma, lam = data
    ref = numpy_gae(rewards.astype(np.float64), values, next_values, term, trunc, gamma, lam)
    for name, fn in JITTED.items():
        out = np.asarray(fn(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(next_values),
                            jnp.asarray(term), jnp.asarray(trunc), gamma, lam))
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4, err_msg=name)


def test_lambda_zero_is_td_error():
    rng = np.random.default_rng(0)
    r, v, nv = (jnp.asarray(rng.normal(size=(12, 2)), jnp.float32) for _ in range(3))
    term = jnp.asarray(rng.random((12, 2)) < 0.2)
    trunc = jnp.asarray(rng.random((12, 2)) < 0.2)
    expected = r + 0.9 * (1 - term) * nv - v
    for fn in FORMS.values():
        np.testing.assert_allclose(fn(r, v, nv, term, trunc, 0.9, 0.0), expected, rtol=1e-5, atol=1e-5)


def test_lambda_one_is_monte_carlo_advantage():
    """docs/theory.md §4: with lambda = 1 and a terminated episode, A_t = R_t - V(s_t)."""
    rng = np.random.default_rng(1)
    T = 15
    r = jnp.asarray(rng.normal(size=T), jnp.float32)
    values = jnp.asarray(rng.normal(size=T + 1), jnp.float32)
    term = jnp.zeros(T, bool).at[T - 1].set(True)
    trunc = jnp.zeros(T, bool)
    mc = G.reward_to_go(r, term, 0.97)
    expected = np.array([sum(0.97 ** (k - t) * float(r[k]) for k in range(t, T)) for t in range(T)])
    np.testing.assert_allclose(mc, expected, rtol=1e-5, atol=1e-5)
    for fn in FORMS.values():
        adv = fn(r, values[:-1], values[1:], term, trunc, 0.97, 1.0)
        np.testing.assert_allclose(adv, mc - values[:-1], rtol=1e-4, atol=1e-4)


def test_hand_worked_truncation_bootstraps_from_final_observation():
    """Truncation at t=1: bootstrap from V(final_observation) = 5, don't carry A_2 back."""
    r = jnp.array([1.0, 1.0, 1.0])
    v = jnp.array([2.0, 3.0, 4.0])
    nv = jnp.array([3.0, 5.0, 6.0])  # V(s_1), V(final_obs of episode 1), V(s_3)
    term = jnp.array([False, False, False])
    trunc = jnp.array([False, True, False])
    g, lam = 0.5, 0.5
    a2 = 1 + g * 6 - 4  # 0
    a1 = 1 + g * 5 - 3  # 0.5, no recursion past the truncation
    a0 = (1 + g * 3 - 2) + g * lam * a1  # 0.5 + 0.125
    for fn in FORMS.values():
        np.testing.assert_allclose(fn(r, v, nv, term, trunc, g, lam), [a0, a1, a2], atol=1e-6)


def test_hand_worked_termination_bootstraps_zero():
    r = jnp.array([1.0, 1.0, 1.0])
    v = jnp.array([2.0, 3.0, 4.0])
    nv = jnp.array([3.0, 5.0, 6.0])
    term = jnp.array([False, True, False])
    trunc = jnp.array([False, False, False])
    g, lam = 0.5, 0.5
    a2 = 1 + g * 6 - 4
    a1 = 1 - 3  # terminal: V(s') = 0
    a0 = (1 + g * 3 - 2) + g * lam * a1
    for fn in FORMS.values():
        np.testing.assert_allclose(fn(r, v, nv, term, trunc, g, lam), [a0, a1, a2], atol=1e-6)


def test_terminated_and_truncated_counts_as_terminated():
    r, v, nv = jnp.array([1.0]), jnp.array([0.5]), jnp.array([10.0])
    both = G.gae(r, v, nv, jnp.array([True]), jnp.array([True]), 0.9, 0.9)
    np.testing.assert_allclose(both, [0.5])


def test_reward_to_go_restarts_after_episode_end():
    r = jnp.array([1.0, 2.0, 3.0, 4.0])
    done = jnp.array([False, True, False, False])
    np.testing.assert_allclose(G.reward_to_go(r, done, 0.5), [2.0, 2.0, 5.0, 4.0])


def test_value_targets_are_advantages_plus_values():
    np.testing.assert_allclose(G.value_targets(jnp.array([1.0, -2.0]), jnp.array([0.5, 0.5])), [1.5, -1.5])


def test_mismatched_shapes_are_rejected():
    with pytest.raises(AssertionError):
        G.gae(jnp.zeros((5, 2)), jnp.zeros((6, 2)), jnp.zeros((5, 2)), jnp.zeros((5, 2)), jnp.zeros((5, 2)), 0.9, 0.9)
