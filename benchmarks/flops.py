"""Matmul FLOPs of an RLHF iteration's phases, counted from the model shapes
(:func:`rlhf_jax.transformer.forward_flops`; a backward pass is twice its forward), and a
matmul probe of the machine. A decode step attends over the whole cache (prompt + new tokens),
as ours does."""

from __future__ import annotations

import subprocess
import time

import jax
import jax.numpy as jnp

from rlhf_jax.transformer import forward_flops


def iteration_flops(cfg, *, batch: int, prompt_len: int, new_tokens: int, epochs: int, critic: bool) -> dict:
    """FLOPs of each phase of one iteration: ``sample`` (prefill, then one token at a time over
    the cache), ``score`` (the reward model), ``update`` (old policy, reference and, with a
    critic, value forward passes, then ``epochs`` forward and backward passes over the batch of
    the policy and the critic)."""
    length = prompt_len + new_tokens
    sequence_pass = forward_flops(cfg, batch * length, length)
    value_pass = forward_flops(cfg, batch * length, length, lm_head=False)
    sample = forward_flops(cfg, batch * prompt_len, length) + (new_tokens - 1) * forward_flops(cfg, batch, length)
    update = 2 * sequence_pass + 3 * epochs * sequence_pass
    if critic:
        update += value_pass + 3 * epochs * value_pass
    return {"sample": sample, "score": value_pass, "update": update, "total": sample + value_pass + update}


def xla_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The best GFLOP/s of one float32 ``[n, n] @ [n, n]`` in XLA on the default device."""
    x = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    f = jax.jit(jnp.matmul)
    jax.block_until_ready(f(x, x))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(x, x))
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


TORCH_PROBE = """
import time, torch
n = {n}
x = torch.randn(n, n)
x @ x
best = float("inf")
for _ in range({repeats}):
    t = time.perf_counter()
    x @ x
    best = min(best, time.perf_counter() - t)
print(2 * n ** 3 / best / 1e9)
"""


def torch_matmul_gflops(python: str, n: int = 2048, repeats: int = 5) -> float | None:
    """The same probe in PyTorch, run by the interpreter ``python`` (a venv with torch); None if it fails."""
    try:
        out = subprocess.run([python, "-c", TORCH_PROBE.format(n=n, repeats=repeats)], capture_output=True,
                             text=True, timeout=300, check=True)
        return float(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
