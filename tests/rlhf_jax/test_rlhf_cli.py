"""rlhf-jax sft / generate end to end, the model checkpoint round trip, and JSONL errors."""

import json
import shutil

import jax
import numpy as np
import pytest

from rlhf_jax import checkpoint as ckpt
from rlhf_jax.cli import main
from rlhf_jax.data import load_sft
from rlhf_jax.tokenizer import ByteTokenizer
from rlhf_jax.transformer import TransformerConfig, TransformerLM, init_params

pytestmark = pytest.mark.timeout(300)

TINY = ["--transformer.num-layers", "1", "--transformer.d-model", "32", "--transformer.num-heads", "2",
        "--steps", "20",
        "--warmup-steps", "2", "--eval-every", "10", "--batch-size", "8", "--num-samples", "4", "--no-progress"]


def test_sft_then_generate_writes_run_folders(tmp_path, capsys):
    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"q{i}:", "response": f" a{i % 3}"}) for i in range(64)) + "\n")
    main(["sft", "--data", str(data), "--out", str(tmp_path / "run"), *TINY])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["train_examples"] == 64 and summary["steps"] == 20
    assert np.isfinite(summary["heldout_loss"])
    for name in ("config.json", "metrics.json", "loss.png", "samples.json", "checkpoint/model.json"):
        assert (tmp_path / "run" / name).exists(), name
    main(["generate", "--checkpoint", str(tmp_path / "run" / "checkpoint"), "--prompt", "q1:", "--prompt", "q2:",
          "--num-samples", "3", "--max-new-tokens", "5", "--out", str(tmp_path / "gen")])
    samples = json.loads((tmp_path / "gen" / "samples.json").read_text())["samples"]
    assert [s["prompt"] for s in samples] == ["q1:"] * 3 + ["q2:"] * 3  # the flag repeated: both prompts
    with pytest.raises(SystemExit):  # the run folder is taken
        main(["sft", "--data", str(data), "--out", str(tmp_path / "run"), *TINY])
    assert "holds a finished `rlhf-jax sft` run" in capsys.readouterr().err


def test_checkpoint_round_trip(tmp_path):
    model = TransformerLM(TransformerConfig(num_layers=1, d_model=32, num_heads=2, max_len=16), scalar_head=True)
    params = init_params(model, jax.random.PRNGKey(3))
    ckpt.save(tmp_path / "ck", params, model, ByteTokenizer())
    model2, params2, tok = ckpt.load(tmp_path / "ck")
    assert model2.config == model.config and model2.scalar_head and isinstance(tok, ByteTokenizer)
    jax.tree.map(np.testing.assert_array_equal, params, params2)


