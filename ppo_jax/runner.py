"""A training run as chunks of compiled updates, with checkpoints and a NaN/inf check between them.

``make_train(config)`` is the whole run as one program; this is the same program cut
into ``checkpoint_every`` updates at a time (:class:`ppo_jax.train.TrainFns`), so a run
can be saved, killed, resumed and checked as it goes. Everything random lives in the
train state, so a run resumed from a checkpoint ends exactly where the uninterrupted
run ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import jax
import numpy as np

from ppo_jax.config import PPOConfig
from ppo_jax.distributed import ENVS, Layout, fetch, global_array, leading_axis_constraint, place
from ppo_jax.run.checkpoints import RunCheckpoints
from ppo_jax.run.interrupt import agree, stop_if_requested, stoppable
from ppo_jax.seed_groups import vmap_seeds
from ppo_jax.train import make_train_fns

# NaN by design in an update where no episode finished, so not evidence of divergence.
UNCHECKED = ("episode_return", "episode_length")


def auto_checkpoint_every(num_updates: int) -> int:
    """About ten checkpoints a run, at a divisor of ``num_updates`` when one is near (every
    chunk length is one more compiled program), else every ``ceil(num_updates / 10)``."""
    target = max(1, num_updates // 10)
    divisors = [d for d in range(max(1, target // 2), target + 1) if num_updates % d == 0]
    return divisors[-1] if divisors else -(-num_updates // 10)


class NonFiniteError(FloatingPointError):
    """A NaN or inf appeared; ``metrics`` holds every update before it (the rest NaN)."""

    def __init__(self, message: str, metrics: dict[str, np.ndarray]):
        super().__init__(message)
        self.metrics = metrics


@dataclass
class RunResult:
    state: Any
    """The final train state (seed-batched, on the layout's devices)."""
    metrics: dict[str, np.ndarray]
    """Per-update metrics, ``[num_seeds, num_updates]``."""
    compile_s: float
    run_s: float
    resumed_from: int | None
    """The update count of the checkpoint the run resumed from, if it did."""


def seed_keys(seed: int, num_seeds: int) -> np.ndarray:
    """Seed i of a run uses ``fold_in(PRNGKey(seed), i)``."""
    return np.asarray(jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(np.arange(num_seeds)))


def eval_keys(seed: int, num_seeds: int) -> np.ndarray:
    """The evaluation key of each seed of a run: its own stream, apart from training's."""
    return np.asarray(jax.vmap(lambda k: jax.random.fold_in(k, 10_000_019))(seed_keys(seed, num_seeds)))


def first_nonfinite(metrics: dict[str, np.ndarray], params) -> tuple[int, int, list[str]] | None:
    """``(seed, update index, metric names)`` of the first update (``[num_seeds, n]``
    metrics) with a NaN or inf, or None; ``params`` (seed-batched) count as a metric
    that belongs to the last update."""
    bad = {k: ~np.isfinite(v) for k, v in metrics.items() if k not in UNCHECKED and v.dtype.kind == "f"}
    leaves = jax.tree.leaves(params)
    n = next(iter(metrics.values())).shape[1]
    per_seed = np.stack([~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1) for x in leaves]).any(axis=0)
    bad["params"] = np.zeros_like(next(iter(bad.values())))
    bad["params"][:, n - 1] = per_seed
    any_bad = np.stack(list(bad.values())).any(axis=0)  # [num_seeds, n]
    if not any_bad.any():
        return None
    update = int(np.argmax(any_bad.any(axis=0)))
    seed = int(np.argmax(any_bad[:, update]))
    return seed, update, [k for k, v in bad.items() if v[seed, update]]


