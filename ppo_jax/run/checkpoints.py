"""Checkpoints of any run: checksums, orbax reads and writes that fail as one error, periodic run checkpoints.

Every checkpoint records a CRC-32 of each array it holds (in its JSON), and loading
compares them: orbax reads a flipped byte back as a wrong number without complaint. Any
failure to read a checkpoint is one :class:`CheckpointError` that names the folder; any
failure to write one (a read-only folder, a full disk) is one :class:`CheckpointWriteError`
that says why, with orbax's half-written temporary folder removed where the disk allows.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp

from ppo_jax.distributed import barrier


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or incomplete; the message names its folder."""


class CheckpointFormatError(CheckpointError):
    """A checkpoint whose payload has another layout (written by another version; not damaged)."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written; the message names the folder, the reason and,
    for a run's periodic checkpoints, the last complete one. ``directory``: that folder."""

    directory: Path | None = None


TEMPORARY = "*.orbax-checkpoint-tmp*"
"""What orbax names a checkpoint folder while it writes it (renamed when complete)."""


def short_reason(err: BaseException) -> str:
    """``err`` in a few words: the operating system's reason where there is one (orbax reports a
    full disk as ``RESOURCE_EXHAUSTED: ... [os_error_code='28']``), else its first line without
    TensorStore's spec."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err).strip()
    code = re.search(r"os_error_code='(\d+)'", text)
    if code:
        return os.strerror(int(code.group(1)))
    reason = (text.splitlines() or [type(err).__name__])[0]
    reason = reason.split(" See full TensorStore details")[0].split(" [tensorstore_spec")[0]
    return reason if len(reason) <= 160 else reason[:157] + "..."


def remove_temporaries(directory: Path, settle_s: float = 0.0) -> None:
    """Removes the folders a failed orbax save left in ``directory`` (where the disk still allows
    it). With ``settle_s``, again until none has come back for 0.2 s, for at most that long:
    orbax's other writer threads of the failed save may still be making files in it."""
    deadline, quiet_since = time.monotonic() + settle_s, time.monotonic()
    while True:
        for tmp in Path(directory).glob(TEMPORARY):
            shutil.rmtree(tmp, ignore_errors=True)
            quiet_since = time.monotonic()
        if time.monotonic() - quiet_since >= 0.2 or time.monotonic() >= deadline:
            return
        time.sleep(0.02)


class _OrbaxFailureFilter(logging.Filter):
    """Drops orbax's own error records (each with a traceback, several per failed save): the
    failure reaches the caller as one :class:`CheckpointWriteError`. Each is noted in
    ``failures``: in a multi-process run a failed writer thread is not always raised to the
    caller (the others' threads wait for it at a barrier), so :meth:`RunCheckpoints.wait` looks here."""

    failures: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname:
            error = record.exc_info[1] if record.exc_info else None
            self.failures.append(short_reason(error) if error is not None else record.getMessage()[:160])
            return False
        return True


def exit_if_a_write_failed(err: BaseException, code: int) -> None:
    """Ends the process at once with ``code`` if ``err`` is a :class:`CheckpointWriteError`:
    orbax's writer threads (not daemons) can then wait up to 20 minutes for one another or for
    another process before Python may exit. For a command's last step, after its error line;
    output is flushed and run-folder locks are released first."""
    if not isinstance(err, CheckpointWriteError):
        return
    from ppo_jax.run import lock

    if getattr(err, "directory", None) is not None:
        remove_temporaries(err.directory)  # a writer thread may have made one since

    sys.stdout.flush()
    sys.stderr.flush()
    lock.release_all()
    os._exit(code)


def _quiet_failed_saves() -> None:
    """Keeps a failed save to the one line its caller prints: orbax's error records go, and so
    do the 'Event loop is closed' errors of the callbacks TensorStore runs after orbax's event
    loop has stopped (reported as unraisable). Idempotent."""
    absl = logging.getLogger("absl")
    if not any(isinstance(f, _OrbaxFailureFilter) for f in absl.filters):
        absl.addFilter(_OrbaxFailureFilter())
    _silence_abandoned_reads()


@contextmanager
def writing(directory: Path, last_good: Callable[[], str] | None = None) -> Iterator[None]:
    """Inside, any failure of an orbax write to ``directory`` becomes one :class:`CheckpointWriteError`
    (with ``last_good()`` added to its message) after its temporary folders are removed."""
    _quiet_failed_saves()
    try:
        yield
    except CheckpointWriteError:
        raise
    except Exception as err:  # orbax/TensorStore raise OSError, ValueError or bare Exception
        remove_temporaries(directory, settle_s=2.0)
        failure = CheckpointWriteError(f"checkpoint: cannot write to {directory} ({short_reason(err)})"
                                       + (f"; {last_good()}" if last_good is not None else ""))
        failure.directory = directory
        raise failure from None


def write_checkpoint(path: Path, tree) -> None:
    """Writes the pytree ``tree`` to the new folder ``path`` with orbax and waits until it is on disk."""
    with writing(path.parent):
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(path, tree)
        checkpointer.wait_until_finished()


