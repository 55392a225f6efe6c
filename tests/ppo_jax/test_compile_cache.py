"""`ppo-jax train` on a plain install: no warning, and a second run finds every compiled
program it needs, the training program included, in the persistent compilation cache."""

import os
import subprocess
import sys

import pytest
from procwatch import wait_progressing

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TRAIN = ["train", "--num-envs", "4", "--num-steps", "16", "--total-timesteps", "512", "--update-epochs", "1",
         "--num-minibatches", "2", "--eval-episodes", "2", "--processes", "1"]


def _train(tmp_path, name: str) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                        "JAX_COMPILATION_CACHE_MAX_SIZE", "RL_JAX_COMPILATION_CACHE",
                        "PPO_JAX_COMPILATION_CACHE")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
    code = "from ppo_jax.console import main; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, *TRAIN, "--out", str(tmp_path / name)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ((stdout, stderr),) = wait_progressing([proc])
    assert proc.returncode == 0, stderr[-3000:]
    return (stdout + stderr).replace(str(tmp_path), "<tmp>")  # its name holds the word warning


def test_train_prints_no_warning_and_caches_the_training_program(tmp_path):
    printed = _train(tmp_path, "first")
    assert "warning" not in printed.lower(), printed
    folder = tmp_path / "cache" / "rl-jax" / "xla"
    big = ("jit_init-", "jit_run-", "jit_evaluate-")

    def entries():
        return {p.name for p in folder.glob("*-cache") if p.name.startswith(big)}

    # A host callback (a progress bar inside the program) would keep the training program out.
    before = entries()
    assert {name.split("-")[0] + "-" for name in before} == set(big), before
    assert "warning" not in _train(tmp_path, "second").lower()
    # The second run found each of them: it wrote no new entry. (Programs that compile in
    # about the cache's 0.1 s threshold may be written by one run and not the other.)
    assert entries() == before
