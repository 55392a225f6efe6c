"""Time one RLHF-PPO iteration per phase on the reference configuration, written as JSON.

Vocabulary 256, 4 layers, 4 heads, width 256 (randomly initialised); separate policy,
reference, reward and value models; 64 prompts of 16 tokens, 48 new tokens at T = 1;
4 epochs x 4 minibatches of 16. Phases: ``sample`` (generation with the KV cache),
``score`` (the reward model), ``update`` (policy/reference log-probs, values, the per-token
rewards of docs/theory.md §11, GAE, and the PPO epochs: one compiled program). Compile time is separate; the
figure is the best and the median of ``--repeats`` iterations (this machine's timings vary).
``benchmarks/reference/torch_rlhf_iteration.py`` times a plain PyTorch + Hugging Face
implementation of the same iteration. ``--algo grpo`` (or ``rloo``) times the critic-free
iteration on the same shapes: 64 responses = 16 prompts x 4 (``--group-size``), no value model.

    python benchmarks/rlhf_iteration.py --out benchmarks/results/rlhf_iteration_cpu_2core.json
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from common import write_result
from flops import iteration_flops, torch_matmul_gflops, xla_matmul_gflops

from rlhf_jax.compute_dtype import resolve
from rlhf_jax.ppo_trainer import RLHFConfig, init_state, make_programs
from rlhf_jax.reward_model import reward_model
from rlhf_jax.transformer import TransformerConfig, TransformerLM, init_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--value-model", default="critic", choices=["critic", "policy-head"])
    parser.add_argument("--algo", default="ppo", choices=["ppo", "grpo", "rloo"])
    parser.add_argument("--group-size", type=int, default=4, help="grpo/rloo: responses per prompt")
    parser.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16", "auto"],
                        help="matmul inputs of the transformer blocks (float32 accumulation either way; auto: "
                             "bfloat16 where the cached probe found it faster)")
    parser.add_argument("--torch-python", default=None,
                        help="an interpreter with torch, to put PyTorch's matmul probe beside XLA's in the JSON")
    parser.add_argument("--out", default="benchmarks/results/rlhf_iteration.json")
    args = parser.parse_args()

    model_config = TransformerConfig(vocab_size=256, max_len=128, num_layers=4, num_heads=4, d_model=256, dropout=0.0,
                                     compute_dtype=args.compute_dtype)
    config = RLHFConfig(batch_size=args.batch, max_new_tokens=args.new_tokens, epochs=4, minibatches=4,
                        value_model=args.value_model, algo=args.algo, group_size=args.group_size)
    rm = reward_model(model_config)
    # EOS outside the vocabulary: every response has all 48 tokens, as in the reference.
    programs = make_programs(config, model_config, rm, prompt_len=args.prompt_len, max_new_tokens=args.new_tokens,
                             eos_id=-1, pad_id=0)
    sft_params = init_params(TransformerLM(model_config), jax.random.PRNGKey(0))
    rm_params = init_params(rm, jax.random.PRNGKey(1))
    state = init_state(config, programs, sft_params, rm_params)
    g = config.responses_per_prompt  # each prompt's group in adjacent rows
    prompts = jax.random.randint(jax.random.PRNGKey(2), (args.batch // g, args.prompt_len), 0, 256).repeat(g, axis=0)
    mask = np.ones((args.batch, args.prompt_len), np.int32)

    def iteration(state, key):
        k_sample, k_learn = jax.random.split(key)
        t0 = time.perf_counter()
        gen = jax.block_until_ready(programs.generate(state.policy_params, prompts, mask, k_sample))
        t1 = time.perf_counter()
        score = jax.block_until_ready(programs.score(rm_params, gen, 0.0, 1.0))
        t2 = time.perf_counter()
        state, metrics = jax.block_until_ready(programs.learn(state, sft_params, gen, score, k_learn))
        t3 = time.perf_counter()
        return state, {"sample": t1 - t0, "score": t2 - t1, "update": t3 - t2, "total": t3 - t0}

    t0 = time.perf_counter()
    state, _ = iteration(state, jax.random.PRNGKey(0))  # compiles all three programs
    compile_s = time.perf_counter() - t0
    runs = []
    for r in range(args.repeats):
        state, times = iteration(state, jax.random.PRNGKey(r + 1))
        runs.append(times)
    phases = ("sample", "score", "update", "total")
    best = {p: min(t[p] for t in runs) for p in phases}
    median = {p: float(np.median([t[p] for t in runs])) for p in phases}
    flops = iteration_flops(model_config, batch=args.batch, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                            epochs=config.epochs, critic=config.value_model == "critic" and not config.critic_free)
    probe = {"xla_gflops": xla_matmul_gflops(),
             "torch_gflops": torch_matmul_gflops(args.torch_python) if args.torch_python else None}
    result = {"benchmark": "rlhf_iteration", "batch": args.batch, "prompt_len": args.prompt_len,
              "new_tokens": args.new_tokens, "epochs": config.epochs, "minibatches": config.minibatches,
              "value_model": config.value_model, "algo": config.algo, "group_size": g,
              "compute_dtype": args.compute_dtype, "compute_dtype_used": resolve(args.compute_dtype),
              "model": model_config.to_dict(), "compile_s": compile_s, "best_s": best, "median_s": median,
              "runs": runs, "matmul_gflop": {p: f / 1e9 for p, f in flops.items()},
              "gflops_at_median": {p: flops[p] / 1e9 / median[p] for p in phases},
              "matmul_probe_2048": probe}
    print("  ".join(f"{p} {best[p]:.3f} s (median {median[p]:.3f})" for p in phases) + f"  compile {compile_s:.1f} s")
    print("  ".join(f"{p} {flops[p] / 1e9:.0f} GFLOP at {flops[p] / 1e9 / median[p]:.0f} GFLOP/s" for p in phases)
          + f"  (float32 matmul probe: XLA {probe['xla_gflops']:.0f} GFLOP/s"
          + (f", torch {probe['torch_gflops']:.0f}" if probe["torch_gflops"] else "") + ")")
    write_result(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
