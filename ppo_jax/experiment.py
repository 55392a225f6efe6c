"""Train, resume, study and evaluate into run folders: what each ``ppo-jax`` command calls.

Each function validates first, then claims its run folder, runs, and writes the folder's
files; it returns what the command prints (the CLI only parses, calls and prints). Progress
bars and status lines go to stderr.
"""

from __future__ import annotations

import importlib
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from rich.console import Console

from ppo_jax import checkpoint as ckpt
from ppo_jax.config import PPOConfig
from ppo_jax.distributed import Layout, barrier, choose_layout, fetch
from ppo_jax.evaluate import make_evaluate
from ppo_jax.run.interrupt import Interrupted, after_failed_write, resume_hint
from ppo_jax.run.outputs import plot_learning_curve, write_json, write_metrics
from ppo_jax.run.progress import progress_bar
from ppo_jax.run.rundir import check_run_dir, claim_run_dir, ppo_run_name, resumable_config
from ppo_jax.run.settings import save_interval_s
from ppo_jax.run.validation import require_seed
from ppo_jax.runner import (
    NonFiniteError,
    RunResult,
    auto_checkpoint_every,
    eval_keys,
    run_resumable,
)
from ppo_jax.seed_groups import default_groups
from ppo_jax.study import grid_points, run_study

TRAIN = "ppo-jax train"
STUDY = "ppo-jax study"

METRIC_BYTES_PER_UPDATE = 32 * 8
"""An upper bound on one seed's metrics per update (each update reports under 32 numbers)."""


def require_metrics_fit(config: PPOConfig, num_seeds: int) -> None:
    """Refuses, naming ``total_timesteps``, a run whose per-update metrics alone would take more
    than half of this machine's memory (they are kept for the whole run, on the host)."""
    need = config.num_updates * num_seeds * METRIC_BYTES_PER_UPDATE
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > total // 2:
        raise ValueError(f"total_timesteps: {config.total_timesteps:,} steps are {config.num_updates:,} updates; "
                         f"their metrics for {num_seeds} seed(s) would take {need / 2**30:.1f} GiB of this "
                         f"machine's {total / 2**30:.0f} GiB")


def train_run(config: PPOConfig, *, num_seeds: int = 1, seed: int = 0, out: str | None = None,
              eval_episodes: int = 16, progress: bool = True, devices: int | None = None,
              checkpoint_every: int = -1, check_finite: bool = True, resume: bool = False) -> dict:
    """Trains ``num_seeds`` seeds in one program per chunk of updates, saves a checkpoint
    after each chunk, evaluates each seed, and writes the run folder (``out``, or a fresh one
    under ``runs/``); returns the summary (also ``summary.json``).

    Raises :class:`ppo_jax.runner.NonFiniteError` (after writing the metrics so far) when
    ``check_finite`` finds a NaN or inf, and :class:`ppo_jax.run.interrupt.Interrupted` on
    Ctrl-C, naming the checkpoint to resume from.
    """
    config.validate()
    require_seed(seed)
    require_metrics_fit(config, num_seeds)
    layout = choose_layout(num_seeds, config.num_envs, devices)  # errors before any folder exists
    seed_groups = default_groups(num_seeds) if layout.mesh is None else 1
    every = auto_checkpoint_every(config.num_updates) if checkpoint_every == -1 else checkpoint_every
    interval = save_interval_s() if checkpoint_every == -1 else 0.0
    run = {"num_seeds": num_seeds, "seed": seed, "eval_episodes": eval_episodes, "checkpoint_every": checkpoint_every,
           "check_finite": check_finite}
    run_dir = _run_folder(TRAIN, out, ppo_run_name("train", config.env, config.algo),
                          {**config.to_dict(), "run": run}, resume)
    primary = jax.process_index() == 0
    console = Console(stderr=True)
    checkpoints = ckpt.run_checkpoints(run_dir) if every > 0 else None
    if resume and primary and not (checkpoints and checkpoints.steps()):
        console.print(f"resume: {run_dir} has no checkpoint yet; training starts again from update 0",
                      soft_wrap=True, highlight=False, markup=False)
    evaluator = _BackgroundEvaluation(config, seed, num_seeds, eval_episodes)
    bar = progress_bar(console=console, disable=not (progress and primary))
    task = bar.add_task("compiling", total=config.num_updates)

    def on_status(message):
        if message == "training":
            bar.update(task, description="training")
        elif message.startswith(("resumed", "warning", "stopping")) and primary:
            console.print(message, soft_wrap=True, highlight=False, markup=False)

    with bar, after_failed_write(TRAIN, run_dir):
        try:
            result = run_resumable(config, num_seeds=num_seeds, seed=seed, layout=layout, checkpoints=checkpoints,
                                   checkpoint_every=every, check_finite=check_finite,
                                   progress=(lambda done: bar.update(task, completed=done)) if progress and primary
                                   else None, on_status=on_status,
                                   min_save_interval_s=interval,
                                   on_compiled=evaluator.compile_in_background, seed_groups=seed_groups)
        except NonFiniteError as err:
            if primary:
                write_metrics(run_dir, err.metrics)
            raise
        except KeyboardInterrupt:
            raise _interrupted(config, run_dir, checkpoints) from None
        return _finish_training(config, result, run_dir, evaluator, layout=layout, seed=seed, num_seeds=num_seeds,
                                eval_episodes=eval_episodes, seed_groups=seed_groups, every=every)


