"""Reference timing: Hugging Face ``generate`` (PyTorch, CPU) on the generation benchmark's configuration.

Not part of the project (it needs torch and transformers, which the project does not
depend on); run it in a separate environment to measure the baseline on the same machine:

    python -m venv /tmp/hf && /tmp/hf/bin/pip install torch transformers
    /tmp/hf/bin/python benchmarks/reference/hf_generate.py --out benchmarks/results/generation_hf_cpu.json

A randomly initialised GPT-2 (vocabulary 256, 4 layers, 4 heads, width 256, context 128),
64 prompts of 16 tokens, 48 new tokens sampled at temperature 1.0, with and without the
KV cache; the best of ``--repeats`` runs is reported with all runs.
"""

import argparse
import json
import os
import platform
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/generation_hf.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=256, n_positions=128, n_embd=256, n_layer=4, n_head=4, bos_token_id=255,
                        eos_token_id=255)
    model = GPT2LMHeadModel(config).eval()
    prompts = torch.randint(0, 256, (64, 16))
    mask = torch.ones_like(prompts)
    results = {}
    for use_cache in (True, False):
        times = []
        for r in range(args.repeats + 1):
            t0 = time.perf_counter()
            with torch.no_grad():
                out = model.generate(prompts, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                     max_new_tokens=48, min_new_tokens=48, pad_token_id=0, use_cache=use_cache)
            if r:  # the first run warms up
                times.append(time.perf_counter() - t0)
        assert out.shape == (64, 64)
        results["cached" if use_cache else "uncached"] = {"best_s": min(times), "all_s": times,
                                                          "new_tokens_per_s": 64 * 48 / min(times)}
        print(f"HF generate use_cache={use_cache}: best {min(times):.3f} s, {64 * 48 / min(times):,.0f} new tokens/s")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"benchmark": "generation_reference_hf", "torch": torch.__version__,
                   "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                   "cpu_count": os.cpu_count(), "batch": 64, "prompt_len": 16, "new_tokens": 48,
                   "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
