"""The GRPO family's options of one update (docs/theory.md §12) against hand computations on a
small batch: DAPO's clip-higher and soft over-length penalty, GSPO's sequence-level ratio,
CISPO's clipped stop-gradient weight, each loss value and its gradient in closed form."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppo_jax import losses
from rlhf_jax.ppo import cispo_loss, clipped_policy_terms, loss_weights, sequence_ratio
from rlhf_jax.updates import soft_overlong_penalty

pytestmark = pytest.mark.timeout(120)

# Two groups of two responses, N = 4 positions; lengths 4, 2, 3, 1.
MASK = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]], np.float32)
OLD = np.array([[-1.0, -0.5, -2.0, -0.1], [-0.3, -1.2, -9.0, -9.0], [-0.7, -0.2, -1.5, -9.0],
                [-2.5, -9.0, -9.0, -9.0]], np.float32)
# New log-probs: ratios well inside, above 1.3 and below 0.8 at various tokens.
SHIFT = np.array([[0.05, 0.4, -0.3, 0.0], [0.3, -0.1, 0.0, 0.0], [-0.25, 0.1, 0.5, 0.0], [0.2, 0.0, 0.0, 0.0]],
                 np.float32)
NEW = OLD + SHIFT
ADV = np.array([1.0, -1.0, 0.5, -0.5], np.float32)


def _hand_clip_loss(ratio, adv, low, high, weights):
    total = 0.0
    for i in range(ratio.shape[0]):
        for t in range(ratio.shape[1]):
            r = ratio[i, t]
            total += weights[i, t] * min(r * adv[i], min(max(r, 1 - low), 1 + high) * adv[i])
    return -total / weights.sum()


def _hand_clip_grad(ratio, adv, low, high, weights):
    """d loss / d log pi_t: -A r w / sum(w) where the unclipped term is the smaller, else 0."""
    g = np.zeros_like(ratio)
    for i in range(ratio.shape[0]):
        for t in range(ratio.shape[1]):
            r, a = ratio[i, t], adv[i]
            active = (r < 1 + high) if a > 0 else (r > 1 - low)
            g[i, t] = -a * r * weights[i, t] / weights.sum() if active else 0.0
    return g


@pytest.mark.parametrize("aggregation", ["token-mean", "sequence-mean"])
def test_clip_higher_loss_and_gradient_match_the_hand_computation(aggregation):
    weights = np.asarray(loss_weights(jnp.asarray(MASK), aggregation))
    adv_tok = ADV[:, None] * MASK

    def loss(new):
        return losses.clipped_surrogate_loss(jnp.exp(new - OLD), jnp.asarray(adv_tok), 0.2, jnp.asarray(weights),
                                             clip_eps_high=0.28)

    ratio = np.exp(NEW - OLD)
    np.testing.assert_allclose(loss(jnp.asarray(NEW)), _hand_clip_loss(ratio, ADV, 0.2, 0.28, weights), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(loss)(jnp.asarray(NEW)), _hand_clip_grad(ratio, ADV, 0.2, 0.28, weights),
                               rtol=1e-5, atol=1e-7)
    # The upper clip matters: the token at ratio e^0.3 = 1.35 (A > 0) ... and e^0.4 = 1.49 still clipped at 1.28,
    # while symmetric 0.2 clips the token at e^0.25 = 1.28 > 1.2 too: the two losses differ.
    symmetric = losses.clipped_surrogate_loss(jnp.exp(jnp.asarray(NEW) - OLD), jnp.asarray(adv_tok), 0.2,
                                              jnp.asarray(weights))
    assert abs(float(symmetric) - float(loss(jnp.asarray(NEW)))) > 1e-3


def test_gspo_sequence_ratio_is_the_geometric_mean_and_its_loss_and_gradient_match():
    ratio = np.asarray(sequence_ratio(jnp.asarray(NEW), jnp.asarray(OLD), jnp.asarray(MASK)))
    n = MASK.sum(axis=1)
    s = np.exp((SHIFT * MASK).sum(axis=1) / n)
    np.testing.assert_allclose(ratio, np.broadcast_to(s[:, None], MASK.shape), rtol=1e-6)
    np.testing.assert_allclose(s[1], np.sqrt(np.exp(0.3) * np.exp(-0.1)), rtol=1e-6)  # the geometric mean

    low, high = 0.05, 0.06
    weights = np.asarray(loss_weights(jnp.asarray(MASK), "sequence-mean"))
    adv_tok = jnp.asarray(ADV[:, None] * MASK)

    def loss(new):
        r = sequence_ratio(new, jnp.asarray(OLD), jnp.asarray(MASK))
        return losses.clipped_surrogate_loss(r, adv_tok, low, jnp.asarray(weights), clip_eps_high=high)

    # By hand: one term per sequence, mean over the sequences.
    terms = [min(s[i] * ADV[i], min(max(s[i], 1 - low), 1 + high) * ADV[i]) for i in range(4)]
    np.testing.assert_allclose(loss(jnp.asarray(NEW)), -np.mean(terms), rtol=1e-5)
    grad = np.zeros_like(MASK)
    for i in range(4):
        active = (s[i] < 1 + high) if ADV[i] > 0 else (s[i] > 1 - low)
        grad[i] = -ADV[i] * s[i] * MASK[i] / n[i] / 4 if active else 0.0  # d s / d log pi_t = s / n
    np.testing.assert_allclose(jax.grad(loss)(jnp.asarray(NEW)), grad, rtol=1e-5, atol=1e-7)
    assert np.count_nonzero(grad.any(axis=1)) not in (0, 4)  # some sequences clipped, some not


def test_cispo_weight_is_clipped_with_no_gradient_and_no_token_is_dropped():
    high = 0.28
    weights = MASK
    adv_tok = jnp.asarray(ADV[:, None] * MASK)

    def loss(new):
        return cispo_loss(jnp.exp(new - OLD), new, adv_tok, high, jnp.asarray(weights))

    ratio = np.exp(SHIFT)
    w = np.minimum(ratio, 1 + high)
    expected = -(w * ADV[:, None] * NEW * weights).sum() / weights.sum()
    np.testing.assert_allclose(loss(jnp.asarray(NEW)), expected, rtol=1e-5)
    grad = -w * ADV[:, None] * weights / weights.sum()  # the weight is a constant: only log pi carries gradient
    np.testing.assert_allclose(jax.grad(loss)(jnp.asarray(NEW)), grad, rtol=1e-5, atol=1e-7)
    assert np.all(grad[MASK == 1] != 0)  # PPO's clip would zero the tokens past 1 + eps; CISPO keeps them


@pytest.mark.parametrize("options", [dict(), dict(clip_eps_high=0.28), dict(ratio_level="sequence"),
                                     dict(surrogate="cispo", clip_eps_high=0.28)])
def test_the_update_terms_from_logits_match_the_hand_losses(options):
    """:func:`clipped_policy_terms` on the logits that predict the response tokens (the
    log-softmax) gives the losses above for each option."""
    p, v = 2, 6
    tokens = np.array([[1, 2, 3, 4], [5, 0, 2, 2], [3, 3, 1, 2], [4, 2, 2, 2]])
    logits = jax.random.normal(jax.random.PRNGKey(0), (4, p + 4, v))
    seq = jnp.concatenate([jnp.zeros((4, p), jnp.int32), jnp.asarray(tokens, jnp.int32)], axis=1)
    logp = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits[:, p - 1:p + 3])), tokens[..., None], -1)[..., 0]
    old = logp - SHIFT
    mb = types.SimpleNamespace(sequences=seq, response_mask=jnp.asarray(MASK), old_logp=jnp.asarray(old),
                               advantages=jnp.asarray(ADV[:, None] * MASK))
    loss, aux, new = clipped_policy_terms(logits[:, p - 1:-1], mb, p, 1.0, 0.2, 0.0, jnp.asarray(MASK), **options)
    np.testing.assert_allclose(new, logp, rtol=1e-5, atol=1e-6)
    high = options.get("clip_eps_high", 0.2)
    if options.get("surrogate") == "cispo":
        expected = -(np.minimum(np.exp(SHIFT), 1 + high) * ADV[:, None] * logp * MASK).sum() / MASK.sum()
    elif options.get("ratio_level") == "sequence":
        s = np.exp((SHIFT * MASK).sum(axis=1) / MASK.sum(axis=1))
        expected = _hand_clip_loss(np.broadcast_to(s[:, None], MASK.shape), ADV, 0.2, high, MASK)
    else:
        expected = _hand_clip_loss(np.exp(SHIFT), ADV, 0.2, high, MASK)
    np.testing.assert_allclose(loss, expected, rtol=1e-4)
    assert 0.0 < float(aux["clip_fraction"]) < 1.0


def test_soft_overlong_penalty_is_zero_then_linear_to_minus_one():
    lengths = jnp.array([0, 10, 12, 13, 14, 16])
    got = soft_overlong_penalty(lengths, 16, 4)
    np.testing.assert_allclose(got, [0.0, 0.0, 0.0, -0.25, -0.5, -1.0])
    np.testing.assert_array_equal(soft_overlong_penalty(lengths, 16, 0), 0.0)


def test_options_of_the_family_are_refused_for_ppo_and_bad_names_named():
    from rlhf_jax.ppo_trainer import RLHFConfig

    with pytest.raises(ValueError, match="^clip_eps_high: an option of the GRPO family"):
        RLHFConfig(algo="ppo", clip_eps_high=0.28).validate()
    with pytest.raises(ValueError, match="^ratio_level: must be one of token, sequence"):
        RLHFConfig(algo="grpo", ratio_level="seq").validate()
    with pytest.raises(ValueError, match="^overlong_buffer: must be in"):
        RLHFConfig(algo="grpo", overlong_buffer=100, max_new_tokens=40).validate()
    RLHFConfig(algo="rloo", surrogate="cispo", clip_eps_high=4.0, dynamic_sampling=True, overlong_buffer=8).validate()