def resume_run(run_dir: str, *, devices: int | None = None, progress: bool = True) -> dict:
    """Continues the run in ``run_dir`` from its newest periodic checkpoint (or from the
    start if it was killed before the first) and finishes it as the uninterrupted run would."""
    # Process 0 holds the folder's lock for all of a multi-process run.
    config, kept = resumable_config(run_dir, TRAIN, PPOConfig.from_dict, keep=("run",),
                                    take_lock=jax.process_index() == 0)
    run = kept["run"]
    if run is None:
        raise ValueError(f"{Path(run_dir) / 'config.json'}: no 'run' entry (not a `{TRAIN}` run folder, or an "
                         f"older version's)")
    final = Path(run_dir) / "checkpoint"
    if final.exists():  # a final save that a kill cut short: the finished run writes it again
        shutil.rmtree(final)
    return train_run(config, out=run_dir, progress=progress, devices=devices, resume=True, **run)


def _run_folder(command: str, out: str | None, default_name: str, saved_config: dict, resume: bool) -> Path:
    """The run folder of ``command``, claimed by the primary process (after every process has
    looked), with ``saved_config`` as its ``config.json`` for a new run; with ``resume``, ``out``
    (checked and locked by the resume already)."""
    primary = jax.process_index() == 0
    if jax.process_count() > 1 and not out:
        raise ValueError(f"out: a multi-process `{command}` needs --out, a folder every process can reach")
    if not resume and out:
        check_run_dir(out, command, resumable=True)  # before training: a finished run must never fail to save
    barrier("ppo_jax.run_dir")  # every process has looked before any creates the folder
    if resume or not primary:
        run_dir = Path(out)
    else:
        run_dir = claim_run_dir(out, command, default_name, resumable=True)
    barrier("ppo_jax.run_dir.created")
    if primary and not resume:
        write_json(run_dir / "config.json", saved_config)
    return run_dir


def _interrupted(config: PPOConfig, run_dir: Path, checkpoints) -> Interrupted:
    last = checkpoints.latest() if checkpoints is not None else None
    if last is None:
        return Interrupted(None, config.num_updates, None,
                           f"interrupted before any checkpoint was saved; {run_dir} holds no progress to resume "
                           f"(--checkpoint-every sets how often one is saved)")
    return Interrupted(last, config.num_updates, checkpoints.path(last),
                       f"interrupted; the last checkpoint is {checkpoints.path(last)} (update {last} of "
                       f"{config.num_updates}); continue with: {TRAIN} --resume {run_dir}")


