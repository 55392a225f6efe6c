"""What the tests of `rlhf-jax ... --resume` share: the command in its own process (saving at
every evaluation step), and the check that a resumed run ended as the uninterrupted one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from rlhf_jax import checkpoint as ckpt


def rlhf_jax_process(*args: str) -> subprocess.Popen:
    """``rlhf-jax ARGS`` in a new process, periodic checkpoints at every evaluation step."""
    env = {**os.environ, "RL_JAX_SAVE_INTERVAL_S": "0"}
    return subprocess.Popen([sys.executable, "-c", "from rlhf_jax.cli import main; main()", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def assert_same_run(want: Path, got: Path) -> None:
    """The final checkpoints hold the same arrays and the metrics files are equal."""
    _, a, _ = ckpt.load(want / "checkpoint")
    _, b, _ = ckpt.load(got / "checkpoint")
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert json.loads((got / "metrics.json").read_text()) == json.loads((want / "metrics.json").read_text())
