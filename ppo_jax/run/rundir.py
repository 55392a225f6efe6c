"""Run folders: one rule for every command that writes one.

A command writes into a folder that does not exist yet or is empty, and marks it with
``run.json`` (the command's name) before anything else. A folder that exists and holds
anything else is refused: nothing a user put there is ever replaced. If it holds this
command's own unfinished run, the message says how to resume it. A run that failed (an error
other than Ctrl-C or a failed save, which ``--resume`` continues) is marked so by ``failed.json``
with the reason; the same command may then take the folder again, and starts afresh there.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from ppo_jax.run import lock
from ppo_jax.run.outputs import read_json, write_json

MARKER = "run.json"
FAILED = "failed.json"
_claimed: list[Path] = []  # run folders this process made or resumed (see mark_failed)


def run_command(path: str | os.PathLike) -> str | None:
    """The command that made the run folder ``path`` (from its ``run.json``), or None."""
    marker = Path(path) / MARKER
    try:
        return json.loads(marker.read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        return None


def check_run_dir(out: str | os.PathLike, command: str, *, resumable: bool = False) -> None:
    """Raises ``ValueError`` (naming the field ``out``) unless ``out`` is missing or an empty folder.

    ``resumable``: ``command --resume OUT`` continues an unfinished run, so say so.
    """
    path = Path(out)
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"out: {path} exists and is not a folder; choose a new folder")
    try:
        names = sorted(p.name for p in path.iterdir() if p.name != lock.LOCK)  # a lock alone: see create
    except OSError as err:
        raise ValueError(f"out: cannot read {path} ({err.strerror})") from err
    if not names:
        return
    if run_command(path) == command:
        if (path / FAILED).exists():
            return  # a failed run of this command: taken again (create_run_dir clears it)
        if (path / "summary.json").exists():
            raise ValueError(f"out: {path} holds a finished `{command}` run; choose a new folder")
        hint = f"continue it with `{command} --resume {path}` or " if resumable else ""
        raise ValueError(f"out: {path} holds an unfinished `{command}` run; {hint}choose a new folder")
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    raise ValueError(f"out: {path} exists and is not empty ({shown}); choose a new or empty folder "
                     f"(nothing in it is replaced)")


def create_run_dir(out: str | os.PathLike, command: str) -> Path:
    """Creates ``out`` (parents too) and writes its ``run.json``; errors name the field ``out``."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"out: cannot create the run folder {path} ({err.strerror or err})") from err
    lock.acquire(path)  # of two processes claiming it at once, one goes on
    made_by = run_command(path)
    if made_by == command and (path / FAILED).exists():
        _clear_failed(path, command)
    elif made_by is not None:
        lock.release(path)
        raise ValueError(f"out: {path} was just claimed by another run; choose a new folder")
    try:
        write_json(path / MARKER, {"command": command, "created": _dt.datetime.now().isoformat(timespec="seconds"),
                                   "format": 1})
    except OSError as err:
        raise ValueError(f"out: cannot create the run folder {path} ({err.strerror or err})") from err
    _claimed.append(path)
    return path


def _clear_failed(path: Path, command: str) -> None:
    """Empties the folder of a failed run of ``command`` (all of it that run's own) for a new one."""
    from ppo_jax.run.settings import note_once

    try:
        reason = read_json(path / FAILED).get("reason", "")
    except (OSError, ValueError, AttributeError):
        reason = "its failed.json is unreadable"
    note_once(f"note: {path} held a failed `{command}` run ({reason}); starting again there")
    for entry in path.iterdir():
        if entry.name == lock.LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def start_command() -> None:
    """Forgets the run folders of earlier commands run in this process (a notebook, a test):
    :func:`mark_failed` marks only the current command's."""
    _claimed.clear()


def mark_failed(reason: str) -> None:
    """Marks each run folder this process made or resumed, and that did not finish, as failed
    (``failed.json``: the reason and when), so that the same command may take it again."""
    for path in _claimed:
        if (path / "summary.json").exists() or not path.is_dir():
            continue
        try:
            write_json(path / FAILED, {"reason": reason, "failed": _dt.datetime.now().isoformat(timespec="seconds")})
        except OSError:
            pass  # a folder that cannot be written stays as it is


