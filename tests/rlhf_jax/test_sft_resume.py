"""SFT saves periodically and resumes bit-identically: in the library and through rlhf-jax sft."""

import json
import signal

import jax
import numpy as np
import pytest
from procwatch import wait_for, wait_progressing
from resume_runs import assert_same_run, rlhf_jax_process

from rlhf_jax.sft import SFTConfig, train_sft
from rlhf_jax.stages import supervised_checkpoints
from rlhf_jax.tokenizer import ByteTokenizer
from rlhf_jax.transformer import TransformerConfig

pytestmark = pytest.mark.timeout(300)

CONFIG = SFTConfig(model=TransformerConfig(num_layers=1, d_model=32, num_heads=2, max_len=32, dropout=0.1),
                   steps=40, warmup_steps=2, eval_every=10, batch_size=8, max_length=32)
PROMPTS = [f"q{i}:" for i in range(64)]
RESPONSES = [f" a{i % 3}" for i in range(64)]


def test_a_killed_sft_resumes_from_its_checkpoint_to_the_same_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("RL_JAX_SAVE_INTERVAL_S", "0")
    tok = ByteTokenizer()
    whole = train_sft(CONFIG, tok, PROMPTS, RESPONSES)

    def die_at_25(step, loss):  # a kill: no save of its own, the run stops where it is
        if step + 1 == 25:
            raise KeyboardInterrupt

    saved = supervised_checkpoints(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        train_sft(CONFIG, tok, PROMPTS, RESPONSES, progress=die_at_25, checkpoints=saved)
    assert saved.latest() == 20
    said = []
    resumed = train_sft(CONFIG, tok, PROMPTS, RESPONSES, checkpoints=supervised_checkpoints(tmp_path),
                        on_status=said.append)
    assert said and "resumed from" in said[0] and "step 20 of 40" in said[0]
    jax.tree.map(np.testing.assert_array_equal, whole.params, resumed.params)
    np.testing.assert_array_equal(whole.train_loss, resumed.train_loss)
    assert whole.eval_loss == resumed.eval_loss and whole.eval_steps == resumed.eval_steps


@pytest.mark.slow
def test_ctrl_c_on_rlhf_jax_sft_keeps_its_work_and_resume_ends_as_the_uninterrupted_run(tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in zip(PROMPTS, RESPONSES)))
    tiny = ["--data", str(data), "--transformer.num-layers", "1", "--transformer.d-model", "32",
            "--transformer.num-heads", "2", "--steps", "300", "--warmup-steps", "2", "--eval-every", "10",
            "--batch-size", "8", "--num-samples", "2", "--no-progress"]
    whole = rlhf_jax_process("sft", *tiny, "--out", str(tmp_path / "whole"))
    ((_, err),) = wait_progressing([whole])
    assert whole.returncode == 0, err
    run = tmp_path / "run"
    proc = rlhf_jax_process("sft", *tiny, "--out", str(run))
    wait_for(lambda: (run / "progress" / "20").exists(), proc)
    proc.send_signal(signal.SIGINT)
    ((_, err),) = wait_progressing([proc])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert lines[-1].startswith("rlhf-jax: interrupted; the last checkpoint is ") and \
        lines[-1].endswith(f"continue with: rlhf-jax sft --resume {run}"), err
    assert not (run / "summary.json").exists()
    proc = rlhf_jax_process("sft", "--resume", str(run), "--no-progress")
    ((_, err),) = wait_progressing([proc])
    assert proc.returncode == 0, err
    assert_same_run(tmp_path / "whole", run)
    assert not (run / "progress").exists()


@pytest.mark.slow
def test_a_failed_save_stops_rlhf_jax_sft_at_once_with_one_line(tmp_path):
    import resource

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in zip(PROMPTS, RESPONSES)))
    run = tmp_path / "run"
    proc = rlhf_jax_process("sft", "--data", str(data), "--transformer.num-layers", "1", "--transformer.d-model",
                            "32", "--transformer.num-heads", "2", "--steps", "3000", "--warmup-steps", "2",
                            "--eval-every", "10", "--batch-size", "8", "--no-progress", "--out", str(run))
    wait_for(lambda: (run / "progress" / "20").exists(), proc)
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (1024, 1024))  # each write now fails as on a full disk
    ((_, err),) = wait_progressing([proc], stall_s=30)  # stuck in orbax's threads: no CPU used
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
    good = err.split("the last complete checkpoint is ")[1].split(";")[0]
    assert err.strip() == (f"rlhf-jax: error: checkpoint: cannot write to {run.absolute() / 'progress'} (File too "
                           f"large); the last complete checkpoint is {good}; once {run} can be written, continue "
                           f"with: rlhf-jax sft --resume {run}")
    assert int(good.rsplit("/", 1)[1]) >= 20 and not [p for p in (run / "progress").iterdir() if "tmp" in p.name]
