"""Jitted sampling from a :class:`~rlhf_jax.transformer.TransformerLM` with its KV cache.

One call generates ``max_new_tokens`` tokens for a left-padded prompt batch with fixed
shapes: a prefill pass writes the prompts into the cache, then a ``lax.scan`` samples
one token per row per step. Each step's distribution is the softmax of
``logits / temperature`` restricted to the top-k tokens and then to the top-p nucleus,
renormalised; the returned log-prob of a sampled token is under that same distribution
(what the sampler drew from is what is scored), so a scorer that wants it recomputes with :func:`sampling_log_probs`.
After a row samples EOS it emits PAD with mask 0 and log-prob 0.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

from ppo_jax.run import prng
from ppo_jax.run.validation import require_finite
from rlhf_jax.transformer import KVCache, TransformerLM


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick each new token (all static: they fix the compiled program)."""

    max_new_tokens: int = 48
    """Tokens generated per prompt (the response length before EOS truncation)."""
    temperature: float = 1.0
    """Logits are divided by this before the softmax; must be > 0 (use greedy for argmax)."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 keeps all."""
    top_p: float = 1.0
    """Keep the smallest set of most likely tokens whose probability reaches top_p; 1 keeps all."""
    greedy: bool = False
    """Take the most likely token instead of sampling."""
    stop_at_eos: bool = True
    """After EOS, emit PAD (mask 0)."""

    def validate(self, vocab_size: int | None = None) -> None:
        require_finite(self)
        if self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens: must be positive, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"temperature: must be > 0 (set greedy for argmax), got {self.temperature}")
        if self.top_k < 0 or (vocab_size is not None and self.top_k > vocab_size):
            raise ValueError(f"top_k: must be in [0, vocab_size], got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")

    def replace(self, **kw) -> "SamplingConfig":
        return dataclasses.replace(self, **kw)


@struct.dataclass
class Generation:
    """``sequences [B, P+N]`` (prompt then response) with ``attention_mask``; the response part
    ``response [B, N]``, ``response_mask [B, N]`` and ``log_probs [B, N]`` (0 where masked)."""

    sequences: jax.Array
    attention_mask: jax.Array
    response: jax.Array
    response_mask: jax.Array
    log_probs: jax.Array


def ended_with_eos(response, response_mask, eos_id: int):
    """Whether each response emitted EOS as a real token (not padding): ``[B]`` bools, for
    numpy and JAX arrays alike."""
    return ((response == eos_id) & (response_mask == 1)).any(axis=1)


def sampling_log_probs(logits: jax.Array, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Log-probabilities of the sampling distribution: tempered, top-k, then top-p, renormalised.

    Tokens outside the kept set get ``-inf``. Ties at a cut-off are kept.
    """
    logits = logits.astype(jnp.float32) / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # Kept: every token whose predecessors' mass is still short of top_p (always the first).
        kept = mass_before < top_p
        threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits >= threshold, logits, -jnp.inf)
    return jax.nn.log_softmax(logits, axis=-1)


def make_generate(model: TransformerLM, config: SamplingConfig, *, eos_id: int, pad_id: int) -> Callable:
    """Returns jitted ``generate(params, prompt_ids, prompt_mask, key) -> Generation``.

    Prompts are left-padded ``[B, P]`` so that every row's last prompt token is in the last
    column; each row needs at least one real token (a BOS will do).
    ``P + max_new_tokens`` must not exceed the model's ``max_len``.
    """
    config.validate(model.config.vocab_size)
    prng.install()  # a small random array per token: fuse its hash
    n = config.max_new_tokens

    def pick(logits, done, key):
        logp = sampling_log_probs(logits, config.temperature, config.top_k, config.top_p)
        if config.greedy:
            token = jnp.argmax(logp, axis=-1)
        else:
            token = jax.random.categorical(key, logp, axis=-1)
        token_logp = jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]
        live = ~done
        token = jnp.where(live, token, pad_id).astype(jnp.int32)
        token_logp = jnp.where(live, token_logp, 0.0)
        if config.stop_at_eos:
            done = done | (token == eos_id)
        return token, live, token_logp, done

    def generate(params, prompt_ids: jax.Array, prompt_mask: jax.Array, key: jax.Array) -> Generation:
        b, p = prompt_ids.shape
        if p + n > model.config.max_len:
            raise ValueError(f"max_new_tokens: prompt length {p} + {n} new tokens exceeds max_len "
                             f"{model.config.max_len}")
        apply = lambda ids, mask, cache, **kw: model.apply({"params": params}, ids, mask, cache=cache, **kw)  # noqa: E731
        # The prompt's pass needs the next-token logits of its last position only.
        out = apply(prompt_ids, prompt_mask, KVCache.create(model.config, b, p + n), logits_from=p - 1)
        keys = jax.random.split(key, n)
        done = jnp.zeros((b,), jnp.bool_)

        def step(carry, step_key):
            cache, logits, done = carry
            token, live, token_logp, done = pick(logits, done, step_key)
            out = apply(token[:, None], live[:, None], cache)
            return (out.cache, out.logits[:, 0], done), (token, live, token_logp)

        # n - 1 steps that each sample a token and feed it back; the last token needs no forward pass.
        (_, logits, done), (tokens, live, logps) = jax.lax.scan(step, (out.cache, out.logits[:, -1], done), keys[:-1])
        last = pick(logits, done, keys[-1])
        tokens = jnp.concatenate([tokens, last[0][None]], axis=0).T
        live = jnp.concatenate([live, last[1][None]], axis=0).T
        logps = jnp.concatenate([logps, last[2][None]], axis=0).T
        mask = live.astype(jnp.int32)
        return Generation(jnp.concatenate([prompt_ids.astype(jnp.int32), tokens], axis=1),
                          jnp.concatenate([prompt_mask.astype(jnp.int32), mask], axis=1), tokens, mask, logps)

    return jax.jit(generate)
