"""The transformer: KV-cache decoding equals a full forward pass; padding does not change logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.transformer import (
    KVCache,
    TransformerConfig,
    TransformerLM,
    forward_flops,
    init_params,
    positions_from_mask,
)

pytestmark = pytest.mark.timeout(120)

CFG = TransformerConfig(vocab_size=40, max_len=32, num_layers=2, num_heads=2, d_model=32, dropout=0.1)


@pytest.fixture(scope="module")
def model_and_params():
    model = TransformerLM(CFG, scalar_head=True)
    return model, init_params(model, jax.random.PRNGKey(0))


def test_positions_from_mask_left_padding():
    mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 0, 1, 1]])
    np.testing.assert_array_equal(positions_from_mask(mask), [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 1, 2]])
    np.testing.assert_array_equal(positions_from_mask(mask[:, -1:], offset=jnp.array([2, 4, 2])), [[2], [4], [2]])


def test_kv_cache_decoding_matches_full_forward(model_and_params):
    model, params = model_and_params
    prompt_len, total = 6, 12
    # Prompts of 2, 6 and 4 tokens left-padded to prompt_len columns, then real tokens.
    ids = jax.random.randint(jax.random.PRNGKey(1), (3, total), 3, CFG.vocab_size)
    ids, mask = left_padded_prompt(ids, [2, 6, 4], prompt_len)
    full = model.apply({"params": params}, ids, mask)
    apply = jax.jit(lambda ids, mask, cache: model.apply({"params": params}, ids, mask, cache=cache))
    out = apply(ids[:, :prompt_len], mask[:, :prompt_len], KVCache.create(CFG, ids.shape[0], total))
    logits, scalars = [out.logits], [out.scalar]
    cache = out.cache
    for t in range(prompt_len, total):
        out = apply(ids[:, t:t + 1], mask[:, t:t + 1], cache)
        cache = out.cache
        logits.append(out.logits)
        scalars.append(out.scalar)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(logits, 1))[real], np.asarray(full.logits)[real],
                               atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(scalars, 1))[real], np.asarray(full.scalar)[real],
                               atol=1e-5, rtol=1e-5)
    assert int(cache.index) == total


def left_padded_prompt(ids, lengths, prompt_len):
    cols = jnp.arange(ids.shape[1])[None, :]
    in_prompt = cols < prompt_len
    real_prompt = cols >= prompt_len - jnp.asarray(lengths)[:, None]
    mask = jnp.where(in_prompt, real_prompt, 1).astype(jnp.int32)
    return jnp.where(mask == 1, ids, 0), mask


def test_left_padding_does_not_change_logits(model_and_params):
    model, params = model_and_params
    tokens = jax.random.randint(jax.random.PRNGKey(2), (1, 7), 3, CFG.vocab_size)
    base = model.apply({"params": params}, tokens, jnp.ones_like(tokens))
    for pad in (1, 5):
        ids = jnp.concatenate([jnp.zeros((1, pad), jnp.int32), tokens], axis=1)
        mask = jnp.concatenate([jnp.zeros((1, pad), jnp.int32), jnp.ones_like(tokens)], axis=1)
        out = model.apply({"params": params}, ids, mask)
        np.testing.assert_allclose(out.logits[:, pad:], base.logits, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(out.scalar[:, pad:], base.scalar, atol=1e-5, rtol=1e-5)


def test_causal_future_tokens_do_not_change_past_logits(model_and_params):
    model, params = model_and_params
    ids = jax.random.randint(jax.random.PRNGKey(3), (2, 8), 3, CFG.vocab_size)
    changed = ids.at[:, 5:].set(7)
    a = model.apply({"params": params}, ids, jnp.ones_like(ids)).logits
    b = model.apply({"params": params}, changed, jnp.ones_like(ids)).logits
    np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert not np.allclose(a[:, 5:], b[:, 5:])


def test_dropout_only_when_not_deterministic(model_and_params):
    model, params = model_and_params
    ids = jax.random.randint(jax.random.PRNGKey(4), (2, 8), 3, CFG.vocab_size)
    mask = jnp.ones_like(ids)
    a = model.apply({"params": params}, ids, mask).logits
    b = model.apply({"params": params}, ids, mask).logits
    np.testing.assert_array_equal(a, b)
    c = model.apply({"params": params}, ids, mask, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)}).logits
    assert not np.allclose(a, c)


def test_scalar_head_init_scale_and_tied_embeddings():
    cfg = TransformerConfig(vocab_size=40, max_len=16, num_layers=1, num_heads=2, d_model=256, dropout=0.0)
    params = init_params(TransformerLM(cfg, scalar_head=True), jax.random.PRNGKey(0))
    w = np.asarray(params["scalar_head"]["kernel"])
    assert abs(w.std() - (1 / 257) ** 0.5) < 0.015  # N(0, 1/(d+1))
    assert "lm_head" not in params  # tied to wte by default
    untied = init_params(TransformerLM(cfg.__class__(**{**cfg.to_dict(), "tie_embeddings": False})), jax.random.PRNGKey(0))
    assert untied["lm_head"]["kernel"].shape == (256, 40)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="num_heads"):
        TransformerConfig(d_model=30, num_heads=4).validate()
    with pytest.raises(ValueError, match="dropout"):
        TransformerConfig(dropout=1.0).validate()
    with pytest.raises(ValueError, match="unknown"):
        TransformerConfig.from_dict({"width": 3})


@pytest.mark.parametrize("arch, extra", [("gpt2", {}), ("llama", {"num_kv_heads": 2})])
def test_forward_flops_match_xla_cost_analysis(arch, extra):
    """Our matmul count against XLA's count of the whole compiled forward pass (which adds the
    elementwise work: a few percent more)."""
    cfg = TransformerConfig(vocab_size=256, max_len=64, num_layers=2, num_heads=4, d_model=128, dropout=0.0,
                            arch=arch, **extra)
    lm = TransformerLM(cfg)
    params = init_params(lm, jax.random.PRNGKey(0))
    ids = jnp.zeros((4, 64), jnp.int32)
    cost = jax.jit(lambda p: lm.apply({"params": p}, ids, jnp.ones_like(ids)).logits).lower(params).compile()
    cost = cost.cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
    ours = forward_flops(cfg, 4 * 64, 64)
    assert ours <= xla <= 1.05 * ours, (ours, xla)


def test_dense_backward_matches_autodiff_of_the_plain_matmul():
    """The blocks' Dense layers carry their own backward pass (the weight gradient as one 2-D
    matmul over flattened rows): it must be the gradient autodiff gives the plain matmul."""
    from rlhf_jax.matmul import matmul

    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 8))
    w = jax.random.normal(jax.random.PRNGKey(1), (8, 6))
    r = jax.random.normal(jax.random.PRNGKey(2), (3, 5, 6))
    ours = jax.grad(lambda x, w: jnp.sum(matmul(x, w) * r), argnums=(0, 1))(x, w)
    plain = jax.grad(lambda x, w: jnp.sum(jnp.einsum("btk,kn->btn", x, w) * r), argnums=(0, 1))(x, w)
    for a, b in zip(ours, plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(matmul(x, w), jnp.einsum("btk,kn->btn", x, w))
