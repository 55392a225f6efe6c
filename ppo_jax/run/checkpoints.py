"""Checkpoints of any run: checksums, orbax reads that fail as one error, periodic run checkpoints.

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

from ppo_jax.distributed import barrier


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or incomplete; the message names its folder."""


class CheckpointFormatError(CheckpointError):
    """A checkpoint whose payload has another layout (written by another version; not damaged)."""


def check_format(meta: dict, where, expected: int, payload: str) -> None:
    """Raises :class:`CheckpointFormatError` unless ``meta`` (a checkpoint's JSON) is in format ``expected``."""
    found = meta.get("format", 1)
    if found != expected:
        raise CheckpointFormatError(f"checkpoint: {where} holds a {payload} in format {found}, written by another "
                                    f"version (this one reads format {expected}: its arrays are laid out "
                                    f"differently); load it with the version that wrote it")


def tree_checksums(tree) -> list[int] | None:
    """CRC-32 of each leaf's bytes in tree order, or None when a leaf is not all on this
    process (a multi-process run: each process holds only its shards)."""
    leaves = jax.tree.leaves(tree)
    if any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in leaves):
        return None
    return [zlib.crc32(np.ascontiguousarray(x).tobytes()) for x in jax.device_get(leaves)]


def verify_checksums(tree, meta: dict, where: Path) -> None:
    """Raises :class:`CheckpointError` naming the first leaf whose bytes differ from
    ``meta["checksums"]``, or when ``meta`` has no ``checksums`` entry (every save writes one:
    without it a damaged file would load unnoticed). ``null`` there (a multi-process save, each
    process holding only its shards) cannot be checked."""
    if "checksums" not in meta:
        raise CheckpointError(f"checkpoint: {where} has no checksums (every save writes them): damaged or edited; "
                              f"not loaded")
    expected = meta["checksums"]
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


class RunCheckpoints:
    """Periodic checkpoints of a run in progress under ``directory/<step>/`` (orbax: each is
    written under a temporary name and renamed when complete; the newest two are kept;
    temporary folders a killed save left behind are removed when the run resumes).

    A checkpoint holds a pytree of arrays (for ``ppo-jax train``: ``{"state": TrainState,
    "metrics": {name: [num_seeds, num_updates]}}``, metrics after the step NaN) and a JSON
    ``meta`` dict with the arrays' checksums and the payload's ``format`` number, committed
    together. Each kind of payload (``payload`` names it in messages) numbers its own layouts:
    a checkpoint of another format is refused as such, not read as damaged. Every process of
    a multi-process run calls :meth:`save` and :meth:`restore` together.
    """

    def __init__(self, directory: str | os.PathLike, *, format: int, payload: str, max_to_keep: int = 2,
                 create: bool = True):
        self.directory = Path(directory).absolute()
        self.format, self.payload = format, payload
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
        meta = {**(meta or {}), "format": self.format, "checksums": tree_checksums(tree)}
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
        check_format(meta, where, self.format, self.payload)
        out = orbax_restore(lambda: self.manager.restore(step, args=ocp.args.Composite(
            tree=ocp.args.StandardRestore(abstract))), where)
        verify_checksums(out["tree"], meta, where)
        meta.pop("checksums")
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
                barrier("run.checkpoints.damaged")
                self.manager.reload()
        return None
