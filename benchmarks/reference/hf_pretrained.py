"""Reference timing: transformers (PyTorch, float32) on ``benchmarks/pretrained.py``'s shapes and batch.

Not part of the project (it needs torch and transformers); run it in a separate environment
on the same machine, alternating with ours:

    /tmp/hf/bin/python benchmarks/reference/hf_pretrained.py --models gpt2-small \\
        --out benchmarks/results/pretrained_hf_cpu.json

Forward (no grad), forward+backward of the mean next-token log-likelihood, and ``generate``
with the KV cache sampling exactly ``--new-tokens`` tokens; best of ``--repeats`` after a warm-up.
"""

import argparse
import json
import os
import platform
import sys
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from shapes import MODELS, add_arguments  # noqa: E402


def best_of(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), times


def main() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, "benchmarks/results/pretrained_hf.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {}
    for name in args.models:
        shape = dict(MODELS[name])
        config = AutoConfig.for_model(shape.pop("model_type"), **shape)
        model = AutoModelForCausalLM.from_config(config).float()
        ids = torch.randint(0, config.vocab_size, (args.batch, args.seq))
        mask = torch.ones_like(ids)

        def forward():
            with torch.no_grad():
                return model(input_ids=ids, attention_mask=mask).logits

        def backward():
            model.zero_grad(set_to_none=True)
            logits = model(input_ids=ids, attention_mask=mask).logits
            loss = -torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).mean()
            loss.backward()
            return loss

        def sample():
            with torch.no_grad():
                return model.generate(ids[:, :16], attention_mask=mask[:, :16], do_sample=True, top_k=0,
                                      max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=1)

        row = {"params": sum(p.numel() for p in model.parameters())}
        for phase, fn in (("forward", forward), ("forward_backward", backward), ("sample", sample)):
            model.eval()  # no dropout in any phase, as ours
            best, times = best_of(fn, args.repeats)
            row[phase] = {"best_s": best, "all_s": times}
            print(f"{name} {phase}: best {best:.3f} s", flush=True)
        row["sample"]["new_tokens_per_s"] = args.batch * args.new_tokens / row["sample"]["best_s"]
        results[name] = row
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"benchmark": "pretrained_reference_hf", "torch": torch.__version__,
                   "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                   "cpu_count": os.cpu_count(), "cpu_model": cpu_model(), "batch": args.batch, "seq": args.seq,
                   "new_tokens": args.new_tokens, "results": results}, f, indent=2)


def cpu_model() -> str:
    try:
        return next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


if __name__ == "__main__":
    main()
