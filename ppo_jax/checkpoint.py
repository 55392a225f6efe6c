"""Checkpoints: orbax for arrays (params, optimiser state, normaliser statistics), JSON for the config.

A checkpoint directory holds ``state/`` (orbax; written to a temporary name and renamed
on commit, so a killed save leaves no half checkpoint) and ``config.json`` plus
``meta.json`` (written to a temporary file, then ``os.replace``d). Arrays of a
multi-seed run keep their leading seed axis.

:class:`RunCheckpoints` are the periodic ones of a run in progress: the whole train
state (random key, environments and normalisers included) and the metrics so far, so
a killed run resumes exactly where its last checkpoint left it.

Every checkpoint records a CRC-32 of each array it holds (in its JSON), and loading
compares them: orbax reads a flipped byte back as a wrong number without complaint. Any
failure to read a checkpoint is one :class:`CheckpointError` that names the folder.
"""

from __future__ import annotations

import os
import sys
import zlib
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from ppo_jax.config import PPOConfig
from ppo_jax.distributed import barrier
from ppo_jax.outputs import read_json, write_json


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or incomplete; the message names its folder."""


class CheckpointFormatError(CheckpointError):
    """A checkpoint written by a version of ppo_jax with another state layout (not damaged)."""


FORMAT = 2
"""Layout of the saved state. 2: the optimiser state is optax's (``partition`` of flattened,
hyperparameter-injected Adam per group); 1 held one hand-flattened Adam state per group."""


def check_format(meta: dict, where) -> None:
    found = meta.get("format", 1)
    if found != FORMAT:
        raise CheckpointFormatError(f"checkpoint: {where} is in format {found}, written by another version of ppo_jax "
                              f"(this one reads format {FORMAT}: its optimiser state is laid out differently); "
                              f"load it with the version that wrote it")


def tree_checksums(tree) -> list[int] | None:
    """CRC-32 of each leaf's bytes in tree order, or None when a leaf is not all on this
    process (a multi-process run: each process holds only its shards)."""
    leaves = jax.tree.leaves(tree)
    if any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in leaves):
        return None
    return [zlib.crc32(np.ascontiguousarray(x).tobytes()) for x in jax.device_get(leaves)]


def verify_checksums(tree, expected: list[int] | None, where: Path) -> None:
    """Raises :class:`CheckpointError` naming the first leaf whose bytes differ from ``expected``."""
    if expected is None:
        return
    got = tree_checksums(tree)
    if got is None:
        return
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    if len(got) != len(expected):
        raise CheckpointError(f"checkpoint: {where} is damaged: {len(got)} arrays read, {len(expected)} saved")
    for path, a, b in zip(paths, got, expected):
        if a != b:
            raise CheckpointError(f"checkpoint: {where} is damaged: array {path} does not match its checksum")


def _silence_abandoned_reads() -> None:
    """After orbax gives up on a damaged file, its other reads still in flight fail later
    and Python prints each as 'Exception ignored' with a long TensorStore spec: drop those
    (the error that matters has been raised and reported)."""
    previous = sys.unraisablehook
    if getattr(previous, "_ppo_jax_filter", False):
        return

    def hook(unraisable):
        text = f"{unraisable.exc_value}"
        if "Encountered error while reading array" in text or "Event loop is closed" in text:
            return
        previous(unraisable)

    hook._ppo_jax_filter = True
    sys.unraisablehook = hook


def orbax_restore(read, where: Path):
    """``read()`` (an orbax restore), with any failure turned into one :class:`CheckpointError`."""
    try:
        return read()
    except CheckpointError:
        raise
    except Exception as err:  # orbax/TensorStore raise many types (ValueError, KeyError, bare Exception)
        _silence_abandoned_reads()
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        reason = reason.split(" See full TensorStore details")[0].split(" [tensorstore_spec")[0]
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        raise CheckpointError(f"checkpoint: {where} is damaged or incomplete "
                              f"({type(err).__name__}: {reason})") from None


def payload_from_state(state) -> dict:
    """The parts of a :class:`ppo_jax.train.TrainState` worth keeping."""
    return {"params": state.params, "opt_state": state.opt_state, "obs_stats": state.env_state.obs_stats,
            "return_stats": state.env_state.return_stats, "update": state.update}


def save(directory: str | os.PathLike, config: PPOConfig, state, num_seeds: int | None = None) -> Path:
    """Saves ``state`` (a TrainState, seed-batched when ``num_seeds``) and ``config`` to ``directory``."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "state").exists():
        raise FileExistsError(f"checkpoint: {directory / 'state'} already exists; choose a new directory")
    barrier("ppo_jax.checkpoint.save")  # every process has looked before any writes
    payload = payload_from_state(state)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / "state", payload)
    checksums = tree_checksums(payload)
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        write_json(directory / "config.json", config.to_dict())
        write_json(directory / "meta.json", {"num_seeds": num_seeds, "format": FORMAT, "checksums": checksums})
    return directory


