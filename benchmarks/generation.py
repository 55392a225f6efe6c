"""Time ``rlhf_jax`` generation with the KV cache on the reference configuration, written as JSON.

Vocabulary 256, 4 layers, 4 heads, width 256, context 128 (a randomly initialised model);
64 prompts of 16 tokens; 48 new tokens at temperature 1.0. Compile time is reported
separately; the best of ``--repeats`` runs is the figure (this machine's timings vary).
``benchmarks/reference/hf_generate.py`` times Hugging Face ``generate`` on the same setup.

    python benchmarks/generation.py --out benchmarks/results/generation_cpu.json
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from common import write_result

from rlhf_jax.sampling import SamplingConfig, make_generate
from rlhf_jax.transformer import TransformerConfig, TransformerLM, init_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/generation.json")
    args = parser.parse_args()

    config = TransformerConfig(vocab_size=256, max_len=128, num_layers=4, num_heads=4, d_model=256, dropout=0.0)
    model = TransformerLM(config)
    params = init_params(model, jax.random.PRNGKey(0))
    prompts = jax.random.randint(jax.random.PRNGKey(1), (args.batch, args.prompt_len), 0, 256)
    mask = np.ones((args.batch, args.prompt_len), np.int32)
    # EOS outside the vocabulary: every row generates all new tokens, as the reference does.
    generate = make_generate(model, SamplingConfig(max_new_tokens=args.new_tokens, temperature=1.0),
                             eos_id=-1, pad_id=0)
    t0 = time.perf_counter()
    compiled = generate.lower(params, prompts, mask, jax.random.PRNGKey(0)).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for r in range(args.repeats + 1):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(params, prompts, mask, jax.random.PRNGKey(r)))
        if r:
            times.append(time.perf_counter() - t0)
    assert int(out.response_mask.sum()) == args.batch * args.new_tokens
    new_tokens = args.batch * args.new_tokens
    result = {"benchmark": "generation", "batch": args.batch, "prompt_len": args.prompt_len,
              "new_tokens": args.new_tokens, "model": config.to_dict(), "compile_s": compile_s,
              "best_s": min(times), "median_s": float(np.median(times)), "all_s": times,
              "new_tokens_per_s": new_tokens / min(times), }
    print(f"generate {args.batch}x({args.prompt_len}+{args.new_tokens}): best {min(times):.3f} s "
          f"(median {np.median(times):.3f} s), {new_tokens / min(times):,.0f} new tokens/s, "
          f"compile {compile_s:.1f} s")
    write_result(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
