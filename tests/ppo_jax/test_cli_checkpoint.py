"""The CLI run folder, checkpoints (orbax) and ppo-jax eval."""

import json
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from procwatch import wait_for, wait_progressing

from ppo_jax import PPOConfig, make_train
from ppo_jax import checkpoint as ckpt
from ppo_jax.cli import main

pytestmark = pytest.mark.timeout(300)

TINY = ["--num-envs", "4", "--num-steps", "16", "--total-timesteps", "256", "--update-epochs", "1",
        "--num-minibatches", "2", "--eval-episodes", "2", "--no-progress"]


def test_train_writes_run_folder_and_eval_reads_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "--env", "CartPole-v1", "--num-seeds", "2", "--out", str(out), "--lr", "1e-3"] + TINY)
    printed = capsys.readouterr().out
    assert "seed 0: deterministic evaluation return" in printed and "steps/s" in printed and str(out) in printed
    for name in ("config.json", "metrics.json", "metrics.csv", "learning_curve.png", "summary.json", "checkpoint"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    for field in ("env", "algo", "total_timesteps", "num_seeds", "final_return_per_seed", "compile_s", "run_s", "sps"):
        assert field in summary, field
    assert summary["num_seeds"] == 2 and len(summary["final_return_per_seed"]) == 2
    assert json.loads((out / "config.json").read_text())["lr"] == 1e-3
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.asarray(metrics["total_loss"]).shape == (2, 4)
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("seed,update,")

    main(["eval", "--checkpoint", str(out / "checkpoint"), "--episodes", "2"])
    printed = capsys.readouterr().out
    assert "seed 1: deterministic return" in printed

    # A second run into the same folder is refused up front instead of failing to save.
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(out)] + TINY)
    assert exc.value.code == 2 and "holds a finished `ppo-jax train` run" in capsys.readouterr().err


def test_checkpoint_round_trip_keeps_params_optimizer_and_normaliser(tmp_path):
    config = PPOConfig(env="Pendulum-v1", num_envs=4, num_steps=16, total_timesteps=128, update_epochs=1,
                       num_minibatches=2, normalize_observations=True)
    out = jax.jit(make_train(config))(jax.random.PRNGKey(0))
    ckpt.save(tmp_path / "ck", config, out.state)
    config2, payload, num_seeds = ckpt.restore(tmp_path / "ck")
    assert config2 == config and num_seeds is None
    saved = ckpt.payload_from_state(out.state)
    assert jax.tree.structure(saved) == jax.tree.structure(payload)
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(payload)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileExistsError):
        ckpt.save(tmp_path / "ck", config, out.state)


