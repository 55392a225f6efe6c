"""Waiting on subprocesses by their progress, not by the clock.

A busy machine can make a healthy run take several times longer than on an idle one, so a
fixed wall-clock limit either fails healthy runs under load or waits far too long for a
hung one. A deadlocked XLA:CPU program (or a process stuck at a barrier whose peer died)
stops using the CPU, so: fail when the processes together have used almost no CPU time
for ``stall_s`` seconds, however long the run has been going.
"""

from __future__ import annotations

import os
import subprocess
import time

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads); 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15 of stat)


def tree_cpu_seconds(pid: int) -> float:
    """:func:`cpu_seconds` of ``pid`` and every process it started (a run's worker processes
    do the work while the parent waits for them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        total += cpu_seconds(p)
        stack.extend(children.get(p, []))
    return total


def wait_progressing(procs: list[subprocess.Popen], *, stall_s: float = 120.0, min_cpu_s: float = 1.0,
                     poll_s: float = 0.5) -> list[tuple[str, str]]:
    """Waits for every process to exit and returns their ``(stdout, stderr)``; kills them all
    and raises ``TimeoutError`` if, while any is running, they (and the processes they
    started) use less than ``min_cpu_s`` CPU seconds between them in ``stall_s`` seconds
    (they are stuck, not slow)."""
    import threading

    outputs: list[tuple[str, str] | None] = [None] * len(procs)

    def drain(i: int) -> None:  # read pipes as they fill, or a chatty child blocks on a full pipe
        outputs[i] = procs[i].communicate()

    readers = [threading.Thread(target=drain, args=(i,), daemon=True) for i in range(len(procs))]
    for r in readers:
        r.start()
    used = {p.pid: 0.0 for p in procs}
    last_progress, last_total = time.monotonic(), 0.0
    while any(p.poll() is None for p in procs):
        for p in procs:
            if p.poll() is None:
                used[p.pid] = max(used[p.pid], cpu_seconds(p.pid))
        total = sum(used.values())
        now = time.monotonic()
        if total - last_total >= min_cpu_s:
            last_progress, last_total = now, total
        elif now - last_progress > stall_s:
            for p in procs:
                p.kill()
            for r in readers:
                r.join(timeout=10)
            tails = "\n".join((o[1] if o else "")[-2000:] for o in outputs)
            raise TimeoutError(f"no progress for {stall_s:.0f} s ({total - last_total:.2f} CPU s used by "
                               f"{len(procs)} process(es)): stuck\n{tails}")
        time.sleep(poll_s)
    for r in readers:
        r.join()
    return [o if o is not None else ("", "") for o in outputs]


def wait_for(condition, proc: subprocess.Popen, *, stall_s: float = 120.0, min_cpu_s: float = 1.0,
             poll_s: float = 0.01) -> None:
    """Returns once ``condition()`` holds; raises ``AssertionError`` if ``proc`` exits first
    and ``TimeoutError`` if it makes no progress (CPU time) for ``stall_s`` seconds."""
    last_progress, last_cpu = time.monotonic(), 0.0
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) before the condition held")
        cpu = cpu_seconds(proc.pid)
        now = time.monotonic()
        if cpu - last_cpu >= min_cpu_s:
            last_progress, last_cpu = now, cpu
        elif now - last_progress > stall_s:
            proc.kill()
            raise TimeoutError(f"no progress for {stall_s:.0f} s before the condition held: stuck")
        time.sleep(poll_s)
