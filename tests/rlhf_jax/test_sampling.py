"""Sampling: greedy limits, top-k / top-p supports, EOS handling, log-probs, determinism."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.sampling import SamplingConfig, make_generate, sampling_log_probs
from rlhf_jax.transformer import TransformerConfig, TransformerLM, init_params

pytestmark = pytest.mark.timeout(180)

CFG = TransformerConfig(vocab_size=24, max_len=32, num_layers=2, num_heads=2, d_model=32, dropout=0.0)
EOS, PAD = 2, 0


@pytest.fixture(scope="module")
def setup():
    model = TransformerLM(CFG)
    params = init_params(model, jax.random.PRNGKey(0))
    # Sharper logits than at init, so top-k / top-p cut something and EOS shows up.
    params = jax.tree.map(lambda x: x * 3.0, params)
    lengths = np.array([3, 6, 1, 5])
    ids = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (4, 6), 3, CFG.vocab_size))
    mask = (np.arange(6)[None, :] >= 6 - lengths[:, None]).astype(np.int32)
    return model, params, np.where(mask == 1, ids, PAD), mask


def gen(setup, key=0, **kw):
    model, params, ids, mask = setup
    cfg = SamplingConfig(max_new_tokens=10, **kw)
    return make_generate(model, cfg, eos_id=EOS, pad_id=PAD)(params, ids, mask, jax.random.PRNGKey(key))


def numpy_sampling_logp(logits, temperature, top_k, top_p):
    """An independent reference: sort, cut, renormalise, in numpy float64."""
    z = np.asarray(logits, np.float64) / temperature
    out = np.full_like(z, -np.inf)
    for i, row in enumerate(z):
        order = np.argsort(-row)
        keep = order[:top_k] if top_k else order
        p = np.exp(row[keep] - row[keep].max())
        p /= p.sum()
        if top_p < 1.0:
            before = np.cumsum(p) - p
            keep = keep[before < top_p]
        sub = row[keep]
        out[i, keep] = sub - sub.max() - np.log(np.exp(sub - sub.max()).sum())
    return out


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (1.0, 6, 0.5)])
def test_sampling_log_probs_match_numpy(temperature, top_k, top_p):
    logits = jax.random.normal(jax.random.PRNGKey(0), (5, 24)) * 2.0
    got = np.asarray(sampling_log_probs(logits, temperature, top_k, top_p))
    want = numpy_sampling_logp(np.asarray(logits), temperature, top_k, top_p)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], atol=1e-5)


def recomputed_log_probs(setup, out, **kw):
    model, params, ids, _ = setup
    logits = model.apply({"params": params}, out.sequences, out.attention_mask).logits
    p = ids.shape[1]
    step_logits = np.asarray(logits[:, p - 1:-1])  # position t-1 scores token t
    n = out.response.shape[1]
    logp = numpy_sampling_logp(step_logits.reshape(-1, CFG.vocab_size), **kw).reshape(4, n, -1)
    return np.take_along_axis(logp, np.asarray(out.response)[..., None], -1)[..., 0]


@pytest.mark.parametrize("kw", [dict(temperature=1.0, top_k=0, top_p=1.0), dict(temperature=0.8, top_k=5, top_p=1.0),
                                dict(temperature=1.2, top_k=0, top_p=0.7)])
def test_returned_log_probs_equal_full_forward_recomputation(setup, kw):
    out = gen(setup, **kw)
    want = recomputed_log_probs(setup, out, **kw)
    live = np.asarray(out.response_mask, bool)
    np.testing.assert_allclose(np.asarray(out.log_probs)[live], want[live], atol=2e-5)
    assert np.all(np.isfinite(want[live]))  # never a token outside the kept set
    np.testing.assert_array_equal(np.asarray(out.log_probs)[~live], 0.0)


def test_top_k_never_outside_top_k(setup):
    for key in range(3):
        out = gen(setup, key=key, top_k=3)
        want = recomputed_log_probs(setup, out, temperature=1.0, top_k=3, top_p=1.0)
        assert np.all(np.isfinite(want[np.asarray(out.response_mask, bool)]))


def test_nothing_but_pad_follows_eos(setup):
    seen_eos = False
    for key in range(4):
        out = gen(setup, key=key)
        resp, live = np.asarray(out.response), np.asarray(out.response_mask)
        for row, row_live in zip(resp, live):
            hits = np.flatnonzero(row == EOS)
            if len(hits):
                seen_eos = True
                first = hits[0]
                assert row_live[:first + 1].all() and not row_live[first + 1:].any()
                assert (row[first + 1:] == PAD).all()
            else:
                assert row_live.all()
    assert seen_eos, "the test model never sampled EOS; the test would prove nothing"


def test_low_temperature_matches_greedy(setup):
    greedy = gen(setup, greedy=True)
    cold = gen(setup, key=5, temperature=1e-4)
    np.testing.assert_array_equal(greedy.response, cold.response)
    model, params, ids, mask = setup
    logits = model.apply({"params": params}, greedy.sequences, greedy.attention_mask).logits
    argmax = np.asarray(jnp.argmax(logits[:, ids.shape[1] - 1:-1], -1))
    live = np.asarray(greedy.response_mask, bool)
    np.testing.assert_array_equal(np.asarray(greedy.response)[live], argmax[live])


def test_same_key_same_samples_different_keys_differ(setup):
    a, b, c = gen(setup, key=1), gen(setup, key=1), gen(setup, key=2)
    np.testing.assert_array_equal(a.response, b.response)
    assert not np.array_equal(a.response, c.response)


def test_sequences_are_prompt_then_response(setup):
    _, _, ids, mask = setup
    out = gen(setup)
    np.testing.assert_array_equal(out.sequences[:, :6], ids)
    np.testing.assert_array_equal(out.attention_mask[:, :6], mask)
    np.testing.assert_array_equal(out.sequences[:, 6:], out.response)


def test_config_errors_name_the_field(setup):
    model = setup[0]
    with pytest.raises(ValueError, match="temperature"):
        make_generate(model, SamplingConfig(temperature=0.0), eos_id=EOS, pad_id=PAD)
    with pytest.raises(ValueError, match="top_p"):
        make_generate(model, SamplingConfig(top_p=0.0), eos_id=EOS, pad_id=PAD)
    with pytest.raises(ValueError, match="max_new_tokens"):
        make_generate(model, SamplingConfig(max_new_tokens=40), eos_id=EOS, pad_id=PAD)(
            setup[1], setup[2], setup[3], jax.random.PRNGKey(0))
