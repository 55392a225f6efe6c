"""Several devices and processes: sharded PPO and RLHF against one device, two processes
joined by jax.distributed, and layout errors. Devices come from XLA's host-platform flag
in a subprocess (the flag must be set before JAX starts)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from procwatch import wait_progressing
from shared_cache import computed_once

# The subprocesses are waited on by their progress (CPU time), not by the clock, so load
# cannot fail a healthy run; this timeout only bounds a livelock that keeps a CPU busy.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SCRIPT = Path(__file__).parent.parent / "multidevice_script.py"
REPO = SCRIPT.parent.parent


def _run_script(part: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), part], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    ((stdout, stderr),) = wait_progressing([proc])
    assert proc.returncode == 0, stderr[-4000:]
    line = next(ln for ln in stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def ppo_on_four_devices():
    return computed_once("ppo_on_four_devices", lambda: _run_script("ppo"))


def test_sharded_ppo_matches_one_device_for_seeds_and_environments(ppo_on_four_devices):
    seeds, envs = ppo_on_four_devices["ppo_seeds"], ppo_on_four_devices["ppo_envs"]
    assert seeds["layout"] == "4 cpu devices, split by seeds"
    assert envs["layout"] == "4 cpu devices, split by envs"
    for run in (seeds, envs):
        # Every metric of every update and the final parameters, to float tolerance.
        assert run["metrics_diff"] < 1e-4 and run["params_diff"] < 1e-5, run
        # ... while each device holds only its quarter of the environments.
        assert run["env_state_devices"] == 4 and run["env_state_fraction"] == 0.25
    assert ppo_on_four_devices["layout_error"] == (
        "devices: 4 devices do not divide num_seeds=3 (a run splits its seeds evenly across devices)")


def test_two_processes_train_together_as_one_run(tmp_path, ppo_on_four_devices):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    args = ["train", "--num-envs", "4", "--num-steps", "16", "--total-timesteps", "512", "--update-epochs", "1",
            "--num-minibatches", "2", "--hidden-sizes", "16", "--num-seeds", "2", "--eval-episodes", "2",
            "--checkpoint-every", "4", "--no-progress", "--out", str(out)]
    procs = []
    for i in range(2):
        env = {**os.environ, "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2",
               "JAX_PROCESS_ID": str(i), "JAX_PLATFORMS": "cpu"}
        env.pop("XLA_FLAGS", None)
        procs.append(subprocess.Popen([sys.executable, "-c", "from ppo_jax.console import main; main()", *args],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO))
    outputs = wait_progressing(procs)
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layout"] == "2 cpu devices on 2 processes, split by seeds"
    metrics = json.loads((out / "metrics.json").read_text())
    # The same numbers as one process training both seeds on one device.
    # (The policy loss is a mean of near-zero products, so it is compared on its own scale.)
    for name, ref in ppo_on_four_devices["two_process_reference"].items():
        np.testing.assert_allclose(metrics[name], ref, rtol=1e-4, atol=1e-4 if name == "policy_loss" else 1e-5,
                                   err_msg=name)
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir()) == [4, 8]


def test_sharded_rlhf_iteration_matches_one_device_and_fsdp_splits_the_models():
    out = _run_script("rlhf")
    single = out["rlhf_single"]["metrics"]
    for name in ("rlhf_fsdp",):
        run = out[name]
        assert run["sequences_equal"], name  # the same samples from the same keys
        for metric in ("policy_loss", "value_loss", "approx_kl", "score", "entropy"):
            assert abs(run["metrics"][metric] - single[metric]) < 1e-4 * max(1.0, abs(single[metric])), (name, metric)
        assert run["params_diff"] < 1e-4
        assert run["sequences_fraction"] == 0.25  # each device samples a quarter of the batch
    # FSDP: a device holds a quarter of the largest weight and of its Adam moments, before and after.
    fsdp = out["rlhf_fsdp"]
    assert fsdp["param_fraction_before"] == fsdp["param_fraction_after"] == fsdp["adam_fraction_after"] == 0.25


def test_layout_errors_name_the_field():
    from ppo_jax.distributed import choose_layout, initialize_from_env

    with pytest.raises(ValueError, match="devices: must be between 1 and the 1 available, got 2"):
        choose_layout(4, 4, devices=2)
    assert choose_layout(3, 4).axis is None  # one device: no mesh
    env = {"JAX_COORDINATOR_ADDRESS": "localhost:1", "JAX_NUM_PROCESSES": "2"}
    old = {k: os.environ.get(k) for k in (*env, "JAX_PROCESS_ID")}
    try:
        os.environ.update(env)
        os.environ.pop("JAX_PROCESS_ID", None)
        with pytest.raises(ValueError, match="JAX_PROCESS_ID: must be set"):
            initialize_from_env()
        os.environ["JAX_PROCESS_ID"] = "2"
        with pytest.raises(ValueError, match=r"JAX_PROCESS_ID: must be in \[0, JAX_NUM_PROCESSES=2\), got 2"):
            initialize_from_env()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
