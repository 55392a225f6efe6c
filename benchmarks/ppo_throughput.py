"""Env steps per second of PPO training (CartPole-v1 by default), written as JSON.

Measures, for each number of environments and of vmapped seeds, the compile time and
the best of ``--repeats`` timed runs of the compiled program (this machine's timings
vary run to run; the best is the least disturbed). Not a test: nothing here asserts.

    python benchmarks/ppo_throughput.py --out benchmarks/results/ppo_throughput_cpu.json
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from common import write_result

from ppo_jax import PPOConfig, make_train


def measure(config: PPOConfig, num_seeds: int, repeats: int) -> dict:
    train = make_train(config)
    keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
    fn = jax.jit(jax.vmap(train))
    t0 = time.perf_counter()
    compiled = fn.lower(keys).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for r in range(repeats):
        keys = jax.random.split(jax.random.PRNGKey(r + 1), num_seeds)
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(keys))
        times.append(time.perf_counter() - t0)
    steps = config.num_updates * config.batch_size * num_seeds
    returns = np.asarray(out.metrics["episode_return"])[:, -10:]
    return {
        "num_envs": config.num_envs, "num_steps": config.num_steps, "num_seeds": num_seeds,
        "env_steps": steps, "compile_s": compile_s, "run_s_best": min(times), "run_s_all": times,
        "sps_best": steps / min(times), "sps_median": steps / float(np.median(times)),
        "final_train_return_mean": float(np.nanmean(returns)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[4, 64, 1024])
    parser.add_argument("--num-seeds", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--total-timesteps", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/ppo_throughput.json")
    args = parser.parse_args()

    results = []
    for num_envs in args.num_envs:
        for num_seeds in args.num_seeds:
            # The reference configuration: 128 steps, 4 epochs x 4 minibatches.
            config = PPOConfig(env=args.env, num_envs=num_envs, num_steps=128, update_epochs=4,
                               num_minibatches=4, total_timesteps=max(args.total_timesteps, num_envs * 128))
            row = measure(config, num_seeds, args.repeats)
            results.append(row)
            print(f"{args.env} envs={num_envs:5d} seeds={num_seeds}: {row['sps_best']:>12,.0f} steps/s "
                  f"(median {row['sps_median']:,.0f}), compile {row['compile_s']:.1f} s", flush=True)
            # Write after every row so an interrupted benchmark keeps what it measured.
            write_result(args.out, {"benchmark": "ppo_throughput", "env": args.env,
                                    "total_timesteps": args.total_timesteps, "update_epochs": 4,
                                    "num_minibatches": 4, "num_steps": 128, "results": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