def run_resumable(config: PPOConfig, *, num_seeds: int, seed: int, layout: Layout,
                  checkpoints: RunCheckpoints | None = None, checkpoint_every: int = 0,
                  check_finite: bool = True, progress: Callable[[Any], None] | None = None,
                  on_status: Callable[[str], None] | None = None, min_save_interval_s: float = 0.0,
                  on_compiled: Callable[[Any], None] | None = None, seed_groups: int = 1,
                  keys: np.ndarray | None = None, hparams: Any = None) -> RunResult:
    """Trains ``num_seeds`` seeds on ``layout``, ``checkpoint_every`` updates per compiled
    call (0: all at once), saving after each call when ``checkpoints`` is given (but not
    within ``min_save_interval_s`` seconds of the last save, except at the end) and
    resuming from its newest intact checkpoint if it has one (a damaged one is set aside
    with a warning through ``on_status``).

    ``on_compiled``, if given, is called with the initial train state once the training
    program is compiled, e.g. to compile an evaluation program while training runs.

    ``progress``, if given, is called with the number of updates done after each chunk (and
    after a resume), from Python: a host callback inside the program would keep JAX from
    writing it to the persistent compilation cache, and the training program is most of a
    run's compile time.

    ``seed_groups``: on one device, the seeds run as that many independent vmaps in the one
    program (:func:`ppo_jax.seed_groups.vmap_seeds`), so a CPU runs one on each core.

    ``keys`` (``[num_seeds, 2]``; default :func:`seed_keys`) and ``hparams`` (an
    :class:`ppo_jax.config.HParams` whose leaves lead with ``num_seeds``; default the config's)
    give each run its own key and traced hyperparameters: a study's grid points x seeds.

    Ctrl-C (with ``checkpoints``): the first stops the run after the chunk in progress,
    saves it and raises :class:`ppo_jax.run.interrupt.Interrupted`; a second raises
    KeyboardInterrupt at once, after any save in flight has finished.

    With ``check_finite``, a NaN or inf in a metric or the parameters raises
    :class:`NonFiniteError` naming the update, the seed and the metrics, before the bad
    state is saved: the newest checkpoint stays the last good one.
    """
    status = on_status or (lambda _: None)
    num_updates = config.num_updates
    every = checkpoint_every if checkpoint_every > 0 else num_updates
    shard = leading_axis_constraint(layout.mesh, ENVS) if layout.axis == ENVS else None
    fns = make_train_fns(config, env_sharding=shard)
    keys = global_array(layout, seed_keys(seed, num_seeds) if keys is None else keys)
    if seed_groups > 1 and layout.mesh is not None:
        raise ValueError(f"seed_groups: {seed_groups} groups need one device; this layout is {layout.describe()}")
    # Per-run hyperparameters ride along as a second argument (none: the config's, as constants).
    extra = () if hparams is None else (jax.tree.map(lambda v: global_array(layout, v), hparams),)
    # Initialisation stays one vmap: it is quick, and its batched QR (orthogonal init) is what
    # XLA:CPU deadlocked on when several ran at once.
    init = place(layout, jax.vmap(fns.init))

    def compile_chunk(n: int, like) -> Any:
        def run(state, *hp):  # named: its cache entries are "jit_run-..."
            return fns.run(state, n, *hp)

        return place(layout, vmap_seeds(run, seed_groups)).lower(like, *extra).compile()

    state = init(keys, *extra)
    first = min(every, num_updates)
    t0 = time.perf_counter()
    programs: dict[int, Any] = {first: compile_chunk(first, state)}
    compile_s = time.perf_counter() - t0
    if on_compiled is not None:
        on_compiled(state)
    shapes = programs[first].out_info.metrics  # [num_seeds, first] each
    metrics = {k: np.full((num_seeds, num_updates), np.nan if v.dtype.kind == "f" else -1, v.dtype)
               for k, v in shapes.items()}
    done, resumed_from = 0, None
    found = checkpoints.restore_latest({"state": state, "metrics": metrics}, warn=status) if checkpoints else None
    if found is not None:
        done = resumed_from = found[0]
        state, metrics = found[1]["state"], {k: np.array(v) for k, v in found[1]["metrics"].items()}
        status(f"resumed from {checkpoints.path(done)} (update {done} of {num_updates})")
    if progress is not None:
        progress(done)

    run_s = 0.0
    status("training")
    last_save = time.monotonic()
    request = lambda: status("stopping after the updates in progress (Ctrl-C again to stop now)")  # noqa: E731
    with stoppable(checkpoints, on_request=request) as stop:
        while done < num_updates:
            n = min(every, num_updates - done)
            if n not in programs:
                t0 = time.perf_counter()
                programs[n] = compile_chunk(n, state)
                compile_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            # A no-op unless XLA chose other placements for the last chunk's outputs than
            # this program takes (possible in the envs layout).
            state = jax.device_put(state, programs[n].input_shardings[0][0])
            out = programs[n](state, *extra)
            chunk = fetch(out.metrics)
            run_s += time.perf_counter() - t0
            if check_finite:
                found = first_nonfinite(chunk, fetch(out.state.params))
                if found is not None:
                    s, u, names = found
                    for k, v in chunk.items():
                        metrics[k][:, done:done + u] = v[:, :u]
                    last = checkpoints.latest() if checkpoints is not None else None
                    kept = (f"; last good checkpoint: {checkpoints.path(last)} (update {last})" if last is not None
                            else "; no checkpoint was saved before it")
                    raise NonFiniteError(f"non-finite values at update {done + u + 1} of {num_updates} (seed {s}) "
                                         f"in: {', '.join(names)}{kept}", metrics)
            for k, v in chunk.items():
                metrics[k][:, done:done + n] = v
            state, done = out.state, done + n
            if progress is not None:
                progress(done)
            stopping, due = agree(stop, time.monotonic() - last_save >= min_save_interval_s or done == num_updates)
            if checkpoints is not None and due:
                checkpoints.save(done, {"state": state, "metrics": metrics}, {"update": done})
                last_save = time.monotonic()
                status(f"checkpoint {checkpoints.path(done)}")
            stop_if_requested(stopping, checkpoints, done, num_updates)
    if checkpoints is not None:
        checkpoints.wait()
    return RunResult(state, metrics, compile_s, run_s, resumed_from)