@pytest.mark.parametrize("line,message", [
    ('{"prompt": "a", "response": "b"', "invalid JSON"),
    ('["a", "b"]', "expected a JSON object"),
    ('{"prompt": "a"}', "missing field 'response'"),
    ('{"prompt": "a", "response": 3}', "must be a string"),
    ('{"prompt": "a", "response": "  "}', "is empty"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "ok", "response": "fine"}\n\n' + line + "\n")
    with pytest.raises(ValueError, match=f"d.jsonl:3: .*{message}"):
        load_sft(path)


def test_rm_on_a_jsonl_file_writes_run_folder(tmp_path, capsys):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(80):
        good, bad = (" great", " awful") if rng.random() < 0.5 else (" lovely", " ugly")
        if i == 5:
            good = " great" * 20  # longer than max_length: truncated, and said so
        lines.append(json.dumps({"prompt": f"item {i % 7}:", "chosen": good, "rejected": bad}))
    data = tmp_path / "prefs.jsonl"
    data.write_text("\n".join(lines) + "\n")
    main(["rm", "--data", str(data), "--out", str(tmp_path / "rm"), "--transformer.num-layers", "1",
          "--transformer.d-model", "32", "--transformer.num-heads", "2", "--epochs", "2", "--batch-size", "8", "--no-progress"])
    assert "rm: 1 of 160 sequences were longer than max_length=64 and were truncated" in capsys.readouterr().out
    summary = json.loads((tmp_path / "rm" / "summary.json").read_text())
    assert summary["truncated_sequences"] == 1
    assert summary["train_pairs"] + summary["heldout_pairs"] == 80
    assert 0.0 <= summary["heldout_accuracy"] <= 1.0
    for name in ("config.json", "metrics.json", "accuracy.png", "calibration.png", "checkpoint/extra.json"):
        assert (tmp_path / "rm" / name).exists(), name
    model, params, tok = ckpt.load(tmp_path / "rm" / "checkpoint")
    assert model.scalar_head and not model.lm_head


def test_rm_bad_line_fails_before_training(tmp_path, capsys):
    data = tmp_path / "prefs.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    with pytest.raises(SystemExit):
        main(["rm", "--data", str(data), "--out", str(tmp_path / "rm")])
    assert "prefs.jsonl:2: missing field 'rejected'" in capsys.readouterr().err
    assert not (tmp_path / "rm").exists()


PIPELINE_TINY = ["--sft.model.num-layers", "1", "--sft.model.d-model", "32", "--sft.model.num-heads", "2",
                 "--sft.steps", "20", "--sft.warmup-steps", "2", "--sft.batch-size", "16", "--sft-examples", "128",
                 "--num-pairs", "64", "--rm.epochs", "1", "--rm.batch-size", "16", "--ppo.iterations", "2",
                 "--ppo.batch-size", "8", "--ppo.minibatches", "2", "--ppo.epochs", "1", "--eval-prompts", "8",
                 "--best-of-n", "1", "2", "--checkpoint-every", "1", "--no-progress"]


@pytest.mark.slow
def test_pipeline_writes_every_stage_and_the_summary(tmp_path, capsys):
    run = tmp_path / "pipe"
    main(["pipeline", "--task", "reviews", "--out", str(run), *PIPELINE_TINY])
    summary = json.loads((run / "summary.json").read_text())
    for key in ("gold_reward_sft", "gold_reward_final", "proxy_reward_final", "kl_final", "rm_heldout_accuracy",
                "bayes_accuracy"):
        assert np.isfinite(summary[key]), key
    assert set(summary["wall_s"]) >= {"sft", "pairs", "reward_model", "evaluation", "best_of_n", "ppo_proxy",
                                      "ppo_gold"}
    assert [r["n"] for r in summary["best_of_n"]] == [1, 2] and summary["best_of_n"][0]["kl"] == 0.0
    for name in ("sft/checkpoint/model.json", "rm/checkpoint/extra.json", "rm/pairs.jsonl", "samples_sft.json",
                 "ppo_proxy/checkpoint/model.json", "ppo_proxy/samples.json", "ppo_gold/metrics.json",
                 "best_of_n/curve.json", "gold_vs_sqrt_kl.png", "proxy_vs_sqrt_kl.png"):
        assert (run / name).exists(), name
    history = json.loads((run / "ppo_proxy" / "metrics.json").read_text())
    assert len(history) == 2
    for key in ("gold_reward", "proxy_reward", "kl", "kl_exact", "entropy", "clip_fraction", "approx_kl",
                "explained_variance", "eos_rate", "response_length", "time_sample", "time_score", "time_update"):
        assert key in history[-1], key
    assert "run folder:" in capsys.readouterr().out

    # The run as a kill during the last stage leaves it: after its checkpoint at iteration 1,
    # with the save of iteration 2 still in flight (orbax's temporary folder, never renamed).
    # Resumed, it loads the finished stages and ends with the uninterrupted run's policy, bit for bit.
    killed = tmp_path / "killed"
    shutil.copytree(run, killed)
    (killed / "summary.json").unlink()
    for name in ("final.json", "metrics.json", "samples.json"):
        (killed / "ppo_gold" / name).unlink()
    shutil.rmtree(killed / "ppo_gold" / "checkpoint")
    ckpts = killed / "ppo_gold" / "checkpoints"
    (ckpts / "2").rename(ckpts / "2.orbax-checkpoint-tmp-1764300000000000")
    main(["pipeline", "--resume", str(killed), "--no-progress"])
    resumed = json.loads((killed / "summary.json").read_text())
    assert resumed["stages_loaded_on_resume"] == ["sft", "pairs", "reward_model", "best_of_n", "ppo_proxy"]
    _, whole_params, _ = ckpt.load(run / "ppo_gold" / "checkpoint")
    _, resumed_params, _ = ckpt.load(killed / "ppo_gold" / "checkpoint")
    jax.tree.map(np.testing.assert_array_equal, resumed_params, whole_params)
    assert resumed["ppo_gold"]["gold_reward"] == summary["ppo_gold"]["gold_reward"]
    without_times = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]  # noqa: E731
    assert (without_times(json.loads((killed / "ppo_gold" / "metrics.json").read_text()))
            == without_times(json.loads((run / "ppo_gold" / "metrics.json").read_text())))
    with pytest.raises(SystemExit):  # finished: nothing to resume
        main(["pipeline", "--resume", str(killed), "--no-progress"])
    assert f"resume: the run in {killed} already finished" in capsys.readouterr().err


def test_pipeline_bad_config_fails_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["pipeline", "--out", str(tmp_path / "pipe"), "--modes", "proxy", "ppo"])
    assert "modes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pipeline", "--out", str(tmp_path / "pipe"), "--ppo.minibatches", "5"])
    assert "minibatches: 5 does not divide batch_size 64" in capsys.readouterr().err
    assert not (tmp_path / "pipe").exists()
