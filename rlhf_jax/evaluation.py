"""Scoring a policy on held-out prompts: one sample each, its gold and proxy reward, the exact
KL to the reference, EOS rate and length.

Shared by the online RL loop (:mod:`rlhf_jax.ppo_trainer`, with its own compiled sampler and
scorer) and the offline methods (DPO, evaluated with a plain sampler), so that neither depends
on the other.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np

from rlhf_jax.data import padded_chunks
from rlhf_jax.ppo import sequence_kl
from rlhf_jax.sampling import Generation, SamplingConfig, ended_with_eos, make_generate
from rlhf_jax.tokenizer import Tokenizer
from rlhf_jax.transformer import TransformerLM


class PromptSource:
    """Fixed-shape prompt batches drawn from a pool: left-padded to ``width`` tokens, BOS first.

    ``width`` is the pool's longest prompt, or ``also``'s (prompts encoded later, e.g. for
    evaluation) if longer: one compiled program serves both.
    """

    def __init__(self, tokenizer: Tokenizer, pool: Sequence[str], also: Sequence[str] = ()):
        if not pool:
            raise ValueError("prompts: the prompt pool is empty")
        self.tokenizer, self.pool = tokenizer, list(pool)
        self.width = max(len(tokenizer.encode(p)) + len(tokenizer.bos_ids) for p in [*self.pool, *also])

    def encode(self, prompts: Sequence[str]):
        batch = self.tokenizer.encode_batch(list(prompts), padding_side="left", add_bos=True, max_length=self.width)
        return batch.input_ids, batch.attention_mask

    def draw_indices(self, rng: np.random.Generator, n: int) -> list[int]:
        """``n`` indices into the pool, drawn with replacement."""
        return [int(i) for i in rng.integers(len(self.pool), size=n)]

    def draw(self, rng: np.random.Generator, n: int) -> list[str]:
        return [self.pool[i] for i in self.draw_indices(rng, n)]


def decode_responses(tokenizer: Tokenizer, gen: Generation) -> tuple[list[str], np.ndarray]:
    """Response texts (cut at EOS) and whether each ended with EOS."""
    response, mask = np.asarray(gen.response), np.asarray(gen.response_mask)
    return tokenizer.decode_batch(response, mask), ended_with_eos(response, mask, tokenizer.eos_id)


def evaluate_samples(generate: Callable, kl: Callable, policy_params, *, ref_params, tokenizer: Tokenizer,
                     prompts: PromptSource, eval_prompts: Sequence[str], key: jax.Array, batch_size: int,
                     score: Callable | None = None, gold_reward: Callable | None = None) -> dict:
    """Mean gold and proxy reward, exact KL to the reference (nats per sequence), EOS rate and
    length over ``eval_prompts`` (one sample each from ``generate(policy_params, ids, mask,
    key)``, in fixed-size batches), plus the samples. ``kl(policy_params, ref_params, gen)`` is
    the per-sequence KL, ``score(gen)`` the proxy reward (NaN without one) and
    ``gold_reward(prompt, response, ended_with_eos)`` the gold one (NaN without one)."""
    golds, proxies, kls, ends, lengths, samples = [], [], [], [], [], []
    for chunk, real in padded_chunks(eval_prompts, batch_size):
        ids, mask = prompts.encode(chunk)
        key, k = jax.random.split(key)
        gen = generate(policy_params, ids, mask, k)
        kls.append(np.asarray(kl(policy_params, ref_params, gen))[:real])
        texts, ended = decode_responses(tokenizer, gen)
        ends.append(ended[:real])
        lengths.append(np.asarray(gen.response_mask).sum(axis=1)[:real])
        proxy = np.asarray(score(gen))[:real] if score is not None else np.full(real, np.nan)
        gold = (np.asarray([gold_reward(p, y, bool(e)) for p, y, e in zip(chunk, texts, ended)])[:real]
                if gold_reward is not None else np.full(real, np.nan))
        proxies.append(proxy)
        golds.append(gold)
        samples += [{"prompt": p, "response": y, "ended_with_eos": bool(e), "gold_reward": float(g),
                     "proxy_reward": float(r)} for p, y, e, g, r in zip(chunk, texts, ended, gold, proxy)]
    kl_seq = np.concatenate(kls)
    return {"gold_reward": float(np.mean(np.concatenate(golds))),
            "proxy_reward": float(np.mean(np.concatenate(proxies))),
            "kl": float(kl_seq.mean()), "sqrt_kl": float(np.sqrt(max(kl_seq.mean(), 0.0))),
            "eos_rate": float(np.mean(np.concatenate(ends))),
            "response_length": float(np.mean(np.concatenate(lengths))), "samples": samples}


def evaluate_policy_samples(lm: TransformerLM, params, ref_params, tokenizer: Tokenizer, prompts: Sequence[str],
                            key: jax.Array, *, max_new_tokens: int, gold_reward: Callable | None = None,
                            batch_size: int = 64) -> dict:
    """One sample per prompt from the policy ``params``: the exact KL to the reference summed
    over the response (nats per sequence), the EOS rate and, with ``gold_reward(response,
    ended)``, the mean gold reward (:func:`evaluate_samples` with a plain
    sampler: no reward model, no RLHF programs)."""
    source = PromptSource(tokenizer, prompts)
    generate = make_generate(lm, SamplingConfig(max_new_tokens=max_new_tokens), eos_id=tokenizer.eos_id,
                             pad_id=tokenizer.pad_id)
    kl = jax.jit(lambda p, r, g: sequence_kl(lm, p, lm, r, g.sequences, g.attention_mask, g.response_mask,
                                             source.width))
    gold = None if gold_reward is None else (lambda prompt, response, ended: gold_reward(response, ended))
    out = evaluate_samples(generate, kl, params, ref_params=ref_params, tokenizer=tokenizer, prompts=source,
                           eval_prompts=prompts, key=key, batch_size=min(batch_size, len(prompts)), gold_reward=gold)
    return {"kl": out["kl"], "eos_rate": out["eos_rate"], "gold_reward": out["gold_reward"] if gold else None}
