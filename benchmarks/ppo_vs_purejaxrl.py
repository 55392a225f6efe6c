"""ppo_jax against the real PureJaxRL, side by side: steps/s and compile time, written as JSON.

Each round runs PureJaxRL's own ``purejaxrl/ppo.py`` (through ``benchmarks/peers/purejaxrl_ppo.py``,
with the peer's interpreter and gymnax 0.0.9) and then ours in a fresh process, with the same
configuration (PureJaxRL's CartPole one: 4 envs x 128 steps, 4 epochs x 4 minibatches, lr 2.5e-4
annealed, value clipping 0.2, 5e5 steps); odd rounds run ours first, so a machine that drifts
slower or faster favours neither. A speed ratio is only meaningful between runs of one session:
that is what the rounds are. Both sides get the same ``XLA_FLAGS`` (``--xla-flags``; default
none: XLA's defaults, as each side ships); each side has ``--side-timeout`` seconds, so a
deadlocked process stops the benchmark with an error.

    PEERS=~/peers bash benchmarks/peers/setup_purejaxrl.sh     # the peer's source and interpreter, once
    python benchmarks/ppo_vs_purejaxrl.py \\
        --peer-python ~/peers/venv_purejaxrl/bin/python --peer-src ~/peers/purejaxrl \\
        --seeds 1 8 --rounds 3 --out benchmarks/results/ppo_vs_purejaxrl_cpu_2core.json

``--variant rnn`` runs PureJaxRL's recurrent ``purejaxrl/ppo_rnn.py`` (through
``benchmarks/peers/purejaxrl_ppo_rnn.py``) against ours with ``network="gru"`` and one torso, in
the script's configuration (the same sizes; 128-wide embedding and GRU, ReLU); its learning
result is the training-time return of the last 10 updates on both sides. The one difference
of architecture: the script gives each head its own 128-wide layer after the GRU, ours one
shared layer (``hidden_sizes=(128, 128)``).

``--variant continuous --env brax:hopper --num-envs 2048`` runs PureJaxRL's
``purejaxrl/ppo_continuous_action.py`` on Brax (through ``benchmarks/peers/purejaxrl_ppo_continuous.py``;
the peer's interpreter needs Brax, which ``setup_purejaxrl.sh`` installs) against ours on the
``brax:hopper`` adapter, in the script's configuration: 2048 envs x 10 steps, 4 epochs x 32
minibatches, lr 3e-4 constant, no entropy bonus, 256-256 tanh networks, observations and rewards
normalised, value clipping 0.2. Ours runs in an interpreter with the ``brax`` extra. The
differences: ours keeps the actor and the critic as two networks with two optimisers (the
script: one tree, one optimiser, the value loss weighted 0.5), and ours bootstraps a step the
time limit cut (the script treats it as a termination). Learning result: the final policy's
return over 64 fresh episodes per seed, actions sampled, on both sides.

``--ours-processes 2`` adds a row for ours with the seeds split
over two processes (the multi-core default of ``ppo-jax train --num-seeds``), and
``--ours-seed-groups 2`` a row for ours in one process with the seeds vmapped as two
independent groups (``ppo_jax.seed_groups``; what it does with ``--processes 1``). Every run
also reports the final policy's return (64 sampled episodes per seed), so a speed-up that
broke learning shows. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEDULER_OFF = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
"""``--xla-flags`` for both sides that protects a program with a vmapped QR (PureJaxRL's orthogonal
init) from XLA:CPU's deadlock on 2 cores, at the cost of running its operations one at a time."""
PEER_SCRIPTS = {"mlp": ("purejaxrl_ppo.py", "ppo.py"), "rnn": ("purejaxrl_ppo_rnn.py", "ppo_rnn.py"),
                "continuous": ("purejaxrl_ppo_continuous.py", "ppo_continuous_action.py")}
"""variant -> (our runner of the peer, in peers/; PureJaxRL's script it runs)."""


