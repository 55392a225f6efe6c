"""GRPO on the arithmetic task, ours against TRL 1.16's ``GRPOTrainer``, alternated in one session.

Both start from the same SFT policy (ours, exported with ``rlhf-jax export``), train on the same
prompt pool with the same reward functions (``exact_match`` + 0.2 ``format_reward``) and shapes
(8 prompts x 8 samples, at most 6 new tokens, 2 epochs x 2 minibatches, lr 3e-4, KL 0.01 as a
k3 loss term, token-mean loss), for the same number of iterations, in float32 and in bfloat16
(ours: ``--compute-dtype bfloat16 --frozen-dtype bfloat16``; TRL: ``bf16=True`` autocast). For
each seed and precision TRL runs first, then ours, each in a fresh process. Seconds per
iteration are medians over the iterations after the first (which compiles); both final
policies are scored by the same code (``rlhf_jax.rl.evaluate_policy``: 512 held-out problems,
greedy and 4 samples each, the same sampling keys).

    python benchmarks/grpo_arithmetic_vs_trl.py --sft runs/arithmetic_grpo/sft_seed0 \\
        --trl-python ~/venvs/rlhf-trl-latest/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.arithmetic_grpo import RL  # noqa: E402
from benchmarks.common import write_result  # noqa: E402
from ppo_jax.run.configure import configure  # noqa: E402

EVAL = dict(eval_prompts=512, eval_samples=4)


def ours_command(sft: str, out: str, seed: int, iterations: int, dtype: str) -> list[str]:
    flags = ["--model", sft, "--task", "arithmetic", "--iterations", str(iterations), "--seed", str(seed),
             "--batch-size", str(RL["batch_size"]), "--group-size", str(RL["group_size"]),
             "--max-new-tokens", str(RL["max_new_tokens"]), "--lr", str(RL["lr"]), "--epochs", str(RL["epochs"]),
             "--minibatches", str(RL["minibatches"]), "--kl-coef", str(RL["kl_coef"]),
             "--eval-prompts", str(EVAL["eval_prompts"]), "--eval-samples", str(EVAL["eval_samples"]),
             "--checkpoint-every", "0", "--no-progress", "--out", out]
    if dtype == "bfloat16":
        flags += ["--compute-dtype", "bfloat16", "--frozen-dtype", "bfloat16"]
    return [sys.executable, "-m", "rlhf_jax.cli", "rl", *flags]


def main() -> None:
    configure()
    from rlhf_jax import checkpoint as ckpt
    from rlhf_jax.experiment import export_run
    from rlhf_jax.ppo_trainer import RLHFConfig
    from rlhf_jax.rl import RLSource, evaluate_policy, prompt_sets

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", required=True, help="our SFT run folder on the arithmetic task")
    parser.add_argument("--trl-python", required=True, help="the python of the TRL 1.16 venv")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--work", default="runs/grpo_arithmetic_vs_trl")
    parser.add_argument("--json", default="benchmarks/results/grpo_arithmetic_vs_trl_cpu_2core.json")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    hf = os.path.join(args.work, "sft_hf")
    if not os.path.exists(os.path.join(hf, "config.json")):
        export_run(args.sft, hf)
    _, sft_params, _ = ckpt.load(args.sft)
    rows = []
    for dtype in args.dtypes:
        for seed in args.seeds:
            pool, _ = prompt_sets(RLSource(task="arithmetic", **EVAL), seed)
            pool_file = os.path.join(args.work, f"pool_seed{seed}.jsonl")
            with open(pool_file, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in pool)
            trl_dir = os.path.join(args.work, f"trl_{dtype}_seed{seed}")
            cmd = [args.trl_python, os.path.join(HERE, "reference", "trl_grpo_arithmetic.py"), "--model", hf,
                   "--pool", pool_file, "--iterations", str(args.iterations), "--seed", str(seed), "--save", trl_dir]
            t0 = time.perf_counter()
            trl = json.loads(subprocess.run(cmd + (["--bf16"] if dtype == "bfloat16" else []), check=True,
                                            capture_output=True, text=True).stdout.strip().splitlines()[-1])
            t1 = time.perf_counter()
            ours_dir = os.path.join(args.work, f"ours_{dtype}_seed{seed}")
            subprocess.run(ours_command(args.sft, ours_dir, seed, args.iterations, dtype), check=True,
                           capture_output=True, text=True)
            t2 = time.perf_counter()
            history = json.load(open(os.path.join(ours_dir, "metrics.json")))
            ours_iter = statistics.median(h["time_sample"] + h["time_score"] + h["time_update"] for h in history[1:])
            ours_final = json.load(open(os.path.join(ours_dir, "final.json")))
            config = RLHFConfig(seed=seed, **RL)
            trl_final = evaluate_policy(config, RLSource(model=trl_dir, task="arithmetic", **EVAL),
                                        reference=sft_params)
            row = {"dtype": dtype, "seed": seed,
                   "trl_iter_s": trl["iter_s_median_after_first"], "ours_iter_s": ours_iter,
                   "ratio_trl_over_ours": trl["iter_s_median_after_first"] / ours_iter,
                   "trl_greedy_accuracy": trl_final["metric_greedy"], "ours_greedy_accuracy": ours_final["metric_greedy"],
                   "trl_mean4_accuracy": trl_final["metric_sampled"], "ours_mean4_accuracy": ours_final["metric_sampled"],
                   "trl_kl": trl_final["kl"], "ours_kl": ours_final["kl"],
                   "trl_process_s": t1 - t0, "ours_process_s": t2 - t1, "trl_versions": trl["versions"]}
            rows.append(row)
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items() if k != "trl_versions"},
                  flush=True)
            summary = {}
            for d in args.dtypes:
                mine = [r for r in rows if r["dtype"] == d]
                if mine:
                    summary[d] = {k: statistics.mean(r[k] for r in mine) for k in row
                                  if k not in ("dtype", "seed", "trl_versions")}
            write_result(args.json, {"what": __doc__.splitlines()[0], "rl": RL, **EVAL,
                                     "iterations": args.iterations, "sft": args.sft, "rows": rows,
                                     "mean": summary})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
