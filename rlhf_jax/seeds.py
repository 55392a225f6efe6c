"""Named seed streams: every stage's seed comes from the run's seed by name, in one place.

Two families, because they feed two kinds of generator: a task's prompt sampler takes an
integer seed (:func:`prompt_seed`), JAX's sampling a PRNG key (:func:`stream_key`). The
offsets are the ones earlier releases used, so a run with the same seed repeats exactly.
"""

from __future__ import annotations

import jax

PROMPTS = {"pairs": 1, "rl_pool": 2, "heldout": 3}
"""Offsets of ``task.prompts(seed=...)``: the prompts preference pairs are sampled on; the RL
prompt pool (also the fresh prompts ``rlhf-jax rm`` and ``dpo`` evaluate on: none of them is
in a pair); the held-out prompts RL is evaluated on."""

KEYS = {"rm_dpo_samples": 3, "evaluation": 4, "best_of_n": 5}
"""Offsets of the PRNG keys: the responses ``rlhf-jax rm`` and ``dpo`` score on fresh prompts;
the evaluation of each policy on the held-out prompts; best-of-n's samples."""


def prompt_seed(seed: int, name: str) -> int:
    """The integer seed of prompt stream ``name`` (:data:`PROMPTS`) of a run seeded ``seed``."""
    return seed + PROMPTS[name]


def stream_key(seed: int, name: str) -> jax.Array:
    """The PRNG key of sampling stream ``name`` (:data:`KEYS`) of a run seeded ``seed``."""
    return jax.random.PRNGKey(seed + KEYS[name])