class _BackgroundEvaluation:
    """The deterministic evaluation of every seed, its program compiled on the second core while
    the first trains (training one seed keeps one core busy)."""

    def __init__(self, config: PPOConfig, seed: int, num_seeds: int, episodes: int):
        self.evaluate = jax.jit(jax.vmap(make_evaluate(config, num_episodes=episodes, deterministic=True)))
        self.keys = eval_keys(seed, num_seeds)
        self.pool = ThreadPoolExecutor(1)
        self.program: Future | None = None

    def compile_in_background(self, state) -> None:
        shape = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)  # noqa: E731  (host arrays, one device)
        like = jax.tree.map(shape, (state.params, state.env_state.obs_stats))
        self.program = self.pool.submit(lambda: self.evaluate.lower(*like, self.keys).compile())
        self.pool.submit(importlib.import_module, "matplotlib.pyplot")  # for the plot at the end

    def returns(self, state) -> np.ndarray:
        """``[num_seeds, episodes]`` returns of the host ``state``."""
        evaluate = self.program.result() if self.program is not None else self.evaluate
        self.pool.shutdown()
        return np.asarray(evaluate(state.params, state.env_state.obs_stats, self.keys))


def _finish_training(config: PPOConfig, result: RunResult, run_dir: Path, evaluator: _BackgroundEvaluation, *,
                     layout: Layout, seed: int, num_seeds: int, eval_episodes: int, seed_groups: int,
                     every: int) -> dict:
    """Evaluates, saves the final checkpoint and writes metrics, plot and summary."""
    trained = config.num_updates - (result.resumed_from or 0)
    final_return_per_seed = evaluator.returns(fetch(result.state)).mean(axis=1)
    ckpt.save(run_dir / "checkpoint", config, result.state, num_seeds=num_seeds)
    summary = {
        "env": config.env, "algo": config.algo, "total_timesteps": config.num_updates * config.batch_size,
        "num_seeds": num_seeds, "seed": seed, "final_return_per_seed": final_return_per_seed,
        "final_return_mean": final_return_per_seed.mean(), "eval_episodes": eval_episodes,
        "compile_s": result.compile_s, "run_s": result.run_s,
        "sps": trained * config.batch_size * num_seeds / max(result.run_s, 1e-9),
        "trained_steps": trained * config.batch_size,
        "device": str(jax.devices()[0].platform), "layout": layout.describe(), "seed_groups": seed_groups,
        "checkpoint_every": every, "resumed_from_update": result.resumed_from, "run_dir": str(run_dir),
    }
    if jax.process_index() != 0:
        return summary
    write_metrics(run_dir, result.metrics)
    plot_learning_curve(run_dir / "learning_curve.png", result.metrics["env_steps"][0],
                        result.metrics["episode_return"], f"{config.algo.upper()} on {config.env}")
    write_json(run_dir / "summary.json", summary)
    return summary


@dataclass
class StudyResult:
    summary: dict
    run_dir: Path


