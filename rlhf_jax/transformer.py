"""One decoder-only transformer (Flax linen) for two families, with an LM head, a scalar head and a KV cache.

``arch="gpt2"``: pre-LayerNorm blocks, learned absolute positions, GELU (tanh) MLP, biases
everywhere. ``arch="llama"`` (Llama, Qwen2, Mistral): pre-RMSNorm blocks, rotary position
embeddings (the ``rotate_half`` layout, base ``rope_theta``), SwiGLU MLP, grouped-query
attention (``num_kv_heads``; query head ``h`` reads key/value head ``h // (H / H_kv)``), no
biases except optional ones on q, k and v (Qwen2). Both: optional tied input/output
embeddings, dropout (off unless ``deterministic=False``; RL code never turns it on),
optional activation checkpointing of each block (``remat``). The language model of the
token MDP (docs/theory.md §11): ``pi(a_t | s_t)``
with ``s_t = [x; y_<t]`` is the softmax of the logits at position ``t - 1``.

Positions come from the attention mask, ``cumsum(mask) - 1`` clamped at 0 (not 0..L-1,
which left padding would shift),
so a left-padded row's first real token is at position 0 whatever its padding, and a
cached decode continues from the number of real tokens already in the cache.

The KV cache is an explicit pytree (:class:`KVCache`): one ``[B, H, S, Dh]`` key and value
buffer per layer, a ``[B, S]`` mask of slots that hold real tokens, and the next slot to
write. A call with ``T`` tokens writes slots ``index .. index + T - 1`` and attends to every
real slot at or before its own, which is exactly what a full forward pass over the same
tokens computes.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from ppo_jax.distributions import Categorical
from ppo_jax.run.validation import DictConfig, require_finite, require_positive
from rlhf_jax.compute_dtype import DTYPES
from rlhf_jax.compute_dtype import resolve as resolve_dtype
from rlhf_jax.lora import OFF, LoRAConfig, LoRADense
from rlhf_jax.matmul import matmul, matmul_bf16


@dataclass(frozen=True)
class TransformerConfig(DictConfig):
    """Shapes and regularisation of the transformer (all static)."""

    vocab_size: int = 259
    """Vocabulary size (259 = bytes + PAD/BOS/EOS of the byte tokenizer)."""
    max_len: int = 128
    """Context length: the number of learned positions."""
    num_layers: int = 4
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads; must divide d_model."""
    d_model: int = 256
    """Width of the residual stream."""
    d_ff: int = 0
    """MLP hidden width; 0 means 4 * d_model."""
    dropout: float = 0.1
    """Dropout on embeddings, attention probabilities and residual branches (training only)."""
    tie_embeddings: bool = True
    """Use the token embedding matrix as the LM head."""
    layer_norm_eps: float = 1e-5
    """LayerNorm epsilon."""
    compute_dtype: str = "float32"
    """Matmul inputs of the blocks: 'float32', or 'bfloat16' (float32 accumulation and outputs;
    parameters, LayerNorm, softmax, logits and log-probs stay float32), or 'auto' (bfloat16 only
    where a one-off probe, cached per machine, finds it at least 1.2x faster)."""
    arch: str = "gpt2"
    """'gpt2' (LayerNorm, learned positions, GELU) or 'llama' (RMSNorm, RoPE, SwiGLU, GQA)."""
    num_kv_heads: int = 0
    """Key/value heads for grouped-query attention ('llama'); 0 means num_heads."""
    head_size: int = 0
    """Width of each attention head; 0 means d_model // num_heads."""
    rope_theta: float = 10000.0
    """Base of the rotary position embeddings ('llama')."""
    qkv_bias: bool = False
    """Biases on the q, k and v projections ('llama'; Qwen2 has them). 'gpt2' always has biases."""
    remat: bool = False
    """Recompute each block's activations in the backward pass instead of storing them (less memory)."""

    def validate(self) -> None:
        require_finite(self)
        require_positive(self, "vocab_size", "max_len", "num_layers", "num_heads", "d_model")
        if self.arch not in ("gpt2", "llama"):
            raise ValueError(f"arch: must be 'gpt2' or 'llama', got {self.arch!r}")
        if self.head_size < 0 or self.num_kv_heads < 0:
            raise ValueError("head_size, num_kv_heads: must be >= 0 (0 = derived)")
        if not self.head_size and self.d_model % self.num_heads:
            raise ValueError(f"num_heads: {self.num_heads} does not divide d_model {self.d_model}")
        if self.num_heads % self.kv_heads:
            raise ValueError(f"num_kv_heads: {self.kv_heads} does not divide num_heads {self.num_heads}")
        if self.arch == "gpt2" and (self.kv_heads != self.num_heads or self.head_dim * self.num_heads != self.d_model):
            raise ValueError("num_kv_heads, head_size: 'gpt2' has num_heads heads of d_model / num_heads")
        if self.arch == "llama" and self.head_dim % 2:
            raise ValueError(f"head_size: rotary embeddings need an even head width, got {self.head_dim}")
        if self.d_ff < 0:
            raise ValueError(f"d_ff: must be >= 0 (0 = 4 * d_model), got {self.d_ff}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.compute_dtype not in DTYPES:
            raise ValueError(f"compute_dtype: must be one of {', '.join(DTYPES)}, got {self.compute_dtype!r}")

    @property
    def ff_width(self) -> int:
        return self.d_ff or 4 * self.d_model

    @property
    def head_dim(self) -> int:
        return self.head_size or self.d_model // self.num_heads

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    def with_runtime_of(self, other: "TransformerConfig") -> "TransformerConfig":
        """This shape with ``other``'s choices of how to run it (``remat``, ``compute_dtype``):
        a loaded model's shape comes from its files, these from the user's flags."""
        return dataclasses.replace(self, remat=other.remat, compute_dtype=other.compute_dtype)


@struct.dataclass
class KVCache:
    """Per-layer key/value buffers ``[B, H, S, Dh]``, the real-slot mask ``[B, S]`` and the next slot."""

    keys: tuple
    values: tuple
    mask: jax.Array
    index: jax.Array

    @classmethod
    def create(cls, config: TransformerConfig, batch_size: int, size: int, dtype=jnp.float32) -> "KVCache":
        shape = (batch_size, config.kv_heads, size, config.head_dim)
        return cls(tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
                   tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
                   jnp.zeros((batch_size, size), jnp.bool_), jnp.asarray(0, jnp.int32))

    @property
    def size(self) -> int:
        return self.mask.shape[1]


@struct.dataclass
class LMOutput:
    """``logits [B, T, V]`` (or None), ``scalar [B, T]`` (or None), final ``hidden [B, T, D]``, new cache."""

    logits: Any
    scalar: Any
    hidden: jax.Array
    cache: Any


def positions_from_mask(mask: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
    """``offset + cumsum(mask) - 1`` clamped at 0: each real token's index among its row's real tokens."""
    mask = mask.astype(jnp.int32)
    return jnp.maximum(jnp.asarray(offset, jnp.int32)[..., None] + jnp.cumsum(mask, axis=-1) - 1, 0)


_init = nn.initializers.normal(stddev=0.02)


def _dot(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, bf16: bool = False):
    (lc, rc), (lb, rb) = dimension_numbers
    assert lc == (lhs.ndim - 1,) and rc == (0,) and not lb and not rb, dimension_numbers  # nn.Dense's form
    return (matmul_bf16 if bf16 else matmul)(lhs, rhs)


def _dense(cfg: TransformerConfig, features: int, name: str, kernel_init=_init, use_bias: bool = True, *,
           lora: LoRAConfig = OFF, deterministic: bool = True) -> nn.Module:
    """A block's Dense layer; with LoRA on the layer, the same layer plus its adapter."""
    bf16 = resolve_dtype(cfg.compute_dtype) == "bfloat16"
    if name in lora.adapted_layers(cfg.arch):
        return LoRADense(features, lora.rank, lora.scale, lora.dropout, deterministic, kernel_init, use_bias, bf16,
                         name=name)
    return nn.Dense(features, kernel_init=kernel_init, name=name, dot_general=functools.partial(_dot, bf16=bf16),
                    use_bias=use_bias)


def rotate_half(x: jax.Array) -> jax.Array:
    """``[-x2, x1]`` for ``x = [x1, x2]`` split in halves along the last axis (HF Llama's layout)."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embeddings on ``x [B, H, T, D]`` at integer ``positions [B, T]`` (float32):
    ``x cos(p w) + rotate_half(x) sin(p w)``, ``w_i = theta^(-2i/D)`` repeated over both halves."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    angles = positions.astype(jnp.float32)[:, None, :, None] * inv_freq  # [B, 1, T, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return x * jnp.cos(angles) + rotate_half(x) * jnp.sin(angles)


class Attention(nn.Module):
    config: TransformerConfig
    lora: LoRAConfig = OFF

    @nn.compact
    def __call__(self, x, key_mask, query_slots, positions, kv, index, deterministic):
        cfg = self.config
        b, t, _ = x.shape
        dense = functools.partial(_dense, cfg, lora=self.lora, deterministic=deterministic)
        if cfg.arch == "gpt2":
            qkv = dense(3 * cfg.d_model, "qkv")(x)
            # Heads-major [B, H, T, Dh]: XLA:CPU runs the [B*H]-batched attention matmuls about
            # 4x faster in this layout than with heads inside ([B, T, H, Dh]) on a decode step.
            q, k, v = jnp.split(qkv.reshape(b, t, 3 * cfg.num_heads, cfg.head_dim).transpose(0, 2, 1, 3), 3, axis=1)
        else:
            heads = lambda y, n: y.reshape(b, t, n, cfg.head_dim).transpose(0, 2, 1, 3)  # noqa: E731
            q = heads(dense(cfg.num_heads * cfg.head_dim, "q", use_bias=cfg.qkv_bias)(x), cfg.num_heads)
            k = heads(dense(cfg.kv_heads * cfg.head_dim, "k", use_bias=cfg.qkv_bias)(x), cfg.kv_heads)
            v = heads(dense(cfg.kv_heads * cfg.head_dim, "v", use_bias=cfg.qkv_bias)(x), cfg.kv_heads)
            q, k = apply_rope(q, positions, cfg.rope_theta), apply_rope(k, positions, cfg.rope_theta)
        if kv is not None:
            k = jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), (0, 0, index, 0))
            v = jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), (0, 0, index, 0))
        # Query heads in groups of num_heads / num_kv_heads share a key/value head (contiguous
        # groups, as transformers' repeat_kv); gpt2 has groups of one.
        # (Groups of one keep the 4-D einsums: a 5-D form with a unit axis made the RLHF update
        # 3-6% slower on XLA:CPU.)
        group = cfg.num_heads // cfg.kv_heads
        grouped = "bkgtd,bksd->bkgts" if group > 1 else "bhtd,bhsd->bhts"
        qg = q.reshape(b, cfg.kv_heads, group, t, cfg.head_dim) if group > 1 else q
        scores = jnp.einsum(grouped, qg, k) / jnp.sqrt(jnp.float32(cfg.head_dim))
        causal = jnp.arange(k.shape[2])[None, :] <= query_slots[:, None]  # [T, S]
        allowed = causal & key_mask[:, None, None, :]  # [B, 1, T, S]
        if group > 1:
            allowed = allowed[:, None]
        # A finite floor, not -inf: a query with no visible key (a pad row) gets a uniform,
        # finite average instead of NaN, and exp(floor - max) is exactly 0 elsewhere.
        scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        probs = nn.Dropout(cfg.dropout)(probs, deterministic=deterministic)
        combine = "bkgts,bksd->btkgd" if group > 1 else "bhts,bhsd->bthd"
        out = jnp.einsum(combine, probs, v).reshape(b, t, cfg.num_heads * cfg.head_dim)
        out = dense(cfg.d_model, "out", nn.initializers.normal(0.02 / (2 * cfg.num_layers) ** 0.5),
                    use_bias=cfg.arch == "gpt2")(out)
        return out, (k, v)


def _norm(cfg: TransformerConfig, name: str) -> nn.Module:
    if cfg.arch == "llama":  # x * rsqrt(mean(x^2) + eps) * weight, in float32 like everything here
        return nn.RMSNorm(cfg.layer_norm_eps, name=name)
    return nn.LayerNorm(cfg.layer_norm_eps, name=name)


class Block(nn.Module):
    config: TransformerConfig
    lora: LoRAConfig = OFF

    @nn.compact
    def __call__(self, x, key_mask, query_slots, positions, kv, index, deterministic):
        cfg = self.config
        dense = functools.partial(_dense, cfg, lora=self.lora, deterministic=deterministic)
        h, kv = Attention(cfg, self.lora, name="attn")(_norm(cfg, "ln1")(x), key_mask, query_slots, positions, kv,
                                                       index, deterministic)
        x = x + nn.Dropout(cfg.dropout)(h, deterministic=deterministic)
        h = _norm(cfg, "ln2")(x)
        out_init = nn.initializers.normal(0.02 / (2 * cfg.num_layers) ** 0.5)
        if cfg.arch == "llama":  # SwiGLU
            h = nn.silu(dense(cfg.ff_width, "gate", use_bias=False)(h)) * dense(cfg.ff_width, "up", use_bias=False)(h)
            h = dense(cfg.d_model, "down", out_init, use_bias=False)(h)
        else:
            h = nn.gelu(dense(cfg.ff_width, "fc")(h))
            h = dense(cfg.d_model, "proj", out_init)(h)
        return x + nn.Dropout(cfg.dropout)(h, deterministic=deterministic), kv


class TransformerLM(nn.Module):
    """The transformer with an LM head (``lm_head``) and/or a scalar head (``scalar_head``).

    The scalar head (values, rewards) is initialised N(0, 1/(d+1)), so initial scores are O(1).
    """

    config: TransformerConfig
    lm_head: bool = True
    scalar_head: bool = False
    lora: LoRAConfig = OFF
    """Low-rank adapters on the blocks' linear layers (:mod:`rlhf_jax.lora`; rank 0: none)."""

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, cache: KVCache | None = None,
                 deterministic: bool = True, logits_from: int = 0) -> LMOutput:
        """``logits_from`` (a Python int): the LM head runs on positions ``logits_from..T-1``
        only, and ``logits`` is ``[B, T - logits_from, V]``: a response's log-probs need the
        head at its own positions, not the prompt's (the head is a quarter of a 0.5B model)."""
        cfg = self.config
        mask = attention_mask.astype(jnp.bool_)
        t = input_ids.shape[1]
        if cache is None:
            key_mask, query_slots, index, offset = mask, jnp.arange(t), 0, 0
        else:
            index = cache.index
            offset = cache.mask.sum(axis=-1)
            key_mask = jax.lax.dynamic_update_slice(cache.mask, mask, (0, index))
            query_slots = index + jnp.arange(t)
        positions = positions_from_mask(mask, offset)
        embed = nn.Embed(cfg.vocab_size, cfg.d_model, embedding_init=_init, name="wte")
        # Activations stay float32 whatever the parameters' dtype (bfloat16 frozen models).
        x = embed(input_ids).astype(jnp.float32)
        if cfg.arch == "gpt2":
            x = x + nn.Embed(cfg.max_len, cfg.d_model, embedding_init=nn.initializers.normal(0.01),
                             name="wpe")(positions).astype(jnp.float32)
        x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
        # deterministic (argument 7, counting self) is a Python bool: static under remat.
        block = nn.remat(Block, static_argnums=(7,)) if cfg.remat else Block
        new_keys, new_values = [], []
        for i in range(cfg.num_layers):
            kv = None if cache is None else (cache.keys[i], cache.values[i])
            x, (k, v) = block(cfg, self.lora, name=f"block_{i}")(x, key_mask, query_slots, positions, kv, index,
                                                                 deterministic)
            new_keys.append(k)
            new_values.append(v)
        hidden = _norm(cfg, "ln_f")(x)
        logits = scalar = None
        if self.lm_head:
            head_in = hidden[:, logits_from:] if logits_from else hidden
            if cfg.tie_embeddings:
                # hidden @ embedding^T, as Embed.attend, through matmul's backward pass.
                logits = matmul(head_in, jnp.asarray(embed.embedding, hidden.dtype).T)
            else:
                logits = nn.Dense(cfg.vocab_size, use_bias=False, kernel_init=_init, name="lm_head",
                                  dot_general=_dot)(head_in)
            logits = logits.astype(jnp.float32)
        if self.scalar_head:
            head = nn.Dense(1, kernel_init=nn.initializers.normal((1.0 / (cfg.d_model + 1)) ** 0.5), name="scalar_head")
            scalar = head(hidden).squeeze(-1).astype(jnp.float32)
        new_cache = None
        if cache is not None:
            new_cache = KVCache(tuple(new_keys), tuple(new_values), key_mask, index + t)
        return LMOutput(logits, scalar, hidden, new_cache)


def forward_flops(cfg: TransformerConfig, tokens: int, context: int, lm_head: bool = True) -> float:
    """Matmul FLOPs (``2 m k n`` per ``[m, k] @ [k, n]``) of one forward pass of ``cfg`` over
    ``tokens`` tokens, each attending over ``context`` key slots (every slot: no causal
    skipping), with the LM head or (``lm_head=False``) a scalar head. Norms, softmax and
    elementwise work are left out; XLA's own count of a whole forward pass is 1-3% higher."""
    d, q, kv = cfg.d_model, cfg.num_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    projections = 2 * d * (q + 2 * kv) + 2 * q * d
    mlp = 2 * d * cfg.ff_width * (3 if cfg.arch == "llama" else 2)
    attention = 2 * 2 * context * q  # scores, then probabilities @ values
    head = 2 * d * (cfg.vocab_size if lm_head else 1)
    return float(tokens * (cfg.num_layers * (projections + mlp + attention) + head))


def init_params(model: TransformerLM, key: jax.Array, seq_len: int = 8):
    """Parameters for ``model`` (shapes do not depend on ``seq_len``)."""
    model.config.validate()
    model.lora.validate()
    ids = jnp.zeros((1, seq_len), jnp.int32)
    return model.init(key, ids, jnp.ones_like(ids))["params"]


def response_logits(model: "TransformerLM", params, sequences: jax.Array, attention_mask: jax.Array,
                    prompt_len: int) -> tuple[LMOutput, jax.Array]:
    """``(out, logits)``: the forward pass over ``[x; y]`` and the logits ``[B, N, V]`` at the N
    positions that predict the response tokens (:func:`response_positions`), the LM head run
    on those positions alone (``out.scalar`` and ``out.hidden`` cover every position)."""
    out = model.apply({"params": params}, sequences, attention_mask, logits_from=prompt_len - 1)
    return out, out.logits[:, :-1]


def token_policy(logits: jax.Array, temperature: float | jax.Array = 1.0) -> Categorical:
    """The next-token distribution at each position, ``softmax(logits / temperature)``, as a
    ``ppo_jax`` :class:`~ppo_jax.distributions.Categorical` in float32, also under bfloat16 (a
    ratio of two nearby bfloat16 log-probs is noise). The sampler draws from the same tempered
    distribution, so its log-probs, entropy and KL are the ones of what was sampled."""
    return Categorical(logits.astype(jnp.float32) / temperature)


def response_positions(x: jax.Array, prompt_len: int) -> jax.Array:
    """``x[:, prompt_len - 1:-1]``: per-position outputs ``[B, P+N, ...]`` (logits, values) at
    the positions that predict the N response tokens. Position ``t - 1`` sees ``[x; y_<t]``
    and scores token ``t`` (the shift by one)."""
    return x[:, prompt_len - 1:-1]


def token_log_probs(logits: jax.Array, tokens: jax.Array, temperature: float = 1.0) -> jax.Array:
    """``log softmax(logits / temperature)[token]`` in float32 (:func:`token_policy`).

    The caller shifts by one: the logits at position ``t - 1`` score the token at ``t``.
    """
    return token_policy(logits, temperature).log_prob(tokens)
