"""Ctrl-C between chunks of a run: the first press asks the run to stop at the next chunk
boundary (after saving a checkpoint), the second stops it at once.

A KeyboardInterrupt raised anywhere inside orbax's asynchronous save leaves its writer
threads and event loop half torn down (hundreds of lines of tracebacks and a temporary
folder behind); deferring the interrupt to a point where no save is running avoids that.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run at a chunk boundary, after its checkpoint ``path`` (update ``step``) was saved."""

    def __init__(self, step: int | None, total: int, path: Path | None, message: str | None = None):
        super().__init__(message or f"stopped at update {step} of {total}")
        self.step, self.total, self.path = step, total, path


class StopRequest:
    requested: bool = False


@contextmanager
def deferred_interrupt(enabled: bool = True, on_request: Callable[[], None] | None = None) -> Iterator[StopRequest]:
    """Inside, the first SIGINT sets ``.requested`` (and calls ``on_request``) instead of
    raising; the next one raises KeyboardInterrupt. A no-op off the main thread (Python
    delivers signals only there) or when not ``enabled``."""
    stop = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.requested:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        stop.requested = True
        if on_request is not None:
            on_request()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """Ctrl-C does nothing inside (for the few milliseconds a pending save takes to finish)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def stoppable(checkpoints, on_request: Callable[[], None] | None = None) -> Iterator[StopRequest]:
    """:func:`deferred_interrupt` around a run that saves to ``checkpoints`` (a
    :class:`ppo_jax.run.checkpoints.RunCheckpoints`, or None: then Ctrl-C is not deferred, as
    there is nothing to save). On a second Ctrl-C, or any error inside, a save in flight
    finishes before the exception goes on, so no temporary folder is left."""
    with deferred_interrupt(enabled=checkpoints is not None, on_request=on_request) as stop:
        try:
            yield stop
        except KeyboardInterrupt as err:
            if checkpoints is not None and not isinstance(err, Interrupted):
                with sigint_ignored():
                    checkpoints.wait()
            raise
        except Exception as err:
            # Any other failure (a user's reward function, a NaN): the save in flight completes
            # first, so the last checkpoint is whole and no temporary folder is left behind.
            from ppo_jax.run.checkpoints import CheckpointWriteError

            if checkpoints is not None and not isinstance(err, CheckpointWriteError):
                try:
                    with sigint_ignored():
                        checkpoints.wait()
                except CheckpointWriteError:
                    pass  # the error being raised is the one to report
            raise


@contextmanager
def resume_hint(command: str, run_dir, where: Callable[[KeyboardInterrupt], str]) -> Iterator[None]:
    """Ctrl-C inside ends as one :class:`Interrupted` line: ``interrupted; <where(err)>; continue
    with: <command> --resume <run_dir>``, keeping the step and checkpoint of an
    :class:`Interrupted` raised inside; a failed save as :func:`after_failed_write` says."""
    try:
        with after_failed_write(command, run_dir):
            yield
    except KeyboardInterrupt as err:
        raise Interrupted(getattr(err, "step", None), getattr(err, "total", 0), getattr(err, "path", None),
                          f"interrupted; {where(err)}; continue with: {command} --resume {run_dir}") from None


@contextmanager
def after_failed_write(command: str, run_dir) -> Iterator[None]:
    """A checkpoint that could not be written inside (its message names the last complete one)
    gets how to go on: ``once <run_dir> can be written, continue with: <command> --resume <run_dir>``."""
    from ppo_jax.run.checkpoints import CheckpointWriteError

    try:
        yield
    except CheckpointWriteError as err:
        failure = CheckpointWriteError(f"{err}; once {run_dir} can be written, continue with: "
                                       f"{command} --resume {run_dir}")
        failure.directory = err.directory
        raise failure from None


def terminate_as_interrupt() -> Callable[[], bool]:
    """Makes SIGTERM (what a supervisor or ``kill`` sends) do what Ctrl-C does: stop at the next
    chunk boundary after a checkpoint, or at once where nothing defers it. Returns a function
    that tells whether a SIGTERM came (the command then exits 143 instead of 130). Main thread
    only; elsewhere SIGTERM keeps its default."""
    came = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        return lambda: came.requested

    def handler(signum, frame):
        came.requested = True
        signal.raise_signal(signal.SIGINT)  # through whatever handles Ctrl-C now

    signal.signal(signal.SIGTERM, handler)
    return lambda: came.requested


def agree(stop: StopRequest, due: bool) -> tuple[StopRequest, bool]:
    """What every process of a run decides at a chunk boundary: ``(stopping, due)``, whether to
    stop and whether to save now, each the ``or`` over the processes, so that they all save and
    stop at the same chunk (a signal to one process stops the run; no process waits in a save
    the others skip). ``stopping`` is a snapshot: a signal that lands after it counts at the
    next boundary, for every process alike. With one process, the flags as they are."""
    import jax

    requested = stop.requested
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        flags = np.asarray(multihost_utils.process_allgather(np.array([requested, due], np.int32))).reshape(-1, 2)
        requested, due = bool(flags[:, 0].any()), bool(flags[:, 1].any())
    stopping = StopRequest()
    stopping.requested = requested
    return stopping, due or requested


def stop_if_requested(stop: StopRequest, checkpoints, done: int, total: int) -> None:
    """Raises :class:`Interrupted` once checkpoint ``done`` (just saved) is on disk, if Ctrl-C asked to stop."""
    if stop.requested and done < total:
        checkpoints.wait()
        raise Interrupted(done, total, checkpoints.path(done))
