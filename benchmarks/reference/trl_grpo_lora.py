"""Peer timing: TRL 1.16's ``GRPOTrainer`` with a PEFT LoRA config on a pretrained model shape (CPU, fp32).

Not part of the project (it needs torch, transformers, trl and peft); ``benchmarks/lora_grpo.py``
runs it with ``--trl-python`` (the ``rlhf-trl-latest`` venv of the TRL peers), alternated
with ours. The same work as ``lora_grpo.py``'s ``ours-lora``: the model built from its
config.json shape (``benchmarks/shapes.py``) with random weights, LoRA of rank ``--rank`` and
alpha 2 x rank on every linear layer of the blocks (GPT-2: ``c_attn``, ``c_proj``, ``c_fc``;
Qwen2: q, k, v, o, gate, up, down), ``--prompts`` prompts of 16 tokens x ``--group``
generations of exactly ``--new-tokens`` tokens at temperature 1, ``--epochs`` x
``--minibatches`` clipped updates with the k3 KL term (beta 0.05; the reference is the base
with the adapters disabled), Adam; the same cheap reward on the completion ids. An iteration
is the optimiser steps between two generations, timed between TRL's ``on_step_end``
callbacks. Prints one JSON line with the median seconds and the process's peak memory. ``--full``: the
same without PEFT (every weight trains; TRL loads a second copy as the reference).
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
from pathlib import Path

warnings.filterwarnings("ignore")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
PROMPT_LEN = 16
TARGETS = {"gpt2": ["c_attn", "c_proj", "c_fc"],
           "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("--prompts", 4), ("--group", 4), ("--new-tokens", 32), ("--epochs", 1),
                          ("--minibatches", 2), ("--rank", 16), ("--warmup", 1), ("--iters", 2)):
        parser.add_argument(name, type=int, default=default)
    parser.add_argument("--model", default="gpt2-small")
    parser.add_argument("--full", action="store_true", help="full fine-tuning (no PEFT; TRL loads a reference copy)")
    parser.add_argument("--bf16", action="store_true", help="TRL's bf16 mixed precision (autocast)")
    args = parser.parse_args()
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here.parent))
    sys.path.insert(0, str(here.parent / "peers"))
    import torch
    import torch_common as C
    from datasets import Dataset
    from peft import LoraConfig
    from shapes import MODELS
    from transformers import AutoConfig, AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    shape = MODELS[args.model]
    torch.manual_seed(0)
    config = AutoConfig.for_model(**shape)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tok = C.build_byte_tokenizer()
    folder = tempfile.mkdtemp(prefix="trl_grpo_lora_")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    batch = args.prompts * args.group
    n_iters = args.warmup + args.iters
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(33, 127, (args.prompts * n_iters * 2, PROMPT_LEN), generator=g)
    prompts = ["".join(map(chr, row.tolist())) for row in ids]

    def reward_fn(prompts, completions, completion_ids, **_):  # the same cheap reward as ours
        return [sum(1 for t in ids_ if t % 7 == 0) / len(ids_) for ids_ in completion_ids]

    kind = shape["model_type"]
    lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules=TARGETS[kind],
                      task_type="CAUSAL_LM", fan_in_fan_out=kind == "gpt2")
    grpo = GRPOConfig(
        output_dir=folder, per_device_train_batch_size=batch // args.minibatches, steps_per_generation=args.minibatches,
        gradient_accumulation_steps=1, num_generations=args.group, num_iterations=args.epochs,
        max_completion_length=args.new_tokens, temperature=1.0, top_k=0, top_p=1.0,
        generation_kwargs={"min_new_tokens": args.new_tokens}, beta=0.05, epsilon=0.2, loss_type="bnpo",
        scale_rewards="group", learning_rate=1e-5, max_steps=n_iters * args.epochs * args.minibatches, bf16=args.bf16,
        fp16=False, gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
        logging_steps=args.epochs * args.minibatches, disable_tqdm=True, dataloader_num_workers=0, seed=0,
        shuffle_dataset=False, log_completions=False)
    timer, steps = C.step_timer()
    trainer = GRPOTrainer(model=folder, reward_funcs=[reward_fn], args=grpo, processing_class=tok,
                          train_dataset=Dataset.from_dict({"prompt": prompts}), callbacks=[timer],
                          peft_config=None if args.full else lora)
    C.quiet(trainer)
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    per = args.epochs * args.minibatches
    iters = [steps[(i + 1) * per] - steps[i * per] for i in range(n_iters)]
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    timed = iters[args.warmup:]
    name = ("trl-full" if args.full else "trl-lora") + ("-bf16" if args.bf16 else "")
    print(json.dumps({"variant": name, "model": args.model,
                      "iter_s": round(statistics.median(timed), 3), "iter_runs_s": [round(t, 3) for t in timed],
                      "first_iteration_s": round(iters[0], 1),
                      "peak_rss_gib": round(C.peak_rss_mb() / 1024, 2), "trainable_params": int(trainable),
                      "total_s": round(total, 1), "threads": torch.get_num_threads(), "versions": C.versions()}))


if __name__ == "__main__":
    main()
