"""Epochs x minibatches: the loop every update rule with several gradient steps per batch runs.

PPO, the critic regression of TRPO and REINFORCE-with-baseline, and the RLHF
update all take ``epochs`` passes over a batch, each a fresh random order of its rows split
into equal minibatches, one optimiser step per minibatch.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from ppo_jax.packing import permute_rows, shuffled_indices


def minibatch_epochs(step: Callable[[Any, Any], tuple[Any, dict]], carry: Any, data: Any, key: jax.Array, *,
                     epochs: int, minibatches: int,
                     stop_when: Callable[[dict], jax.Array] | None = None) -> tuple[Any, dict]:
    """Runs ``step(carry, minibatch) -> (carry, aux)`` over ``epochs`` x ``minibatches``.

    ``data`` is a pytree whose leaves share their rows (axis 0). Each epoch draws a fresh
    permutation from its own key and splits the rows into ``minibatches`` minibatches of
    ``rows // minibatches`` (rows left over are skipped that epoch). ``aux`` is a dict of
    scalars; it comes back with leading ``[epochs, minibatches]`` axes.

    ``stop_when(aux)``: once it is true, every later step of the update (the remaining
    minibatches *and* epochs) leaves ``carry`` unchanged, a mask rather than a ``break``;
    the step that crossed is kept. ``aux["applied"]`` is then 1 for the steps that were.
    """
    rows = jax.tree.leaves(data)[0].shape[0]
    size = rows // minibatches
    names: list[str] = []

    def one_step(state, mb):
        carry, stopped = state
        new, aux = step(carry, mb)
        if stop_when is not None:
            new = jax.tree.map(lambda n, o: jnp.where(stopped, o, n), new, carry)
            aux = {**aux, "applied": 1.0 - stopped.astype(jnp.float32)}
            stopped = stopped | stop_when(aux)
        names[:] = list(aux)
        # One stacked output per step: on XLA:CPU every scan output costs a fixed
        # per-iteration write, which for ten scalars outweighed a small SGD step itself.
        return (new, stopped), jnp.stack([jnp.asarray(aux[k], jnp.float32) for k in names])

    def epoch(state, epoch_key):
        order = shuffled_indices(epoch_key, rows)[: size * minibatches]
        mbs = jax.tree.map(lambda x: x.reshape((minibatches, size) + x.shape[1:]), permute_rows(data, order))
        return jax.lax.scan(one_step, state, mbs)

    (carry, _), stacked = jax.lax.scan(epoch, (carry, jnp.asarray(False)), jax.random.split(key, epochs))
    return carry, {k: stacked[..., i] for i, k in enumerate(names)}
