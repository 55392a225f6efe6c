"""Devices and hosts: a mesh over them, and how a run's seeds or environments are split.

Two layouts, both on JAX's own machinery (``jax.sharding``, ``jax.shard_map``,
``jax.distributed``), never ``pmap``:

- **seeds** (``num_seeds > 1``): ``shard_map`` over a 1-D mesh, each device runs
  ``vmap(train)`` over its own seeds. Seeds never talk to each other, so the program has
  no collectives and every seed computes exactly what it would alone.
- **envs** (one seed): sharding constraints on every leaf that leads with the
  environment axis (env state, observations) and on the minibatch rows. XLA then steps
  each device's environments there and takes each device's share of every minibatch's
  gradient, averaging them with an all-reduce, inside the one compiled program. The
  program means what the single-device one means; only the placement differs.

Several hosts: :func:`initialize_from_env` joins them through ``jax.distributed``
before anything else touches JAX; the mesh then spans every process's devices and the
same code runs on all of them (single program, multiple data).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ppo_jax.run.settings import note_once

SEEDS = "seeds"
ENVS = "envs"


def initialize_from_env() -> bool:
    """Joins a multi-process run when ``JAX_COORDINATOR_ADDRESS`` is set.

    Reads ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0), ``JAX_NUM_PROCESSES``
    and ``JAX_PROCESS_ID``, and calls ``jax.distributed.initialize``. Returns whether it
    did. Must run before any JAX computation in the process, and before gymnax is
    imported (it starts the backend): ``ppo-jax`` calls it before importing the rest.
    """
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not address:
        return False
    if jax.distributed.is_initialized():
        return True
    values = {}
    for name in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        raw = os.environ.get(name)
        if raw is None:
            raise ValueError(f"{name}: must be set with JAX_COORDINATOR_ADDRESS={address} (a multi-process run)")
        try:
            values[name] = int(raw)
        except ValueError:
            raise ValueError(f"{name}: expected an integer, got {raw!r}") from None
    n, i = values["JAX_NUM_PROCESSES"], values["JAX_PROCESS_ID"]
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"JAX_PROCESS_ID: must be in [0, JAX_NUM_PROCESSES={n}), got {i}")
    jax.distributed.initialize(coordinator_address=address, num_processes=n, process_id=i)
    # The CPU collectives (gloo) print a line to the C++ stdout when they first connect, which
    # would land in the middle of the run's report: connect them now, quietly.
    from jax.experimental import multihost_utils

    barrier("ppo_jax.start")
    with _quiet_stdout():
        multihost_utils.process_allgather(np.zeros(1, np.int32))
    return True


@dataclass(frozen=True)
class Layout:
    """Where a run's arrays live: ``axis`` is ``"seeds"``, ``"envs"`` or None (one device)."""

    mesh: Mesh | None
    axis: str | None

    @property
    def num_devices(self) -> int:
        return 1 if self.mesh is None else self.mesh.devices.size

    def describe(self) -> str:
        if self.mesh is None:
            return f"1 device ({jax.devices()[0].platform})"
        hosts = f" on {jax.process_count()} processes" if jax.process_count() > 1 else ""
        return f"{self.num_devices} {jax.devices()[0].platform} devices{hosts}, split by {self.axis}"


def choose_layout(num_seeds: int, num_envs: int, devices: int | None = None) -> Layout:
    """Seeds across devices when there are several, else the environments of the one seed.

    ``devices=None`` takes all devices when they divide the split axis evenly (and, on one
    host, the most that do otherwise); an explicit count that does not divide it is an error.
    """
    available = jax.devices()
    axis, size = (SEEDS, num_seeds) if num_seeds > 1 else (ENVS, num_envs)
    field = "num_seeds" if axis == SEEDS else "num_envs"
    if devices is not None:
        if not 1 <= devices <= len(available):
            raise ValueError(f"devices: must be between 1 and the {len(available)} available, got {devices}")
        n = devices
    elif jax.process_count() > 1:
        n = len(available)  # every process must take part
    else:
        n = max(d for d in range(1, len(available) + 1) if size % d == 0)
    if size % n:
        raise ValueError(f"devices: {n} devices do not divide {field}={size} "
                         f"(a run splits its {axis} evenly across devices)")
    if n == 1:
        return Layout(None, None)
    return Layout(Mesh(np.asarray(available[:n]), (axis,)), axis)


def leading_axis_constraint(mesh: Mesh, axis: str) -> Callable[[Any], Any]:
    """``tree -> tree`` with every leaf whose leading axis the mesh divides sharded along it
    (the rest replicated). Inside ``jit`` this only places data; the values are unchanged."""
    n = mesh.devices.size

    def constrain(tree):
        def one(x):
            spec = P(axis) if x.ndim >= 1 and x.shape[0] % n == 0 else P()
            return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
        return jax.tree.map(one, tree)

    return constrain


def place(layout: Layout, fn: Callable, in_specs=P(SEEDS), out_specs=P(SEEDS)) -> Callable:
    """``fn`` (already ``vmap``-ed over seeds) as one jitted program on ``layout``; in the
    seeds layout each device runs it on its own seeds, found where ``in_specs`` and
    ``out_specs`` put the seeds axis (default: every array leads with it)."""
    if layout.axis == SEEDS:
        # check_vma=False: the seeds never communicate, and scan carries built from
        # constants (e.g. the KL-stop flag) would otherwise need pcast annotations.
        return jax.jit(jax.shard_map(fn, mesh=layout.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False))
    return jax.jit(fn)


def global_array(layout: Layout, value: np.ndarray, spec: P | None = None) -> jax.Array:
    """A host array as one array over the layout's devices (split as ``spec`` says; by
    default along its leading seed axis in the seeds layout, replicated otherwise); works
    across processes."""
    value = np.asarray(value)
    if layout.mesh is None:
        return jax.device_put(value)
    if spec is None:
        spec = P(SEEDS) if layout.axis == SEEDS else P()
    sharding = NamedSharding(layout.mesh, spec)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


_barriers = iter(range(1 << 62))


def barrier(name: str, timeout_s: int = 900) -> None:
    """Waits for every process (no-op with one). Before a cross-process collective: the
    CPU collectives (gloo) give up after 30 s if one process compiles more slowly."""
    if jax.process_count() <= 1:
        return
    label = f"{name}:{next(_barriers)}"
    client = _coordination_client()
    if client is not None:
        client.wait_at_barrier(label, timeout_in_ms=timeout_s * 1000)
        return
    from jax.experimental import multihost_utils

    # A collective barrier: the same wait, but subject to the collectives' own timeout.
    multihost_utils.sync_global_devices(label)


def _coordination_client():
    """JAX's coordination-service client, which has a barrier with a timeout of our choosing;
    the public API has only collective barriers. Private, so a JAX that moved it gets None
    (and one note)."""
    try:
        from jax._src import distributed as _distributed

        client = _distributed.global_state.client
        if client is not None and hasattr(client, "wait_at_barrier"):
            return client
    except (ImportError, AttributeError):
        pass
    note_once(f"ppo-jax: note: jax {jax.__version__} has no coordination-service barrier where it used to; "
              "waiting on a collective barrier instead")
    return None


def fetch(tree):
    """Every leaf as a host numpy array, gathered from all processes when there are several."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        barrier("ppo_jax.fetch")
        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
    return jax.tree.map(np.asarray, jax.device_get(tree))


@contextlib.contextmanager
def _quiet_stdout():
    """The file descriptor 1 on /dev/null (what C++ code prints there too)."""
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
