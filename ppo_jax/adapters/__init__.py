"""Environments shipped as adapters, named ``prefix:name`` as ``config.env``:

- ``pomdp:<classic-control id>``: the gymnax environment with its velocities hidden from the
  observation (a task that needs memory; :mod:`ppo_jax.adapters.pomdp`);
- ``brax:<name>`` and ``playground:<name>``: Brax and MuJoCo Playground environments, with
  termination and truncation kept apart (:mod:`ppo_jax.adapters.physics`; optional extras).

Each adapter module has ``make(name) -> (env, params)`` with gymnax's functional API.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Adapter:
    module: str
    """The module whose ``make(name)`` builds the environment."""
    extra: str | None = None
    """The optional dependency group that installs its simulator (None: nothing beyond the core)."""
    library: str | None = None
    """The simulator's import name."""
    concurrent: bool = False
    """Its programs run faster with XLA:CPU's concurrency-optimised scheduler (Brax's positional
    pipeline: 5% at 64 environments, 11% at 2048; Playground's MJX, like gymnax, runs 8-9% slower
    with it), which :func:`ppo_jax.run.configure.configure` then leaves on."""


ADAPTERS = {
    "pomdp": Adapter("ppo_jax.adapters.pomdp"),
    "brax": Adapter("ppo_jax.adapters.brax", extra="brax", library="brax", concurrent=True),
    "playground": Adapter("ppo_jax.adapters.playground", extra="playground", library="mujoco_playground"),
}
"""Prefix -> its :class:`Adapter`."""

SIMULATORS = tuple(prefix for prefix, adapter in ADAPTERS.items() if adapter.extra)
"""The prefixes of physics simulators (optional extras). Their runs stay in one process: their
programs close over arrays that, in one process of a multi-process run, belong to the whole
run's devices, which JAX refuses to compile."""


def adapter_of(env_id: str) -> Adapter | None:
    """The adapter ``env_id`` (``prefix:name``) names, or None."""
    return ADAPTERS.get(env_id.partition(":")[0]) if ":" in env_id else None
