"""The process-wide settings the library needs, made by one explicit, idempotent call.

Importing ``ppo_jax`` or ``rlhf_jax`` changes no global state. :func:`configure` is called by
the command-line entry points first thing and by the library functions that build programs
(the environments on first use, ``make_train``), so a user calls it only to be sure of the
XLA flag when they start JAX's CPU backend themselves (any computation) before either.

What it sets:

- ``--xla_cpu_enable_concurrency_optimized_scheduler=false`` in ``XLA_FLAGS``: XLA:CPU's
  concurrency-optimised scheduler can deadlock a vmapped program that holds a batched QR (the
  orthogonal initialiser) on a 2-core machine, two thunks each holding one pool thread; with it
  off no run hung and nothing measurable was lost. It only takes effect before the CPU backend
  starts; after that a one-line note says so.
- the PRNG lowering of :mod:`ppo_jax.run.prng` (programs that draw many small random arrays).
"""

from __future__ import annotations

import os

from ppo_jax.run import prng
from ppo_jax.run.settings import note_once

XLA_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
_configured = False


def backend_started() -> bool:
    """Whether JAX has started a backend (then ``XLA_FLAGS`` is read already); True when this
    JAX cannot tell."""
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return True


def configure() -> None:
    """Sets the XLA flag (while the backend has not started) and the PRNG lowering, once."""
    global _configured
    if _configured:
        return
    _configured = True
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
        if not backend_started():
            os.environ["XLA_FLAGS"] = (flags + " " + XLA_FLAG).strip()
        else:
            import jax

            if jax.default_backend() == "cpu":
                note_once(f"ppo-jax: note: JAX's CPU backend started before ppo_jax.configure(), without {XLA_FLAG}; "
                          f"a vmapped program can deadlock on a 2-core CPU: call ppo_jax.configure() before any JAX "
                          f"computation, or set XLA_FLAGS={XLA_FLAG}")
    prng.install()
