"""Data parallelism and FSDP-style parameter sharding for the RLHF programs (``jax.sharding``).

A 1-D mesh with axis ``"data"``. Batches (prompts, generations, minibatch rows) are split
along their leading axis across it: each device samples, scores and takes the gradient
of its rows, and XLA all-reduces the gradients inside the compiled update.

With ``fsdp=True`` every parameter and optimiser-state array is also split across the
mesh, along its largest axis the mesh size divides (ZeRO-3 / FSDP): a device holds
``1/n`` of each model and its Adam moments, and XLA gathers a layer's weights where the
computation needs them. Without it they are replicated (plain data parallelism).
Sharding only places arrays: the programs compute what the one-device programs compute,
up to the order of floating-point sums.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"


def data_mesh(devices: int | None = None) -> Mesh | None:
    """A mesh over the first ``devices`` devices (default: all); None for one device."""
    available = jax.devices()
    n = len(available) if devices is None else devices
    if not 1 <= n <= len(available):
        raise ValueError(f"devices: must be between 1 and the {len(available)} available, got {devices}")
    return None if n == 1 else Mesh(np.asarray(available[:n]), (DATA,))


def param_spec(shape: tuple[int, ...], n: int) -> P:
    """FSDP placement of one array: its largest axis that ``n`` divides, else replicated."""
    axes = [i for i, d in enumerate(shape) if d % n == 0 and d >= n]
    if not axes:
        return P()
    axis = max(axes, key=lambda i: shape[i])
    return P(*([None] * axis + [DATA]))


def batch_spec(shape: tuple[int, ...], n: int) -> P:
    return P(DATA) if shape and shape[0] % n == 0 else P()


def _shardings(tree, mesh: Mesh, spec_of):
    n = mesh.devices.size
    return jax.tree.map(lambda x: NamedSharding(mesh, spec_of(tuple(np.shape(x)), n)), tree)


def param_shardings(tree, mesh: Mesh, fsdp: bool):
    return _shardings(tree, mesh, param_spec if fsdp else (lambda shape, n: P()))


def put_params(tree, mesh: Mesh | None, fsdp: bool):
    """Parameters / optimiser state onto the mesh (sharded with ``fsdp``, else replicated)."""
    return tree if mesh is None else jax.device_put(tree, param_shardings(tree, mesh, fsdp))


def put_batch(tree, mesh: Mesh | None):
    """Arrays with a leading batch axis onto the mesh, split along it."""
    return tree if mesh is None else jax.device_put(tree, _shardings(tree, mesh, batch_spec))


def constrain_params(tree, mesh: Mesh | None, fsdp: bool):
    """Inside ``jit``: keeps parameters where :func:`put_params` put them (so an update's
    outputs stay sharded instead of wherever XLA's propagation would leave them)."""
    if mesh is None:
        return tree
    return jax.tree.map(jax.lax.with_sharding_constraint, tree, param_shardings(tree, mesh, fsdp))


def constrain_batch(tree, mesh: Mesh | None):
    if mesh is None:
        return tree
    return jax.tree.map(jax.lax.with_sharding_constraint, tree, _shardings(tree, mesh, batch_spec))
