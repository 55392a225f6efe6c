"""Critic-free advantages from a group of responses to one prompt (GRPO, RLOO).

With ``G`` responses sampled per prompt, the other responses' rewards are the baseline, so
no value model is needed. Rows are grouped contiguously: rows ``g*G .. g*G + G - 1`` answer
prompt ``g``.

- GRPO (Shao et al. 2024): ``A_i = (r_i - mean_g r) / (std_g r + eps)``, the std unbiased
  (``ddof=1``, as TRL's ``GRPOTrainer``); ``scale=False`` (Dr. GRPO) drops the division,
  which biases the gradient towards groups of low spread.
- RLOO (Ahmadian et al. 2024): ``A_i = r_i - mean_{j != i} r_j = G / (G - 1) (r_i - mean_g r)``.
  Every other sample is independent of sample ``i``, so the baseline leaves the policy
  gradient estimator unbiased (docs/theory.md §2: any baseline not depending on the action).

A sequence-level advantage applies to every response token (:func:`to_tokens`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ESTIMATORS = ("grpo", "grpo-unscaled", "rloo")


def group_advantages(rewards: jax.Array, group_size: int, estimator: str = "grpo", eps: float = 1e-4) -> jax.Array:
    """``[B]`` sequence-level advantages of ``rewards`` ``[B]`` (``B`` a multiple of ``group_size``).

    A group whose rewards are all equal gets advantage 0 (no NaN): it says nothing about
    which response is better.
    """
    if group_size < 2:
        raise ValueError(f"group_size: must be at least 2 (a group's baseline is its other responses), "
                         f"got {group_size}")
    if rewards.shape[0] % group_size:
        raise ValueError(f"group_size: {group_size} does not divide the {rewards.shape[0]} responses")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator: must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    r = rewards.reshape(-1, group_size).astype(jnp.float32)
    centred = r - r.mean(axis=1, keepdims=True)
    if estimator == "rloo":
        adv = centred * (group_size / (group_size - 1))
    elif estimator == "grpo":
        adv = centred / (jnp.std(r, axis=1, ddof=1, keepdims=True) + eps)
    else:
        adv = centred
    return adv.reshape(-1)


def to_tokens(advantages: jax.Array, response_mask: jax.Array) -> jax.Array:
    """The sequence advantage ``[B]`` on each response token ``[B, N]`` (0 outside the mask)."""
    return advantages[:, None] * response_mask.astype(jnp.float32)
