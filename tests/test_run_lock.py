"""One process at a time per run folder: claims race safely, a live run is not resumed, a
killed run's lock is taken over."""

import json
import os
import subprocess
import sys
import time

import pytest

from ppo_jax.run import lock
from ppo_jax.run.rundir import check_resumable, claim_run_dir

pytestmark = pytest.mark.timeout(120)

HOLD = """
import sys, time
from ppo_jax.run.rundir import claim_run_dir
claim_run_dir(sys.argv[1], "rlhf-jax pipeline", "x", resumable=True)
print("claimed", flush=True)
sys.stdin.readline()  # holds the folder until told to go
"""


def _holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "claimed"
    return proc


def test_a_live_run_is_neither_claimed_nor_resumed_and_its_lock_goes_with_it(tmp_path):
    folder = tmp_path / "run"
    proc = _holder(folder)
    try:
        (folder / "config.json").write_text("{}")
        with pytest.raises(ValueError, match=f"resume: {folder} is in use by process {proc.pid}"):
            check_resumable(folder, "rlhf-jax pipeline")
        with pytest.raises(ValueError, match="out: .*unfinished"):
            claim_run_dir(folder, "rlhf-jax pipeline", "x", resumable=True)
    finally:
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
    assert not (folder / lock.LOCK).exists()  # released at exit
    assert check_resumable(folder, "rlhf-jax pipeline") == folder
    assert json.loads((folder / lock.LOCK).read_text())["pid"] == os.getpid()
    lock.release(folder)


def test_a_killed_runs_lock_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    proc = _holder(folder)
    proc.kill()
    proc.wait(timeout=60)
    assert json.loads((folder / lock.LOCK).read_text())["pid"] == proc.pid  # left behind by SIGKILL
    (folder / "config.json").write_text("{}")
    assert check_resumable(folder, "rlhf-jax pipeline") == folder
    lock.release(folder)
    assert not (folder / lock.LOCK).exists()


RACE = """
import os, sys, time
from ppo_jax.run.rundir import claim_run_dir
go = float(sys.argv[2])
while time.time() < go:
    pass
try:
    claim_run_dir(sys.argv[1], "ppo-jax train", "x", resumable=True)
    print("ok")
except ValueError as err:
    print("refused", err)
"""


def test_of_two_processes_claiming_one_folder_at_once_exactly_one_gets_it(tmp_path):
    for i in range(6):
        folder = tmp_path / f"run{i}"
        go = time.time() + 1.5  # both processes are started and spinning by then
        procs = [subprocess.Popen([sys.executable, "-c", RACE, str(folder), str(go)], stdout=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        outs = [p.communicate(timeout=60)[0] for p in procs]
        assert sorted(o.split()[0] for o in outs) == ["ok", "refused"], outs
