"""Run folders: metrics as JSON and CSV, learning-curve plots, summary.json."""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np


def new_run_dir(base: str | os.PathLike, name: str) -> Path:
    """A fresh folder ``base/name-YYYYmmdd-HHMMSS[-k]`` that did not exist before."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(base)
    for k in range(1000):
        path = base / (f"{name}-{stamp}" + (f"-{k}" if k else ""))
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a fresh run folder under {base}")


def _clean(x):
    """JSON has no NaN: write null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def to_jsonable(obj):
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return _clean(float(obj))
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json(path: Path, obj) -> None:
    """Atomically (temporary file, then rename), creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(obj), indent=2, allow_nan=False))
    os.replace(tmp, path)


def write_metrics(run_dir: Path, metrics: dict[str, np.ndarray]) -> None:
    """``metrics[name]`` has shape ``[num_seeds, num_updates]``; writes metrics.json and metrics.csv."""
    write_json(run_dir / "metrics.json", {k: np.asarray(v) for k, v in metrics.items()})
    names = sorted(metrics)
    num_seeds, num_updates = np.asarray(metrics[names[0]]).shape
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seed", "update"] + names)
        for s in range(num_seeds):
            for u in range(num_updates):
                writer.writerow([s, u] + [float(np.asarray(metrics[n])[s, u]) for n in names])


def plot_learning_curve(path: Path, steps: np.ndarray, returns: np.ndarray, title: str) -> None:
    """Mean over seeds with a band from the min to the max seed; ``returns`` is ``[seeds, updates]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    returns = np.asarray(returns, dtype=float)
    with warnings.catch_warnings():  # updates where no seed finished an episode are all-NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(returns, axis=0)
        lo, hi = np.nanmin(returns, axis=0), np.nanmax(returns, axis=0)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, mean, label=f"mean over {returns.shape[0]} seed(s)")
    ax.fill_between(steps, lo, hi, alpha=0.25, label="min-max over seeds")
    ax.set_xlabel("environment steps (per seed)")
    ax.set_ylabel("episode return (finished episodes)")
    ax.set_title(title)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_lines(path: Path, series: dict, *, xlabel: str, ylabel: str, title: str) -> None:
    """One line per ``series[name] = (x, y)``, with a shaded band for ``(x, y, low, high)``
    (error bars where there are few points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (x, y, *band) in series.items():
        x, y = np.asarray(x), np.asarray(y, dtype=float)
        few = len(x) < 30
        line = ax.plot(x, y, label=name, marker="o" if few else None)[0]
        if band:
            low, high = np.asarray(band[0], dtype=float), np.asarray(band[1], dtype=float)
            if few:
                ax.errorbar(x, y, yerr=[y - low, high - y], fmt="none", color=line.get_color(), capsize=4)
            else:
                ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
