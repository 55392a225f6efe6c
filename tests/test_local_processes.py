"""`ppo-jax train --num-seeds N` on a CPU: the seeds split over one local process per core."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from procwatch import wait_progressing

from ppo_jax import local_processes
from ppo_jax.local_processes import plan

REPO = Path(__file__).parent.parent


@pytest.fixture
def cpu(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    monkeypatch.delenv("PPO_JAX_PROCESSES", raising=False)
    monkeypatch.setattr(local_processes, "usable_cores", lambda: 4)


@pytest.mark.timeout(30)
def test_plan_takes_the_most_cores_that_divide_the_seeds(cpu, monkeypatch, tmp_path):
    assert plan(["train"]) == 1
    assert plan(["train", "--num-seeds", "8"]) == 4
    assert plan(["train", "--num-seeds=6"]) == 3
    assert plan(["train", "--num-seeds", "5"]) == 1  # 5 seeds do not split over 2-4 processes evenly
    assert plan(["train", "--num-seeds", "2"]) == 2
    assert plan(["study", "--num-seeds", "8"]) == 1
    assert plan(["train", "--num-seeds", "8", "--help"]) == 1
    # Off: the flag, the environment variable, an explicit device count, an accelerator.
    assert plan(["train", "--num-seeds", "8", "--processes", "1"]) == 1
    assert plan(["train", "--num-seeds", "8", "--processes", "2"]) == 2
    assert plan(["train", "--num-seeds", "8", "--devices", "1"]) == 1
    monkeypatch.setenv("PPO_JAX_PROCESSES", "1")
    assert plan(["train", "--num-seeds", "8"]) == 1
    monkeypatch.delenv("PPO_JAX_PROCESSES")
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert plan(["train", "--num-seeds", "8"]) == 1
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1")  # already one process of a run
    assert plan(["train", "--num-seeds", "8"]) == 1
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
    # --resume: the seed count of the run being resumed.
    (tmp_path / "config.json").write_text(json.dumps({"run": {"num_seeds": 4}}))
    assert plan(["train", "--resume", str(tmp_path)]) == 4


@pytest.mark.timeout(30)
def test_a_process_count_that_does_not_divide_the_seeds_is_refused(cpu):
    with pytest.raises(ValueError, match=r"processes: 3 processes do not divide num_seeds=8"):
        plan(["train", "--num-seeds", "8", "--processes", "3"])
    with pytest.raises(ValueError, match=r"processes: expected a positive integer, got 0"):
        plan(["train", "--num-seeds", "8", "--processes", "0"])


@pytest.mark.slow
@pytest.mark.timeout(900)  # a hang fails here; the wait below goes by CPU progress, not wall time
def test_the_default_multi_seed_run_uses_every_core(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    for name in ("JAX_COORDINATOR_ADDRESS", "PPO_JAX_PROCESSES", "XLA_FLAGS"):
        env.pop(name, None)
    args = ["train", "--num-envs", "4", "--num-steps", "16", "--total-timesteps", "512", "--update-epochs", "1",
            "--num-minibatches", "2", "--hidden-sizes", "16", "--num-seeds", "2", "--eval-episodes", "2",
            "--no-progress", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-c", "from ppo_jax.console import main; main()", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    ((stdout, stderr),) = wait_progressing([proc])
    assert proc.returncode == 0, stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    if local_processes.usable_cores() >= 2:
        assert summary["layout"] == "2 cpu devices on 2 processes, split by seeds"
    else:
        assert summary["layout"] == "1 device (cpu)"
    assert len(summary["final_return_per_seed"]) == 2
    assert "seed 1:" in stdout and not stderr.strip(), stderr
