"""Nothing a user has is lost: run folders never overwrite, damaged checkpoints are one clear
line (and resume falls back to the newest intact one), Ctrl-C stops cleanly, non-finite
input is refused naming where it came from."""

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from procwatch import wait_for, wait_progressing

from ppo_jax import checkpoint as ckpt
from ppo_jax import local_processes
from ppo_jax.cli import main

pytestmark = pytest.mark.timeout(300)

TINY = ["--num-envs", "4", "--num-steps", "16", "--total-timesteps", "512", "--update-epochs", "1",
        "--num-minibatches", "2", "--hidden-sizes", "16", "--eval-episodes", "2", "--no-progress"]


def _fails(capsys, argv, run=main) -> str:
    """Runs a CLI that must exit 2 and returns its one-line error."""
    with pytest.raises(SystemExit) as exc:
        run(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err  # one line, no traceback
    return lines[0]


def _rlhf_main(argv):
    from rlhf_jax.cli import main as rlhf_main

    rlhf_main(argv)


@pytest.mark.parametrize("command", [
    ["train"] + TINY,
    ["study", "--algos", "ppo", "--num-seeds", "2", "--total-timesteps", "512"],
    ["rlhf", "sft", "--steps", "5", "--warmup-steps", "1"],
    ["rlhf", "rm", "--data", "missing.jsonl"],
    ["rlhf", "pipeline"],
    ["rlhf", "generate", "--checkpoint", "missing", "--prompt", "x"],
])
def test_a_folder_with_other_files_is_refused_and_left_as_it_was(tmp_path, capsys, command):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text("my own config")
    (out / "metrics.csv").write_text("my own metrics")
    run, argv = (_rlhf_main, command[1:]) if command[0] == "rlhf" else (main, command)
    line = _fails(capsys, argv + ["--out", str(out)], run)
    assert f"out: {out} exists and is not empty (config.json, metrics.csv)" in line
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.csv"]
    assert (out / "config.json").read_text() == "my own config"


def test_an_unfinished_run_is_refused_with_a_resume_hint_and_odd_outs_name_the_field(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"command": "ppo-jax train"}))
    (out / "config.json").write_text("{}")
    line = _fails(capsys, ["train", "--out", str(out)] + TINY)
    assert f"holds an unfinished `ppo-jax train` run; continue it with `ppo-jax train --resume {out}`" in line
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "out: cannot create the run folder" in _fails(capsys, ["train", "--out", str(blocker / "x")] + TINY)
    assert f"out: {blocker} exists and is not a folder" in _fails(capsys, ["train", "--out", str(blocker)] + TINY)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0 and "--resume" in capsys.readouterr().out


