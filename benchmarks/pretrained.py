"""Time pretrained-size models in ``rlhf_jax`` (random weights from a config, nothing downloaded).

For a GPT-2-small-shaped model (124M) and a Qwen2-0.5B-shaped one: a forward pass and a
forward+backward pass (mean next-token log-likelihood) on ``--batch`` x ``--seq`` tokens, and
sampling ``--new-tokens`` tokens for ``--batch`` prompts of 16 tokens with the KV cache.
The best of ``--repeats`` runs after a warm-up is the figure, compile time apart.
``benchmarks/reference/hf_pretrained.py`` times transformers (PyTorch) on the same shapes;
alternate the two on one machine and compare ratios.

    python benchmarks/pretrained.py --models gpt2-small --out benchmarks/results/pretrained_cpu.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from common import write_result
from shapes import MODELS, add_arguments

from rlhf_jax.hf import config_from_hf
from rlhf_jax.sampling import SamplingConfig, make_generate
from rlhf_jax.transformer import TransformerLM, init_params, token_log_probs


def best_of(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, "benchmarks/results/pretrained.json")
    args = parser.parse_args()
    results = {}
    for name in args.models:
        cfg = config_from_hf(MODELS[name], Path(name))
        model = TransformerLM(cfg)
        params = init_params(model, jax.random.PRNGKey(0))
        n_params = sum(x.size for x in jax.tree.leaves(params))
        ids = jax.random.randint(jax.random.PRNGKey(1), (args.batch, args.seq), 0, cfg.vocab_size)
        mask = jnp.ones_like(ids)

        def loss(p):
            logits = model.apply({"params": p}, ids, mask).logits
            return -token_log_probs(logits[:, :-1], ids[:, 1:]).mean()

        forward = jax.jit(lambda p: model.apply({"params": p}, ids, mask).logits)
        backward = jax.jit(jax.value_and_grad(loss))
        prompts = ids[:, :16]
        generate = make_generate(model, SamplingConfig(max_new_tokens=args.new_tokens, stop_at_eos=False),
                                 eos_id=0, pad_id=1)
        row = {"params": int(n_params)}
        for phase, fn in (("forward", lambda: forward(params)), ("forward_backward", lambda: backward(params)),
                          ("sample", lambda: generate(params, prompts, jnp.ones_like(prompts), jax.random.PRNGKey(2)))):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            first = time.perf_counter() - t0
            best, times = best_of(fn, args.repeats)
            row[phase] = {"best_s": best, "all_s": times, "first_call_s": first}
            print(f"{name} {phase}: best {best:.3f} s (first call, with compile, {first:.1f} s)", flush=True)
        row["sample"]["new_tokens_per_s"] = args.batch * args.new_tokens / row["sample"]["best_s"]
        results[name] = row
        write_result(args.out, {"benchmark": "pretrained", "batch": args.batch, "seq": args.seq,
                                "new_tokens": args.new_tokens, "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
