"""What machine this is, for benchmarks and for choices cached per machine."""

from __future__ import annotations

import platform


def cpu_model() -> str:
    """The CPU's model name (machines here differ: Xeons with AMX, EPYCs with AVX2 only)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()
