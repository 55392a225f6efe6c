"""GRPO with LoRA against full fine-tuning, ours and TRL's, on pretrained model shapes: seconds per
iteration and peak memory.

For a GPT-2-small-shaped (124M) and a Qwen2-0.5B-shaped model built from their configs with
random weights (nothing is downloaded): GRPO iterations of ``--prompts`` prompts of 16 tokens x
``--group`` responses of exactly ``--new-tokens`` tokens, ``--epochs`` x ``--minibatches``
clipped updates with the k3 KL term (0.05) to the reference, Adam; the reward is a cheap
function of the response tokens. Variants, each in a fresh process so that its peak resident
memory (``VmHWM``) is its own:

* ``ours-lora``: LoRA rank ``--rank`` (alpha 2 x rank) on every linear layer of the blocks; the
  reference is the base without adapters;
* ``ours-full``: every weight trains; the reference is a second copy of the weights;
* ``trl-lora`` (with ``--trl-python``, an interpreter with TRL 1.16 and PEFT): TRL's
  ``GRPOTrainer`` with a PEFT ``LoraConfig`` of the same rank, alpha and layers
  (``benchmarks/reference/trl_grpo_lora.py``); its reference is the base with the adapters
  disabled, as ours; ``trl-full``: the same without PEFT;
* ``ours-lora-bf16``: bfloat16 matmul inputs (float32 accumulation) and the frozen base in
  bfloat16; ``trl-lora-bf16``: TRL's ``bf16`` mixed precision (autocast).

The variants alternate over ``--rounds`` rounds; seconds per iteration are medians over the
timed iterations (the first ``--warmup`` compile or warm up). Compare ratios from one run.

    python benchmarks/lora_grpo.py --models gpt2-small qwen2-0.5b \\
        --trl-python ~/venvs/rlhf-trl-latest/bin/python --out benchmarks/results/lora_grpo_cpu_2core.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPT_LEN, BETA = 16, 0.05


def peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2 ** 20
    return float("nan")


def run_ours(args) -> dict:
    """One variant of ours in this process: the timed iterations and the peak memory."""
    import jax
    import numpy as np
    from shapes import MODELS

    from rlhf_jax.hf import config_from_hf
    from rlhf_jax.lora import LoRAConfig
    from rlhf_jax.ppo_trainer import RLHFConfig, init_state, make_programs, train_rlhf
    from rlhf_jax.transformer import TransformerLM, init_params

    cfg = config_from_hf(MODELS[args.model], Path(args.model))
    bf16 = args.variant.endswith("-bf16")
    if bf16:  # bfloat16 matmul inputs (float32 accumulation); with LoRA the frozen base in bfloat16 too
        cfg = dataclasses.replace(cfg, compute_dtype="bfloat16")
    adapters = (LoRAConfig(rank=args.rank, alpha=2.0 * args.rank, base_dtype="bfloat16" if bf16 else "float32")
                if args.variant.startswith("ours-lora") else LoRAConfig())
    batch = args.prompts * args.group
    iterations = args.warmup + args.iters
    config = RLHFConfig(algo="grpo", iterations=iterations, batch_size=batch, group_size=args.group,
                        max_new_tokens=args.new_tokens, epochs=args.epochs, minibatches=args.minibatches,
                        lr=1e-5, kl_coef=BETA, seed=0, lora=adapters)
    programs = make_programs(config, cfg, None, prompt_len=PROMPT_LEN, max_new_tokens=args.new_tokens, eos_id=0,
                             pad_id=1)
    params = init_params(TransformerLM(cfg), jax.random.PRNGKey(0))
    ids = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (batch, PROMPT_LEN), 33, 127))

    class Prompts:  # fixed prompts, already token ids
        pool = list(range(batch))

        def draw_indices(self, rng, n):
            return list(range(0, batch, args.group))[:n]

        def encode(self, _):
            return ids, np.ones_like(ids)

    def scorer(idx, gen):  # a cheap reward on the response tokens
        return np.asarray(gen.response % 7 == 0, np.float32).mean(axis=1), {}

    state = init_state(config, programs, params)
    n_train = sum(x.size for x in jax.tree.leaves(state.policy_opt) if x.ndim) // 2  # Adam's two moments
    n_params = sum(x.size for x in jax.tree.leaves(params))
    # With LoRA the reference is the policy's own base: the weights built here (float32, which a
    # bfloat16 base was cast from) are not kept, as a run that loads its model would not keep them.
    reference = None if adapters.active else params
    del params
    t0 = time.perf_counter()
    result = train_rlhf(config, programs, state, ref_params=reference, tokenizer=None, prompts=Prompts(),
                        reward="functions", scorer=scorer)
    total = time.perf_counter() - t0
    rows = result.history[args.warmup:]
    iter_s = [r["time_sample"] + r["time_score"] + r["time_update"] for r in rows]
    return {"variant": args.variant, "model": args.model, "iter_s": round(statistics.median(iter_s), 3),
            "iter_runs_s": [round(t, 3) for t in iter_s],
            "sample_s": round(statistics.median(r["time_sample"] for r in rows), 3),
            "update_s": round(statistics.median(r["time_update"] for r in rows), 3),
            "first_iteration_s": round(sum(result.history[0][k] for k in ("time_sample", "time_score",
                                                                          "time_update")), 1),
            "peak_rss_gib": round(peak_rss_gib(), 2), "trainable_params": int(n_train),
            "params": int(n_params), "total_s": round(total, 1),
            "kl_last": round(result.history[-1]["kl_exact"], 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["gpt2-small", "qwen2-0.5b"])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--minibatches", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=["trl-lora", "ours-lora", "ours-full"])
    parser.add_argument("--trl-python", default=None, help="an interpreter with TRL 1.16 and PEFT (trl-lora)")
    parser.add_argument("--out", default="benchmarks/results/lora_grpo.json")
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # one variant, in a child process
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_ours(args)))
        return
    from common import write_result

    shared = ["--prompts", str(args.prompts), "--group", str(args.group), "--new-tokens", str(args.new_tokens),
              "--epochs", str(args.epochs), "--minibatches", str(args.minibatches), "--rank", str(args.rank),
              "--warmup", str(args.warmup), "--iters", str(args.iters)]
    runs = []
    for round_ in range(args.rounds):
        for model in args.models:
            for variant in args.variants:
                if variant.startswith("trl-"):
                    if not args.trl_python:
                        continue
                    cmd = [args.trl_python, str(HERE / "reference" / "trl_grpo_lora.py"), "--model", model, *shared,
                           *(["--full"] if variant == "trl-full" else []),
                           *(["--bf16"] if variant.endswith("-bf16") else [])]
                else:
                    cmd = [sys.executable, __file__, "--variant", variant, "--model", model, *shared]
                print(f"round {round_ + 1}: {model} {variant} ...", file=sys.stderr, flush=True)
                proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(HERE)})
                if proc.returncode != 0:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{model} {variant} failed (exit {proc.returncode})")
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["round"] = round_ + 1
                print(json.dumps(row), file=sys.stderr, flush=True)
                runs.append(row)
    summary = {}
    for model in args.models:
        by = {v: [r for r in runs if r["model"] == model and r["variant"] == v] for v in args.variants}
        summary[model] = {v: {"iter_s": [r["iter_s"] for r in rs], "peak_rss_gib": [r["peak_rss_gib"] for r in rs]}
                          for v, rs in by.items() if rs}
    write_result(args.out, {"runs": runs, "summary": summary, "settings": vars(args)})


if __name__ == "__main__":
    main()
