"""``ppo-jax train | eval``: the command line over :class:`ppo_jax.config.PPOConfig` (tyro)."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

COMMAND = "ppo-jax train"

USAGE = """usage: ppo-jax {train,study,eval} [--help] [options]

  train   train PPO (or --algo a2c|trpo|reinforce|reinforce-baseline) on a gymnax environment, write a run folder
          (--devices N splits it across devices; --resume DIR continues a killed run)
  study   compare update rules / a hyperparameter grid over vmapped seeds (IQM, bootstrap CIs)
  eval    evaluate a checkpoint: ppo-jax eval --checkpoint DIR
"""

from ppo_jax.config import ALGORITHMS, PPOConfig, preset  # noqa: E402
from ppo_jax.validation import require_positive  # noqa: E402


@dataclass(frozen=True)
class TrainArgs(PPOConfig):
    """Train a policy. Defaults come from the preset of --env; every flag overrides its field."""

    algo: Literal[ALGORITHMS] = "ppo"
    """Update rule (the rollout, GAE and networks are shared)."""
    num_seeds: int = 1
    """Seeds run together under vmap, in one compiled program."""
    seed: int = 0
    """Base random seed; seed i of the run uses fold(seed, i)."""
    out: str | None = None
    """Run folder: a new or empty folder (nothing in it is replaced); default: a fresh folder under runs/."""
    eval_episodes: int = 16
    """Deterministic evaluation episodes per seed at the end."""
    no_progress: bool = False
    """Hide the progress bar."""
    resume: str | None = None
    """Continue the stopped or killed run in this folder from its newest intact checkpoint
    (with the config it was started with: only --devices and --no-progress apply)."""
    devices: int | None = None
    """Devices to split the run across: seeds if several, else environments (default: all that divide it)."""
    processes: int | None = None
    """Local processes to split the seeds across, one per core (default on a CPU: as many as there are
    cores, or the most that divide --num-seeds; 1 turns it off, as does PPO_JAX_PROCESSES=1)."""
    checkpoint_every: int = -1
    """Updates between checkpoints in OUT/checkpoints (-1: a tenth of the run, at most one save a minute; 0: only the final one)."""
    no_check_finite: bool = False
    """Skip the check that stops the run at the first NaN/inf metric or parameter."""


@dataclass(frozen=True)
class StudyArgs(PPOConfig):
    """Compare update rules (and/or a grid of traced hyperparameters) on one environment over
    vmapped seeds, with IQM, bootstrap intervals and probabilities of improvement. Each
    algorithm starts from its preset for --env; flags given here override every algorithm."""

    algos: tuple[Literal[ALGORITHMS], ...] = ("ppo", "a2c")
    """Update rules to compare."""
    sweep: tuple[str, ...] = ()
    """Traced hyperparameter grid, e.g. --sweep lr=1e-3,3e-4 ent_coef=0,0.01 (one compile per algorithm)."""
    num_seeds: int = 8
    """Seeds per algorithm and grid point."""
    seed: int = 0
    """Base random seed."""
    out: str | None = None
    """Run folder: a new or empty folder (nothing in it is replaced); default: a fresh folder under runs/."""
    eval_episodes: int = 16
    """Deterministic evaluation episodes per seed at the end (the final score)."""
    bootstrap_reps: int = 2000
    """Bootstrap replicates for the confidence intervals."""
    no_progress: bool = False
    """Hide progress messages."""
    processes: int | None = None
    """Local processes to split the seeds across, one per core (default on a CPU: as many as there are
    cores, or the most that divide --num-seeds; 1 turns it off, as does PPO_JAX_PROCESSES=1)."""


@dataclass(frozen=True)
class EvalArgs:
    """Evaluate a saved checkpoint."""

    checkpoint: str
    """A run folder (its final checkpoint, or its newest periodic one if it did not finish), its
    checkpoint/, or one periodic checkpoint (RUN/checkpoints/N)."""
    episodes: int = 16
    """Episodes per seed."""
    stochastic: bool = False
    """Sample actions instead of taking the distribution's mode."""
    seed: int = 0
    """Evaluation seed."""


def _flag_from_argv(argv: list[str], flag: str, default: str) -> str:
    """The value of ``--flag`` in ``argv`` (before tyro parses it: it picks the preset)."""
    from ppo_jax.local_processes import flag_value

    value = flag_value(argv, flag)
    return default if value is None else value


def _config_of(args: TrainArgs) -> PPOConfig:
    return PPOConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PPOConfig)})


