"""Several seeds in one program on every core: the seeds vmapped in independent groups.

A vmapped training program keeps about one core of a CPU busy: its matmuls (64 x 64
layers, a few hundred rows) are too small for XLA:CPU to split across threads, and one
update's steps depend on each other. Two vmaps over half the seeds each, in the same
compiled program, share nothing, so XLA:CPU runs them side by side on two threads:
8 CartPole seeds on a 2-core CPU ran 1.16-1.29x the steps/s of one vmap over all 8
(alternated runs). The cost: the program holds the training loop once per group, so it
compiles longer (6.2-8.9 s against 5.2-7.2 s there).

Each seed computes what it computes under a plain ``jax.vmap`` up to float32 rounding:
the batch size of a vmapped op changes its rounding, as it already does between 8 seeds
and 1. The same command gives the same numbers run after run.
"""

from __future__ import annotations

import os
from typing import Callable

import jax
import jax.numpy as jnp

from ppo_jax.local_processes import usable_cores


def vmap_seeds(fn: Callable, groups: int = 1) -> Callable:
    """``jax.vmap(fn)`` over the leading (seed) axis of every argument, computed as ``groups``
    vmaps over equal consecutive slices of the seeds whose outputs are concatenated.
    ``groups`` must divide the number of seeds (checked when it is called)."""
    if groups < 1:
        raise ValueError(f"groups: must be >= 1, got {groups}")
    batched = jax.vmap(fn)
    if groups == 1:
        return batched

    def grouped(*args):
        num_seeds = jax.tree.leaves(args)[0].shape[0]
        if num_seeds % groups:
            raise ValueError(f"groups: {groups} groups do not divide {num_seeds} seeds evenly")
        size = num_seeds // groups
        outs = [batched(*jax.tree.map(lambda x, i=i: x[i * size:(i + 1) * size], args)) for i in range(groups)]
        return jax.tree.map(lambda *parts: jnp.concatenate(parts), *outs)

    return grouped


def default_groups(num_seeds: int, cores: int | None = None) -> int:
    """On a CPU backend, the most groups up to the usable cores that divide ``num_seeds``;
    1 on an accelerator (one program there already fills the device) or with
    ``PPO_JAX_SEED_GROUPS=1`` (any other value sets the count, if it divides the seeds)."""
    forced = os.environ.get("PPO_JAX_SEED_GROUPS")
    if forced:
        n = int(forced)
        if n < 1 or num_seeds % n:
            raise ValueError(f"PPO_JAX_SEED_GROUPS: must be a divisor of --num-seeds {num_seeds}, got {forced!r}")
        return n
    if jax.default_backend() != "cpu":
        return 1
    cores = usable_cores() if cores is None else cores
    return max(g for g in range(1, min(cores, num_seeds) + 1) if num_seeds % g == 0)