def test_a_failed_run_is_marked_and_the_same_command_takes_its_folder_again(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:  # diverges at once: NaN losses
        main(["train", *TINY, "--lr", "1e30", "--critic-lr", "1e30", "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err.startswith("ppo-jax: error: non-finite values at update 1 of 8"), err
    failed = json.loads((out / "failed.json").read_text())
    assert failed["reason"] == err.strip().removeprefix("ppo-jax: error: ")
    assert "ppo-jax train --resume" not in err  # nothing is lost by starting again
    main(["train", *TINY, "--out", str(out)])  # the same command, a working config: the folder is taken again
    captured = capsys.readouterr()
    assert f"note: {out} held a failed `ppo-jax train` run (non-finite values" in captured.err
    assert (out / "summary.json").exists() and not (out / "failed.json").exists()
    rlhf = tmp_path / "sft"
    rlhf.mkdir()
    (rlhf / "run.json").write_text(json.dumps({"command": "rlhf-jax sft"}))
    (rlhf / "failed.json").write_text(json.dumps({"reason": "x"}))
    line = _fails(capsys, ["train", *TINY, "--out", str(rlhf)])  # another command's failed run is not taken
    assert f"out: {rlhf} exists and is not empty" in line


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 8-update run with periodic checkpoints at 4 and 8."""
    out = tmp_path_factory.mktemp("finished") / "run"
    main(["train", "--out", str(out), "--checkpoint-every", "4"] + TINY)
    return out


def _largest_data_file(checkpoint: Path) -> Path:
    """The biggest file of the data orbax reads back (small arrays live inside its index nodes)."""
    return max((checkpoint / "d").iterdir(), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage,message", [
    ("truncate", "is damaged or incomplete"),
    ("flip", "is damaged"),
    ("no_metadata", "is damaged or incomplete"),
    ("meta_json", "meta.json:2: invalid JSON"),
    ("no_state", "is incomplete (no state"),
    ("old_format", "holds a ppo_jax train state in format 1, written by another version"),
    ("no_checksums", "has no checksums"),  # else flipped bytes would load unnoticed
])
def test_a_damaged_final_checkpoint_is_one_line_naming_it(tmp_path, capsys, finished_run, damage, message):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    final = run / "checkpoint"
    if damage == "truncate":
        data = _largest_data_file(final / "state")
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    elif damage == "flip":
        data = _largest_data_file(final / "state")
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF  # orbax would read this back as a wrong number without complaint
        data.write_bytes(bytes(raw))
    elif damage == "no_metadata":
        (final / "state" / "_METADATA").unlink()
    elif damage == "meta_json":
        (final / "meta.json").write_text("{\n")
    elif damage == "old_format":
        meta = json.loads((final / "meta.json").read_text())
        (final / "meta.json").write_text(json.dumps({**meta, "format": 1}))
    elif damage == "no_checksums":
        meta = json.loads((final / "meta.json").read_text())
        del meta["checksums"]
        (final / "meta.json").write_text(json.dumps(meta))
    else:
        shutil.rmtree(final / "state")
    line = _fails(capsys, ["eval", "--checkpoint", str(final), "--episodes", "1"])
    assert str(final) in line and message in line, line


def test_eval_takes_a_run_folder_or_a_periodic_checkpoint(capsys, finished_run):
    outputs = []
    for where in (finished_run / "checkpoint", finished_run, finished_run / "checkpoints" / "8"):
        main(["eval", "--checkpoint", str(where), "--episodes", "2"])
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == outputs[2] and "deterministic return" in outputs[0]
    main(["eval", "--checkpoint", str(finished_run / "checkpoints" / "4"), "--episodes", "2"])
    assert "seed 0: deterministic return" in capsys.readouterr().out


def test_resume_skips_a_damaged_checkpoint_and_ends_as_the_uninterrupted_run(tmp_path, capsys, finished_run):
    killed = tmp_path / "killed"
    shutil.copytree(finished_run, killed)
    (killed / "summary.json").unlink()
    shutil.rmtree(killed / "checkpoint")
    data = _largest_data_file(killed / "checkpoints" / "8" / "tree")
    data.write_bytes(data.read_bytes()[:10])
    main(["train", "--resume", str(killed), "--no-progress"])
    err = capsys.readouterr().err
    assert f"skipped a damaged checkpoint: checkpoint: {killed / 'checkpoints' / '8'} is damaged" in err
    assert f"resumed from {killed / 'checkpoints' / '4'}" in err
    assert (killed / "checkpoints" / "8.damaged").is_dir()  # set aside, not deleted
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["resumed_from_update"] == 4
    whole = json.loads((finished_run / "metrics.json").read_text())
    resumed = json.loads((killed / "metrics.json").read_text())
    assert whole["total_loss"] == resumed["total_loss"]
    _, a, _ = ckpt.restore(finished_run / "checkpoint")
    _, b, _ = ckpt.restore(killed / "checkpoint")
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_resume_refuses_a_checkpoint_of_another_layout_and_leaves_it_in_place(tmp_path, capsys, finished_run):
    older = tmp_path / "older"
    shutil.copytree(finished_run, older)
    (older / "summary.json").unlink()
    shutil.rmtree(older / "checkpoint")
    meta = older / "checkpoints" / "8" / "meta" / "metadata"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "format": 1}))
    line = _fails(capsys, ["train", "--resume", str(older), "--no-progress"])
    assert f"{older / 'checkpoints' / '8'} holds a ppo_jax train state in format 1, written by another version" in line, line
    assert (older / "checkpoints" / "8").is_dir() and not (older / "checkpoints" / "8.damaged").exists()


def test_resume_without_a_checkpoint_says_it_starts_again(tmp_path, capsys, finished_run):
    started = tmp_path / "started"
    started.mkdir()
    for name in ("run.json", "config.json"):
        shutil.copy(finished_run / name, started / name)
    main(["train", "--resume", str(started), "--no-progress"])
    assert f"resume: {started} has no checkpoint yet; training starts again from update 0" in capsys.readouterr().err
    assert json.loads((started / "summary.json").read_text())["resumed_from_update"] is None


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def _long_run_past_its_first_checkpoint(run: Path, seeds: int) -> subprocess.Popen:
    """``ppo-jax train`` of ``seeds`` seeds into ``run`` in its own process, once it has saved
    update 100: long enough (2000 updates, a save every 100) that what a test does next lands
    mid-run on any machine. Skips the test where a multi-process run is asked for on one core."""
    if seeds > 1 and local_processes.plan(["train", "--num-seeds", str(seeds)]) < 2:
        pytest.skip("one usable core: no multi-process run")
    args = ["train", "--num-envs", "4", "--num-steps", "16", "--total-timesteps", str(2000 * 64),
            "--update-epochs", "1", "--num-minibatches", "1", "--hidden-sizes", "8", "--eval-episodes", "1",
            "--checkpoint-every", "100", "--num-seeds", str(seeds), "--no-progress", "--out", str(run)]
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COORDINATOR_ADDRESS", "PPO_JAX_PROCESSES")}
    proc = subprocess.Popen([sys.executable, "-c", "from ppo_jax.console import main; main()", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for((run / "checkpoints" / "100").exists, proc)
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("sig,seeds,to,rc", [
    (signal.SIGINT, 1, "parent", 130),   # Ctrl-C
    (signal.SIGTERM, 1, "parent", 143),  # a supervisor's stop: the same, exit 143
    (signal.SIGINT, 2, "parent", 130),   # kill -INT to process 0 of a two-process run
    (signal.SIGTERM, 2, "child", 130),   # to the other process: the run stops as one
])
def test_a_signal_stops_at_a_checkpoint_with_one_line_and_resume_finishes(tmp_path, sig, seeds, to, rc):
    run = tmp_path / "run"
    proc = _long_run_past_its_first_checkpoint(run, seeds)
    if to == "parent":
        proc.send_signal(sig)
    else:
        os.kill(_children(proc.pid)[0], sig)
    ((_, err),) = wait_progressing([proc])
    assert proc.returncode == rc, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) <= 2 and "Traceback" not in err, err  # "stopping after ..." and the final line
    step = int(lines[-1].split("(update ")[1].split(" ")[0])
    assert lines[-1] == (f"ppo-jax: interrupted; the last checkpoint is {run.absolute() / 'checkpoints' / str(step)} "
                         f"(update {step} of 2000); continue with: ppo-jax train --resume {run}")
    assert 100 <= step < 2000 and not (run / "summary.json").exists()
    assert not [p.name for p in (run / "checkpoints").iterdir() if "tmp" in p.name]  # no half-written save
    assert not (run / "run.lock").exists()  # the stopped run let go of its folder
    if (sig, seeds) != (signal.SIGINT, 1):
        return  # resuming is the same for every way of stopping: once is enough
    proc = subprocess.Popen([sys.executable, "-c", "from ppo_jax.console import main; main()", "train", "--resume",
                             str(run), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ((_, err),) = wait_progressing([proc])
    assert proc.returncode == 0, err
    assert json.loads((run / "summary.json").read_text())["resumed_from_update"] == step


def test_rlhf_checkpoint_damage_is_one_line(tmp_path, capsys):
    from rlhf_jax import checkpoint as rckpt
    from rlhf_jax.tokenizer import ByteTokenizer
    from rlhf_jax.transformer import TransformerConfig, TransformerLM, init_params

    model = TransformerLM(TransformerConfig(num_layers=1, d_model=16, num_heads=2, max_len=16))
    rckpt.save(tmp_path / "run" / "checkpoint", init_params(model, jax.random.PRNGKey(0)), model, ByteTokenizer())
    _rlhf_main(["generate", "--checkpoint", str(tmp_path / "run"), "--prompt", "a", "--max-new-tokens", "2",
                "--out", str(tmp_path / "gen")])  # a run folder works as well as its checkpoint/
    capsys.readouterr()
    data = _largest_data_file(tmp_path / "run" / "checkpoint" / "params")
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    line = _fails(capsys, ["generate", "--checkpoint", str(tmp_path / "run" / "checkpoint"), "--prompt", "a"],
                  _rlhf_main)
    assert f"checkpoint: {tmp_path / 'run' / 'checkpoint'} is damaged" in line
    (tmp_path / "run" / "checkpoint" / "model.json").write_text('{"config": 1,\n')
    line = _fails(capsys, ["generate", "--checkpoint", str(tmp_path / "run" / "checkpoint"), "--prompt", "a"],
                  _rlhf_main)
    assert "model.json:2: invalid JSON" in line


def _float_fields(config, prefix=""):
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            yield from _float_fields(value, f"{prefix}{f.name}.")
        elif isinstance(value, float):
            yield prefix + f.name


def _with(config, dotted: str, value):
    head, _, rest = dotted.partition(".")
    if rest:
        return dataclasses.replace(config, **{head: _with(getattr(config, head), rest, value)})
    return dataclasses.replace(config, **{head: value})


def test_every_float_config_field_must_be_finite():
    from ppo_jax.config import PPOConfig
    from rlhf_jax.pipeline import PipelineConfig
    from rlhf_jax.sampling import SamplingConfig

    checked = 0
    for config in (PPOConfig(), PipelineConfig(), SamplingConfig(max_new_tokens=4)):
        for name in _float_fields(config):
            for bad in (math.nan, math.inf):
                with pytest.raises(ValueError, match=f"^{name.replace('.', '[.]')}: must be"):
                    _with(config, name, bad).validate()
                checked += 1
    assert checked > 60  # PPO's, and the pipeline's own, SFT's, RM's, RLHF's and the transformer's


def test_non_finite_and_overlong_data_name_file_and_line(tmp_path, capsys):
    from rlhf_jax.data import load_preferences

    prefs = tmp_path / "prefs.jsonl"
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    prefs.write_text(json.dumps(good) + "\n" + '{"prompt": "p", "chosen": "a", "rejected": "b", "margin": NaN}\n')
    with pytest.raises(ValueError, match=r"prefs.jsonl:2: field 'margin' must be a finite number, got nan"):
        load_preferences(prefs)
    sft = tmp_path / "sft.jsonl"
    rows = [{"prompt": "p", "response": "short"}] * 5 + [{"prompt": "p", "response": "x" * 200}]
    sft.write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = _fails(capsys, ["sft", "--data", str(sft), "--out", str(tmp_path / "out")], _rlhf_main)
    assert f"{sft}:6: response of 201 tokens" in line
    assert not (tmp_path / "out").exists()  # refused before any folder was made


def test_an_interrupted_pipeline_says_how_to_resume(tmp_path, capsys, monkeypatch):
    import rlhf_jax.stages as stages
    from ppo_jax.run.interrupt import Interrupted

    def stopped(*args, **kwargs):  # the PPO stage, as Ctrl-C leaves it after its checkpoint 1 of 2
        raise Interrupted(1, 2, tmp_path / "pipe" / "ppo_proxy" / "checkpoints" / "1")

    monkeypatch.setattr(stages, "train_rlhf", stopped)
    tiny = ["--sft.model.num-layers", "1", "--sft.model.d-model", "16", "--sft.model.num-heads", "2",
            "--sft.steps", "4", "--sft.warmup-steps", "1", "--sft.batch-size", "8", "--sft-examples", "32",
            "--num-pairs", "32", "--rm.epochs", "1", "--rm.batch-size", "8", "--modes", "proxy",
            "--ppo.batch-size", "8", "--ppo.minibatches", "2", "--eval-prompts", "8", "--no-progress"]
    with pytest.raises(SystemExit) as exc:
        _rlhf_main(["pipeline", "--out", str(tmp_path / "pipe"), *tiny])
    assert exc.value.code == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"rlhf-jax: interrupted; the PPO stage stopped after iteration 1 of 2 (checkpoint "
                    f"{tmp_path / 'pipe' / 'ppo_proxy' / 'checkpoints' / '1'}); continue with: "
                    f"rlhf-jax pipeline --resume {tmp_path / 'pipe'}")
    assert (tmp_path / "pipe" / "rm" / "checkpoint" / "model.json").exists()  # finished stages are kept


@pytest.mark.slow
@pytest.mark.parametrize("seeds", [1, 2])
def test_a_failed_save_stops_the_run_at_once_with_one_line_and_resume_finishes(tmp_path, seeds):
    """A disk that stops taking writes mid-run (here: a file-size limit set on the running
    processes, which fails each write the way a full disk does, also for root) ends the run
    within seconds: one line naming the reason, the last complete checkpoint and how to go on;
    no process left waiting for orbax's writer threads or for the other process."""
    import resource

    run = tmp_path / "run"
    proc = _long_run_past_its_first_checkpoint(run, seeds)
    for pid in [proc.pid, *_children(proc.pid)]:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (1024, 1024))
    # A process stuck in a barrier or a thread join uses no CPU: 30 s of that is a hang.
    ((_, err),) = wait_progressing([proc], stall_s=30)
    assert proc.returncode in ((2,) if seeds == 1 else (1, 2)), err  # 1: the launcher reports process 1's failure
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) <= (1 if seeds == 1 else 3), err
    last = lines[-1]
    assert last.startswith(f"ppo-jax: error: checkpoint: cannot write to {run.absolute() / 'checkpoints'} "
                           f"(File too large); the last complete checkpoint is "), err
    good = Path(last.split("the last complete checkpoint is ")[1].split(";")[0])
    assert last.endswith(f"; once {run} can be written, continue with: ppo-jax train --resume {run}")
    assert good.is_dir() and int(good.name) >= 100
    assert not [p.name for p in (run / "checkpoints").iterdir() if "tmp" in p.name]  # nothing half-written
    if seeds > 1:
        return
    proc = subprocess.Popen([sys.executable, "-c", "from ppo_jax.console import main; main()", "train", "--resume",
                             str(run), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ((_, err),) = wait_progressing([proc])
    assert proc.returncode == 0, err
    assert json.loads((run / "summary.json").read_text())["resumed_from_update"] == int(good.name)


@pytest.mark.slow
def test_ctrl_c_on_a_study_keeps_its_work_and_resume_ends_as_the_uninterrupted_study(tmp_path):
    args = ["study", "--algos", "a2c", "ppo", "--sweep", "lr=1e-3,3e-4", "--num-seeds", "2", "--processes",
            "1", "--num-envs", "4", "--num-steps", "16", "--total-timesteps", str(400 * 64), "--update-epochs", "1",
            "--num-minibatches", "1", "--hidden-sizes", "8", "--eval-episodes", "1", "--bootstrap-reps", "50",
            "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COORDINATOR_ADDRESS", "PPO_JAX_PROCESSES")}
    env["RL_JAX_SAVE_INTERVAL_S"] = "0"  # a checkpoint at every chunk (40 updates)

    def study(*more):
        return subprocess.Popen([sys.executable, "-c", "from ppo_jax.console import main; main()", *more],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    whole = study(*args, "--out", str(tmp_path / "whole"))
    ((_, err),) = wait_progressing([whole])
    assert whole.returncode == 0, err
    run = tmp_path / "run"
    proc = study(*args, "--out", str(run))
    wait_for((run / "progress" / "ppo" / "40").exists, proc)  # a2c finished, ppo at its first of 10 saves
    proc.send_signal(signal.SIGINT)
    ((_, err),) = wait_progressing([proc])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert lines[-1].startswith(f"ppo-jax: interrupted; the last checkpoint is {run.absolute() / 'progress' / 'ppo'}/")
    assert lines[-1].endswith(f"of 400); finished algorithms are kept; continue with: ppo-jax study --resume {run}")
    assert (run / "progress" / "a2c.npz").exists() and not (run / "summary.json").exists()
    proc = study("study", "--resume", str(run), "--no-progress")
    ((out, err),) = wait_progressing([proc])
    assert proc.returncode == 0, err
    assert "loaded the finished a2c" in err and "resumed from" in err
    want, got = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "whole", run))
    assert {k: r["scores"] for k, r in got["results"].items()} == {k: r["scores"] for k, r in want["results"].items()}
    assert got["probability_of_improvement"] == want["probability_of_improvement"]
    assert (run / "curves.json").read_text() == (tmp_path / "whole" / "curves.json").read_text()
    assert not (run / "progress").exists() and not (run / "run.lock").exists()
