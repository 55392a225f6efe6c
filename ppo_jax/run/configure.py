"""The process-wide settings the library needs, made by one explicit, idempotent call.

Importing ``ppo_jax`` or ``rlhf_jax`` changes no global state. :func:`configure` is called by
the command-line entry points first thing and by the library functions that build programs
(the environments on first use, ``make_train``), so a user calls it only to be sure of the
XLA flag when they start JAX's CPU backend themselves (any computation) before either.

What it sets:

- XLA:CPU's concurrency-optimised scheduler (on by default in XLA), which runs a program's
  independent operations at once: off (``--xla_cpu_enable_concurrency_optimized_scheduler=false``
  in ``XLA_FLAGS``) unless the environment's adapter gains from it
  (:attr:`ppo_jax.adapters.Adapter.concurrent`: Brax's). Measured on a 2-core CPU, one process at
  a time, alternated: gymnax CartPole 146k steps/s with it against 160k without, Playground
  CartpoleBalance 62k against 67k; Brax hopper 17.8k against 16.7k at 64 environments and 15.1k
  against 13.6k at 2048. It only takes effect before the CPU backend starts, and a flag the user
  set is kept. (It once also guarded against a deadlock: a vmapped program holding a batched
  LAPACK QR, flax's orthogonal init, hung it on 2 cores. Our networks initialise without one,
  :mod:`ppo_jax.orthogonal_init`.)
- the PRNG lowering of :mod:`ppo_jax.run.prng` (programs that draw many small random arrays).
"""

from __future__ import annotations

import os

from ppo_jax.run import prng

SCHEDULER = "xla_cpu_enable_concurrency_optimized_scheduler"
SCHEDULER_OFF = f"--{SCHEDULER}=false"
_configured = False


def backend_started() -> bool:
    """Whether JAX has started a backend (then ``XLA_FLAGS`` is read already); True when this
    JAX cannot tell."""
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return True


def scheduler_wanted(env_id: str | None) -> bool:
    """Whether the programs of ``env_id`` run faster with XLA:CPU's concurrency-optimised scheduler."""
    from ppo_jax.adapters import adapter_of

    adapter = adapter_of(env_id) if env_id else None
    return bool(adapter is not None and adapter.concurrent)


def configure(env_id: str | None = None) -> None:
    """Sets the scheduler flag for ``env_id`` (None: gymnax's setting) while the backend has
    not started, and the PRNG lowering; the first call decides."""
    global _configured
    if _configured:
        return
    _configured = True
    flags = os.environ.get("XLA_FLAGS", "")
    if SCHEDULER not in flags and not scheduler_wanted(env_id) and not backend_started():
        os.environ["XLA_FLAGS"] = (flags + " " + SCHEDULER_OFF).strip()
    prng.install()