def command_failed(error: str | BaseException, code: int = 2) -> None:
    """What a command does once it has printed its error line: marks the run folders it made as
    failed (:func:`mark_failed`), except after a failed save, which ``--resume`` continues once
    the folder can be written, and then exits with ``code`` (at once after a failed save:
    :func:`ppo_jax.run.checkpoints.exit_if_a_write_failed`)."""
    from ppo_jax.run.checkpoints import CheckpointWriteError, exit_if_a_write_failed

    if not isinstance(error, (CheckpointWriteError, KeyboardInterrupt)):
        mark_failed(str(error))
    exit_if_a_write_failed(error, code)
    raise SystemExit(code)


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
        except OSError as err:
            raise ValueError(f"out: cannot create a run folder under {base} ({err.strerror or err})") from err
    raise RuntimeError(f"could not create a fresh run folder under {base}")


def ppo_run_name(command: str, env: str, algo: str) -> str:
    """The default run folder name (before its time stamp) of ``ppo-jax COMMAND``."""
    env = env.rpartition(":")[2] if ":" in env else env  # a user's module:function: its function's name
    return f"study-{env}" if command == "study" else f"{env}-{algo}"


def claim_run_dir(out: str | os.PathLike | None, command: str, default_name: str, *,
                  resumable: bool = False) -> Path:
    """The run folder of a new run of ``command``: ``out`` if it is missing or empty (else
    ``ValueError``), or a fresh ``runs/<default_name>-<time>``; created and marked."""
    if out is None:
        return create_run_dir(new_run_dir("runs", default_name), command)
    check_run_dir(out, command, resumable=resumable)
    return create_run_dir(out, command)


def check_resumable(run_dir: str | os.PathLike, command: str, *, take_lock: bool = True) -> Path:
    """``run_dir`` as a run folder of ``command`` that has not finished, its lock taken (unless
    not ``take_lock``: the other processes of a multi-process run); else ``ValueError``."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ValueError(f"resume: {path} is not a folder")
    made_by = run_command(path)
    if made_by is not None and made_by != command:
        raise ValueError(f"resume: {path} is a `{made_by}` run folder, not a `{command}` one")
    if not (path / "config.json").exists():
        raise ValueError(f"resume: no config.json in {path} (is it a `{command}` run folder?)")
    if (path / "summary.json").exists():
        raise ValueError(f"resume: the run in {path} already finished (summary.json)")
    if take_lock:
        lock.acquire(path, "resume")  # a run still going is not resumed under its feet
        (path / FAILED).unlink(missing_ok=True)  # resumed: no longer a failed run
        _claimed.append(path)
    return path


def resumable_config(run_dir: str | os.PathLike, command: str, from_dict: Callable[[dict], Any], *,
                     keep: Sequence[str] = (), take_lock: bool = True) -> tuple[Any, dict]:
    """What every ``--resume`` reads first: the config a killed ``command`` run in ``run_dir``
    was started with (its ``config.json``, through ``from_dict``), and the entries named in
    ``keep`` taken out of it first (None when absent). Errors name the file."""
    path = check_resumable(run_dir, command, take_lock=take_lock) / "config.json"
    saved = read_json(path)
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: expected a JSON object")
    kept = {name: saved.pop(name, None) for name in keep}
    try:
        return from_dict(saved), kept
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None


def open_run_dir(run_dir: str | os.PathLike | None, command: str, default_name: str, config: dict, *,
                 resume: bool) -> Path:
    """A resumable run's folder: with ``resume`` the unfinished ``command`` run in ``run_dir``;
    else a new one claimed as :func:`claim_run_dir` does, ``config`` written to its ``config.json``."""
    if resume:
        return check_resumable(run_dir, command)
    folder = claim_run_dir(run_dir, command, default_name, resumable=True)
    write_json(folder / "config.json", config)
    return folder
