"""The library functions behind rlhf-jax rm and dpo, called from Python as README shows them."""

import json

import jax
import numpy as np
import pytest

from rlhf_jax import checkpoint as ckpt
from rlhf_jax.dpo import DPOConfig
from rlhf_jax.experiment import PairSource, dpo_run, rm_run
from rlhf_jax.reward_model import RMConfig
from rlhf_jax.transformer import TransformerConfig, TransformerLM, init_params

pytestmark = pytest.mark.timeout(300)

TINY = TransformerConfig(num_layers=1, d_model=32, num_heads=2, max_len=64)


def _pairs(tmp_path, n=48):
    rng = np.random.default_rng(1)
    rows = [{"prompt": f"item {i % 5}:", "chosen": " great" if rng.random() < 0.5 else " lovely",
             "rejected": " awful"} for i in range(n)]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rm_run_and_dpo_run_on_a_file_write_their_folders(tmp_path):
    data = _pairs(tmp_path)
    said = []
    rm = rm_run(RMConfig(model=TINY, epochs=1, batch_size=8), PairSource(data=str(data)), out=str(tmp_path / "rm"),
                progress=False, log=said.append)
    assert rm["train_pairs"] + rm["heldout_pairs"] == 48 and said == []  # nothing truncated, nothing said
    assert (tmp_path / "rm" / "pairs.jsonl").read_text().count("\n") == 48
    lm, params, tok = ckpt.load(tmp_path / "rm" / "checkpoint")
    assert lm.scalar_head
    with pytest.raises(ValueError, match="init: DPO on your data starts from a policy"):
        dpo_run(DPOConfig(model=TINY), PairSource(data=str(data)), out=str(tmp_path / "dpo0"))
    assert not (tmp_path / "dpo0").exists()
    policy = TransformerLM(TINY)
    dpo = dpo_run(DPOConfig(model=TINY, epochs=1, batch_size=8), PairSource(data=str(data)),
                  policy=(policy, init_params(policy, jax.random.PRNGKey(0))), out=str(tmp_path / "dpo"),
                  progress=False, log=said.append)
    assert dpo["heldout_accuracy_before"] == 0.5 and np.isfinite(dpo["heldout_loss"])
    assert json.loads((tmp_path / "dpo" / "summary.json").read_text())["skipped_pairs"] == 0


def test_a_bad_pair_source_fails_before_any_folder(tmp_path):
    for source, message in ((PairSource(task="nope"), "task: unknown task 'nope'"),
                            (PairSource(num_pairs=1), "num_pairs: must be at least 2"),
                            (PairSource(sft_steps=0), "sft_steps")):
        with pytest.raises(ValueError, match=message):
            rm_run(RMConfig(model=TINY), source, out=str(tmp_path / "rm"))
    assert not (tmp_path / "rm").exists()
