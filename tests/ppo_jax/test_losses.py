"""Losses (docs/theory.md §6-§9): the clip's cap and floor, the surrogate's gradient at theta_old, clipping
gradients, value clipping, diagnostics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppo_jax import losses as L
from ppo_jax.distributions import Categorical, DiagGaussian

pytestmark = pytest.mark.timeout(120)


def per_sample_clip_objective(ratio, adv, eps):
    return -L.clipped_surrogate_loss(jnp.atleast_1d(ratio), jnp.atleast_1d(adv), eps)


def test_clip_caps_the_ratio_for_a_positive_advantage():
    eps = 0.2
    for r in np.linspace(0.0, 3.0, 31):
        for a in (0.5, 2.0):
            np.testing.assert_allclose(per_sample_clip_objective(r, a, eps), min(r, 1 + eps) * a, rtol=1e-6)


def test_clip_floors_the_ratio_for_a_negative_advantage():
    eps = 0.2
    for r in np.linspace(0.0, 3.0, 31):
        for a in (-0.5, -2.0):
            np.testing.assert_allclose(per_sample_clip_objective(r, a, eps), max(r, 1 - eps) * a, rtol=1e-6)


def _policy_logp(theta, states, actions):
    logits = states @ theta
    return Categorical(logits).log_prob(actions)


def test_surrogate_gradient_is_the_policy_gradient_at_theta_old():
    key = jax.random.PRNGKey(0)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    theta = jax.random.normal(k1, (5, 3))
    states = jax.random.normal(k2, (64, 5))
    actions = jax.random.randint(k3, (64,), 0, 3)
    adv = jax.random.normal(k4, (64,))
    logp_old = jax.lax.stop_gradient(_policy_logp(theta, states, actions))

    def clip_objective(th):
        ratio = L.importance_ratio(_policy_logp(th, states, actions), logp_old)
        return -L.clipped_surrogate_loss(ratio, adv, 0.2)

    def pg_objective(th):
        return jnp.mean(_policy_logp(th, states, actions) * adv)

    np.testing.assert_allclose(jax.grad(clip_objective)(theta), jax.grad(pg_objective)(theta), rtol=1e-5, atol=1e-6)


def test_zero_gradient_where_clip_is_active():
    eps = 0.2
    logp_old = jnp.log(jnp.array([0.2, 0.5]))
    # ratio 1.5 > 1 + eps with A > 0, and ratio 0.5 < 1 - eps with A < 0: both clipped.
    logp_new = logp_old + jnp.log(jnp.array([1.5, 0.5]))
    adv = jnp.array([1.0, -1.0])
    g = jax.grad(lambda lp: L.clipped_surrogate_loss(L.importance_ratio(lp, logp_old), adv, eps))(logp_new)
    np.testing.assert_array_equal(g, [0.0, 0.0])
    # Inside the region, or clipped on the other side, the gradient is not zero.
    adv_other = jnp.array([-1.0, 1.0])
    g = jax.grad(lambda lp: L.clipped_surrogate_loss(L.importance_ratio(lp, logp_old), adv_other, eps))(logp_new)
    assert np.all(np.abs(g) > 0)


def test_value_loss_plain_and_clipped():
    v = jnp.array([1.0, 3.0, -1.0])
    v_old = jnp.array([0.0, 2.0, 0.0])
    target = jnp.array([2.0, 0.0, -3.0])
    np.testing.assert_allclose(L.value_loss(v, target), np.mean((np.array(v) - np.array(target)) ** 2), rtol=1e-6)
    eps = 0.5
    v_clip = np.array(v_old) + np.clip(np.array(v) - np.array(v_old), -eps, eps)
    expected = np.mean(np.maximum((np.array(v) - np.array(target)) ** 2, (v_clip - np.array(target)) ** 2))
    np.testing.assert_allclose(L.value_loss(v, target, v_old, eps), expected, rtol=1e-6)
    # eps = 0 switches clipping off.
    np.testing.assert_allclose(L.value_loss(v, target, v_old, 0.0), L.value_loss(v, target))


def test_total_loss_combines_policy_value_and_entropy():
    np.testing.assert_allclose(L.total_loss(1.0, 2.0, 3.0, 0.5, 0.01), 1.0 + 1.0 - 0.03)


def test_normalize_advantages_to_mean_zero_std_one():
    a = jnp.array([1.0, 2.0, 3.0, 10.0])
    n = L.normalize_advantages(a)
    np.testing.assert_allclose(n, (np.array(a) - 4.0) / (np.std(np.array(a)) + 1e-8), rtol=1e-6)
    mask = jnp.array([1, 1, 1, 0])
    m = L.normalize_advantages(a, mask=mask)
    ref = (np.array([1.0, 2.0, 3.0]) - 2.0) / (np.std([1.0, 2.0, 3.0]) + 1e-8)
    np.testing.assert_allclose(m, list(ref) + [0.0], rtol=1e-6, atol=1e-7)


def test_kl_estimators_match_exact_kl():
    old = Categorical(jnp.array([0.3, -0.2, 1.0]))
    new = Categorical(jnp.array([0.1, 0.4, 0.6]))
    actions = jax.random.categorical(jax.random.PRNGKey(1), old.logits, shape=(200_000,))
    lp_old, lp_new = old.log_prob(actions), new.log_prob(actions)
    exact = float(old.kl(new))
    # 200k samples: the standard error of either estimator is below 0.002 here.
    assert abs(float(L.approx_kl_k1(lp_new, lp_old)) - exact) < 0.006
    assert abs(float(L.approx_kl_k3(lp_new, lp_old)) - exact) < 0.006
    # k3 is non-negative sample by sample.
    assert float(L.approx_kl_k3(lp_new[:1], lp_old[:1])) >= 0
    np.testing.assert_allclose(exact, np.sum(jax.nn.softmax(old.logits) * (jax.nn.log_softmax(old.logits)
                                                                          - jax.nn.log_softmax(new.logits))), rtol=1e-6)


def test_clip_fraction_and_explained_variance():
    r = jnp.array([0.7, 0.9, 1.0, 1.1, 1.3])
    np.testing.assert_allclose(L.clip_fraction(r, 0.2), 0.4)
    t = jnp.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(L.explained_variance(t, t), 1.0)
    np.testing.assert_allclose(L.explained_variance(jnp.full(4, 2.5), t), 0.0, atol=1e-6)
    assert np.isnan(L.explained_variance(t, jnp.ones(4)))
    # With a mask, only the masked-in entries count (token-level RLHF values).
    pred, targ = jnp.array([[0.5, 2.0, 9.0], [3.5, -7.0, 1.0]]), jnp.array([[1.0, 2.5, 0.0], [3.0, 5.0, 0.0]])
    mask = jnp.array([[1, 1, 0], [1, 0, 0]])
    live = np.asarray(mask, bool)
    p_, t_ = np.asarray(pred)[live], np.asarray(targ)[live]
    np.testing.assert_allclose(L.explained_variance(pred, targ, mask), 1 - np.var(t_ - p_) / np.var(t_), rtol=1e-6)


def test_gaussian_log_prob_entropy_kl_against_numpy():
    mean, log_std = jnp.array([[0.5, -1.0]]), jnp.array([0.1, -0.3])
    d = DiagGaussian(mean, log_std)
    a = jnp.array([[0.2, 0.3]])
    std = np.exp(np.array(log_std))
    ref = np.sum(-0.5 * ((np.array(a) - np.array(mean)) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi))
    np.testing.assert_allclose(d.log_prob(a), [ref], rtol=1e-6)
    np.testing.assert_allclose(d.entropy(), [np.sum(0.5 * np.log(2 * np.pi * np.e * std**2))], rtol=1e-6)
    np.testing.assert_allclose(d.kl(d), [0.0], atol=1e-7)
    samples = DiagGaussian(jnp.broadcast_to(mean, (100_000, 2)), log_std).sample(jax.random.PRNGKey(0))
    other = DiagGaussian(jnp.array([0.0, 0.0]), jnp.array([0.0, 0.0]))
    mc = float(jnp.mean(d.log_prob(samples) - other.log_prob(samples)))
    assert abs(mc - float(DiagGaussian(mean[0], log_std).kl(other))) < 0.02


def test_categorical_entropy_and_mode():
    c = Categorical(jnp.log(jnp.array([0.25, 0.25, 0.5])))
    np.testing.assert_allclose(c.entropy(), -(2 * 0.25 * np.log(0.25) + 0.5 * np.log(0.5)), rtol=1e-6)
    assert int(c.mode()) == 2


def test_masked_means_ignore_masked_entries():
    """With a mask, every loss term equals the unmasked term on the kept entries alone."""
    from ppo_jax.losses import (
        approx_kl_k1,
        approx_kl_k3,
        clip_fraction,
        clipped_surrogate_loss,
        entropy_bonus,
        masked_mean,
        value_loss,
    )

    key = jax.random.PRNGKey(0)
    ratio = jnp.exp(0.3 * jax.random.normal(key, (3, 5)))
    adv = jax.random.normal(jax.random.PRNGKey(1), (3, 5))
    mask = jnp.array([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 1]])
    kept = mask.astype(bool)
    assert float(masked_mean(jnp.ones((2, 2)), jnp.zeros((2, 2)))) == 0.0
    np.testing.assert_allclose(clipped_surrogate_loss(ratio, adv, 0.2, mask),
                               clipped_surrogate_loss(ratio[kept], adv[kept], 0.2), rtol=1e-6)
    np.testing.assert_allclose(value_loss(ratio, adv, adv * 0.5, 0.1, mask),
                               value_loss(ratio[kept], adv[kept], adv[kept] * 0.5, 0.1), rtol=1e-6)
    np.testing.assert_allclose(entropy_bonus(adv, mask), jnp.mean(adv[kept]), rtol=1e-6)
    logp, old = jnp.log(ratio), jnp.zeros_like(ratio)
    np.testing.assert_allclose(approx_kl_k1(logp, old, mask), approx_kl_k1(logp[kept], old[kept]), rtol=1e-6)
    np.testing.assert_allclose(approx_kl_k3(logp, old, mask), approx_kl_k3(logp[kept], old[kept]), rtol=1e-6)
    np.testing.assert_allclose(clip_fraction(ratio, 0.2, mask), clip_fraction(ratio[kept], 0.2), rtol=1e-6)
