"""``compute_dtype="auto"``: bfloat16 matmuls only where they are faster on this machine.

bfloat16 matmul inputs (float32 accumulation) ran 2.4x faster than float32 on a Xeon with
AMX and 1.2x slower on an AVX2-only AMD EPYC, so no fixed choice suits every CPU. ``auto``
times one transformer-sized matmul with its backward pass in both forms, once per machine,
and picks bfloat16 only when it is at least :data:`SPEEDUP_NEEDED` times faster. The choice is
kept per process and in ``compute_dtype.json`` in the user's cache folder (beside the
compilation cache), keyed by the device, the CPU model and the JAX version.
"""

from __future__ import annotations

import functools
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp

from ppo_jax.run.machine import cpu_model

DTYPES = ("float32", "bfloat16", "auto")
SPEEDUP_NEEDED = 1.2
"""bfloat16 must beat float32 by this factor: a smaller gain is not worth its rounding."""
PROBE_SHAPE = (1024, 256, 1024)
"""``[tokens, d_model] @ [d_model, 4 d_model]``: a minibatch of 16 x 64 tokens through an MLP layer."""


def resolve(name: str) -> str:
    """``"float32"`` or ``"bfloat16"``: ``name`` itself, or for ``"auto"`` this machine's choice."""
    if name not in DTYPES:
        raise ValueError(f"compute_dtype: must be one of {', '.join(DTYPES)}, got {name!r}")
    return decided() if name == "auto" else name


def cache_file() -> Path:
    from ppo_jax.run.compile_cache import default_folder

    return default_folder().parent / "compute_dtype.json"


def machine_key() -> str:
    device = jax.devices()[0]
    return f"{device.platform}|{device.device_kind}|{cpu_model()}|jax {jax.__version__}"


@functools.cache
def decided() -> str:
    """The choice for this machine: from the cache file, else from :func:`probe` (then saved)."""
    key, path = machine_key(), cache_file()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if known.get(key, {}).get("choice") in ("float32", "bfloat16"):
        return known[key]["choice"]
    # In a thread of its own: "auto" is resolved while a model is traced, and JAX's trace
    # state is per thread, so the probe's programs run for real instead of joining the trace.
    with ThreadPoolExecutor(1) as pool:
        f32_s, bf16_s = pool.submit(probe).result()
    choice = "bfloat16" if f32_s >= SPEEDUP_NEEDED * bf16_s else "float32"
    known[key] = {"choice": choice, "float32_s": f32_s, "bfloat16_s": bf16_s}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: decide again in the next process
    return choice


def probe(repeats: int = 7) -> tuple[float, float]:
    """Best seconds of a forward and backward pass through ``x @ w`` of :data:`PROBE_SHAPE`, in
    float32 and with bfloat16 inputs, alternating the two."""
    from rlhf_jax.matmul import matmul_bf16

    m, k, n = PROBE_SHAPE
    x = jax.random.normal(jax.random.PRNGKey(0), (m, k))
    w = jax.random.normal(jax.random.PRNGKey(1), (k, n)) / k ** 0.5
    grads = [jax.jit(jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) ** 2), argnums=(0, 1)))
             for f in (jnp.matmul, matmul_bf16)]
    best = [float("inf"), float("inf")]
    for fn in grads:
        jax.block_until_ready(fn(x, w))
    for _ in range(repeats):
        for i, fn in enumerate(grads):
            t = time.perf_counter()
            jax.block_until_ready(fn(x, w))
            best[i] = min(best[i], time.perf_counter() - t)
    return best[0], best[1]
