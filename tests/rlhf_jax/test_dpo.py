"""DPO: the loss and its gradient against the closed form, log 2 at the reference, sequence
log-probs against numpy, learning on pairs, the built-in task end to end, and bad input."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.cli import main
from rlhf_jax.dpo import DPOConfig, dpo_loss, encode_pair_rows, sequence_log_probs, train_dpo
from rlhf_jax.tokenizer import ByteTokenizer
from rlhf_jax.transformer import TransformerConfig, TransformerLM, init_params

pytestmark = pytest.mark.timeout(300)

TINY = TransformerConfig(num_layers=1, d_model=32, num_heads=2, max_len=32)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_and_gradient_match_the_closed_form(smoothing):
    rng = np.random.default_rng(0)
    lw, ll, rw, rl = (jnp.asarray(rng.normal(size=6) * 3, jnp.float32) for _ in range(4))
    beta = 0.3
    h = beta * ((np.asarray(lw) - np.asarray(rw)) - (np.asarray(ll) - np.asarray(rl)))
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    want = np.mean(-(1 - smoothing) * np.log(sig(h)) - smoothing * np.log(sig(-h)))
    loss, m = dpo_loss(lw, ll, rw, rl, beta, smoothing)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(float(m["accuracy"]), np.mean(h > 0))
    np.testing.assert_allclose(float(m["margin"]), np.mean(h), rtol=1e-5)
    # dL/dlog pi(y_w) = beta (-(1 - eps) sigmoid(-h) + eps sigmoid(h)) / B; the rejected side is its negative.
    g_w, g_l = jax.grad(lambda a, b: dpo_loss(a, b, rw, rl, beta, smoothing)[0], argnums=(0, 1))(lw, ll)
    closed = beta * (-(1 - smoothing) * sig(-h) + smoothing * sig(h)) / len(h)
    np.testing.assert_allclose(np.asarray(g_w), closed, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g_l), -closed, rtol=1e-4, atol=1e-7)


def _pairs(n, rng):
    out = []
    for i in range(n):
        good, bad = (" great", " awful") if rng.random() < 0.5 else (" lovely", " ugly")
        out.append({"prompt": f"item {i % 7}:", "chosen": good, "rejected": bad})
    return out


def test_sequence_log_probs_are_the_sum_over_response_tokens_and_the_reference_gives_log_2():
    tok = ByteTokenizer()
    model = TransformerLM(TINY)
    params = init_params(model, jax.random.PRNGKey(0))
    pairs = _pairs(5, np.random.default_rng(0))
    rows = encode_pair_rows(tok, pairs, 32)
    got = np.asarray(sequence_log_probs(model, params, rows.chosen))
    logits = np.asarray(model.apply({"params": params}, rows.chosen.input_ids, rows.chosen.attention_mask).logits,
                        np.float64)
    for i, p in enumerate(pairs):
        start = 1 + len(tok.encode(p["prompt"]))  # BOS, prompt
        tokens = tok.encode(p["chosen"]) + [tok.eos_id]
        want = 0.0
        for j, t in enumerate(tokens):
            z = logits[i, start + j - 1]
            want += z[t] - (np.log(np.exp(z - z.max()).sum()) + z.max())
        np.testing.assert_allclose(got[i], want, rtol=1e-5)
    rejected = sequence_log_probs(model, params, rows.rejected)
    loss, m = dpo_loss(jnp.asarray(got), rejected, jnp.asarray(got), rejected, 0.1)
    assert float(loss) == pytest.approx(math.log(2), abs=1e-6)
    assert float(m["accuracy"]) == 0.5 and float(m["margin"]) == 0.0


def test_training_raises_the_implicit_reward_of_the_chosen_responses():
    tok = ByteTokenizer()
    model = TransformerLM(TINY)
    params = init_params(model, jax.random.PRNGKey(0))
    pairs = _pairs(200, np.random.default_rng(1))
    config = DPOConfig(model=TINY, beta=0.5, epochs=3, batch_size=16, lr=3e-3, max_length=32)
    result = train_dpo(config, tok, pairs, params=params, model=model)
    first, last = result.history[0], result.history[-1]
    assert first["heldout_loss"] == pytest.approx(math.log(2), abs=1e-5) and first["heldout_accuracy"] == 0.5
    assert last["heldout_accuracy"] >= 0.9, result.history
    assert last["heldout_loss"] < 0.5 and last["heldout_margin"] > 0.5
    assert last["heldout_chosen_reward"] > last["heldout_rejected_reward"]


def test_dpo_command_writes_a_run_folder_and_refuses_bad_input(tmp_path, capsys):
    from rlhf_jax import checkpoint as ckpt

    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in _pairs(80, np.random.default_rng(2))))
    model = TransformerLM(TINY)
    ckpt.save(tmp_path / "sft", init_params(model, jax.random.PRNGKey(0)), model, ByteTokenizer())
    main(["dpo", "--data", str(data), "--init", str(tmp_path / "sft"), "--out", str(tmp_path / "dpo"),
          "--epochs", "1", "--batch-size", "8", "--max-length", "32", "--no-progress"])
    assert "held-out implicit-reward accuracy" in capsys.readouterr().out
    for name in ("config.json", "metrics.json", "accuracy.png", "summary.json", "checkpoint/model.json"):
        assert (tmp_path / "dpo" / name).exists(), name
    summary = json.loads((tmp_path / "dpo" / "summary.json").read_text())
    assert summary["heldout_accuracy_before"] == 0.5
    loaded, _, _ = ckpt.load(tmp_path / "dpo")
    assert loaded.lm_head and not loaded.scalar_head

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    for argv, message in [
        (["--beta", "0"], "beta: must be positive, got 0.0"),
        (["--label-smoothing", "0.5"], "label_smoothing: must be in [0, 0.5), got 0.5"),
        (["--data", str(empty), "--init", str(tmp_path / "sft")], f"{empty}: no examples"),
        (["--data", str(data)], "init: DPO on your data starts from a policy"),
    ]:
        with pytest.raises(SystemExit) as exc:
            main(["dpo", "--out", str(tmp_path / "bad"), *argv])
        assert exc.value.code == 2 and message in capsys.readouterr().err, argv
    assert not (tmp_path / "bad").exists()


def test_dpo_and_rm_on_a_task_train_the_sampling_policy_first(tmp_path, capsys):
    tiny = ["--transformer.num-layers", "1", "--transformer.d-model", "32", "--transformer.num-heads", "2",
            "--sft-steps", "20", "--num-pairs", "64", "--batch-size", "8", "--epochs", "1", "--no-progress"]
    main(["dpo", "--task", "reviews", "--eval-prompts", "8", "--out", str(tmp_path / "dpo"), *tiny])
    summary = json.loads((tmp_path / "dpo" / "summary.json").read_text())
    assert np.isfinite(summary["gold_reward_reference"]) and np.isfinite(summary["gold_reward_final"])
    assert summary["kl_final"] >= 0.0 and 0.5 < summary["bayes_accuracy"] <= 1.0
    main(["rm", "--task", "reviews", "--out", str(tmp_path / "rm"), *tiny])
    assert "Bayes ceiling" in capsys.readouterr().out
    for run in ("dpo", "rm"):
        for name in ("sft/checkpoint/model.json", "sft/loss.png", "pairs.jsonl", "preferences.json",
                     "checkpoint/model.json", "accuracy.png"):
            assert (tmp_path / run / name).exists(), (run, name)
