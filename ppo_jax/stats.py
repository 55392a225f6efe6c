"""Statistics for comparing RL algorithms over seeds (Agarwal et al. 2021, as in ``rliable``).

* the interquartile mean (IQM): the mean of the middle 50% of runs, robust to outlier seeds
  yet less noisy than the median;
* stratified bootstrap confidence intervals: resample runs with replacement within each
  task (stratum), recompute the statistic, take percentiles;
* the probability of improvement ``P(X > Y) + P(X = Y) / 2`` of algorithm X over Y (the
  Mann-Whitney U statistic over all pairs of runs), with a bootstrap interval.

Scores are ``[runs]`` or ``[runs, tasks]`` arrays (one algorithm).
"""

from __future__ import annotations

import numpy as np


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean over all runs and tasks, with fractional trimming as in
    ``scipy.stats.trim_mean(x, 0.25)`` (the 25% lowest and highest values are dropped)."""
    x = np.sort(np.asarray(scores, np.float64).ravel())
    n = len(x)
    if n == 0:
        raise ValueError("scores: empty")
    cut = int(0.25 * n)
    return float(x[cut:n - cut].mean())


def _as_runs_by_tasks(scores) -> np.ndarray:
    x = np.asarray(scores, np.float64)
    return x[:, None] if x.ndim == 1 else x


def bootstrap_ci(scores: np.ndarray, statistic=iqm, *, reps: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``statistic`` under the stratified bootstrap: for each replicate,
    every task's runs are resampled with replacement independently."""
    x = _as_runs_by_tasks(scores)
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    stats = np.empty(reps)
    for i in range(reps):
        idx = rng.integers(n, size=x.shape)  # per task column: its own resample of runs
        stats[i] = statistic(np.take_along_axis(x, idx, axis=0))
    alpha = (1.0 - confidence) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """``P(X > Y) + P(X = Y) / 2`` over all pairs of runs (averaged over tasks)."""
    a, b = _as_runs_by_tasks(x), _as_runs_by_tasks(y)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"scores: {a.shape[1]} tasks against {b.shape[1]}")
    per_task = [((a[:, t, None] > b[None, :, t]) + 0.5 * (a[:, t, None] == b[None, :, t])).mean()
                for t in range(a.shape[1])]
    return float(np.mean(per_task))


def probability_of_improvement_ci(x, y, *, reps: int = 2000, confidence: float = 0.95,
                                  seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`probability_of_improvement` (runs of each
    algorithm resampled independently, per task)."""
    a, b = _as_runs_by_tasks(x), _as_runs_by_tasks(y)
    rng = np.random.default_rng(seed)
    stats = np.empty(reps)
    for i in range(reps):
        ra = np.take_along_axis(a, rng.integers(a.shape[0], size=a.shape), axis=0)
        rb = np.take_along_axis(b, rng.integers(b.shape[0], size=b.shape), axis=0)
        stats[i] = probability_of_improvement(ra, rb)
    alpha = (1.0 - confidence) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def summarize(scores: np.ndarray, *, reps: int = 2000, seed: int = 0) -> dict:
    """``{"scores", "iqm", "iqm_ci", "mean", "median"}`` of one algorithm's final scores."""
    x = np.asarray(scores, np.float64)
    lo, hi = bootstrap_ci(x, iqm, reps=reps, seed=seed)
    return {"scores": x.tolist(), "iqm": iqm(x), "iqm_ci": [lo, hi], "mean": float(x.mean()),
            "median": float(np.median(x))}
