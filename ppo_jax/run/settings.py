"""Environment variables of the run toolkit, under names shared by ``ppo-jax`` and ``rlhf-jax``.

Each toolkit variable is ``RL_JAX_<NAME>``. The ``PPO_JAX_<NAME>`` spelling of earlier
releases still works, with a one-line deprecation note on stderr (once per variable). Notes of
this kind (:func:`note_once`) say something once per process, never as a warning: the
commands' output stays free of warnings on a default run.
"""

from __future__ import annotations

import os
import sys

PREFIX = "RL_JAX_"
OLD_PREFIX = "PPO_JAX_"
_noted: set[str] = set()


def note_once(line: str) -> None:
    """Prints ``line`` to stderr, unless this process printed it already."""
    if line not in _noted:
        _noted.add(line)
        print(line, file=sys.stderr)


def env_setting(name: str) -> str | None:
    """The value of ``RL_JAX_<name>``, else of the deprecated ``PPO_JAX_<name>``, else None."""
    new, old = PREFIX + name, OLD_PREFIX + name
    if new in os.environ:
        return os.environ[new]
    if old in os.environ:
        note_once(f"note: {old} is deprecated; use {new} (same values)")
        return os.environ[old]
    return None


SAVE_INTERVAL_S = 60.0
"""How often a run saves its periodic checkpoint at most: a save costs ~50-80 ms (13% of the
default CartPole run when saved ten times), so short runs keep only the last."""


def save_interval_s() -> float:
    """Seconds between periodic saves at most: ``RL_JAX_SAVE_INTERVAL_S`` (0: at every chance),
    else :data:`SAVE_INTERVAL_S`."""
    value = env_setting("SAVE_INTERVAL_S")
    try:
        seconds = SAVE_INTERVAL_S if value is None else float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also NaN
        raise ValueError(f"RL_JAX_SAVE_INTERVAL_S: must be a number of seconds >= 0, got {value!r}")
    return seconds
