"""``ppo-jax train | eval``: the command line over :class:`ppo_jax.config.PPOConfig` (tyro)."""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

USAGE = """usage: ppo-jax {train,eval} [--help] [options]

  train   train PPO on a gymnax environment (presets per --env), write a run folder
  eval    evaluate a checkpoint: ppo-jax eval --checkpoint DIR
"""

from ppo_jax.config import PPOConfig, preset  # noqa: E402


@dataclass(frozen=True)
class TrainArgs(PPOConfig):
    """Train PPO. Defaults come from the preset of --env; every flag overrides its field."""

    algo: Literal["ppo"] = "ppo"
    """Update rule."""
    num_seeds: int = 1
    """Seeds run together under vmap, in one compiled program."""
    seed: int = 0
    """Base random seed; seed i of the run uses fold(seed, i)."""
    out: str | None = None
    """Run folder (created); default: a fresh folder under runs/."""
    eval_episodes: int = 16
    """Deterministic evaluation episodes per seed at the end."""
    no_progress: bool = False
    """Hide the progress bar."""


@dataclass(frozen=True)
class EvalArgs:
    """Evaluate a saved checkpoint."""

    checkpoint: str
    """Checkpoint directory (the run folder's checkpoint/)."""
    episodes: int = 16
    """Episodes per seed."""
    stochastic: bool = False
    """Sample actions instead of taking the distribution's mode."""
    seed: int = 0
    """Evaluation seed."""


def _env_from_argv(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--env" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--env="):
            return arg.split("=", 1)[1]
    return PPOConfig.env


def _config_of(args: TrainArgs) -> PPOConfig:
    return PPOConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PPOConfig)})


def _fail(msg: str) -> None:
    print(f"ppo-jax: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def train_main(argv: list[str]) -> dict:
    import tyro

    try:
        base = preset(_env_from_argv(argv))
    except ValueError as err:
        _fail(str(err))
    defaults = TrainArgs(**dataclasses.asdict(base))
    args = tyro.cli(TrainArgs, args=argv, default=defaults, prog="ppo-jax train")
    config = _config_of(args)
    try:
        config.validate()
        for name in ("num_seeds", "eval_episodes"):
            if getattr(args, name) <= 0:
                raise ValueError(f"{name}: must be a positive integer, got {getattr(args, name)}")
    except ValueError as err:
        _fail(str(err))
    try:
        return run_training(config, num_seeds=args.num_seeds, seed=args.seed, out=args.out,
                            eval_episodes=args.eval_episodes, progress=not args.no_progress, algo=args.algo)
    except FileExistsError as err:
        _fail(str(err))


def run_training(config: PPOConfig, *, num_seeds: int = 1, seed: int = 0, out: str | None = None,
                 eval_episodes: int = 16, progress: bool = True, algo: str = "ppo") -> dict:
    """Trains ``num_seeds`` seeds in one program and writes the run folder; returns the summary."""
    import jax
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ppo_jax import checkpoint as ckpt
    from ppo_jax.evaluate import make_evaluate
    from ppo_jax.outputs import new_run_dir, plot_learning_curve, write_json, write_metrics
    from ppo_jax.train import make_train

    console = Console(stderr=True)
    if out and (Path(out) / "checkpoint").exists():
        # Refuse before training, not after: a finished run must never fail to save.
        raise FileExistsError(f"out: {out} already holds a run (checkpoint/); choose a new folder")
    run_dir = Path(out) if out else new_run_dir("runs", f"{config.env}-{algo}")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", {**config.to_dict(), "algo": algo, "num_seeds": num_seeds, "seed": seed})

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console, disable=not progress)
    task = bar.add_task("compiling", total=config.num_updates)

    def on_update(update):
        bar.update(task, completed=int(np.max(np.asarray(update))) + 1)

    train = make_train(config, progress=on_update if progress else None)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(np.arange(num_seeds))
    with bar:
        t0 = time.perf_counter()
        compiled = jax.jit(jax.vmap(train)).lower(keys).compile()
        compile_s = time.perf_counter() - t0
        bar.update(task, description="training")
        t0 = time.perf_counter()
        output = jax.block_until_ready(compiled(keys))
        run_s = time.perf_counter() - t0
    steps_per_seed = config.num_updates * config.batch_size
    sps = steps_per_seed * num_seeds / run_s

    evaluate = jax.jit(jax.vmap(make_evaluate(config, num_episodes=eval_episodes, deterministic=True)))
    eval_keys = jax.vmap(lambda k: jax.random.fold_in(k, 10_000_019))(keys)
    eval_returns = np.asarray(evaluate(output.state.params, output.state.env_state.obs_stats, eval_keys))
    final_return_per_seed = eval_returns.mean(axis=1)

    metrics = {k: np.asarray(v) for k, v in output.metrics.items()}
    write_metrics(run_dir, metrics)
    plot_learning_curve(run_dir / "learning_curve.png", metrics["env_steps"][0], metrics["episode_return"],
                        f"{algo.upper()} on {config.env}")
    ckpt.save(run_dir / "checkpoint", config, output.state, num_seeds=num_seeds)
    summary = {
        "env": config.env, "algo": algo, "total_timesteps": steps_per_seed, "num_seeds": num_seeds,
        "seed": seed, "final_return_per_seed": final_return_per_seed, "final_return_mean": final_return_per_seed.mean(),
        "eval_episodes": eval_episodes, "compile_s": compile_s, "run_s": run_s, "sps": sps,
        "device": str(jax.devices()[0].platform), "run_dir": str(run_dir),
    }
    write_json(run_dir / "summary.json", summary)

    for i, r in enumerate(final_return_per_seed):
        print(f"seed {i}: deterministic evaluation return {r:.1f} (mean of {eval_episodes} episodes)")
    print(f"steps/s: {sps:,.0f} ({num_seeds} seed(s) x {steps_per_seed:,} steps in {run_s:.2f} s; "
          f"compile {compile_s:.2f} s)")
    print(f"run folder: {run_dir}")
    return summary


def eval_main(argv: list[str]) -> np.ndarray:
    import jax
    import tyro

    from ppo_jax import checkpoint as ckpt
    from ppo_jax.evaluate import make_evaluate

    args = tyro.cli(EvalArgs, args=argv, prog="ppo-jax eval")
    if args.episodes <= 0:
        _fail(f"episodes: must be a positive integer, got {args.episodes}")
    try:
        config, payload, num_seeds = ckpt.restore(args.checkpoint)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    evaluate = make_evaluate(config, num_episodes=args.episodes, deterministic=not args.stochastic)
    stats = payload["obs_stats"]  # a RunningStats: restore() rebuilds the saved structure
    key = jax.random.PRNGKey(args.seed)
    if num_seeds is None:
        returns = np.asarray(jax.jit(evaluate)(payload["params"], stats, key))[None]
    else:
        keys = jax.random.split(key, num_seeds)
        returns = np.asarray(jax.jit(jax.vmap(evaluate))(payload["params"], stats, keys))
    mode = "sampled" if args.stochastic else "deterministic"
    for i, r in enumerate(returns):
        print(f"seed {i}: {mode} return {r.mean():.1f} +- {r.std():.1f} over {args.episodes} episodes")
    return returns


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command == "train":
        train_main(rest)
    elif command == "eval":
        eval_main(rest)
    else:
        _fail(f"unknown command {command!r}; expected train or eval")


if __name__ == "__main__":
    main()
