"""`ppo-jax train --num-seeds N` on a CPU: the seeds split over one local process per core."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from procwatch import wait_progressing

from ppo_jax import local_processes
from ppo_jax.local_processes import plan

REPO = Path(__file__).parent.parent.parent


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
    assert plan(["study", "--num-seeds", "8"]) == 4
    assert plan(["study"]) == 4  # the study's default of 8 seeds
    assert plan(["study", "--num-seeds", "1"]) == 1
    assert plan(["eval", "--num-seeds", "8"]) == 1
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
def test_the_default_seed_counts_are_the_commands_own():
    from ppo_jax.cli import StudyArgs, TrainArgs

    assert local_processes.SEED_COMMANDS == {"train": TrainArgs.num_seeds, "study": StudyArgs.num_seeds}


@pytest.mark.timeout(30)
def test_a_process_count_that_does_not_divide_the_seeds_is_refused(cpu):
    with pytest.raises(ValueError, match=r"processes: 3 processes do not divide num_seeds=8"):
        plan(["train", "--num-seeds", "8", "--processes", "3"])
    with pytest.raises(ValueError, match=r"processes: expected a positive integer, got 0"):
        plan(["train", "--num-seeds", "8", "--processes", "0"])


TINY = ["--num-envs", "4", "--num-steps", "16", "--total-timesteps", "512", "--update-epochs", "1",
        "--num-minibatches", "2", "--hidden-sizes", "16", "--num-seeds", "2", "--eval-episodes", "2", "--no-progress"]


def _ppo_jax(args: list[str], cwd: Path, returncode: int = 0) -> str:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    for name in ("JAX_COORDINATOR_ADDRESS", "PPO_JAX_PROCESSES", "XLA_FLAGS"):
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-c", "from ppo_jax.console import main; main()", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    ((stdout, stderr),) = wait_progressing([proc])
    assert proc.returncode == returncode, stderr[-4000:]
    if returncode:
        return stderr
    assert not stderr.strip() and "Gloo" not in stdout, (stdout, stderr)  # nothing but the run's own report
    return stdout


@pytest.mark.slow
@pytest.mark.timeout(900)  # a hang fails here; the wait below goes by CPU progress, not wall time
def test_the_default_multi_seed_runs_use_every_core(tmp_path):
    several = local_processes.usable_cores() >= 2
    layout = "2 cpu devices on 2 processes, split by seeds" if several else "1 device (cpu)"
    # No --out: every process writes into the one fresh folder under runs/.
    stdout = _ppo_jax(["train", *TINY], tmp_path)
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("CartPole-v1-ppo-") and f"run folder: runs/{run.name}" in stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["layout"] == layout
    assert len(summary["final_return_per_seed"]) == 2 and "seed 1:" in stdout
    # A run that fails leaves no empty folder behind.
    stderr = _ppo_jax(["train", *TINY, "--clip-eps", "-1"], tmp_path, returncode=2)
    assert "clip_eps" in stderr and list((tmp_path / "runs").iterdir()) == [run]

    _ppo_jax(["study", "--algos", "ppo", "--out", "study", *TINY], tmp_path)
    study = json.loads((tmp_path / "study" / "summary.json").read_text())
    assert study["layout"] == layout
    # The study's seeds are the training command's seeds (fold_in(seed, i)), evaluated with the
    # same keys: the same final returns, whichever program ran them (float rounding aside).
    np.testing.assert_allclose(study["results"]["ppo"]["scores"], summary["final_return_per_seed"], rtol=1e-4)


@pytest.mark.slow
@pytest.mark.timeout(300)  # the hang this guards against lasted 5 minutes; the wait goes by CPU progress
def test_a_process_that_alone_fails_ends_the_run_with_its_error(tmp_path):
    # Process 1 alone cannot build the environment: it must not wait for the others at JAX's
    # shutdown barrier while they wait for it in the run (which ended only at a 5-minute timeout).
    (tmp_path / "env_once.py").write_text(
        "import os\n\nimport gymnax\n\n\ndef make():\n"
        "    if os.environ.get('JAX_PROCESS_ID') == '1':\n"
        "        raise RuntimeError('process 1 cannot build it')\n"
        "    return gymnax.make('CartPole-v1')\n")
    stderr = _ppo_jax(["train", "--env", "env_once.py:make", *TINY, "--processes", "2", "--out", "run"], tmp_path,
                      returncode=1)
    assert "local process 1 of 2 failed (exit 2)" in stderr and "process 1 cannot build it" in stderr, stderr
