"""Every CPU core for a multi-seed run: the seeds split over local processes.

XLA:CPU runs one small training program on about one core, and several seeds vmapped in
one program do not spread over more (the matmuls are too small to split). Host devices in
one process do not help either: two of them ran 2 seeds at 1.05x one device, and several
vmapped seeds per host device can deadlock XLA:CPU. Separate processes do scale, so on a
CPU-only machine ``ppo-jax train --num-seeds N`` and ``ppo-jax study`` start one process per
core (the most that divide N evenly), joined by ``jax.distributed`` on this machine: the same
multi-process run as on several hosts, with its seeds layout, so each seed computes exactly
what it computes alone. Process 0 is the command itself (it prints and writes the run
folder); the others run quietly and are stopped with it.

Off with ``--processes 1`` or ``PPO_JAX_PROCESSES=1``; also not used with ``--devices``, on
machines with an accelerator, or inside a run that is already multi-process.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from ppo_jax.adapters import SIMULATORS

ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value of ``--flag`` in ``argv`` (``--flag V`` or ``--flag=V``), read before any parser."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def cpu_only() -> bool:
    """Whether JAX will run on the CPU here (decided without starting JAX's backend)."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(importlib.util.find_spec(name) for name in ACCELERATOR_PLUGINS)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# Commands that split their seeds over processes, with their default --num-seeds (the
# defaults of cli.TrainArgs and cli.StudyArgs, read here before anything imports JAX).
SEED_COMMANDS = {"train": 1, "study": 8}


def _num_seeds(argv: list[str], default: int) -> int | None:
    resume = flag_value(argv, "--resume")
    if resume is not None:  # the run's own seed count, from the folder it is resuming
        try:
            return int(json.loads((Path(resume) / "config.json").read_text())["run"]["num_seeds"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # the command itself reports what is wrong with the folder
    raw = flag_value(argv, "--num-seeds")
    try:
        return int(raw) if raw is not None else default
    except ValueError:
        return None  # tyro reports the bad value


def plan(argv: list[str]) -> int:
    """How many local processes ``ppo-jax ARGV`` should run as (1: just this one).

    Raises ValueError for a ``--processes`` that is not a positive divisor of the seeds.
    """
    if not argv or argv[0] not in SEED_COMMANDS or "-h" in argv or "--help" in argv:
        return 1
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or flag_value(argv, "--devices") is not None:
        return 1
    seeds = _num_seeds(argv[1:], SEED_COMMANDS[argv[0]])
    raw = flag_value(argv, "--processes") or os.environ.get("PPO_JAX_PROCESSES")
    env = flag_value(argv, "--env") or ""
    if env.partition(":")[0] in SIMULATORS:  # one process (ppo_jax.adapters.SIMULATORS says why)
        if raw is not None and raw.strip() != "1":
            raise ValueError(f"processes: {env} runs in one process (its environment's arrays cannot be split "
                             "across processes); leave --processes out or give 1")
        return 1
    if raw is not None:
        try:
            wanted = int(raw)
        except ValueError:
            raise ValueError(f"processes: expected a positive integer, got {raw!r}") from None
        if wanted < 1:
            raise ValueError(f"processes: expected a positive integer, got {wanted}")
        if wanted > 1 and seeds is not None and seeds % wanted:
            raise ValueError(f"processes: {wanted} processes do not divide num_seeds={seeds} "
                             "(each process runs an equal share of the seeds)")
        return wanted if seeds is not None else 1
    if seeds is None or seeds < 2 or not cpu_only():
        return 1
    cores = usable_cores()
    return max(d for d in range(1, min(cores, seeds) + 1) if seeds % d == 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In a child: ask Linux for SIGKILL when the parent dies (even by SIGKILL), so no
    process is left waiting for a run that has ended (SIGTERM would ask it to stop at the next
    chunk, in a collective with the dead parent). Elsewhere a no-op."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class LocalRun:
    """The other processes of a local multi-process run, started by :func:`launch`."""

    def __init__(self, argv: list[str], processes: int):
        self.processes = processes
        self.children: list[tuple[subprocess.Popen, object]] = []
        self.ending = threading.Event()
        self.reserved: Path | None = None
        if flag_value(argv, "--out") is None and flag_value(argv, "--resume") is None:
            # Every process writes into one folder, so it is named here, once, for all of them.
            from ppo_jax.run.rundir import new_run_dir, ppo_run_name

            env, algo = flag_value(argv, "--env") or "CartPole-v1", flag_value(argv, "--algo") or "ppo"
            self.reserved = new_run_dir("runs", ppo_run_name(argv[0], env, algo))
            argv = [*argv, "--out", str(self.reserved)]
        self.argv = argv
        """The command every process runs (with ``--out`` added when it was not given)."""
        address = f"localhost:{_free_port()}"
        common = {"JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": str(processes)}
        for i in range(1, processes):
            log = tempfile.TemporaryFile(mode="w+")
            env = {**os.environ, **common, "JAX_PROCESS_ID": str(i)}
            cmd = [sys.executable, "-c", "from ppo_jax.console import main; main()", *argv, "--no-progress"]
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                    preexec_fn=_die_with_parent)
            self.children.append((proc, log))
        os.environ.update(common, JAX_PROCESS_ID="0")
        atexit.register(self._at_exit)
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        # A process that fails leaves the others waiting at their next collective: end the run.
        for number, (proc, log) in enumerate(self.children, start=1):
            # 130/143: stopped by Ctrl-C or SIGTERM with the others, at the chunk they agreed on.
            if proc.wait() not in (0, 130, 143) and not self.ending.is_set():
                log.seek(0)
                print(f"ppo-jax: error: local process {number} of {self.processes} failed (exit {proc.returncode}):\n"
                      f"{log.read()[-4000:]}", file=sys.stderr, flush=True)
                self.stop()
                os._exit(1)

    def stop(self) -> None:
        """Stops the others now (this process failed: they would wait for it forever)."""
        self.ending.set()
        for proc, _ in self.children:
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in self.children:
            try:
                # A process blocked inside a JAX barrier or collective (C++) runs no Python
                # signal handler until it returns, so SIGTERM alone can take a timeout's length.
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.reserved is not None:
            try:
                self.reserved.rmdir()  # the folder named for a run that failed before writing anything
            except OSError:
                pass

    def _at_exit(self) -> None:
        # jax registers its own exit handler (jax.distributed's shutdown, a barrier of every
        # process) when it is imported, before this one, so it would run only after this one:
        # waiting here for the others, which wait in that barrier for this process, cost the
        # 30 s timeout below on every run. Shut down first, then wait.
        self.ending.set()
        import jax

        jax.distributed.shutdown()
        for proc, _ in self.children:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self.stop()


def launch(argv: list[str], processes: int) -> LocalRun:
    """Makes this process number 0 of a ``processes``-process run of ``ppo-jax ARGV`` on
    this machine and starts the others; this process then runs ``LocalRun.argv`` (ARGV, with
    a fresh run folder under runs/ as ``--out`` if it had none). Call before anything starts
    JAX's backend (and before ``jax.distributed.initialize``), and ``stop()`` if the command
    fails.

    The others print nothing: their stderr is kept in a temporary file and shown if one
    fails, which also stops this process; they are stopped when this one fails.
    """
    return LocalRun(argv, processes)
