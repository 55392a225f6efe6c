"""Pack a pytree's leaves into one array per dtype, and back.

On XLA:CPU every gather has a fixed cost; for a minibatch of a few small fields that
cost, paid once per field, outweighed the arithmetic. Packing gathers once per dtype.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp


def pack(tree: Any, batch_ndim: int) -> tuple[dict, Callable[[dict], Any]]:
    """Concatenates leaves of equal dtype along one trailing axis.

    The first ``batch_ndim`` axes are kept (they must agree across leaves). Returns the
    packed arrays keyed by dtype name and an ``unpack`` function that rebuilds the tree
    from packed arrays with any leading axes (for example after a row gather).
    """
    leaves, treedef = jax.tree.flatten(tree)
    lead = leaves[0].shape[:batch_ndim]
    groups: dict[str, list[int]] = {}
    for i, leaf in enumerate(leaves):
        groups.setdefault(jnp.dtype(leaf.dtype).name, []).append(i)
    trailing = [leaf.shape[batch_ndim:] for leaf in leaves]
    widths = [math.prod(t) for t in trailing]
    packed = {name: jnp.concatenate([leaves[i].reshape(lead + (-1,)) for i in idx], axis=-1)
              for name, idx in groups.items()}

    num_leaves = len(leaves)

    def unpack(arrays: dict) -> Any:
        out = [None] * num_leaves
        for name, idx in groups.items():
            arr = arrays[name]
            start = 0
            for i in idx:
                out[i] = arr[..., start:start + widths[i]].reshape(arr.shape[:-1] + trailing[i])
                start += widths[i]
        return jax.tree.unflatten(treedef, out)

    return packed, unpack


def permute_rows(tree: Any, perm: jax.Array) -> Any:
    """``tree`` with every leaf's rows (axis 0) reordered by ``perm``, one gather per dtype."""
    packed, unpack = pack(tree, 1)
    return unpack({name: arr[perm] for name, arr in packed.items()})