def study_run(configs: dict[str, PPOConfig], *, grid: dict[str, list[float]], num_seeds: int = 8, seed: int = 0,
              out: str | None = None, eval_episodes: int = 16, bootstrap_reps: int = 2000,
              progress: bool = True, resume: bool = False) -> StudyResult:
    """Compares the update rules ``configs`` (one environment) x the traced grid over
    ``num_seeds`` vmapped seeds into a run folder (:func:`ppo_jax.study.run_study`), saving as
    it goes; with ``resume``, continues the stopped study in ``out`` (:func:`resume_study`)."""
    if not configs:
        raise ValueError("algos: give at least one update rule")
    for c in configs.values():
        c.validate()
    require_seed(seed)
    save_interval_s()  # a bad RL_JAX_SAVE_INTERVAL_S is refused before the folder exists
    env = next(iter(configs.values())).env
    primary = jax.process_index() == 0
    run = {"grid": grid, "num_seeds": num_seeds, "seed": seed, "eval_episodes": eval_episodes,
           "bootstrap_reps": bootstrap_reps}
    run_dir = _run_folder(STUDY, out, ppo_run_name("study", env, ""),
                          {"configs": {a: c.to_dict() for a, c in configs.items()}, "run": run}, resume)
    console = Console(stderr=True)
    bar = progress_bar(console=console, disable=not (progress and primary))
    tasks = {a: bar.add_task(f"{a} (compiling)", total=c.num_updates) for a, c in configs.items()}

    def on_stage(algo, status):
        if status == "training":
            bar.update(tasks[algo], description=f"{algo} (seeds x grid: {num_seeds} x {len(grid_points(grid))})")
        elif status.startswith(("resumed", "warning", "stopping", "loaded")) and primary:
            console.print(status, soft_wrap=True, highlight=False, markup=False)

    with bar, resume_hint(STUDY, run_dir, _where_the_study_stopped):
        summary = run_study(configs, num_seeds=num_seeds, grid=grid, seed=seed, eval_episodes=eval_episodes,
                            run_dir=run_dir, progress=on_stage,
                            on_update=lambda a, u, n: bar.update(tasks[a], completed=u), reps=bootstrap_reps)
    return StudyResult(summary, run_dir)


def _where_the_study_stopped(err: KeyboardInterrupt) -> str:
    if isinstance(err, Interrupted) and err.path is not None:
        return f"the last checkpoint is {err.path} (update {err.step} of {err.total}); finished algorithms are kept"
    return "finished algorithms and the last checkpoint are kept"


def resume_study(run_dir: str, *, progress: bool = True) -> StudyResult:
    """Continues the stopped study in ``run_dir``: finished algorithms are loaded, the one in
    progress goes on from its newest checkpoint, and the study ends as if never stopped."""
    configs, kept = resumable_config(run_dir, STUDY, _study_configs, keep=("run",),
                                     take_lock=jax.process_index() == 0)
    run = kept["run"]
    names = ("grid", "num_seeds", "seed", "eval_episodes", "bootstrap_reps")
    if not isinstance(run, dict) or set(run) != set(names):
        raise ValueError(f"{Path(run_dir) / 'config.json'}: its 'run' entry should hold {', '.join(names)} (not a "
                         f"`{STUDY}` run folder, or an older version's)")
    return study_run(configs, grid=run["grid"], num_seeds=run["num_seeds"], seed=run["seed"], out=run_dir,
                     eval_episodes=run["eval_episodes"], bootstrap_reps=run["bootstrap_reps"], progress=progress,
                     resume=True)


def _study_configs(saved: dict) -> dict[str, PPOConfig]:
    configs = saved.get("configs")
    if not isinstance(configs, dict) or not configs:
        raise ValueError("no 'configs' entry naming the algorithms")
    return {algo: PPOConfig.from_dict(c) for algo, c in configs.items()}


def eval_checkpoint(checkpoint: str, *, episodes: int = 16, stochastic: bool = False, seed: int = 0) -> np.ndarray:
    """``[num_seeds, episodes]`` returns of the policy saved in ``checkpoint`` (a run folder,
    its ``checkpoint/``, or one periodic checkpoint)."""
    if episodes <= 0:
        raise ValueError(f"episodes: must be a positive integer, got {episodes}")
    config, payload, num_seeds = ckpt.restore(checkpoint)
    evaluate: Callable[..., Any] = make_evaluate(config, num_episodes=episodes, deterministic=not stochastic)
    stats = payload["obs_stats"]  # a RunningStats: restore() rebuilds the saved structure
    key = jax.random.PRNGKey(seed)
    if num_seeds is None:
        return np.asarray(jax.jit(evaluate)(payload["params"], stats, key))[None]
    keys = jax.random.split(key, num_seeds)
    return np.asarray(jax.jit(jax.vmap(evaluate))(payload["params"], stats, keys))
