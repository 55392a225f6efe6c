"""Statistical studies: several algorithms (and/or a grid of traced hyperparameters) on one
environment, N vmapped seeds each, reported with IQM, stratified-bootstrap intervals,
learning curves with confidence bands and the probability of improvement between pairs.

Each algorithm compiles once: its seeds and grid points run as one ``vmap`` over
``(seeds x grid points)`` of ``train(key, hparams)`` (traced fields only, so the sweep
shares the program).
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from ppo_jax.config import TRACED_FIELDS, PPOConfig, stack_hparams
from ppo_jax.distributed import SEEDS, Layout, choose_layout, fetch, global_array, place
from ppo_jax.evaluate import make_evaluate
from ppo_jax.run.outputs import plot_lines, write_json
from ppo_jax.runner import eval_keys, seed_keys
from ppo_jax.stats import (
    iqm,
    probability_of_improvement,
    probability_of_improvement_ci,
    summarize,
)
from ppo_jax.train import make_train


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
    called between stages, ``on_update(algo, update, num_updates)`` from inside the compiled
    run after every update."""
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
    layout = seeds_layout(num_seeds)
    # Arrays lead with [grid, seeds]: the same seeds at every grid point (common random numbers).
    grid_seeds = P(None, SEEDS)
    keys = global_array(layout, seed_keys(seed, num_seeds))
    keys_for_eval = global_array(layout, np.broadcast_to(eval_keys(seed, num_seeds), (len(points), num_seeds, 2)),
                                 grid_seeds)
    results, curves, wall = {}, {}, {}
    for algo, config in configs.items():
        if progress is not None:
            progress(algo, "training")
        t0 = time.perf_counter()
        hps = jax.tree.map(lambda v: global_array(layout, v, P()), stack_hparams([config.replace(**p) for p in points]))
        callback = None
        if on_update is not None:
            callback = lambda u, a=algo, n=config.num_updates: on_update(a, int(np.max(np.asarray(u))) + 1, n)  # noqa: E731
        train = make_train(config, progress=callback)
        run = place(layout, jax.vmap(jax.vmap(train, in_axes=(0, None)), in_axes=(None, 0)), (P(SEEDS), P()),
                    grid_seeds)
        out = run(keys, hps)
        evaluate = place(layout, jax.vmap(jax.vmap(make_evaluate(config, num_episodes=eval_episodes,
                                                                 deterministic=True))), grid_seeds, grid_seeds)
        finals = evaluate(out.state.params, out.state.env_state.obs_stats, keys_for_eval)
        finals, returns, steps = fetch((finals, out.metrics["episode_return"], out.metrics["env_steps"]))
        finals, steps = finals.mean(-1), steps[0, 0]  # returns: [grid, seeds, updates]
        wall[algo] = time.perf_counter() - t0
        for g, point in enumerate(points):
            name = point_name(algo, point)
            results[name] = {"algo": algo, **point, **summarize(finals[g], reps=reps, seed=seed)}
            curves[name] = _curve_with_band(steps, returns[g], reps=max(200, reps // 10), seed=seed)
        if progress is not None:
            progress(algo, f"done in {wall[algo]:.0f} s")
    names = list(results)
    improvement = {f"{a} > {b}": {"p": probability_of_improvement(results[a]["scores"], results[b]["scores"]),
                                  "ci": list(probability_of_improvement_ci(results[a]["scores"], results[b]["scores"],
                                                                           reps=reps, seed=seed))}
                   for a, b in itertools.permutations(names, 2)}
    summary = {"env": base.env, "num_seeds": num_seeds, "seed": seed, "eval_episodes": eval_episodes,
               "configs": {a: c.to_dict() for a, c in configs.items()}, "grid": grid, "results": results,
               "probability_of_improvement": improvement, "wall_s": wall, "device": str(jax.devices()[0].platform),
               "layout": layout.describe(),
               "run_dir": str(run_dir)}
    if not primary:
        return summary
    write_json(run_dir / "curves.json", curves)
    write_json(run_dir / "summary.json", summary)
    series = {name: (c["env_steps"], c["iqm"], c["ci_low"], c["ci_high"]) for name, c in curves.items()}
    plot_lines(run_dir / "learning_curves.png", series, xlabel="environment steps",
               ylabel="episode return (IQM over seeds)", title=f"{base.env}: {num_seeds} seeds")
    plot_lines(run_dir / "final_iqm.png", {n: ([i], [r["iqm"]], [r["iqm_ci"][0]], [r["iqm_ci"][1]])
                                          for i, (n, r) in enumerate(results.items())},
               xlabel="algorithm / grid point", ylabel="final deterministic return (IQM, 95% CI)",
               title=f"{base.env}: final return")
    return summary


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
