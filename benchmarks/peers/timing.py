"""The one timing protocol of the PPO side-by-side, used by ours and by the peer's runner (which
runs under the peer's interpreter, so this imports nothing but JAX)."""

from __future__ import annotations

import time


def compile_and_time(fn, keys, warm_keys, runs: int):
    """``fn`` (jitted) lowered and compiled ahead of time on ``keys``, then executed ``runs``
    times: on ``warm_keys``, and the last time on ``keys``. Returns ``(out, compile_s,
    run_times_s)``, ``out`` from the last execution."""
    import jax

    t0 = time.perf_counter()
    compiled = fn.lower(keys).compile()
    compile_s = time.perf_counter() - t0
    run_times, out = [], None
    for i in range(runs):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(keys if i == runs - 1 else warm_keys))
        run_times.append(time.perf_counter() - t0)
    return out, compile_s, run_times
