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


def time_seeds(train, seeds: int, seed0: int, runs: int):
    """:func:`compile_and_time` of ``train(key)`` over ``seeds`` seeds (``jit(vmap(train))``; one
    seed without vmap, its outputs given a leading seed axis)."""
    import jax

    if seeds == 1:
        fn = jax.jit(lambda key: jax.tree_util.tree_map(lambda x: x[None], train(key[0])))
    else:
        fn = jax.jit(jax.vmap(train))
    keys = jax.random.split(jax.random.PRNGKey(seed0), seeds)
    warm = jax.random.split(jax.random.PRNGKey(seed0 + 10_000), seeds)
    return compile_and_time(fn, keys, warm, runs)
