"""``ppo-jax train | eval``: the command line over :class:`ppo_jax.config.PPOConfig` (tyro)."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Literal

import numpy as np

USAGE = """usage: ppo-jax {train,study,eval} [--help] [options]

  train   train PPO (or --algo a2c|trpo|reinforce|reinforce-baseline) on a gymnax environment, write a run folder
          (--devices N splits it across devices; --resume DIR continues a killed run)
  study   compare update rules / a hyperparameter grid over vmapped seeds (IQM, bootstrap CIs)
          (--resume DIR continues a stopped study)
  eval    evaluate a checkpoint: ppo-jax eval --checkpoint DIR
"""

from ppo_jax.config import ALGORITHMS, PPOConfig, preset  # noqa: E402
from ppo_jax.run.validation import require_positive  # noqa: E402


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


def _fail(error: str | Exception, code: int = 2) -> None:
    from ppo_jax.run.rundir import command_failed

    print(f"ppo-jax: error: {error}", file=sys.stderr)
    command_failed(error, code)  # the run folder marked failed (reusable), or --resume after a failed save


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


def train_main(argv: list[str]) -> dict:
    import tyro

    from ppo_jax.experiment import resume_run, train_run

    if any(a == "--resume" or a.startswith("--resume=") for a in argv):
        args = tyro.cli(ResumeArgs, args=argv, prog="ppo-jax train --resume")
        try:
            summary = resume_run(args.resume, devices=args.devices, progress=not args.no_progress)
        except (ValueError, OSError) as err:
            _fail(err)
        return _print_training(summary)
    try:
        base = preset(_flag_from_argv(argv, "--env", PPOConfig.env), _flag_from_argv(argv, "--algo", "ppo"))
    except ValueError as err:
        _fail(err)
    defaults = TrainArgs(**dataclasses.asdict(base))
    args = tyro.cli(TrainArgs, args=argv, default=defaults, prog="ppo-jax train")
    config = _config_of(args)
    try:
        config.validate()
        require_positive(args, "num_seeds", "eval_episodes", integer=True)
        if args.checkpoint_every < -1:
            raise ValueError(f"checkpoint_every: must be -1 (auto), 0 (off) or positive, got {args.checkpoint_every}")
        summary = train_run(config, num_seeds=args.num_seeds, seed=args.seed, out=args.out,
                            eval_episodes=args.eval_episodes, progress=not args.no_progress, devices=args.devices,
                            checkpoint_every=args.checkpoint_every, check_finite=not args.no_check_finite)
    except (ValueError, OSError) as err:
        _fail(err)
    return _print_training(summary)


def _print_training(summary: dict) -> dict:
    import jax

    if jax.process_index() != 0:
        return summary
    for i, r in enumerate(summary["final_return_per_seed"]):
        print(f"seed {i}: deterministic evaluation return {r:.1f} (mean of {summary['eval_episodes']} episodes)")
    groups = summary["seed_groups"]
    print(f"steps/s: {summary['sps']:,.0f} ({summary['num_seeds']} seed(s) x {summary['trained_steps']:,} steps in "
          f"{summary['run_s']:.2f} s; compile {summary['compile_s']:.2f} s; {summary['layout']}"
          + (f", seeds in {groups} groups, one per core" if groups > 1 else "") + ")")
    print(f"run folder: {summary['run_dir']}")
    return summary


@dataclass(frozen=True)
class StudyResumeArgs:
    """Continue a stopped study: finished algorithms are loaded, the one in progress continues from
    its newest checkpoint (the settings come from DIR/config.json)."""

    resume: str
    """Run folder of the study to continue."""
    processes: int | None = None
    """Local processes to split the seeds across (default on a CPU: one per core; 1: off)."""
    no_progress: bool = False
    """Hide progress messages."""


def study_main(argv: list[str]) -> dict:
    import tyro

    from ppo_jax.experiment import resume_study, study_run
    from ppo_jax.study import parse_grid

    if any(a == "--resume" or a.startswith("--resume=") for a in argv):
        resumed = tyro.cli(StudyResumeArgs, args=argv, prog="ppo-jax study --resume")
        try:
            return _print_study(resume_study(resumed.resume, progress=not resumed.no_progress))
        except (ValueError, OSError) as err:
            _fail(err)

    env = _flag_from_argv(argv, "--env", PPOConfig.env)
    try:
        base = preset(env)
    except ValueError as err:
        _fail(err)
    defaults = StudyArgs(**dataclasses.asdict(base))
    args = tyro.cli(StudyArgs, args=argv, default=defaults, prog="ppo-jax study")
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(PPOConfig)
             if f.name != "algo" and getattr(args, f.name) != getattr(base, f.name)}
    try:
        configs = {algo: preset(env, algo).replace(**given) for algo in dict.fromkeys(args.algos)}
        grid = parse_grid(args.sweep)
        require_positive(args, "num_seeds", "eval_episodes", "bootstrap_reps", integer=True)
        result = study_run(configs, grid=grid, num_seeds=args.num_seeds, seed=args.seed, out=args.out,
                           eval_episodes=args.eval_episodes, bootstrap_reps=args.bootstrap_reps,
                           progress=not args.no_progress)
    except (ValueError, OSError) as err:
        _fail(err)
    return _print_study(result)


def _print_study(result) -> dict:
    seeds = result.summary["num_seeds"]
    for name, r in result.summary["results"].items():
        print(f"{name}: IQM {r['iqm']:.1f} [{r['iqm_ci'][0]:.1f}, {r['iqm_ci'][1]:.1f}] over {seeds} seeds")
    print(f"run folder: {result.run_dir}")
    return result.summary


def eval_main(argv: list[str]) -> np.ndarray:
    import tyro

    from ppo_jax.experiment import eval_checkpoint

    args = tyro.cli(EvalArgs, args=argv, prog="ppo-jax eval")
    try:
        returns = eval_checkpoint(args.checkpoint, episodes=args.episodes, stochastic=args.stochastic, seed=args.seed)
    except (OSError, ValueError) as err:
        _fail(err)
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
            _fail(err, 1)
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

    from ppo_jax.local_processes import flag_value
    from ppo_jax.run import compile_cache
    from ppo_jax.run.configure import configure
    from ppo_jax.run.interrupt import terminate_as_interrupt
    from ppo_jax.run.rundir import start_command

    configure(flag_value(argv if argv is not None else sys.argv[1:], "--env"))  # before JAX's backend starts
    warnings.formatwarning = _one_line_warning
    compile_cache.enable()
    terminated = terminate_as_interrupt()
    start_command()
    try:
        _main(argv)
    except Exception as err:  # a bug: its traceback follows; the folder must not block a rerun
        from ppo_jax.run.rundir import mark_failed

        mark_failed(f"{type(err).__name__}: {err}")
        raise
    except KeyboardInterrupt as err:
        # One line, not a traceback: where the run stands and how to continue it.
        print(f"ppo-jax: {err}" if str(err) else "ppo-jax: interrupted", file=sys.stderr)
        raise SystemExit(143 if terminated() else 130) from None


if __name__ == "__main__":
    main()
