"""Run folders: metrics as JSON and CSV, learning-curve plots, summary.json."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np


def read_json(path: str | os.PathLike, error: type[Exception] = ValueError):
    """The JSON in ``path``; a missing, unreadable or invalid file raises ``error`` naming the
    file (and line)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise error(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None


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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (parent folder created) for the block to write; renamed
    onto ``path`` when the block ends without an error, so a crash leaves the old file or
    none, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    yield tmp
    if tmp.is_file():  # some writers (safetensors) make their files 0600: the user's umask decides
        os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def _umask() -> int:
    """This process's umask, read without changing it where Linux shows it."""
    try:
        with open("/proc/self/status") as f:
            return int(next(line.split()[1] for line in f if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def write_json(path: Path, obj) -> None:
    """Atomically (:func:`atomic_path`), creating the parent folder."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(to_jsonable(obj), indent=2, allow_nan=False))


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


def carry_forward(returns: np.ndarray) -> np.ndarray:
    """``returns[seed, update]`` with each NaN (an update in which no episode finished) replaced
    by the seed's last finished value; NaN before its first finished episode."""
    returns = np.asarray(returns, dtype=float)
    index = np.where(np.isfinite(returns), np.arange(returns.shape[-1]), 0)
    index = np.maximum.accumulate(index, axis=-1)
    filled = np.take_along_axis(returns, index, axis=-1)
    seen = np.maximum.accumulate(np.isfinite(returns), axis=-1)
    return np.where(seen, filled, np.nan)


def plot_learning_curve(path: Path, steps: np.ndarray, returns: np.ndarray, title: str) -> None:
    """The return of finished episodes against environment steps; ``returns`` is ``[seeds, updates]``.

    An update in which no episode finished (every CartPole update once episodes outlast the
    rollout) has no return: the seed's last finished value is carried forward, and the
    points where episodes did finish are marked. Several seeds: their mean, with a min-max band.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    returns = np.asarray(returns, dtype=float)
    filled = carry_forward(returns)
    steps = np.asarray(steps)
    fig, ax = plt.subplots(figsize=(6, 4))
    with warnings.catch_warnings():  # updates before any seed finished an episode are all-NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(filled, axis=0)
        if returns.shape[0] > 1:
            line = ax.plot(steps, mean, label=f"mean over {returns.shape[0]} seeds (last finished episodes)")[0]
            ax.fill_between(steps, np.nanmin(filled, axis=0), np.nanmax(filled, axis=0), alpha=0.25,
                            color=line.get_color(), label="min-max over seeds")
        else:
            line = ax.plot(steps, mean, label="last finished episodes (carried forward)")[0]
            finished = np.isfinite(returns[0])
            ax.plot(steps[finished], returns[0][finished], "o", markersize=2.5, color=line.get_color(),
                    label="updates in which episodes finished")
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
    plot_panels(path, [(ylabel, series)], xlabel=xlabel, title=title)


def plot_panels(path: Path, panels: list[tuple[str, dict]], *, xlabel: str, title: str) -> None:
    """:func:`plot_lines` for several ``(ylabel, series)`` side by side, sharing the x axis
    (a name in several panels gets the same colour in each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), sharex=True, squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels):
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
        ax.legend(loc="best")
    if len(panels) == 1:
        axes[0][0].set_title(title)
    else:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