def check_format(meta: dict, where, expected: int, payload: str) -> None:
    """Raises :class:`CheckpointFormatError` unless ``meta`` (a checkpoint's JSON) is in format ``expected``."""
    found = meta.get("format", 1)
    if found != expected:
        raise CheckpointFormatError(f"checkpoint: {where} holds a {payload} in format {found}, written by another "
                                    f"version (this one reads format {expected}: its arrays are laid out "
                                    f"differently); load it with the version that wrote it")


def _is_empty(x) -> bool:
    """An array with a zero-length axis (MJX's state has some): orbax refuses to save those."""
    return isinstance(x, (jax.Array, np.ndarray)) and x.size == 0


def _stand_in_shape(x) -> tuple[int, ...]:
    """What an empty array is saved as: its shape with every 0 made 1 (a leading seeds axis
    keeps its length and so its sharding); it is restored as the live run's empty array."""
    return tuple(max(d, 1) for d in x.shape)


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
        raise CheckpointError(f"checkpoint: {where} is damaged or incomplete "
                              f"({type(err).__name__}: {short_reason(err)})") from None


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
        # thread while training goes on; a checkpoint counts once renamed into place. The
        # folders are made before save returns: made by a thread, a failure to make them
        # left orbax's other threads waiting 20 minutes for them (the process hung at exit).
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=True, create=create, cleanup_tmp_directories=create,
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
        self.failed: CheckpointWriteError | None = None
        self._failures_before = 0  # orbax errors noted before the save in flight
        with self._writing():
            self.manager = ocp.CheckpointManager(self.directory, options=options)

    def complete_steps(self) -> list[int]:
        """Steps of the checkpoints on disk, oldest first (a step's folder gets its name once complete)."""
        try:
            return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())
        except OSError:
            return []

    def _last_good(self) -> str:
        steps = self.complete_steps()
        return f"the last complete checkpoint is {self.path(steps[-1])}" if steps else "no checkpoint is complete"

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A failed save (now or one still in flight) as one :class:`CheckpointWriteError`, kept:
        orbax's manager is not used again after one (its threads may be left half done)."""
        if self.failed is not None:
            raise self.failed
        try:
            with writing(self.directory, self._last_good):
                yield
        except CheckpointWriteError as err:
            self.failed = err
            raise

    def _wait(self) -> None:
        """Waits for the save in flight. With several processes, by polling: a writer thread
        that failed here may leave the others waiting at a barrier instead of raising, so the
        failure is taken from orbax's error records (the other processes, waiting for this
        one, are ended by the launcher or the coordination service once it exits)."""
        if jax.process_count() > 1:
            while self.manager.is_saving_in_progress():
                if len(_OrbaxFailureFilter.failures) > self._failures_before:
                    raise OSError(_OrbaxFailureFilter.failures[self._failures_before])
                time.sleep(0.02)
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first (waits for a save in flight)."""
        if self.failed is not None:
            return self.complete_steps()
        with self._writing():
            self._wait()
            return sorted(self.manager.all_steps())

    def latest(self) -> int | None:
        """The step of the newest complete checkpoint, or None (waits for a save in flight)."""
        steps = self.steps()
        return steps[-1] if steps else None

    def wait(self) -> None:
        """Blocks until the last :meth:`save` is on disk; raises :class:`CheckpointWriteError` if it failed."""
        with self._writing():
            self._wait()

    def path(self, step: int) -> Path:
        return self.directory / str(step)

    def save(self, step: int, tree, meta: dict | None = None) -> Path:
        """Starts writing checkpoint ``step`` (host numpy leaves are copied first, so the
        caller may change them); it is complete once :meth:`wait` or :meth:`latest` returns.
        Raises :class:`CheckpointWriteError` if this save, or the one before, failed."""
        tree = jax.tree.map(lambda x: x.copy() if isinstance(x, np.ndarray) else x, tree)
        tree = jax.tree.map(lambda x: np.zeros(_stand_in_shape(x), x.dtype) if _is_empty(x) else x, tree)
        meta = {**(meta or {}), "format": self.format, "checksums": tree_checksums(tree)}
        args = {"tree": ocp.args.StandardSave(tree), "meta": ocp.args.JsonSave(meta)}
        with self._writing():
            self._wait()
            self._failures_before = len(_OrbaxFailureFilter.failures)
            self.manager.save(step, args=ocp.args.Composite(**args))
        return self.path(step)

    def restore(self, step: int, like) -> tuple[object, dict]:
        """``(tree, meta)`` of checkpoint ``step``; ``like`` (live arrays of the same run)
        gives the structure, shapes and device placement to restore into. Raises
        :class:`CheckpointError` if the checkpoint cannot be read or fails its checksums."""
        self.manager.wait_until_finished()
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(_stand_in_shape(x) if _is_empty(x) else x.shape, x.dtype,
                                           sharding=x.sharding) if isinstance(x, jax.Array) else x,
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
        return jax.tree.map(lambda saved, x: x if _is_empty(x) else saved, out["tree"], like), meta

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
