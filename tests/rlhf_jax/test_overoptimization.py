"""The ``praise`` task's gold reward, the over-optimisation curve summary, and ``rlhf-jax overoptimization``."""

import json
import shutil

import numpy as np
import pytest

from rlhf_jax.cli import main
from rlhf_jax.overoptimization import overoptimization_curve
from rlhf_jax.tasks import praise

pytestmark = pytest.mark.timeout(300)

ALL_EIGHT = " The lamp is great, bright, cheap, sturdy, lovely, fast, quiet and handy."


@pytest.mark.parametrize("response, ended, gold", [
    (ALL_EIGHT, True, 2.0),  # 12 words, the optimum
    (" I think the lamp is great, bright, cheap, sturdy, lovely, fast, quiet and handy.", True, 1.5),  # 14 words
    (" The lamp is great and great.", True, 0.0),  # +0.25 once, -0.25 for the repeat
    (" The lamp is great, great, great and great.", True, -0.5),
    (" The lamp is great and awful.", True, 0.0),
    (" The lamp is awful, dull and fine.", True, -0.5),
    (" The lamp is nice.", True, -0.5),  # no known adjective
    (" The lamp is great", False, 0.25 - 1.0),  # no EOS
])
def test_praise_gold_reward_golden_values(response, ended, gold):
    assert praise.gold_reward(response, ended) == pytest.approx(gold)


def test_praise_has_headroom_above_its_sft_corpus():
    """SFT responses score at most 1.0 (four positive adjectives) and about 0 on average; 2.0 is reachable."""
    _, responses = praise.sft_corpus(4000, seed=0)
    gold = np.array([praise.gold_reward(r) for r in responses])
    assert gold.max() <= 1.0 and abs(gold.mean()) < 0.05 and (gold >= 1.0).mean() < 0.01
    assert praise.gold_reward(ALL_EIGHT) == 2.0


def test_overoptimization_curve_finds_the_gold_peak_and_the_proxy_rise():
    t = np.arange(20)
    gold = np.where(t < 8, 0.1 * t, 0.8 - 0.05 * (t - 8))  # peaks at iteration 8, ends at 0.25
    history = [{"kl_exact": float(i), "gold_reward": float(g), "proxy_reward": 0.3 * i} for i, g in zip(t, gold)]
    c = overoptimization_curve(history, window=1)
    assert c["peak_iteration"] == 8 and c["peak_gold"] == pytest.approx(0.8)
    assert c["peak_sqrt_kl"] == pytest.approx(np.sqrt(8.0))
    assert c["gold_drop_after_peak"] == pytest.approx(0.55) and c["proxy_rise_after_peak"] == pytest.approx(0.3 * 11)
    smoothed = overoptimization_curve(history)  # 5-iteration windows: the peak moves by at most the half-window
    assert abs(smoothed["peak_iteration"] - 8) <= 2 and smoothed["gold_drop_after_peak"] > 0.4


@pytest.mark.parametrize("flags, message", [
    (["--pair-counts", "300", "100"], "pair_counts: must be increasing"),
    (["--pair-counts", "10"], "each at least 20"),
    (["--task", "nope"], "task: unknown task 'nope'"),
    (["--ppo.minibatches", "5"], "minibatches: 5 does not divide batch_size 64"),
])
def test_overoptimization_bad_config_fails_before_anything_runs(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        main(["overoptimization", "--out", str(tmp_path / "run"), *flags])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


TINY = ["--sft.model.num-layers", "1", "--sft.model.d-model", "32", "--sft.model.num-heads", "2", "--sft.steps", "20",
        "--sft.warmup-steps", "2", "--sft.batch-size", "16", "--sft-examples", "128", "--pair-counts", "40", "80",
        "--rm.epochs", "1", "--rm.batch-size", "16", "--ppo.iterations", "3", "--ppo.batch-size", "8",
        "--ppo.minibatches", "2", "--ppo.epochs", "1", "--eval-prompts", "8", "--checkpoint-every", "0",
        "--no-progress"]


@pytest.mark.slow
def test_overoptimization_writes_a_curve_per_reward_model_and_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    main(["overoptimization", "--out", str(run), *TINY])
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["reward_models"]) == ["40", "80"] and summary["kl_coef"] == 0.0
    for n, row in summary["reward_models"].items():
        assert row["pairs"] == int(n) and 0 <= row["peak_iteration"] < 3
        assert np.isfinite(row["peak_gold"]) and np.isfinite(row["final_eval"]["gold_reward"])
    pairs = (run / "pairs" / "pairs.jsonl").read_text().splitlines()
    assert len(pairs) == 80
    for name in ("sft/checkpoint/model.json", "rm_40/metrics.json", "rm_80/checkpoint/extra.json",
                 "ppo_40/metrics.json", "ppo_80/final.json", "sft_eval.json", "overoptimization.png"):
        assert (run / name).exists(), name
    assert "run folder:" in capsys.readouterr().out

    # Killed in the last RL stage: resumed, the finished stages load and it ends as the whole run did.
    killed = tmp_path / "killed"
    shutil.copytree(run, killed)
    for name in ("summary.json", "ppo_80/final.json"):
        (killed / name).unlink()
    main(["overoptimization", "--resume", str(killed), "--no-progress"])
    resumed = json.loads((killed / "summary.json").read_text())
    assert resumed["reward_models"]["80"]["final_eval"] == summary["reward_models"]["80"]["final_eval"]
    assert resumed["reward_models"]["40"] == summary["reward_models"]["40"]
