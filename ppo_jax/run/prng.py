"""Threefry random bits on CPU as one fused kernel instead of a five-iteration loop.

JAX lowers its default PRNG (threefry-2x32) on CPU with its five rounds *rolled* into a
``while`` loop, to keep compile times down for programs that draw a few large arrays. A
training run draws many tiny ones: an action per step, each environment's step and reset
keys, a permutation per epoch; on XLA:CPU each of those loops costs about a dozen small
kernels and buffer copies per round. The unrolled lowering (the one JAX uses on GPU and
TPU) computes the very same bits and fuses into one kernel.

It is registered through a private JAX module, so it is used only on the JAX versions where
it was measured to pay (``MEASURED``); every other version keeps JAX's own lowering, which
is slower here but equally correct:

- jax 0.10: CartPole PPO 152k steps/s against 112k with JAX's lowering, compile 4.7 s
  against 5.0 s (2-core Xeon). Used.
- jax 0.11: 155k against 115k steps/s, but the training program compiles in 7.1 s against
  4.7 s, and the initialisation program (a vmapped gymnax reset inside a vmap over seeds)
  did not finish compiling (stopped after 2 minutes here; 10 in the first report). Not used.
- any other version: not measured; JAX's lowering, with a one-line note on stderr.

``RL_JAX_UNROLLED_THREEFRY=0`` keeps JAX's lowering on every version; ``=1`` asks for the
unrolled one on any version (to measure a new JAX), still falling back if the private
module moved.
"""

from __future__ import annotations

from ppo_jax.run.settings import env_setting, note_once

NAME = "UNROLLED_THREEFRY"
ENV = "RL_JAX_UNROLLED_THREEFRY"
# (major, minor) -> whether the unrolled lowering is used there by default.
MEASURED = {(0, 10): True, (0, 11): False}

_installed = False


def jax_minor(version: str) -> tuple[int, int] | None:
    """``(major, minor)`` of a version string such as ``0.10.2`` or ``0.11.0rc1``; None if unparsable."""
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def decide(version: str, setting: str | None) -> tuple[bool, str | None]:
    """Whether to register the unrolled lowering on JAX ``version`` given the environment
    variable's value (None when unset), and the note to print, if any."""
    if setting == "0":
        return False, None
    if setting == "1":
        return True, None
    if setting is not None:
        return False, f"{ENV}={setting!r} is neither 0 nor 1; using JAX's own threefry lowering"
    measured = MEASURED.get(jax_minor(version))
    if measured is None:
        return False, (f"jax {version} is not one of the versions this release was measured on; "
                       f"using JAX's own threefry lowering ({ENV}=1 tries the faster one)")
    return measured, None


def install() -> bool:
    """Registers the unrolled threefry lowering on CPU (once) where :func:`decide` says so;
    returns whether it is in place."""
    global _installed
    if _installed:
        return True
    import jax

    wanted, note = decide(jax.__version__, env_setting(NAME))
    if note:
        note_once(f"ppo-jax: note: {note}")
    if not wanted:
        return False
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32

        mlir.register_lowering(threefry2x32.threefry2x32_p, threefry2x32._threefry2x32_lowering_rule,
                               platform="cpu")
    except (ImportError, AttributeError):
        note_once(f"ppo-jax: note: jax {jax.__version__} moved its threefry lowering; using JAX's own")
        return False
    _installed = True
    return True
