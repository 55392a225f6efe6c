"""One process at a time per run folder: ``run.lock`` names the owner (pid, host, start time).

Created atomically (``O_CREAT | O_EXCL``), so of two processes claiming one folder at once
exactly one gets it; a ``--resume`` of a run that is still going is refused naming its pid.
The lock goes when its process exits (normally, by an exception or Ctrl-C); one left by a
process that was killed is stale, and on the same host (its pid gone) it is taken over. A lock
from another host cannot be checked: the error says which host and how to clear it.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import json
import os
import socket
from pathlib import Path

LOCK = "run.lock"
_held: set[Path] = set()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _owner(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text())
        return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def release_all() -> None:
    """Drops every lock this process holds (also done at exit)."""
    for path in list(_held):
        release(path.parent)


def acquire(folder: str | os.PathLike, field: str = "out") -> None:
    """Takes ``folder``'s lock for this process (again: a no-op), or raises ``ValueError``
    naming ``field``, the folder and the process that holds it."""
    path = Path(folder) / LOCK
    host = socket.gethostname()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            owner = _owner(path)
            if owner is None:  # being written this instant, or damaged: look again
                continue
            if owner.get("host") == host and owner["pid"] == os.getpid():
                return
            if owner.get("host") == host and not _alive(owner["pid"]):
                try:
                    path.unlink(missing_ok=True)  # stale: its process is gone
                except OSError as err:
                    raise ValueError(f"{field}: cannot lock {Path(folder)} ({err.strerror or err})") from None
                continue
            raise ValueError(f"{field}: {Path(folder)} is in use by process {owner['pid']} on "
                             f"{owner.get('host')} (since {owner.get('started')}); wait for it to end or stop it "
                             f"(if no such process runs, delete {path})") from None
        except OSError as err:
            raise ValueError(f"{field}: cannot lock {Path(folder)} ({err.strerror or err})") from err
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": host,
                       "started": _dt.datetime.now().isoformat(timespec="seconds")}, f)
        if not _held:
            atexit.register(release_all)
        _held.add(path)
        return
    raise ValueError(f"{field}: cannot lock {Path(folder)}: {path} is unreadable (delete it if no run uses the folder)")


def release(folder: str | os.PathLike) -> None:
    """Drops ``folder``'s lock if this process holds it."""
    path = Path(folder) / LOCK
    _held.discard(path)
    owner = _owner(path)
    if owner is not None and owner["pid"] == os.getpid() and owner.get("host") == socket.gethostname():
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass  # a folder that turned read-only: the lock stays, and is stale once this process is gone
