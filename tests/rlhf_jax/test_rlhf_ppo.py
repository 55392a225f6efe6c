"""RLHF-PPO math (docs/theory.md §11): per-token rewards, the adaptive KL controller, KL estimators, token-level GAE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.ppo import (
    adaptive_kl_beta,
    exact_kl,
    kl_penalty,
    per_token_rewards,
    token_advantages,
)

pytestmark = pytest.mark.timeout(120)

# Three responses of N = 5 positions: EOS at position 2, at 4, and one that never ended
# (mask to the end); a fourth with no response token at all.
MASK = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
LOGP = jnp.array([[-1.0, -2.0, -0.5, -9.0, -9.0], [-0.1, -0.2, -0.3, -0.4, -0.5],
                  [-1.0, -1.0, -1.0, -1.0, -1.0], [-3.0, -3.0, -3.0, -3.0, -3.0]])
REF = jnp.array([[-1.5, -1.0, -0.5, -1.0, -1.0], [-0.2, -0.2, -0.1, -0.4, -1.0],
                 [-2.0, -1.0, -0.5, -1.0, -1.0], [-1.0, -1.0, -1.0, -1.0, -1.0]])
SCORE = jnp.array([2.0, -1.0, 0.5, 7.0])


def test_per_token_rewards_match_a_hand_computation():
    beta = 0.1
    rewards, kl = per_token_rewards(SCORE, LOGP, REF, MASK, beta)
    want = np.zeros((4, 5))
    k = np.asarray(LOGP - REF)
    want[0, :3] = -beta * k[0, :3]
    want[0, 2] += 2.0  # the score on the EOS at position 2, not on the padding after it
    want[1] = -beta * k[1]
    want[1, 4] += -1.0
    want[2] = -beta * k[2]
    want[2, 4] += 0.5
    np.testing.assert_allclose(rewards, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(rewards)[np.asarray(MASK) == 0], 0.0)  # nothing on padding
    np.testing.assert_array_equal(np.asarray(kl)[np.asarray(MASK) == 0], 0.0)
    # The sequence total is score - beta * summed KL (docs/theory.md §11).
    np.testing.assert_allclose(rewards[:3].sum(1), SCORE[:3] - beta * (k * np.asarray(MASK))[:3].sum(1), rtol=1e-6)


def test_response_log_probs_are_shifted_by_one_and_tempered():
    """Scoring a sampled batch (left-padded prompts of unequal length) reproduces the sampler's
    own log-probs: the logits at position t-1 score token t, with the temperature applied."""
    from rlhf_jax.ppo import response_log_probs
    from rlhf_jax.sampling import SamplingConfig, make_generate
    from rlhf_jax.transformer import TransformerConfig, TransformerLM, init_params

    cfg = TransformerConfig(vocab_size=24, max_len=32, num_layers=1, num_heads=2, d_model=32, dropout=0.0)
    model = TransformerLM(cfg)
    params = init_params(model, jax.random.PRNGKey(0))
    ids = jax.random.randint(jax.random.PRNGKey(1), (3, 5), 3, 24)
    mask = (jnp.arange(5)[None, :] >= jnp.array([[3], [0], [1]])).astype(jnp.int32)
    out = make_generate(model, SamplingConfig(max_new_tokens=6, temperature=0.7), eos_id=2, pad_id=0)(
        params, jnp.where(mask == 1, ids, 0), mask, jax.random.PRNGKey(2))
    logp = response_log_probs(model, params, out.sequences, out.attention_mask, 5, temperature=0.7)
    live = np.asarray(out.response_mask, bool)
    np.testing.assert_allclose(np.asarray(logp)[live], np.asarray(out.log_probs)[live], atol=2e-5)
    untempered = response_log_probs(model, params, out.sequences, out.attention_mask, 5)
    assert not np.allclose(np.asarray(untempered)[live], np.asarray(out.log_probs)[live], atol=1e-3)
    with pytest.raises(ValueError, match="kl_estimator"):
        kl_penalty(LOGP, REF, "k2")


def test_adaptive_controller_direction_and_clip():
    assert float(adaptive_kl_beta(0.1, kl=12.0, target=6.0, horizon=10000, num_samples=64)) > 0.1
    assert float(adaptive_kl_beta(0.1, kl=3.0, target=6.0, horizon=10000, num_samples=64)) < 0.1
    np.testing.assert_allclose(adaptive_kl_beta(0.1, 6.0, 6.0, 10000, 64), 0.1)
    # The proportional error is clipped at +-0.2.
    np.testing.assert_allclose(adaptive_kl_beta(1.0, 600.0, 6.0, 100, 50), 1.1, rtol=1e-6)


def test_mean_k1_and_k3_match_exact_kl_within_sampling_error():
    logits = jax.random.normal(jax.random.PRNGKey(0), (16,)) * 1.5
    ref_logits = logits + jax.random.normal(jax.random.PRNGKey(1), (16,)) * 0.7
    logp, ref = jax.nn.log_softmax(logits), jax.nn.log_softmax(ref_logits)
    tokens = jax.random.categorical(jax.random.PRNGKey(2), logits, shape=(40000,))
    exact = float(exact_kl(logits, ref_logits))
    for est in ("k1", "k3"):
        samples = np.asarray(kl_penalty(logp[tokens], ref[tokens], est))
        se = samples.std() / np.sqrt(len(samples))
        assert abs(samples.mean() - exact) < 4 * se, (est, samples.mean(), exact, se)
    assert exact > 0.05


def numpy_token_gae(rewards, values, mask, gamma, lam):
    out = np.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        real = np.flatnonzero(mask[b])
        adv = 0.0
        for t in real[::-1]:
            nxt = values[b, t + 1] if t + 1 in real else 0.0
            delta = rewards[b, t] + gamma * nxt - values[b, t]
            adv = delta + gamma * lam * adv
            out[b, t] = adv
    return out


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0)])
def test_token_gae_matches_numpy_and_is_zero_after_eos(gamma, lam):
    rewards, _ = per_token_rewards(SCORE, LOGP, REF, MASK, 0.1)
    values = jax.random.normal(jax.random.PRNGKey(3), (4, 5))
    adv, ret = token_advantages(rewards, values, MASK, gamma, lam)
    want = numpy_token_gae(np.asarray(rewards), np.asarray(values), np.asarray(MASK), gamma, lam)
    np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(adv)[np.asarray(MASK) == 0], 0.0)
    np.testing.assert_array_equal(np.asarray(ret)[np.asarray(MASK) == 0], 0.0)
    if lam == 1.0 and gamma == 1.0:  # Monte-Carlo: returns are the reward-to-go
        togo = np.cumsum(np.asarray(rewards)[:, ::-1], axis=1)[:, ::-1] * np.asarray(MASK)
        np.testing.assert_allclose(ret, togo, rtol=1e-5, atol=1e-6)


def _iteration_batch():
    import optax

    from rlhf_jax.ppo import (
        TokenBatch,
        make_ppo_update,
        response_log_probs,
        response_values,
        whiten,
    )
    from rlhf_jax.sampling import SamplingConfig, make_generate
    from rlhf_jax.transformer import TransformerConfig, TransformerLM, init_params

    cfg = TransformerConfig(vocab_size=24, max_len=32, num_layers=1, num_heads=2, d_model=32, dropout=0.0)
    policy, critic = TransformerLM(cfg), TransformerLM(cfg, lm_head=False, scalar_head=True)
    pp, cp = init_params(policy, jax.random.PRNGKey(0)), init_params(critic, jax.random.PRNGKey(1))
    p, temp = 5, 0.8
    ids = jax.random.randint(jax.random.PRNGKey(2), (8, p), 3, 24)
    mask = (jnp.arange(p)[None, :] >= jnp.arange(8)[:, None] % 4).astype(jnp.int32)
    out = make_generate(policy, SamplingConfig(max_new_tokens=7, temperature=temp), eos_id=2, pad_id=0)(
        pp, jnp.where(mask == 1, ids, 0), mask, jax.random.PRNGKey(3))
    old_logp = response_log_probs(policy, pp, out.sequences, out.attention_mask, p, temp)
    values = response_values(critic, cp, out.sequences, out.attention_mask, p)
    score = jax.random.normal(jax.random.PRNGKey(4), (8,))
    rewards, _ = per_token_rewards(score, old_logp, old_logp - 0.05, out.response_mask, 0.1)
    adv, ret = token_advantages(rewards, values, out.response_mask)
    batch = TokenBatch(out.sequences, out.attention_mask, out.response_mask, old_logp, values,
                       whiten(adv, out.response_mask), ret)
    tx = optax.adam(1e-2)
    update = make_ppo_update(policy, critic, tx, tx, prompt_len=p, epochs=2, minibatches=2, temperature=temp)
    return update, pp, cp, tx.init(pp), tx.init(cp), batch


def test_ppo_update_ignores_everything_outside_the_response_mask():
    update, pp, cp, po, co, batch = _iteration_batch()
    outside = batch.response_mask == 0
    assert bool(outside.any())
    junk = batch.replace(advantages=jnp.where(outside, 1e3, batch.advantages),
                         returns=jnp.where(outside, -1e3, batch.returns),
                         old_logp=jnp.where(outside, -50.0, batch.old_logp))
    a = update(pp, cp, po, co, batch, jax.random.PRNGKey(5), 0.2, 0.2, 0.01)
    b = update(pp, cp, po, co, junk, jax.random.PRNGKey(5), 0.2, 0.2, 0.01)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a[:2], b[:2])
