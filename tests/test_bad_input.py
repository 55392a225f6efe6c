"""Degenerate or mistyped input is refused (or warned about) by name, before anything is written."""

import json
import os
import warnings

import jax
import numpy as np
import pytest

from ppo_jax.config import PPOConfig
from ppo_jax.experiment import train_run
from ppo_jax.run.outputs import atomic_path
from ppo_jax.study import parse_grid
from rlhf_jax import checkpoint as ckpt
from rlhf_jax.cli import main as rlhf_main
from rlhf_jax.data import load_preferences
from rlhf_jax.hf import load_pretrained
from rlhf_jax.sft import SFTConfig
from rlhf_jax.tokenizer import ByteTokenizer
from rlhf_jax.transformer import TransformerConfig, TransformerLM, init_params

pytestmark = pytest.mark.timeout(120)


def test_config_fields_of_the_wrong_kind_are_named_and_numpy_integers_are_integers():
    with pytest.raises(ValueError, match=r"lr: must be a number, got '0.001' \(str\)"):
        PPOConfig(lr="0.001").validate()
    with pytest.raises(ValueError, match="normalize_observations: must be true or false"):
        PPOConfig(normalize_observations=1).validate()
    PPOConfig(num_envs=np.int64(4), num_steps=np.int32(128)).validate()
    with pytest.raises(ValueError, match=r"seed: must be an integer in \[0, 2\*\*63\)"):
        SFTConfig(seed=2**64).validate()
    for seed in (2**63, -1, 1.5):
        with pytest.raises(ValueError, match=r"seed: must be an integer in \[0, 2\*\*63\)"):
            train_run(PPOConfig(), seed=seed, out="never-made")
    assert not os.path.exists("never-made")


def test_a_sweep_names_each_field_once_with_finite_distinct_values():
    assert parse_grid(("lr=1e-3,3e-4",)) == {"lr": [1e-3, 3e-4]}
    for items, message in (((("lr=1e-3", "lr=3e-4")), "lr is given twice"),
                           (("lr=1e-3,nan",), "every value must be finite"),
                           (("lr=1e-3,1e-3",), "a value is repeated")):
        with pytest.raises(ValueError, match=message):
            parse_grid(items)


def test_pairs_with_the_same_chosen_and_rejected_text_are_left_out_and_all_of_them_refused(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"prompt": "q", "chosen": " a", "rejected": " a"}, {"prompt": "q", "chosen": " a", "rejected": " b"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(UserWarning, match="1 of 2 pairs have the same chosen and rejected text \\(first at line 1\\)"):
        pairs, where = load_preferences(path)
    assert [p["rejected"] for p in pairs] == [" b"] and where == [f"{path}:2"]
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match="every pair has the same chosen and rejected text"):
        load_preferences(path)


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="dtype: must be 'float32' or 'bfloat16', got 'float8'"):
        load_pretrained("tests/fixtures/hf/gpt2", dtype="float8")


def test_files_written_atomically_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.bin") as tmp:
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)  # as safetensors makes its files
            os.close(fd)
    finally:
        os.umask(old)
    assert oct((tmp_path / "f.bin").stat().st_mode & 0o777) == oct(0o644)


def _reward_model_checkpoint(folder):
    model = TransformerLM(TransformerConfig(num_layers=1, d_model=32, num_heads=2, max_len=32), lm_head=False,
                          scalar_head=True)
    ckpt.save(folder, init_params(model, jax.random.PRNGKey(0)), model, ByteTokenizer())
    return folder


def test_a_checkpoint_without_checksums_is_refused(tmp_path):
    folder = _reward_model_checkpoint(tmp_path / "ck")
    meta = json.loads((folder / "model.json").read_text())
    del meta["checksums"]
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match="has no checksums"):
        ckpt.load(folder)


