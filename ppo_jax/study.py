"""Statistical studies: several algorithms (and/or a grid of traced hyperparameters) on one
environment, N vmapped seeds each, reported with IQM, stratified-bootstrap intervals,
learning curves with confidence bands and the probability of improvement between pairs.

Each algorithm compiles once: its seeds and grid points run as one ``vmap`` over
``grid points x seeds`` of the training chunk ``run(state, hparams)`` (traced fields only,
so the sweep shares the program), saved between chunks so that a stopped study resumes.
"""

from __future__ import annotations

import itertools
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from ppo_jax import checkpoint as ckpt
from ppo_jax.config import TRACED_FIELDS, PPOConfig, stack_hparams
from ppo_jax.distributed import SEEDS, Layout, barrier, choose_layout, fetch, global_array, place
from ppo_jax.evaluate import make_evaluate
from ppo_jax.run.checkpoints import RunCheckpoints
from ppo_jax.run.outputs import atomic_path, plot_lines, write_json
from ppo_jax.run.settings import save_interval_s
from ppo_jax.runner import auto_checkpoint_every, eval_keys, run_resumable, seed_keys
from ppo_jax.stats import (
    iqm,
    probability_of_improvement,
    probability_of_improvement_ci,
    summarize,
)


def parse_grid(items: tuple[str, ...]) -> dict[str, list[float]]:
    """``("lr=1e-3,3e-4", "ent_coef=0,0.01")`` -> ``{"lr": [1e-3, 3e-4], "ent_coef": [0.0, 0.01]}``;
    only traced fields can be swept (they share one compiled program)."""
    grid: dict[str, list[float]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise ValueError(f"sweep: expected NAME=V1,V2,... got {item!r}")
        if name not in TRACED_FIELDS:
            raise ValueError(f"sweep: {name!r} is not a traced field; sweepable: {', '.join(TRACED_FIELDS)}")
        if name in grid:
            raise ValueError(f"sweep: {name} is given twice; list its values once: {name}=V1,V2,...")
        try:
            grid[name] = [float(v) for v in values.split(",")]
        except ValueError as err:
            raise ValueError(f"sweep: {item!r}: {err}") from err
        if not all(math.isfinite(v) for v in grid[name]):
            raise ValueError(f"sweep: {item!r}: every value must be finite")
        if len(set(grid[name])) < len(grid[name]):
            raise ValueError(f"sweep: {item!r}: a value is repeated")
    return grid


def grid_points(grid: dict[str, list[float]]) -> list[dict[str, float]]:
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))] or [{}]


def point_name(algo: str, point: dict[str, float]) -> str:
    return algo + "".join(f" {k}={v:g}" for k, v in point.items())