def ours_once(args) -> dict:
    """Our side of a round, in this (fresh) process; the same protocol as the peer's runner."""
    import jax
    import numpy as np
    from peers.timing import compile_and_time

    from ppo_jax import PPOConfig, make_train
    from ppo_jax.evaluate import make_evaluate
    from ppo_jax.seed_groups import vmap_seeds

    config = PPOConfig(env=args.env, num_envs=args.num_envs, num_steps=128, update_epochs=4, num_minibatches=4,
                       lr=2.5e-4, critic_lr=2.5e-4, value_clip_eps=0.2)
    if args.variant == "rnn":
        config = config.replace(network="gru", shared_torso=True, hidden_sizes=(128, 128), activation="relu")
    if args.variant == "continuous":  # the script's Brax configuration
        config = config.replace(num_steps=10, num_minibatches=32, lr=3e-4, critic_lr=3e-4, anneal_lr=False,
                                ent_coef=0.0, hidden_sizes=(256, 256), normalize_observations=True,
                                normalize_rewards=True)
    batch = config.num_envs * config.num_steps
    config = config.replace(total_timesteps=int(args.total_timesteps) // batch * batch)
    train = make_train(config)
    seeds = args.seeds
    # One seed without vmap, as the peer's runner does it (and as `ppo-jax train` does).
    fn = (jax.jit(vmap_seeds(train, args.seed_groups)) if seeds > 1
          else jax.jit(lambda key: jax.tree.map(lambda x: x[None], train(key[0]))))
    keys = jax.random.split(jax.random.PRNGKey(args.seed0), seeds)
    warm = jax.random.split(jax.random.PRNGKey(args.seed0 + 10_000), seeds)
    out, compile_s, run_times = compile_and_time(fn, keys, warm, args.runs)  # the peer's runner times it so too
    if args.variant == "rnn":  # the return of the episodes that ended in the last 10 updates, as the peer's runner
        ret = np.nan_to_num(np.asarray(out.metrics["episode_return"])[:, -10:])
        count = np.asarray(out.metrics["episodes_finished"])[:, -10:]
        per_seed = (ret * count).sum(axis=1) / np.maximum(count.sum(axis=1), 1)
    else:
        evaluate = jax.jit(jax.vmap(make_evaluate(config, num_episodes=64, deterministic=False)))
        per_seed = np.asarray(evaluate(out.state.params, out.state.env_state.obs_stats,
                                       jax.random.split(jax.random.PRNGKey(args.seed0 + 777), seeds))).mean(axis=1)
    steps = config.num_updates * config.batch_size
    return {"peer": "ppo_jax", "seeds": seeds, "seed_groups": args.seed_groups, "compile_s": compile_s,
            "run_s": run_times[-1], "run_times_s": run_times, "sps": steps * seeds / run_times[-1],
            "steps_per_seed": steps, "final_return_mean": float(per_seed.mean()),
            "final_return_per_seed": per_seed.tolist()}


def run_json(cmd: list[str], env: dict, timeout_s: float) -> dict:
    """Runs a side's process and returns the JSON line it prints last (its stderr on failure)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... did not finish in {timeout_s:.0f} s (--side-timeout); "
                           f"a hang at 0% CPU is XLA:CPU's scheduler deadlock: try --xla-flags={SCHEDULER_OFF}"
                           ) from err
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def ours_split(args, seeds: int, processes: int, env: dict) -> dict:
    """Ours with the seeds split over ``processes`` concurrent processes (one per core)."""
    per = seeds // processes
    cmd = [sys.executable, os.path.abspath(__file__), "--ours-once", "--variant", args.variant, "--seeds", str(per),
           "--env", args.env, "--num-envs", str(args.num_envs), "--total-timesteps", str(args.total_timesteps),
           "--runs", str(args.runs)]
    procs = [subprocess.Popen(cmd + ["--seed0", str(args.seed0 + 100 * i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(processes)]
    outs = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=args.side_timeout)
        except subprocess.TimeoutExpired as err:
            for q in procs:
                q.kill()
            raise RuntimeError(f"split run did not finish in {args.side_timeout:.0f} s (--side-timeout)") from err
        lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
        if p.returncode != 0 or not lines:
            raise RuntimeError(f"split run failed (exit {p.returncode}):\n{stderr[-3000:]}")
        outs.append(json.loads(lines[-1]))
    # The processes run concurrently, so a run ends with the slowest; each one's fastest run counts.
    run_s = max(min(o["run_times_s"]) for o in outs)
    returns = [r for o in outs for r in o["final_return_per_seed"]]
    return {"peer": f"ppo_jax x{processes} processes", "seeds": seeds, "compile_s": max(o["compile_s"] for o in outs),
            "run_s": run_s, "steps_per_seed": outs[0]["steps_per_seed"],
            "sps": outs[0]["steps_per_seed"] * seeds / run_s,
            "final_return_mean": sum(returns) / len(returns), "final_return_per_seed": returns}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer-python", help="the interpreter with PureJaxRL's dependencies (gymnax 0.0.9)")
    p.add_argument("--peer-src", help="a PureJaxRL checkout (has purejaxrl/ppo.py)")
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--variant", choices=list(PEER_SCRIPTS), default="mlp",
                   help="mlp: purejaxrl/ppo.py against ours; rnn: purejaxrl/ppo_rnn.py against ours with "
                        "network='gru'; continuous: purejaxrl/ppo_continuous_action.py on Brax (--env brax:hopper)")
    p.add_argument("--num-envs", type=int, default=4)
    p.add_argument("--total-timesteps", type=float, default=5e5)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=3,
                   help="timed runs after the compile; the fastest counts (the least disturbed by the machine)")
    p.add_argument("--ours-processes", type=int, default=0,
                   help="also time ours with the seeds split over this many processes (0: not)")
    p.add_argument("--ours-seed-groups", type=int, default=0,
                   help="also time ours in one process with the seeds vmapped in this many independent groups "
                        "(ppo_jax.seed_groups, what `ppo-jax train --num-seeds` does in one process; 0: not)")
    p.add_argument("--seed-groups", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--seed0", type=int, default=0)
    p.add_argument("--xla-flags", default="",
                   help=f"XLA_FLAGS for both sides (default none: XLA's defaults, as each side ships; "
                        f"{SCHEDULER_OFF} was needed by programs with a vmapped QR on 2 cores)")
    p.add_argument("--side-timeout", type=float, default=3600.0,
                   help="seconds a side's process may take before the benchmark stops with an error")
    p.add_argument("--out", default="benchmarks/results/ppo_vs_purejaxrl.json")
    p.add_argument("--ours-once", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.ours_once:
        args.seeds = args.seeds[0]
        print(json.dumps(ours_once(args)), flush=True)
        return
    if not (args.peer_python and args.peer_src):
        p.error("--peer-python and --peer-src are required (benchmarks/peers/setup_purejaxrl.sh makes both)")
    runner = os.path.join(HERE, "peers", PEER_SCRIPTS[args.variant][0])
    if args.variant == "continuous" and not args.env.startswith("brax:"):
        p.error("--variant continuous: --env must be a Brax environment, brax:<name> (PureJaxRL's script is Brax's)")
    peer_env = args.env.removeprefix("brax:")

    sys.path.insert(0, HERE)
    from common import write_result

    env = dict(os.environ, XLA_FLAGS=args.xla_flags, RL_JAX_COMPILATION_CACHE="0")
    rows = []

    def save() -> None:
        summary = {}
        for seeds in args.seeds:
            kinds = ["ppo_jax"] + ([f"ppo_jax x{args.ours_processes} processes"] if args.ours_processes else [])
            kinds += [f"ppo_jax {args.ours_seed_groups} seed groups"] if args.ours_seed_groups else []
            for kind in kinds:
                ratios = [r["sps_ratio"][kind] for r in rows if r["seeds"] == seeds and kind in r["sps_ratio"]]
                compile_ratios = [r["compile_ratio"][kind] for r in rows
                                  if r["seeds"] == seeds and kind in r["compile_ratio"]]
                if ratios:
                    summary[f"{kind}, {seeds} seeds"] = {
                        "median_sps_ratio": statistics.median(ratios), "sps_ratios": ratios,
                        "median_compile_ratio": statistics.median(compile_ratios) if compile_ratios else None}
        write_result(args.out, {"benchmark": "ppo_vs_purejaxrl", "variant": args.variant,
                                "peer_script": f"purejaxrl/{PEER_SCRIPTS[args.variant][1]}",
                                "env": args.env, "num_envs": args.num_envs, "xla_flags_both_sides": args.xla_flags,
                                "total_timesteps": int(args.total_timesteps), "rounds": rows,
                                "summary": summary, "note": "ratios are ours / PureJaxRL (above 1: ours faster); "
                                "compile ratio is PureJaxRL's compile time / ours (above 1: ours compiles faster)"})

    for rnd in range(args.rounds):
        for seeds in args.seeds:
            peer_cmd = [args.peer_python, runner, "--src", args.peer_src, "--env", peer_env,
                        "--total-timesteps", str(args.total_timesteps), "--num-envs", str(args.num_envs),
                        "--seeds", str(seeds), "--seed0", str(args.seed0), "--runs", str(args.runs)]
            ours_cmd = [sys.executable, os.path.abspath(__file__), "--ours-once", "--variant", args.variant,
                        "--seeds", str(seeds),
                        "--env", args.env, "--num-envs", str(args.num_envs),
                        "--total-timesteps", str(args.total_timesteps), "--runs", str(args.runs),
                        "--seed0", str(args.seed0)]
            sides = [("purejaxrl", lambda: run_json(peer_cmd, env, args.side_timeout)),
                     ("ppo_jax", lambda: run_json(ours_cmd, env, args.side_timeout))]
            if args.ours_processes and seeds % args.ours_processes == 0 and seeds >= args.ours_processes:
                sides.append((f"ppo_jax x{args.ours_processes} processes",
                              lambda: ours_split(args, seeds, args.ours_processes, env)))
            if args.ours_seed_groups and seeds > 1 and seeds % args.ours_seed_groups == 0:
                grouped_cmd = ours_cmd + ["--seed-groups", str(args.ours_seed_groups)]
                sides.append((f"ppo_jax {args.ours_seed_groups} seed groups",
                              lambda: run_json(grouped_cmd, env, args.side_timeout)))
            if rnd % 2:
                sides = sides[1:] + sides[:1]
            results = {name: fn() for name, fn in sides}
            for r in results.values():
                r["run_s"] = min(r.get("run_times_s") or [r["run_s"]])
                r["sps"] = r["steps_per_seed"] * r["seeds"] / r["run_s"]
            peer = results["purejaxrl"]
            row = {"round": rnd, "seeds": seeds, "order": [name for name, _ in sides],
                   "results": {name: {k: r.get(k) for k in ("sps", "compile_s", "run_s", "run_times_s",
                                                            "final_return_mean", "final_return_per_seed")}
                               for name, r in results.items()},
                   "sps_ratio": {name: r["sps"] / peer["sps"] for name, r in results.items() if name != "purejaxrl"},
                   "compile_ratio": {name: peer["compile_s"] / r["compile_s"] for name, r in results.items()
                                     if name != "purejaxrl" and r.get("compile_s")}}
            rows.append(row)
            line = ", ".join(f"{name} {r['sps']:,.0f} sps (compile {r['compile_s']:.1f} s, return "
                             f"{r['final_return_mean']:.0f})" for name, r in results.items())
            print(f"round {rnd} seeds {seeds}: {line}", flush=True)
            save()  # after every row, so an interrupted run keeps what it measured
    for key, s in json.load(open(args.out))["summary"].items():
        print(f"{key}: median ratio {s['median_sps_ratio']:.2f}x steps/s, compile {s['median_compile_ratio']:.2f}x")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