@pytest.mark.parametrize("argv,message", [
    (["generate", "--checkpoint", "RM", "--prompt", "hi"], "checkpoint: this is a reward model's checkpoint"),
    (["dpo", "--init", "RM", "--data", "P", "--out", "OUT"], "init: this is a reward model's checkpoint"),
    (["generate", "--checkpoint", "RM", "--model", "M", "--prompt", "hi"], "not both"),
    (["generate", "--checkpoint", "POLICY", "--prompt", "x" * 40], "leaves no room for a response"),
])
def test_generate_and_dpo_name_what_is_wrong_in_one_line(tmp_path, capsys, argv, message):
    rm = _reward_model_checkpoint(tmp_path / "rm")
    policy = TransformerLM(TransformerConfig(num_layers=1, d_model=32, num_heads=2, max_len=32))
    ckpt.save(tmp_path / "policy", init_params(policy, jax.random.PRNGKey(0)), policy, ByteTokenizer())
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "q", "chosen": " a", "rejected": " b"}) + "\n")
    names = {"RM": str(rm), "POLICY": str(tmp_path / "policy"), "P": str(tmp_path / "p.jsonl"),
             "OUT": str(tmp_path / "out"), "M": str(tmp_path)}
    with warnings.catch_warnings(), pytest.raises(SystemExit) as exc:
        rlhf_main([names.get(a, a) for a in argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def _tiny(kind):
    t = ["--transformer.num-layers", "1", "--transformer.d-model", "32", "--transformer.num-heads", "2"]
    return t + (["--batch-size", "8", "--no-progress"] if kind != "sft" else ["--batch-size", "64", "--no-progress"])


@pytest.mark.parametrize("case", ["sft_batch", "rm_one_pair", "rm_reject", "dpo_reject"])
def test_checks_that_need_only_the_data_run_before_the_folder_is_made(tmp_path, capsys, case):
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": f"q{i}", "response": " a"}) + "\n" for i in range(20)))
    long = " long" * 40
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "q", "chosen": long if case.endswith("reject") and i == 3 else " a", "rejected": " b"}
            for i in range(1 if case == "rm_one_pair" else 40)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    policy = TransformerLM(TransformerConfig(num_layers=1, d_model=32, num_heads=2, max_len=64))
    ckpt.save(tmp_path / "policy", init_params(policy, jax.random.PRNGKey(0)), policy, ByteTokenizer())
    out = tmp_path / "out"
    argv, message = {
        "sft_batch": (["sft", "--data", str(sft), *_tiny("sft")], "batch_size: 64 exceeds the 19 training examples"),
        "rm_one_pair": (["rm", "--data", str(pairs), *_tiny("rm")], "batch_size: 8 exceeds the 0 training pairs"),
        "rm_reject": (["rm", "--data", str(pairs), "--overlong", "reject", *_tiny("rm")], f"{pairs}:4"),
        "dpo_reject": (["dpo", "--data", str(pairs), "--init", str(tmp_path / "policy"), "--overlong", "reject",
                        *_tiny("dpo")], f"{pairs}:4"),
    }[case]
    with pytest.raises(SystemExit) as exc:
        rlhf_main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("line,message", [
    (b'{"prompt": "a", "response": "caf\xe9"}', "not UTF-8 text"),
    (b'{"prompt": "a", "response": "\\ud800"}', "lone surrogate"),
    (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
])
def test_jsonl_that_is_not_text_names_file_and_line(tmp_path, line, message):
    from rlhf_jax.data import load_sft

    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"prompt": "ok", "response": "fine"}\n' + line + b"\n")
    with pytest.raises(ValueError, match=f"d.jsonl:2: .*{message}"):
        load_sft(path)


def test_a_run_whose_metrics_would_not_fit_in_memory_is_refused_before_its_folder(tmp_path):
    with pytest.raises(ValueError, match="total_timesteps: 1,000,000,000,000 steps are .* GiB of this machine"):
        train_run(PPOConfig(total_timesteps=10**12), out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,message", [
    (["sft", "--transformer.num-heads", "3"], "transformer.num_heads: 3 does not divide d_model 128"),
    (["pipeline", "--sft.model.num-heads", "3"], "sft.model.num_heads: 3 does not divide d_model 128"),
    (["pipeline", "--sft.steps", "2"], "sft.warmup_steps: must be in [0, steps), got 50"),
    (["overoptimization", "--rm.epochs", "0"], "rm.epochs: "),
])
def test_a_field_of_a_part_of_the_config_is_named_as_its_flag(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        rlhf_main([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith(f"rlhf-jax: error: {message}"), err
    assert not (tmp_path / "out").exists()
