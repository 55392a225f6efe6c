"""Peer timing: one GRPO iteration of TRL's own ``GRPOTrainer`` on the reference shapes (CPU; fp32 or bf16).

Not part of the project (it needs torch, transformers and trl); run it in a venv with TRL
(``benchmarks/peers/setup_trl.sh``), on the same machine and in the same session as
``benchmarks/rlhf_iteration.py --algo grpo``:

    ~/venvs/rlhf-trl/bin/python benchmarks/reference/trl_grpo_iteration.py --out /tmp/trl_grpo.json

The same work as ours: randomly initialised GPT-2s (vocabulary 256, 4 layers, 4 heads, width
256, no dropout) as policy, frozen reference and reward model (a scalar head on the last
token); 16 prompts of 16 tokens x 4 generations = 64 responses of exactly 48 tokens
(``generate`` with the KV cache, temperature 1); group-normalised advantages; the clipped
surrogate with the k3 KL term (``beta`` 0.05) over 4 epochs (``num_iterations``) x 4
minibatches of 16 (``steps_per_generation``); Adam. TRL computes the old log-probs with a
forward pass (its generate-then-train steps are not aligned with one optimiser step) and the
reference's with another; the reward model runs inside TRL's loop as a reward function on the
completion ids. An iteration is the 16 optimiser steps between two generations; its time is
taken between TRL's own ``on_step_end`` callbacks, and ``generate_and_score_s`` (TRL's
``_generate_and_score_completions``: sampling, reward, old and reference log-probs) is its
rollout part.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

BATCH, GROUP, PROMPT_LEN, NEW_TOKENS, EPOCHS, MINIBATCHES = 64, 4, 16, 48, 4, 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=1, help="iterations not timed")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations")
    parser.add_argument("--beta", type=float, default=0.05, help="KL coefficient (0: TRL loads no reference)")
    parser.add_argument("--bf16", action="store_true", help="TRL's bf16 mixed precision (its default), not fp32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also append the JSON line to this file")
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "peers"))
    import torch
    import torch_common as C  # noqa: E402  (the PyTorch peers' shapes, tokenizer and probes)
    from datasets import Dataset
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel
    from trl import GRPOConfig, GRPOTrainer

    cpu, calib_start = C.CpuStat(), C.calib_gflops()
    torch.manual_seed(args.seed)
    policy = GPT2LMHeadModel(C.gpt2_config())
    torch.manual_seed(args.seed + 2)
    reward = GPT2ForSequenceClassification(C.gpt2_config(num_labels=1)).eval()
    for p in reward.parameters():
        p.requires_grad_(False)
    tok = C.build_byte_tokenizer()
    folder = tempfile.mkdtemp(prefix="trl_grpo_bench_")
    policy.save_pretrained(folder)  # TRL builds its reference from the policy's folder
    tok.save_pretrained(folder)

    # Printable ASCII prompts: the text round trip through the byte tokenizer keeps 16 tokens.
    g = torch.Generator().manual_seed(args.seed + 1234)
    n_iters = args.warmup + args.iters
    ids = torch.randint(33, 127, (BATCH // GROUP * n_iters * 2, PROMPT_LEN), generator=g)
    prompts = ["".join(map(chr, row.tolist())) for row in ids]
    assert all(len(tok(p)["input_ids"]) == PROMPT_LEN for p in prompts)

    def reward_fn(prompts, completions, completion_ids, **_):
        prompt_ids = torch.tensor([tok(p)["input_ids"] for p in prompts])
        seq = torch.cat([prompt_ids, torch.tensor(completion_ids)], dim=1)
        with torch.no_grad():
            return reward(input_ids=seq).logits[:, 0].tolist()

    config = GRPOConfig(
        output_dir=folder, per_device_train_batch_size=BATCH // MINIBATCHES, steps_per_generation=MINIBATCHES,
        gradient_accumulation_steps=1, num_generations=GROUP, num_iterations=EPOCHS, max_completion_length=NEW_TOKENS,
        temperature=1.0, top_k=0, top_p=1.0, generation_kwargs={"min_new_tokens": NEW_TOKENS}, beta=args.beta,
        epsilon=0.2, loss_type="grpo", scale_rewards="group", learning_rate=1e-5, max_steps=n_iters * EPOCHS * MINIBATCHES,
        bf16=args.bf16, fp16=False, gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
        logging_steps=EPOCHS * MINIBATCHES, disable_tqdm=True, dataloader_num_workers=0, seed=args.seed,
        shuffle_dataset=False, log_completions=False)

    rollout: list[float] = []
    timer, steps = C.step_timer()
    trainer = GRPOTrainer(model=folder, reward_funcs=[reward_fn], args=config, processing_class=tok,
                          train_dataset=Dataset.from_dict({"prompt": prompts}), callbacks=[timer])
    C.quiet(trainer)
    generate_and_score = trainer._generate_and_score_completions

    def timed_rollout(*a, **k):
        t = time.perf_counter()
        out = generate_and_score(*a, **k)
        rollout.append(time.perf_counter() - t)
        assert out["completion_ids"].shape == (BATCH, NEW_TOKENS), out["completion_ids"].shape
        return out

    trainer._generate_and_score_completions = timed_rollout
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    per = EPOCHS * MINIBATCHES
    assert len(steps) == n_iters * per + 1 and len(rollout) == n_iters, (len(steps), len(rollout))
    iters = [steps[(i + 1) * per] - steps[i * per] for i in range(n_iters)][args.warmup:]
    rollout = rollout[args.warmup:]
    logged = [h for h in trainer.state.log_history if "reward" in h][-1]
    result = {
        "peer": "trl_grpo", "iter_s": round(statistics.median(iters), 4), "iter_runs_s": [round(t, 4) for t in iters],
        "generate_and_score_s": round(statistics.median(rollout), 4),
        "update_s": round(statistics.median(t - r for t, r in zip(iters, rollout)), 4),
        "iters_timed": args.iters, "warmup_iters": args.warmup, "train_call_total_s": round(total, 3),
        "shapes": {"batch": BATCH, "group_size": GROUP, "prompt_len": PROMPT_LEN, "new_tokens": NEW_TOKENS,
                   "epochs": EPOCHS, "minibatches": MINIBATCHES, "beta": args.beta, "loss_type": config.loss_type,
                   "bf16": args.bf16},
        "sanity": {"reward": round(logged["reward"], 5), "kl": round(logged.get("kl", float("nan")), 5)},
        "cpu_during_run": cpu.report(), "calib_matmul_gflops": {"start": calib_start, "end": C.calib_gflops()},
        "threads": torch.get_num_threads(), "versions": C.versions(), "argv": C.argv_str(),
    }
    C.emit(result, args.out)


if __name__ == "__main__":
    main()
