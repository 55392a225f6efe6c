"""Peer: TRL's own ``GRPOTrainer`` (TRL 1.16, reward functions) on the arithmetic task, from the
same SFT policy as ours. Prints one JSON line.

Not part of the project (it needs torch, transformers and trl): run it in the TRL venv, on the
same machine and in the same session as ours; ``benchmarks/grpo_arithmetic_vs_trl.py`` does,
alternating the two. The same work as ``rlhf-jax rl --task arithmetic``: 8 prompts x 8
generations = 64 completions of at most 6 tokens per iteration (temperature 1, full
distribution), rewards ``exact_match`` + 0.2 ``format_reward`` (the project's own functions,
imported from ``rlhf_jax.tasks.arithmetic``, which needs no JAX), group-normalised advantages,
the clipped surrogate (eps 0.2) averaged over the minibatch's tokens (``loss_type="bnpo"``) with
the k3 KL term (beta 0.01), 2 epochs (``num_iterations``) x 2 minibatches of 32, Adam at a
constant 3e-4, gradient norm clipped at 1. An iteration is the 4 optimiser steps between two
generations, timed between TRL's own ``on_step_end`` callbacks. The final policy is saved to
``--save``, where the project's own evaluation scores it on the held-out problems with the same
code and sampling keys as ours (``rlhf_jax.rl.evaluate_policy``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

GROUP, BATCH, MINIBATCHES, EPOCHS, NEW_TOKENS = 8, 64, 2, 2, 6


def read_rows(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the SFT policy as a Hugging Face folder")
    parser.add_argument("--pool", required=True, help="JSONL prompt rows to train on (prompt, answer)")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--bf16", action="store_true", help="TRL's bf16 mixed precision, not fp32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", required=True, help="folder for the final policy (scored by our evaluation code)")
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "peers"))
    import torch_common as C  # noqa: E402  (the PyTorch peers' helpers)

    from rlhf_jax.tasks.arithmetic import exact_match, format_reward

    tok = AutoTokenizer.from_pretrained(args.model)
    pool = read_rows(args.pool)
    per_step = EPOCHS * MINIBATCHES
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl_grpo_arith_"), per_device_train_batch_size=BATCH // MINIBATCHES,
        steps_per_generation=MINIBATCHES, gradient_accumulation_steps=1, num_generations=GROUP,
        num_iterations=EPOCHS, max_completion_length=NEW_TOKENS, temperature=1.0, top_k=0, top_p=1.0, beta=0.01,
        epsilon=0.2, loss_type="bnpo", scale_rewards="group", reward_weights=[1.0, 0.2], learning_rate=3e-4,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        max_steps=args.iterations * per_step, bf16=args.bf16, fp16=False, use_cpu=True, report_to="none",
        save_strategy="no", logging_steps=per_step, disable_tqdm=True, dataloader_num_workers=0, seed=args.seed,
        log_completions=False, disable_dropout=True)
    timer, steps = C.step_timer()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=[exact_match, format_reward], args=config, processing_class=tok,
                          train_dataset=Dataset.from_list(pool), callbacks=[timer])
    C.quiet(trainer)
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    iters = [steps[(i + 1) * per_step] - steps[i * per_step] for i in range(args.iterations)]
    trainer.save_model(args.save)
    tok.save_pretrained(args.save)
    logged = [h for h in trainer.state.log_history if "reward" in h]
    import transformers
    import trl

    print(json.dumps({
        "peer": "trl_grpo_arithmetic", "bf16": args.bf16, "seed": args.seed, "iterations": args.iterations,
        "iter_s_median_after_first": statistics.median(iters[1:]), "iter_s": [round(t, 4) for t in iters],
        "train_call_total_s": total,
        "reward_first_last": [logged[0]["reward"], logged[-1]["reward"]] if logged else None,
        "kl_last": logged[-1].get("kl") if logged else None, "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
    }))


if __name__ == "__main__":
    main()
