"""Preference pairs made the way real labels are (docs/theory.md §10).

For each prompt, two responses are sampled from the SFT policy; the labeller prefers the
first with probability ``sigmoid((r*(y1) - r*(y2)) / tau)`` (Bradley-Terry over the gold
reward, with temperature ``tau``), and a label is flipped with probability
``flip_prob`` (careless labellers). The Bayes-optimal accuracy of such labels, the best any
reward model can score on them, is the mean of ``max(q, 1 - q)`` over pairs, with ``q`` the
probability (after flips) that the first response is labelled chosen.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np

from rlhf_jax.data import padded_chunks
from rlhf_jax.sampling import SamplingConfig, ended_with_eos, make_generate
from rlhf_jax.tokenizer import Tokenizer
from rlhf_jax.transformer import TransformerLM


def label_probability(r1: np.ndarray, r2: np.ndarray, tau: float, flip_prob: float = 0.0) -> np.ndarray:
    """``q``: the probability that the first response is labelled chosen."""
    if not tau > 0:
        raise ValueError(f"tau: must be positive, got {tau}")
    if not 0.0 <= flip_prob <= 0.5:
        raise ValueError(f"flip_prob: must be in [0, 0.5], got {flip_prob}")
    p = 1.0 / (1.0 + np.exp(-(np.asarray(r1, np.float64) - np.asarray(r2, np.float64)) / tau))
    return (1.0 - flip_prob) * p + flip_prob * (1.0 - p)


def bayes_accuracy(q: np.ndarray) -> float:
    """Expected accuracy of the best possible predictor of the labels."""
    q = np.asarray(q, np.float64)
    return float(np.mean(np.maximum(q, 1.0 - q)))


def expected_accuracy(r_chosen: np.ndarray, r_rejected: np.ndarray, label_prob: np.ndarray) -> float:
    """Expected accuracy of a reward model on labels drawn as these were: a pair it orders as
    labelled is right with probability ``label_prob`` (the labeller's chance of that label),
    one it orders the other way with ``1 - label_prob``, a tie with 1/2.

    The same quantity as :func:`bayes_accuracy` (which it equals exactly when the model
    orders every pair as the gold reward does) without the noise of the one label drawn per
    pair: on 300 held-out pairs that noise alone has a standard deviation of 2 points.
    """
    gap = np.asarray(r_chosen, np.float64) - np.asarray(r_rejected, np.float64)
    q = np.asarray(label_prob, np.float64)
    return float(np.mean(np.where(gap > 0, q, np.where(gap < 0, 1.0 - q, 0.5))))


def sample_responses(model: TransformerLM, params, tokenizer: Tokenizer, prompts: Sequence[str],
                     sampling: SamplingConfig, key: jax.Array,
                     batch_size: int = 64) -> tuple[list[str], np.ndarray, np.ndarray]:
    """One sampled response per prompt: its text up to EOS, whether it ended with EOS, and its
    number of tokens (EOS included). Prompts go in left-padded, BOS first, in fixed-size batches."""
    generate = make_generate(model, sampling, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    batch_size = min(batch_size, len(prompts))
    texts, ended, lengths = [], [], []
    width = longest_prompt(tokenizer, prompts)
    for chunk, real in padded_chunks(prompts, batch_size):  # fixed shapes: one compiled program
        batch = tokenizer.encode_batch(chunk, padding_side="left", add_bos=True, max_length=width)
        key, k = jax.random.split(key)
        out = generate(params, batch.input_ids, batch.attention_mask, k)
        response, mask = np.asarray(out.response)[:real], np.asarray(out.response_mask)[:real]
        texts += tokenizer.decode_batch(response, mask)
        ended.append(ended_with_eos(response, mask, tokenizer.eos_id))
        lengths.append(mask.sum(axis=1))
    return texts, np.concatenate(ended), np.concatenate(lengths)


def longest_prompt(tokenizer: Tokenizer, prompts: Sequence[str]) -> int:
    """Tokens in the longest prompt with its BOS."""
    return max(len(tokenizer.encode(p)) + len(tokenizer.bos_ids) for p in prompts)


def new_token_room(tokenizer: Tokenizer, prompts: Sequence[str], max_len: int, cap: int) -> int:
    """How many tokens fit after the longest prompt in a context of ``max_len``, at most ``cap``."""
    return min(cap, max_len - longest_prompt(tokenizer, prompts))


def make_preference_pairs(model: TransformerLM, params, tokenizer: Tokenizer, prompts: Sequence[str],
                          gold_reward: Callable[[str, bool], float], *, sampling: SamplingConfig, tau: float,
                          flip_prob: float = 0.0, seed: int = 0) -> tuple[list[dict], float]:
    """Pairs ``{prompt, chosen, rejected, margin, label_prob}`` labelled by sampling, and their Bayes accuracy.

    ``margin`` is the gold-reward gap of the pair as labelled (chosen minus rejected), for
    users who train with margins; the labels themselves are noisy as described above.
    """
    key = jax.random.PRNGKey(seed)
    k1, k2 = jax.random.split(key)
    y1, e1, _ = sample_responses(model, params, tokenizer, prompts, sampling, k1)
    y2, e2, _ = sample_responses(model, params, tokenizer, prompts, sampling, k2)
    r1 = np.asarray([gold_reward(t, bool(e)) for t, e in zip(y1, e1)])
    r2 = np.asarray([gold_reward(t, bool(e)) for t, e in zip(y2, e2)])
    q = label_probability(r1, r2, tau, flip_prob)
    first = np.random.default_rng(seed).random(len(q)) < q
    pairs = []
    for i, prompt in enumerate(prompts):
        (c, rc), (r, rr) = ((y1[i], r1[i]), (y2[i], r2[i])) if first[i] else ((y2[i], r2[i]), (y1[i], r1[i]))
        # label_prob: the probability the labeller had of choosing this "chosen" (q or 1 - q).
        pairs.append({"prompt": prompt, "chosen": c, "rejected": r, "margin": float(rc - rr),
                      "label_prob": float(q[i] if first[i] else 1.0 - q[i])})
    return pairs, bayes_accuracy(q)