def _abstract_payload(config: PPOConfig, num_seeds: int | None) -> dict:
    from ppo_jax.train import make_train_fns

    init = make_train_fns(config).init
    if num_seeds is None:
        return jax.eval_shape(lambda k: payload_from_state(init(k)), jax.random.PRNGKey(0))
    keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
    return jax.eval_shape(lambda k: payload_from_state(jax.vmap(init)(k)), keys)


def load_config(directory: str | os.PathLike, *, run: bool = False) -> PPOConfig:
    """The config in ``directory/config.json`` (``run``: a run folder's, with its ``run`` entry)."""
    path = Path(directory) / "config.json"
    if not path.exists():
        raise CheckpointError(f"checkpoint: no config.json in {directory} (is it a checkpoint directory?)")
    saved = read_json(path, error=CheckpointError)
    if run:
        saved.pop("run", None)
    try:
        return PPOConfig.from_dict(saved)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: {err}") from None


def _single_device(abstract):
    """Onto this process's first device, whatever devices or processes saved it."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract)


def restore(directory: str | os.PathLike) -> tuple[PPOConfig, dict, int | None]:
    """Returns ``(config, payload, num_seeds)``; the payload has the structure :func:`save` wrote.

    ``directory`` is a checkpoint (``RUN/checkpoint``), a run folder (its final checkpoint,
    or its newest intact periodic one if the run did not finish), or a periodic
    checkpoint (``RUN/checkpoints/N``). Raises :class:`CheckpointError` naming the folder
    when what is there cannot be read or does not match its checksums.
    """
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint: {directory} is not a folder")
    if (directory / "checkpoint" / "state").exists() or (directory / "checkpoints").is_dir():
        if (directory / "checkpoint" / "meta.json").exists():
            return restore(directory / "checkpoint")
        return _restore_periodic(directory, None)
    if directory.name.isdigit() and (directory.parent.parent / "config.json").exists():
        return _restore_periodic(directory.parent.parent, int(directory.name))
    config = load_config(directory)
    meta_path = directory / "meta.json"
    for needed in (directory / "state", meta_path):
        if not needed.exists():
            raise CheckpointError(f"checkpoint: {directory} is incomplete (no {needed.name}; a save cut short?)")
    meta = read_json(meta_path, error=CheckpointError)
    check_format(meta, directory)
    num_seeds = meta.get("num_seeds")
    target = _single_device(_abstract_payload(config, num_seeds))
    payload = orbax_restore(lambda: ocp.StandardCheckpointer().restore(directory / "state", target), directory)
    verify_checksums(payload, meta.get("checksums"), directory)
    return config, payload, num_seeds


def _restore_periodic(run_dir: Path, step: int | None) -> tuple[PPOConfig, dict, int | None]:
    """The payload of periodic checkpoint ``step`` (None: the newest intact one) of ``run_dir``."""
    from functools import partial

    from ppo_jax.train import make_train_fns

    config = load_config(run_dir, run=True)
    num_seeds = read_json(run_dir / "config.json", error=CheckpointError).get("run", {}).get("num_seeds", 1)
    fns = make_train_fns(config)
    state = jax.eval_shape(jax.vmap(fns.init), jax.random.split(jax.random.PRNGKey(0), num_seeds))
    metrics = jax.eval_shape(jax.vmap(partial(fns.run, num=1)), state).metrics
    like = {"state": _single_device(state),  # only shapes and dtypes matter for the metrics
            "metrics": {k: np.zeros((num_seeds, config.num_updates), v.dtype) for k, v in metrics.items()}}
    checkpoints = RunCheckpoints(run_dir / "checkpoints", create=False)
    if step is not None:
        tree, _ = checkpoints.restore(step, like)
    else:
        found = checkpoints.restore_latest(like, warn=lambda m: print(m, file=sys.stderr), set_aside=False)
        if found is None:
            raise CheckpointError(f"checkpoint: {run_dir} has no intact checkpoint "
                                  f"(no checkpoint/, nothing intact in checkpoints/)")
        tree = found[1]
    return config, payload_from_state(tree["state"]), num_seeds


class RunCheckpoints:
    """Periodic checkpoints of a run in progress under ``directory/<step>/`` (orbax: each is
    written under a temporary name and renamed when complete; the newest two are kept;
    temporary folders a killed save left behind are removed when the run resumes).

    A checkpoint holds a pytree of arrays (for ``ppo-jax train``: ``{"state": TrainState,
    "metrics": {name: [num_seeds, num_updates]}}``, metrics after the step NaN) and a JSON
    ``meta`` dict with the arrays' checksums, committed together. Every process of a
    multi-process run calls :meth:`save` and :meth:`restore` together.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2, create: bool = True):
        self.directory = Path(directory).absolute()
        # Asynchronous: the arrays are copied to host memory, then written by a background
        # thread while training goes on; a checkpoint counts once renamed into place.
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=True,
                                               create=create, cleanup_tmp_directories=create)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first (waits for a save in flight)."""
        self.manager.wait_until_finished()
        return sorted(self.manager.all_steps())

    def latest(self) -> int | None:
        """The step of the newest complete checkpoint, or None (waits for a save in flight)."""
        steps = self.steps()
        return steps[-1] if steps else None

    def wait(self) -> None:
        """Blocks until the last :meth:`save` is on disk."""
        self.manager.wait_until_finished()

    def path(self, step: int) -> Path:
        return self.directory / str(step)

    def save(self, step: int, tree, meta: dict | None = None) -> Path:
        """Starts writing checkpoint ``step`` (host numpy leaves are copied first, so the
        caller may change them); it is complete once :meth:`wait` or :meth:`latest` returns."""
        tree = jax.tree.map(lambda x: x.copy() if isinstance(x, np.ndarray) else x, tree)
        meta = {**(meta or {}), "format": FORMAT, "checksums": tree_checksums(tree)}
        args = {"tree": ocp.args.StandardSave(tree), "meta": ocp.args.JsonSave(meta)}
        self.manager.save(step, args=ocp.args.Composite(**args))
        return self.path(step)

    def restore(self, step: int, like) -> tuple[object, dict]:
        """``(tree, meta)`` of checkpoint ``step``; ``like`` (live arrays of the same run)
        gives the structure, shapes and device placement to restore into. Raises
        :class:`CheckpointError` if the checkpoint cannot be read or fails its checksums."""
        self.manager.wait_until_finished()
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) if isinstance(x, jax.Array) else x,
            like)
        where = self.path(step)
        if not where.is_dir():
            raise CheckpointError(f"checkpoint: {where} does not exist")
        # The meta first: a checkpoint of another layout is named as such, not as damaged.
        meta = orbax_restore(lambda: self.manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"], where)
        if not isinstance(meta, dict):
            raise CheckpointError(f"checkpoint: {where} is damaged (its meta entry is not a JSON object)")
        check_format(meta, where)
        out = orbax_restore(lambda: self.manager.restore(step, args=ocp.args.Composite(
            tree=ocp.args.StandardRestore(abstract))), where)
        verify_checksums(out["tree"], meta.pop("checksums", None), where)
        return out["tree"], meta

    def restore_latest(self, like, warn=None, set_aside: bool = True) -> tuple[int, object, dict] | None:
        """``(step, tree, meta)`` of the newest checkpoint that reads back intact, or None if
        there is none. ``warn(message)`` names each damaged one skipped; with ``set_aside``
        (a run that will save again) it is renamed ``<step>.damaged``: kept for a look, out of
        the way of the step that will be saved again."""
        for step in reversed(self.steps()):
            try:
                return (step, *self.restore(step, like))
            except CheckpointFormatError:
                raise
            except CheckpointError as err:
                if warn is not None:
                    warn(f"warning: skipped a damaged checkpoint: {err}")
                if not set_aside:
                    continue
                if jax.process_index() == 0:
                    aside = self.directory / f"{step}.damaged"
                    k = 1
                    while aside.exists():
                        aside, k = self.directory / f"{step}.damaged-{k}", k + 1
                    os.replace(self.path(step), aside)
                barrier("ppo_jax.checkpoint.damaged")
                self.manager.reload()
        return None