def run_study(configs: dict[str, PPOConfig], *, num_seeds: int, grid: dict[str, list[float]], seed: int,
              eval_episodes: int, run_dir: Path, progress: Callable[[str, str], None] | None = None,
              on_update: Callable[[str, int, int], None] | None = None, reps: int = 2000) -> dict:
    """Runs every algorithm (``configs[algo]``, one environment) x grid point with ``num_seeds``
    seeds; writes ``summary.json``, ``curves.json``, ``learning_curves.png`` and
    ``final_iqm.png`` into ``run_dir`` and returns the summary. ``progress(algo, status)`` is
    called between stages and with the run's status lines (resumed, stopping, checkpoint),
    ``on_update(algo, updates_done, num_updates)`` after every chunk of updates.

    Saves as it goes under ``run_dir/progress``: each algorithm's periodic checkpoints while
    it trains, then its results once evaluated; run again on the same folder, it loads the
    finished algorithms and continues the one in progress from its newest checkpoint, to the
    same numbers as a run never stopped. Ctrl-C stops at a checkpoint
    (:class:`ppo_jax.run.interrupt.Interrupted`)."""
    points = grid_points(grid)
    envs = {c.env for c in configs.values()}
    if len(envs) != 1:
        raise ValueError(f"env: a study compares algorithms on one environment, got {sorted(envs)}")
    base = next(iter(configs.values()))
    for c in configs.values():  # every config is checked before anything compiles
        for p in points:
            c.replace(**p).validate()
    primary = jax.process_index() == 0
    if primary:
        run_dir.mkdir(parents=True, exist_ok=True)
    results, curves, wall = {}, {}, {}
    for algo, config in configs.items():
        say = (lambda status, a=algo: progress(a, status)) if progress is not None else (lambda status: None)
        t0 = time.perf_counter()
        finals, returns, steps = _algorithm(config, algo, points, num_seeds=num_seeds, seed=seed,
                                            eval_episodes=eval_episodes, folder=run_dir / PROGRESS, say=say,
                                            on_update=on_update)
        wall[algo] = time.perf_counter() - t0
        for g, point in enumerate(points):
            name = point_name(algo, point)
            results[name] = {"algo": algo, **point, **summarize(finals[g], reps=reps, seed=seed)}
            curves[name] = _curve_with_band(steps, returns[g], reps=max(200, reps // 10), seed=seed)
        say(f"done in {wall[algo]:.0f} s")
    names = list(results)
    improvement = {f"{a} > {b}": {"p": probability_of_improvement(results[a]["scores"], results[b]["scores"]),
                                  "ci": list(probability_of_improvement_ci(results[a]["scores"], results[b]["scores"],
                                                                           reps=reps, seed=seed))}
                   for a, b in itertools.permutations(names, 2)}
    summary = {"env": base.env, "num_seeds": num_seeds, "seed": seed, "eval_episodes": eval_episodes,
               "configs": {a: c.to_dict() for a, c in configs.items()}, "grid": grid, "results": results,
               "probability_of_improvement": improvement, "wall_s": wall, "device": str(jax.devices()[0].platform),
               "layout": seeds_layout(len(points) * num_seeds).describe(),
               "run_dir": str(run_dir)}
    if not primary:
        return summary
    write_json(run_dir / "curves.json", curves)
    series = {name: (c["env_steps"], c["iqm"], c["ci_low"], c["ci_high"]) for name, c in curves.items()}
    plot_lines(run_dir / "learning_curves.png", series, xlabel="environment steps",
               ylabel="episode return (IQM over seeds)", title=f"{base.env}: {num_seeds} seeds")
    plot_lines(run_dir / "final_iqm.png", {n: ([i], [r["iqm"]], [r["iqm_ci"][0]], [r["iqm_ci"][1]])
                                          for i, (n, r) in enumerate(results.items())},
               xlabel="algorithm / grid point", ylabel="final deterministic return (IQM, 95% CI)",
               title=f"{base.env}: final return")
    write_json(run_dir / "summary.json", summary)  # last: it marks the study finished
    shutil.rmtree(run_dir / PROGRESS, ignore_errors=True)
    return summary


PROGRESS = "progress"
"""A study's folder of work in progress: ``<algo>/`` periodic checkpoints, ``<algo>.npz`` results."""


def _algorithm(config: PPOConfig, algo: str, points: list[dict[str, float]], *, num_seeds: int, seed: int,
               eval_episodes: int, folder: Path, say: Callable[[str], None],
               on_update: Callable[[str, int, int], None] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(finals [grid, seeds], episode returns [grid, seeds, updates], env steps [updates])`` of
    one algorithm: loaded from ``folder/<algo>.npz`` if a run before finished it, else trained
    (continuing from ``folder/<algo>/``'s newest checkpoint), evaluated and saved there."""
    done = folder / f"{algo}.npz"
    if done.exists():
        with np.load(done) as saved:
            say(f"loaded the finished {algo} from {done}")
            return saved["finals"], saved["returns"], saved["steps"]
    # The runs are grid points x seeds as one batch, grid-major; every grid point uses the
    # same seeds (common random numbers), so a grid point differs from another only in its values.
    members = len(points) * num_seeds
    layout = seeds_layout(members)
    keys = np.tile(seed_keys(seed, num_seeds), (len(points), 1))
    hparams = stack_hparams([config.replace(**p) for p in points for _ in range(num_seeds)])
    checkpoints = RunCheckpoints(folder / algo, format=ckpt.FORMAT, payload=ckpt.PAYLOAD)
    say("training")
    result = run_resumable(config, num_seeds=members, seed=seed, layout=layout, checkpoints=checkpoints,
                           checkpoint_every=auto_checkpoint_every(config.num_updates), check_finite=False,
                           progress=(lambda u: on_update(algo, u, config.num_updates)) if on_update else None,
                           on_status=say, min_save_interval_s=save_interval_s(), keys=keys, hparams=hparams)
    evaluate = place(layout, jax.vmap(make_evaluate(config, num_episodes=eval_episodes, deterministic=True)))
    eval_for = global_array(layout, np.tile(eval_keys(seed, num_seeds), (len(points), 1)))
    finals = fetch(evaluate(result.state.params, result.state.env_state.obs_stats, eval_for))
    finals = finals.mean(-1).reshape(len(points), num_seeds)
    returns = result.metrics["episode_return"].reshape(len(points), num_seeds, -1)
    steps = result.metrics["env_steps"][0]
    if jax.process_index() == 0:
        with atomic_path(done) as tmp, open(tmp, "wb") as f:
            np.savez(f, finals=finals, returns=returns, steps=steps)
    barrier("ppo_jax.study.algorithm_done")  # every process is past its checkpoints before they go
    if jax.process_index() == 0:
        shutil.rmtree(folder / algo, ignore_errors=True)
    return finals, returns, steps


def seeds_layout(num_seeds: int) -> Layout:
    """The seeds over every process's devices in a multi-process run (one process per core
    on a CPU, see :mod:`ppo_jax.local_processes`); one device otherwise."""
    if jax.process_count() == 1:
        return Layout(None, None)
    layout = choose_layout(num_seeds, num_envs=1)
    if layout.axis != SEEDS:
        raise ValueError(f"num_seeds: a multi-process study splits its seeds over processes; got {num_seeds}")
    return layout


def _curve_with_band(steps: np.ndarray, returns: np.ndarray, *, reps: int, seed: int, points: int = 50) -> dict:
    """IQM over seeds of the training return at up to ``points`` updates, with a bootstrap band.

    Updates in which a seed finished no episode (NaN) are filled with its previous value."""
    from ppo_jax.stats import bootstrap_ci

    filled = np.array(returns, np.float64)
    for s in range(filled.shape[0]):
        row = filled[s]
        last = np.nan
        for t in range(len(row)):
            if np.isnan(row[t]):
                row[t] = last
            else:
                last = row[t]
    idx = np.unique(np.linspace(0, filled.shape[1] - 1, min(points, filled.shape[1])).astype(int))
    out = {"env_steps": steps[idx].tolist(), "iqm": [], "ci_low": [], "ci_high": []}
    for t in idx:
        col = filled[:, t]
        col = col[np.isfinite(col)]
        if len(col) == 0:
            out["iqm"].append(float("nan"))
            out["ci_low"].append(float("nan"))
            out["ci_high"].append(float("nan"))
            continue
        lo, hi = bootstrap_ci(col, iqm, reps=reps, seed=seed)
        out["iqm"].append(iqm(col))
        out["ci_low"].append(lo)
        out["ci_high"].append(hi)
    return out
