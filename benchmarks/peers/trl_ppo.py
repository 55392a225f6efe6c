"""Time TRL 1.12's own PPO loop (``trl.experimental.ppo.PPOTrainer``) on the reference shapes.

The peer's side of the PPO row of docs/benchmarks.md: run it in the TRL venv
(``setup_trl.sh``), on the machine and in the session where ``benchmarks/rlhf_iteration.py``
runs, alternating the two, and compare ratios:

    ~/venvs/rlhf-trl/bin/python benchmarks/peers/trl_ppo.py --warmup 1 --iters 3 --out /tmp/trl_ppo.jsonl

TRL 1.12.0 is the newest release with PPO (later ones removed ``trl/experimental/ppo``). The
work is ours: four separate GPT-2 models (policy, frozen reference, value, frozen reward) of the
shapes in ``torch_common.py``, 64 prompts x 48 sampled tokens, per-token k1 KL rewards (0.05),
GAE (gamma 1, lambda 0.95), 4 epochs x 4 minibatches of the clipped update, float32, Adam.

An iteration's time is taken between TRL's ``on_step_end`` callbacks; inside it, by wrapping
the module-level helpers TRL's loop calls (what they compute is unchanged): ``gen_s`` (TRL's
``batch_generation``), ``rollout_rest_s`` (from the end of generation to the first forward
with gradients: reference, value and reward forwards, the KL rewards and GAE) and ``train_s``
(from there to the last optimiser step).
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
import torch_common as C  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warmup", type=int, default=1, help="iterations not timed")
    ap.add_argument("--iters", type=int, default=3, help="timed iterations")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also append the JSON line to this file")
    args = ap.parse_args()
    cpu, calib_start = C.CpuStat(), C.calib_gflops()

    import transformers
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    transformers.logging.set_verbosity_error()
    import trl.experimental.ppo.ppo_trainer as trainer_module
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    s = C.SHAPES
    policy, reference, value, reward = C.build_models(args.seed)
    n_iters = args.warmup + args.iters
    config = PPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl_ppo_"),
        # One rollout of 64 per step, cut into 4 minibatches of 16 (gradient accumulation 1, so
        # that every minibatch takes an optimiser step).
        per_device_train_batch_size=s["batch"], gradient_accumulation_steps=1, num_mini_batches=s["minibatches"],
        num_ppo_epochs=s["epochs"], local_rollout_forward_batch_size=s["batch"], total_episodes=s["batch"] * n_iters,
        response_length=s["new_tokens"], temperature=1.0, stop_token=None, stop_token_id=None,
        missing_eos_penalty=None, learning_rate=1e-5, cliprange=0.2, cliprange_value=0.2, gamma=1.0, lam=0.95,
        kl_coef=0.05, kl_estimator="k1", whiten_rewards=False, num_sample_generations=0,
        # TRL's defaults bf16=True and gradient_checkpointing=True would time other work.
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
        eval_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, seed=args.seed)

    marks: dict = {"iters": []}

    def fresh() -> dict:
        return {"gen_s": 0.0, "gen_end": None, "train_start": None, "train_end": None}

    generate, forward = trainer_module.batch_generation, trainer_module.forward

    def timed_generation(*a, **k):
        t = time.perf_counter()
        out = generate(*a, **k)
        marks["now"]["gen_s"] += time.perf_counter() - t
        marks["now"]["gen_end"] = time.perf_counter()
        return out

    def marked_forward(model, *a, **k):
        if torch.is_grad_enabled() and marks["now"]["train_start"] is None:
            marks["now"]["train_start"] = time.perf_counter()
        return forward(model, *a, **k)

    trainer_module.batch_generation, trainer_module.forward = timed_generation, marked_forward

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            marks["last"], marks["now"] = time.perf_counter(), fresh()

        def on_step_end(self, *a, **k):
            t = time.perf_counter()
            marks["iters"].append({**marks["now"], "iter_s": t - marks["last"]})
            marks["last"], marks["now"] = t, fresh()

    trainer = PPOTrainer(args=config, processing_class=C.build_byte_tokenizer(), model=policy, ref_model=reference,
                         reward_model=reward, value_model=value,
                         train_dataset=Dataset.from_dict({"input_ids": C.random_prompts(args.seed).tolist()}),
                         callbacks=[Timer()])
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    step = trainer.optimizer.step

    def marked_step(*a, **k):
        out = step(*a, **k)
        marks["now"]["train_end"] = time.perf_counter()
        return out

    trainer.optimizer.step = marked_step
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    timed = marks["iters"][args.warmup:]
    if len(marks["iters"]) != n_iters:
        raise RuntimeError(f"TRL ran {len(marks['iters'])} iterations, {n_iters} were asked for")
    rows = [{"iter_s": m["iter_s"], "gen_s": m["gen_s"], "rollout_rest_s": m["train_start"] - m["gen_end"],
             "train_s": m["train_end"] - m["train_start"]} for m in timed]
    logged = [h for h in trainer.state.log_history if "objective/scores" in h][-1]
    C.emit({
        "peer": "trl_ppo", "iter_s": round(statistics.median(r["iter_s"] for r in rows), 4),
        "iter_runs_s": [round(r["iter_s"], 4) for r in rows],
        "phases_median_s": {k: round(statistics.median(r[k] for r in rows), 4)
                            for k in ("gen_s", "rollout_rest_s", "train_s")},
        "iters_timed": args.iters, "warmup_iters": args.warmup, "train_call_total_s": round(total, 3),
        "shapes": s, "sanity": {"scores": round(logged["objective/scores"], 5), "kl": round(logged["objective/kl"], 5)},
        "peak_rss_mb": round(C.peak_rss_mb(), 1), "cpu_during_run": cpu.report(),
        "calib_matmul_gflops": {"start": calib_start, "end": C.calib_gflops()}, "threads": torch.get_num_threads(),
        "versions": C.versions(), "argv": C.argv_str(),
    }, args.out)


if __name__ == "__main__":
    main()
