"""The reward model and DPO save periodically and resume bit-identically; rlhf-jax rm --resume
continues a killed run."""

import json
import signal

import jax
import numpy as np
import pytest
from procwatch import wait_for, wait_progressing
from resume_runs import assert_same_run, rlhf_jax_process

from rlhf_jax.dpo import DPOConfig, train_dpo
from rlhf_jax.reward_model import RMConfig, train_reward_model
from rlhf_jax.stages import supervised_checkpoints
from rlhf_jax.tokenizer import ByteTokenizer
from rlhf_jax.transformer import TransformerConfig, TransformerLM, init_params

pytestmark = pytest.mark.timeout(300)

MODEL = TransformerConfig(num_layers=1, d_model=32, num_heads=2, max_len=32)
PAIRS = [{"prompt": f"item {i % 5}:", "chosen": " great" if i % 2 else " lovely", "rejected": " awful",
          "margin": 0.0} for i in range(72)]


def _die_at(step):
    def progress(done, total, loss):  # a kill: no save of its own, the run stops where it is
        if done == step:
            raise KeyboardInterrupt
    return progress


@pytest.mark.parametrize("method", ["rm", "dpo"])
def test_a_killed_preference_run_resumes_to_the_same_parameters_and_history(tmp_path, monkeypatch, method):
    monkeypatch.setenv("RL_JAX_SAVE_INTERVAL_S", "0")
    tok = ByteTokenizer()
    if method == "rm":
        config = RMConfig(model=MODEL, epochs=4, batch_size=8, max_length=32)

        def train(**kw):
            return train_reward_model(config, tok, PAIRS, **kw)
    else:
        config = DPOConfig(model=MODEL, epochs=4, batch_size=8, max_length=32)
        lm = TransformerLM(MODEL)
        start = init_params(lm, jax.random.PRNGKey(1))

        def train(**kw):
            return train_dpo(config, tok, PAIRS, params=start, model=lm, **kw)
    whole = train()
    with pytest.raises(KeyboardInterrupt):
        train(progress=_die_at(20), checkpoints=supervised_checkpoints(tmp_path))  # epochs of 8 steps
    assert supervised_checkpoints(tmp_path).latest() == 16
    resumed = train(checkpoints=supervised_checkpoints(tmp_path))
    jax.tree.map(np.testing.assert_array_equal, whole.params, resumed.params)
    assert whole.history == resumed.history


@pytest.mark.slow
def test_rlhf_jax_rm_killed_then_resumed_ends_as_the_uninterrupted_run(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS * 4))
    tiny = ["--data", str(data), "--transformer.num-layers", "1", "--transformer.d-model", "32",
            "--transformer.num-heads", "2", "--epochs", "20", "--batch-size", "8", "--no-progress"]
    whole = rlhf_jax_process("rm", *tiny, "--out", str(tmp_path / "whole"))
    ((_, err),) = wait_progressing([whole])
    assert whole.returncode == 0, err
    run = tmp_path / "run"
    proc = rlhf_jax_process("rm", *tiny, "--out", str(run))
    wait_for(lambda: (run / "progress").is_dir() and any(p.name.isdigit() for p in (run / "progress").iterdir()),
             proc)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: a stale lock, a checkpoint maybe mid-write
    proc.wait()
    assert (run / "run.lock").exists() and not (run / "summary.json").exists()
    proc = rlhf_jax_process("rm", "--resume", str(run), "--no-progress")
    ((_, err),) = wait_progressing([proc])
    assert proc.returncode == 0, err
    assert_same_run(tmp_path / "whole", run)
