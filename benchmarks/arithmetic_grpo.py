"""GRPO on the arithmetic task, from SFT, on several seeds: what the README reports.

For each seed: ``rlhf-jax sft --task arithmetic`` (its corpus drops the carried 1 of most
three-digit sums and wraps a fifth of the answers), then ``rlhf-jax rl --task arithmetic``
(exact match + 0.2 x digits-only format), each policy scored on 512 held-out problems by
accuracy (the first number in the response equals the sum): greedy, and the mean over 4
samples at temperature 1. Writes the run folders under ``--out`` and the numbers to
``benchmarks/results/arithmetic_grpo_cpu_2core.json``.

    python benchmarks/arithmetic_grpo.py --seeds 0 1 2 --out runs/arithmetic
    python benchmarks/arithmetic_grpo.py --seeds 0 --out runs/arithmetic --variants   # then the GRPO family
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks.common import write_result  # noqa: E402
from ppo_jax.run.configure import configure  # noqa: E402

SFT = dict(steps=2000, batch_size=64, lr=3e-3, warmup_steps=100, max_length=32)
MODEL = dict(num_layers=2, d_model=128, num_heads=4, max_len=32, dropout=0.0)
RL = dict(algo="grpo", iterations=30, batch_size=64, group_size=8, max_new_tokens=6, lr=3e-4, epochs=2,
          minibatches=2, kl_coef=0.01)
VARIANTS = {
    "grpo": {},
    "dr-grpo": dict(scale_advantages=False),
    "rloo": dict(algo="rloo"),
    "dapo": dict(clip_eps_high=0.28, dynamic_sampling=True, overlong_buffer=2, kl_coef=0.0),
    "gspo": dict(ratio_level="sequence", clip_eps=3e-4, clip_eps_high=4e-4, loss_aggregation="sequence-mean",
                 kl_coef=0.0),
    "cispo": dict(surrogate="cispo", clip_eps_high=4.0, kl_coef=0.0),
}
"""The GRPO family on the first seed's SFT policy, 10 iterations each (``--variants``)."""


def family(args, rl_run, config_class, source_class) -> None:
    """Each of :data:`VARIANTS` from the SFT run of ``args.seeds[0]``, added to ``args.json``."""
    seed = args.seeds[0]
    result = json.load(open(args.json)) if os.path.exists(args.json) else {}
    variants = []
    for name, change in VARIANTS.items():
        summary = rl_run(config_class(seed=seed, **{**RL, "iterations": 10, **change}),
                         source_class(model=os.path.join(args.out, f"sft_seed{seed}"), task="arithmetic",
                                      eval_prompts=512, eval_samples=4),
                         out=os.path.join(args.out, f"family_{name}_seed{seed}"), progress=False)
        variants.append({"method": name, "settings": change, "iterations": 10,
                         "greedy_accuracy": [summary["before"]["metric_greedy"], summary["final"]["metric_greedy"]],
                         "mean4_accuracy": [summary["before"]["metric_sampled"], summary["final"]["metric_sampled"]],
                         "kl": summary["final"]["kl"], "rl_iteration_s": summary["mean_iteration_s"]})
        print(variants[-1], flush=True)
        write_result(args.json, {**{k: v for k, v in result.items() if k not in ("variants",)},
                                 "variants_from_seed": seed, "variants": variants})


def main() -> None:
    configure()
    from rlhf_jax.experiment import sft_run
    from rlhf_jax.ppo_trainer import RLHFConfig
    from rlhf_jax.rl import RLSource, rl_run
    from rlhf_jax.sft import SFTConfig
    from rlhf_jax.transformer import TransformerConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/arithmetic_grpo")
    parser.add_argument("--json", default="benchmarks/results/arithmetic_grpo_cpu_2core.json")
    parser.add_argument("--variants", action="store_true",
                        help="instead: the GRPO family, 10 iterations each, from the first seed's SFT run in --out "
                             "(added to --json)")
    args = parser.parse_args()
    if args.variants:
        return family(args, rl_run, RLHFConfig, RLSource)
    rows = []
    for seed in args.seeds:
        sft_dir, rl_dir = os.path.join(args.out, f"sft_seed{seed}"), os.path.join(args.out, f"grpo_seed{seed}")
        t0 = time.perf_counter()
        sft_run(SFTConfig(model=TransformerConfig(**MODEL), seed=seed, **SFT), task="arithmetic", num_examples=20000,
                out=sft_dir, progress=False)
        t1 = time.perf_counter()
        summary = rl_run(RLHFConfig(seed=seed, **RL), RLSource(model=sft_dir, task="arithmetic", eval_prompts=512,
                                                              eval_samples=4), out=rl_dir, progress=False)
        t2 = time.perf_counter()
        before, final = summary["before"], summary["final"]
        row = {"seed": seed, "sft_s": t1 - t0, "rl_s": t2 - t1,
               "sft_greedy_accuracy": before["metric_greedy"], "sft_mean4_accuracy": before["metric_sampled"],
               "grpo_greedy_accuracy": final["metric_greedy"], "grpo_mean4_accuracy": final["metric_sampled"],
               "grpo_kl": final["kl"], "rl_iteration_s": summary["mean_iteration_s"]}
        rows.append(row)
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        write_result(args.json, {"sft": {**SFT, "model": MODEL, "num_examples": 20000}, "rl": RL,
                                 "heldout_prompts": 512, "rows": rows,
                                 "mean": {k: float(np.mean([r[k] for r in rows])) for k in row if k != "seed"}})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