def _cli(*args: str) -> tuple[int, str]:
    proc = subprocess.Popen([sys.executable, "-m", "ppo_jax.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ((_, err),) = wait_progressing([proc])
    return proc.returncode, err


def test_cli_rejects_bad_config_before_compiling():
    code, err = _cli("train", "--num-minibatches", "3", "--no-progress")
    assert code == 2 and "num_minibatches: 3 does not divide the batch" in err
    code, err = _cli("train", "--env", "Nope-v0")
    assert code == 2 and "env: unknown environment id 'Nope-v0'" in err
    code, err = _cli("train", "--lr", "nan")
    assert code == 2 and "lr: must be a finite number, got nan" in err


def test_eval_of_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--checkpoint", str(tmp_path / "nothing")])
    assert exc.value.code == 2
    assert f"checkpoint: {tmp_path / 'nothing'} is not a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_study_reports_iqm_intervals_and_improvement(tmp_path):
    from ppo_jax.stats import iqm

    run = tmp_path / "study"
    main(["study", "--algos", "a2c", "reinforce", "--num-seeds", "3", "--total-timesteps", "2048",
          "--sweep", "lr=1e-3,3e-4", "--bootstrap-reps", "100", "--eval-episodes", "2", "--out", str(run),
          "--no-progress"])
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["results"]) == {"a2c lr=0.001", "a2c lr=0.0003", "reinforce lr=0.001", "reinforce lr=0.0003"}
    for r in summary["results"].values():
        assert len(r["scores"]) == 3
        np.testing.assert_allclose(r["iqm"], iqm(np.asarray(r["scores"])))
        assert r["iqm_ci"][0] <= r["iqm"] <= r["iqm_ci"][1]
    assert len(summary["probability_of_improvement"]) == 4 * 3
    for name in ("learning_curves.png", "final_iqm.png", "curves.json"):
        assert (run / name).exists(), name


def test_study_rejects_a_static_sweep_before_compiling(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["study", "--sweep", "num_envs=4,8", "--out", str(tmp_path / "s")])
    assert "not a traced field" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_a_run_killed_after_its_first_checkpoint_resumes_to_the_uninterrupted_result(tmp_path):
    import os
    import signal

    from ppo_jax.experiment import resume_run

    # 60 updates, a checkpoint every 6: the kill lands with most of the run still to go.
    args = ["train", "--num-envs", "4", "--num-steps", "64", "--total-timesteps", str(60 * 256), "--update-epochs",
            "2", "--num-minibatches", "2", "--hidden-sizes", "32", "--eval-episodes", "1", "--checkpoint-every", "6",
            "--no-progress"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", "from ppo_jax.console import main; main()", *args, "--out",
                             str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for((killed / "checkpoints" / "6").exists, proc)  # orbax renames a checkpoint into place when complete
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()  # it really died mid-run

    main(args + ["--out", str(tmp_path / "whole")])  # the uninterrupted run, here
    summary = resume_run(str(killed), progress=False)
    assert 6 <= summary["resumed_from_update"] < 60
    _, whole, _ = ckpt.restore(tmp_path / "whole" / "checkpoint")
    _, resumed, _ = ckpt.restore(killed / "checkpoint")
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):  # params, Adam state, normalisers
        np.testing.assert_array_equal(a, b)
    m_whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    m_resumed = json.loads((killed / "metrics.json").read_text())
    assert m_whole["total_loss"] == m_resumed["total_loss"]
    # A finished run is not resumed again.
    with pytest.raises(ValueError, match="already finished"):
        resume_run(str(killed), progress=False)


def test_a_diverging_run_stops_naming_the_update_and_metric(tmp_path, capsys):
    out = tmp_path / "nan"
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(out), "--lr", "1e30", "--critic-lr", "1e30", "--checkpoint-every", "1"] + TINY)
    err = capsys.readouterr().err
    assert exc.value.code == 1
    match = re.search(r"non-finite values at update (\d+) of 4 \(seed 0\) in: (\w+)", err)
    assert match, err
    update = int(match.group(1))
    metrics = json.loads((out / "metrics.json").read_text())  # the updates before it are kept
    assert np.isfinite(np.asarray(metrics["total_loss"], float)[0, :update - 1]).all()
    assert not (out / "checkpoints" / str(update)).exists()  # the bad state was never saved
    if update > 1:
        assert f"last good checkpoint: {out / 'checkpoints' / str(update - 1)}" in err


def test_learning_curve_carries_the_last_finished_return_forward(tmp_path):
    from ppo_jax.run.outputs import carry_forward, plot_learning_curve

    nan = np.nan
    returns = np.array([[nan, 10.0, nan, nan, 30.0, nan], [5.0, nan, 7.0, nan, nan, nan]])
    np.testing.assert_array_equal(carry_forward(returns), [[nan, 10.0, 10.0, 10.0, 30.0, 30.0],
                                                           [5.0, 5.0, 7.0, 7.0, 7.0, 7.0]])
    for seeds in (returns[:1], returns):  # one seed (no band) and several
        plot_learning_curve(tmp_path / f"curve{len(seeds)}.png", np.arange(6) * 512, seeds, "test")
        assert (tmp_path / f"curve{len(seeds)}.png").stat().st_size > 0


@pytest.mark.slow
def test_a_second_run_loads_its_programs_from_the_persistent_cache(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["RL_JAX_COMPILATION_CACHE"] = str(tmp_path / "cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # every program, however fast it compiled
    with_progress = [a for a in TINY if a != "--no-progress"]  # the default: the progress bar on
    summaries = []
    for run in ("first", "second"):
        proc = subprocess.Popen([sys.executable, "-m", "ppo_jax.cli", "train", "--out", str(tmp_path / run)]
                                + with_progress, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        ((out, err),) = wait_progressing([proc])
        assert proc.returncode == 0, err
        assert "warning" not in (out + err).replace(str(tmp_path), "<tmp>").lower(), err
        summaries.append(json.loads((tmp_path / run / "summary.json").read_text()))
        if run == "first":
            entries = set(os.listdir(tmp_path / "cache"))
            # A host callback (a progress bar inside the program) would keep the training program out.
            assert {"jit_init", "jit_run", "jit_evaluate"} <= {e.split("-")[0] for e in entries}, entries
    assert set(os.listdir(tmp_path / "cache")) == entries  # the second run compiled nothing new
    assert summaries[0]["final_return_per_seed"] == summaries[1]["final_return_per_seed"]
