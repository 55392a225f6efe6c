"""Matmul FLOPs of an RLHF iteration's phases, counted from the model shapes
(:func:`rlhf_jax.transformer.forward_flops`; a backward pass is twice its forward), and
matmul probes of the machine: a large square one, and the model's own Dense shapes in XLA and
in PyTorch. A decode step attends over the whole cache (prompt + new tokens), as ours does.

Run alone, it writes the model-shape probe as JSON (XLA here, PyTorch through ``--torch-python``):

    python benchmarks/flops.py --torch-python ~/venvs/rlhf-torch/bin/python \\
        --out benchmarks/results/matmul_shapes_cpu_2core.json
"""

from __future__ import annotations

import argparse
import json
import math
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


def best_seconds(f, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``f()`` (a JAX computation) after one warm-up call."""
    jax.block_until_ready(f())
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f())
        best = min(best, time.perf_counter() - t)
    return best


def xla_matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """The best GFLOP/s of one float32 ``[n, n] @ [n, n]`` in XLA on the default device."""
    x = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    f = jax.jit(jnp.matmul)
    return 2 * n ** 3 / best_seconds(lambda: f(x, x), repeats) / 1e9


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


def model_matmul_shapes(cfg, rows: dict[str, int]) -> list[dict]:
    """The ``[m, k] x [k, n]`` products of a GPT-2-style block and its LM head, for each
    ``rows`` entry (``{"update": tokens per minibatch, "decode": sequences per step}``)."""
    d, ff = cfg.d_model, cfg.ff_width
    layers = {"qkv": (d, 3 * d), "attn_out": (d, d), "mlp_up": (d, ff), "mlp_down": (ff, d),
              "lm_head": (d, cfg.vocab_size)}
    return [{"phase": phase, "layer": layer, "m": m, "k": k, "n": n}
            for phase, m in rows.items() for layer, (k, n) in layers.items()]


# Each product runs `loops` times inside one compiled loop (XLA) or one Python loop (torch),
# each time on `x + c` with `c` carried from the last result, so that nothing is hoisted
# out of the loop; both sides pay the same elementwise add. "x@w" is a forward product,
# "x.T@g" a weight gradient (contracting the rows).
XLA_SHAPE_LOOPS = 200


def xla_shape_gflops(shapes: list[dict], repeats: int = 7) -> list[dict]:
    """Best GFLOP/s of each shape's ``x@w`` and ``x.T@g`` in XLA (float32)."""
    out = []
    for sh in shapes:
        m, k, n = sh["m"], sh["k"], sh["n"]
        x = jax.random.normal(jax.random.PRNGKey(0), (m, k))
        w = jax.random.normal(jax.random.PRNGKey(1), (k, n)) * 0.01
        g = jax.random.normal(jax.random.PRNGKey(2), (m, n))
        forms = {"x@w": lambda i, c: c + ((x + c) @ w)[0, 0] * 1e-9,
                 "x.T@g": lambda i, c: c + ((x + c).T @ g)[0, 0] * 1e-9}
        row = dict(sh)
        for form, body in forms.items():
            f = jax.jit(lambda body=body: jax.lax.fori_loop(0, XLA_SHAPE_LOOPS, body, jnp.zeros((1, 1))))
            row[form] = 2 * m * k * n * XLA_SHAPE_LOOPS / best_seconds(f, repeats) / 1e9
        out.append(row)
    return out


TORCH_SHAPE_PROBE = """
import json, sys, time, torch
shapes, loops, repeats = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
out = []
with torch.no_grad():
    for sh in shapes:
        m, k, n = sh["m"], sh["k"], sh["n"]
        x, w, g = torch.randn(m, k), torch.randn(k, n) * 0.01, torch.randn(m, n)
        forms = {"x@w": lambda c: c + ((x + c) @ w)[0, 0] * 1e-9, "x.T@g": lambda c: c + ((x + c).T @ g)[0, 0] * 1e-9}
        row = dict(sh)
        for form, body in forms.items():
            c = torch.zeros(1, 1)
            for _ in range(20):
                c = body(c)
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                for _ in range(loops):
                    c = body(c)
                best = min(best, time.perf_counter() - t)
            row[form] = 2 * m * k * n * loops / best / 1e9
        out.append(row)
print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__, "shapes": out}))
"""


def torch_shape_gflops(python: str, shapes: list[dict], repeats: int = 7) -> dict | None:
    """The same probe in PyTorch (its default thread count), run by ``python``; None if it fails."""
    try:
        proc = subprocess.run([python, "-c", TORCH_SHAPE_PROBE, json.dumps(shapes), str(XLA_SHAPE_LOOPS), str(repeats)],
                              capture_output=True, text=True, timeout=600, check=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def shape_probe(cfg, rows: dict[str, int], torch_python: str | None) -> dict:
    """XLA's (and, given an interpreter, PyTorch's) GFLOP/s on the model's shapes, with the
    geometric mean of XLA / PyTorch per phase and form."""
    shapes = model_matmul_shapes(cfg, rows)
    xla = xla_shape_gflops(shapes)
    result = {"loops": XLA_SHAPE_LOOPS, "xla": xla}
    theirs = torch_shape_gflops(torch_python, shapes) if torch_python else None
    if theirs:
        result["torch"] = theirs
        ratios = {}
        for phase in rows:
            for form in ("x@w", "x.T@g"):
                rs = [a[form] / b[form] for a, b in zip(xla, theirs["shapes"]) if a["phase"] == phase]
                ratios[f"{phase} {form}"] = math.exp(sum(map(math.log, rs)) / len(rs))
        result["xla_over_torch_geomean"] = ratios
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch-python", default=None, help="an interpreter with torch")
    parser.add_argument("--update-rows", type=int, default=16 * 64, help="tokens per minibatch (16 x 64)")
    parser.add_argument("--decode-rows", type=int, default=64, help="sequences per decode step")
    parser.add_argument("--rounds", type=int, default=2, help="XLA and PyTorch alternated this many times")
    parser.add_argument("--out", default="benchmarks/results/matmul_shapes.json")
    args = parser.parse_args()

    from common import write_result

    from rlhf_jax.transformer import TransformerConfig

    cfg = TransformerConfig(vocab_size=256, max_len=128, num_layers=4, num_heads=4, d_model=256, dropout=0.0)
    rows = {"update": args.update_rows, "decode": args.decode_rows}
    rounds = []
    for r in range(args.rounds):
        rounds.append(shape_probe(cfg, rows, args.torch_python))
        print(f"round {r}: XLA / PyTorch GFLOP/s, geometric mean per phase and form: "
              + ", ".join(f"{k} {v:.2f}x" for k, v in rounds[-1].get("xla_over_torch_geomean", {}).items()))
        for a, b in zip(rounds[-1]["xla"], (rounds[-1].get("torch") or {}).get("shapes", rounds[-1]["xla"])):
            print(f"  {a['phase']:6s} {a['layer']:8s} {a['m']}x{a['k']}x{a['n']}: "
                  + "  ".join(f"{form} XLA {a[form]:.0f} / torch {b[form]:.0f}" for form in ("x@w", "x.T@g")))
        write_result(args.out, {"benchmark": "matmul_shapes", "model": cfg.to_dict(), "rounds": rounds})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