def _fail(msg: str) -> None:
    print(f"ppo-jax: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


@dataclass(frozen=True)
class ResumeArgs:
    """Continue a killed run from its newest checkpoint (its config comes from DIR/config.json)."""

    resume: str
    """Run folder of the run to continue."""
    devices: int | None = None
    """Devices to use (default: all that divide the run evenly)."""
    processes: int | None = None
    """Local processes to split the seeds across (default on a CPU: one per core; 1: off)."""
    no_progress: bool = False
    """Hide the progress bar."""


# With the default --checkpoint-every -1, save at most this often: a save costs ~50-80 ms
# (13% of the default CartPole run when saved ten times), so short runs keep only the last.
AUTO_SAVE_INTERVAL_S = 60.0


def auto_checkpoint_every(num_updates: int) -> int:
    """About ten checkpoints a run, at a divisor of ``num_updates`` when one is near (every
    chunk length is one more compiled program), else every ``ceil(num_updates / 10)``."""
    target = max(1, num_updates // 10)
    divisors = [d for d in range(max(1, target // 2), target + 1) if num_updates % d == 0]
    return divisors[-1] if divisors else -(-num_updates // 10)


def train_main(argv: list[str]) -> dict:
    import tyro

    if any(a == "--resume" or a.startswith("--resume=") for a in argv):
        args = tyro.cli(ResumeArgs, args=argv, prog="ppo-jax train --resume")
        try:
            return resume_training(args.resume, devices=args.devices, progress=not args.no_progress)
        except (ValueError, OSError) as err:
            _fail(str(err))
    try:
        base = preset(_flag_from_argv(argv, "--env", PPOConfig.env), _flag_from_argv(argv, "--algo", "ppo"))
    except ValueError as err:
        _fail(str(err))
    defaults = TrainArgs(**dataclasses.asdict(base))
    args = tyro.cli(TrainArgs, args=argv, default=defaults, prog="ppo-jax train")
    config = _config_of(args)
    try:
        config.validate()
        require_positive(args, "num_seeds", "eval_episodes", integer=True)
        if args.checkpoint_every < -1:
            raise ValueError(f"checkpoint_every: must be -1 (auto), 0 (off) or positive, got {args.checkpoint_every}")
        return run_training(config, num_seeds=args.num_seeds, seed=args.seed, out=args.out,
                            eval_episodes=args.eval_episodes, progress=not args.no_progress, devices=args.devices,
                            checkpoint_every=args.checkpoint_every, check_finite=not args.no_check_finite)
    except (ValueError, OSError) as err:
        _fail(str(err))


def resume_training(run_dir: str, *, devices: int | None = None, progress: bool = True) -> dict:
    """Continues the run in ``run_dir`` from its newest periodic checkpoint (or from the
    start if it was killed before the first) and finishes it as the uninterrupted run would."""
    import shutil

    from ppo_jax.outputs import read_json
    from ppo_jax.rundir import check_resumable

    path = check_resumable(run_dir, COMMAND) / "config.json"
    saved = read_json(path)
    run = saved.pop("run", None) if isinstance(saved, dict) else None
    if run is None:
        raise ValueError(f"{path}: no 'run' entry (not a `{COMMAND}` run folder, or an older version's)")
    try:
        config = PPOConfig.from_dict(saved)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None
    final = Path(run_dir) / "checkpoint"
    if final.exists():  # a final save that a kill cut short: the finished run writes it again
        shutil.rmtree(final)
    return run_training(config, out=run_dir, progress=progress, devices=devices, resume=True, **run)


def run_training(config: PPOConfig, *, num_seeds: int = 1, seed: int = 0, out: str | None = None,
                 eval_episodes: int = 16, progress: bool = True, devices: int | None = None,
                 checkpoint_every: int = -1, check_finite: bool = True, resume: bool = False) -> dict:
    """Trains ``num_seeds`` seeds in one program per chunk of updates, saves a checkpoint
    after each chunk, and writes the run folder; returns the summary.

    Raises :class:`ppo_jax.runner.NonFiniteError` (after writing the metrics so far) when
    ``check_finite`` finds a NaN or inf.
    """
    import importlib
    from concurrent.futures import ThreadPoolExecutor

    import jax
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from ppo_jax import checkpoint as ckpt
    from ppo_jax.distributed import barrier, choose_layout, fetch
    from ppo_jax.evaluate import make_evaluate
    from ppo_jax.interrupt import Interrupted
    from ppo_jax.outputs import plot_learning_curve, write_json, write_metrics
    from ppo_jax.rundir import check_run_dir, claim_run_dir, ppo_run_name
    from ppo_jax.runner import NonFiniteError, eval_keys, run_resumable
    from ppo_jax.seed_groups import default_groups

    config.validate()
    algo = config.algo
    primary = jax.process_index() == 0
    console = Console(stderr=True)
    layout = choose_layout(num_seeds, config.num_envs, devices)  # errors before any folder exists
    seed_groups = default_groups(num_seeds) if layout.mesh is None else 1
    every = auto_checkpoint_every(config.num_updates) if checkpoint_every == -1 else checkpoint_every
    if jax.process_count() > 1 and not out:
        raise ValueError("out: a multi-process run needs --out, a folder every process can reach")
    if not resume and out:
        check_run_dir(out, COMMAND, resumable=True)  # before training: a finished run must never fail to save
    barrier("ppo_jax.run_dir")  # every process has looked before any creates the folder
    if resume or not primary:
        run_dir = Path(out)
    else:
        run_dir = claim_run_dir(out, COMMAND, ppo_run_name("train", config.env, algo), resumable=True)
    barrier("ppo_jax.run_dir.created")
    run = {"num_seeds": num_seeds, "seed": seed, "eval_episodes": eval_episodes, "checkpoint_every": checkpoint_every,
           "check_finite": check_finite}
    if primary and not resume:
        write_json(run_dir / "config.json", {**config.to_dict(), "run": run})

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console, disable=not (progress and primary))
    task = bar.add_task("compiling", total=config.num_updates)

    def on_update(done):
        bar.update(task, completed=done)

    def on_status(message):
        if message == "training":
            bar.update(task, description="training")
        elif message.startswith(("resumed", "warning", "stopping")) and primary:
            console.print(message, soft_wrap=True, highlight=False, markup=False)

    checkpoints = ckpt.RunCheckpoints(run_dir / "checkpoints") if every > 0 else None
    if resume and primary and not (checkpoints and checkpoints.steps()):
        console.print(f"resume: {run_dir} has no checkpoint yet; training starts again from update 0",
                      soft_wrap=True, highlight=False, markup=False)
    evaluate = jax.jit(jax.vmap(make_evaluate(config, num_episodes=eval_episodes, deterministic=True)))
    keys_for_eval = eval_keys(seed, num_seeds)
    background = ThreadPoolExecutor(1)
    eval_program = []

    def compile_evaluation(state) -> None:
        # On the second core while the first trains (training one seed keeps one core busy).
        shape = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)  # noqa: E731  (host arrays, one device)
        like = jax.tree.map(shape, (state.params, state.env_state.obs_stats))
        eval_program.append(background.submit(lambda: evaluate.lower(*like, keys_for_eval).compile()))
        background.submit(importlib.import_module, "matplotlib.pyplot")  # for the plot at the end

    with bar:
        try:
            result = run_resumable(config, num_seeds=num_seeds, seed=seed, layout=layout, checkpoints=checkpoints,
                                   checkpoint_every=every, check_finite=check_finite,
                                   progress=on_update if progress and primary else None, on_status=on_status,
                                   min_save_interval_s=AUTO_SAVE_INTERVAL_S if checkpoint_every == -1 else 0.0,
                                   on_compiled=compile_evaluation, seed_groups=seed_groups)
        except NonFiniteError as err:
            if primary:
                write_metrics(run_dir, err.metrics)
            raise
        except KeyboardInterrupt:
            last = checkpoints.latest() if checkpoints is not None else None
            if last is None:
                raise Interrupted(None, config.num_updates, None,
                                  f"interrupted before any checkpoint was saved; {run_dir} holds no progress to resume "
                                  f"(--checkpoint-every sets how often one is saved)") from None
            raise Interrupted(last, config.num_updates, checkpoints.path(last),
                              f"interrupted; the last checkpoint is {checkpoints.path(last)} (update {last} of "
                              f"{config.num_updates}); continue with: {COMMAND} --resume {run_dir}") from None
    steps_per_seed = config.num_updates * config.batch_size
    trained = config.num_updates - (result.resumed_from or 0)
    sps = trained * config.batch_size * num_seeds / max(result.run_s, 1e-9)

    host_state = fetch(result.state)
    evaluate = eval_program[0].result() if eval_program else evaluate
    background.shutdown()
    eval_returns = np.asarray(evaluate(host_state.params, host_state.env_state.obs_stats, keys_for_eval))
    final_return_per_seed = eval_returns.mean(axis=1)

    metrics = result.metrics
    ckpt.save(run_dir / "checkpoint", config, result.state, num_seeds=num_seeds)
    summary = {
        "env": config.env, "algo": algo, "total_timesteps": steps_per_seed, "num_seeds": num_seeds,
        "seed": seed, "final_return_per_seed": final_return_per_seed, "final_return_mean": final_return_per_seed.mean(),
        "eval_episodes": eval_episodes, "compile_s": result.compile_s, "run_s": result.run_s, "sps": sps,
        "device": str(jax.devices()[0].platform), "layout": layout.describe(), "seed_groups": seed_groups,
        "checkpoint_every": every, "resumed_from_update": result.resumed_from, "run_dir": str(run_dir),
    }
    if not primary:
        return summary
    write_metrics(run_dir, metrics)
    plot_learning_curve(run_dir / "learning_curve.png", metrics["env_steps"][0], metrics["episode_return"],
                        f"{algo.upper()} on {config.env}")
    write_json(run_dir / "summary.json", summary)

    for i, r in enumerate(final_return_per_seed):
        print(f"seed {i}: deterministic evaluation return {r:.1f} (mean of {eval_episodes} episodes)")
    print(f"steps/s: {sps:,.0f} ({num_seeds} seed(s) x {trained * config.batch_size:,} steps in {result.run_s:.2f} s; "
          f"compile {result.compile_s:.2f} s; {layout.describe()}"
          + (f", seeds in {seed_groups} groups, one per core" if seed_groups > 1 else "") + ")")
    print(f"run folder: {run_dir}")
    return summary


def study_main(argv: list[str]) -> dict:
    import jax
    import tyro

    from ppo_jax.distributed import barrier
    from ppo_jax.rundir import check_run_dir, claim_run_dir, ppo_run_name
    from ppo_jax.study import grid_points, parse_grid, run_study

    env = _flag_from_argv(argv, "--env", PPOConfig.env)
    try:
        base = preset(env)
    except ValueError as err:
        _fail(str(err))
    defaults = StudyArgs(**dataclasses.asdict(base))
    args = tyro.cli(StudyArgs, args=argv, default=defaults, prog="ppo-jax study")
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(PPOConfig)
             if f.name != "algo" and getattr(args, f.name) != getattr(base, f.name)}
    try:
        configs = {algo: preset(env, algo).replace(**given) for algo in dict.fromkeys(args.algos)}
        grid = parse_grid(args.sweep)
        require_positive(args, "num_seeds", "eval_episodes", "bootstrap_reps", integer=True)
        if not configs:
            raise ValueError("algos: give at least one update rule")
        for c in configs.values():
            c.validate()
        primary = jax.process_index() == 0
        if jax.process_count() > 1:
            if not args.out:
                raise ValueError("out: a multi-process study needs --out, a folder every process can reach")
            check_run_dir(args.out, "ppo-jax study")
        barrier("ppo_jax.study_dir")  # every process has looked before the first creates the folder
        run_dir = claim_run_dir(args.out, "ppo-jax study", ppo_run_name("study", env, "")) if primary else Path(args.out)

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), console=Console(stderr=True), disable=args.no_progress or not primary)
        tasks = {a: bar.add_task(f"{a} (compiling)", total=c.num_updates) for a, c in configs.items()}

        def progress(algo, status):
            if status == "training":
                bar.update(tasks[algo], description=f"{algo} (seeds x grid: {args.num_seeds} x {len(grid_points(grid))})")

        with bar:
            summary = run_study(configs, num_seeds=args.num_seeds, grid=grid, seed=args.seed,
                                eval_episodes=args.eval_episodes, run_dir=run_dir, progress=progress,
                                on_update=lambda a, u, n: bar.update(tasks[a], completed=u),
                                reps=args.bootstrap_reps)
    except (ValueError, OSError) as err:
        _fail(str(err))
    for name, r in summary["results"].items():
        print(f"{name}: IQM {r['iqm']:.1f} [{r['iqm_ci'][0]:.1f}, {r['iqm_ci'][1]:.1f}] over {args.num_seeds} seeds")
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
    except (OSError, ValueError) as err:
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


def _main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command == "train":
        from ppo_jax.runner import NonFiniteError

        try:
            train_main(rest)
        except NonFiniteError as err:
            print(f"ppo-jax: error: {err}", file=sys.stderr)
            raise SystemExit(1) from None
    elif command == "eval":
        eval_main(rest)
    elif command == "study":
        study_main(rest)
    else:
        _fail(f"unknown command {command!r}; expected train, study or eval")


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"ppo-jax: warning: {message}\n"  # a user's setting, not a source line to look at


def main(argv: list[str] | None = None) -> None:
    import warnings

    from ppo_jax import compile_cache

    warnings.formatwarning = _one_line_warning
    compile_cache.enable()
    try:
        _main(argv)
    except KeyboardInterrupt as err:
        # One line, not a traceback: where the run stands and how to continue it.
        print(f"ppo-jax: {err}" if str(err) else "ppo-jax: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
