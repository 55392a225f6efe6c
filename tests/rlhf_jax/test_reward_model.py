"""Reward model: Bradley-Terry loss and gradient (eq. 45-49), pooling, preference data, learning."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.data import load_preferences, write_preferences
from rlhf_jax.preferences import bayes_accuracy, expected_accuracy, label_probability, sample_responses
from rlhf_jax.reward_model import (
    RewardScorer,
    bradley_terry_loss,
    calibration_bins,
    encode_sequences,
    last_token_index,
    make_score_fn,
    pool_last,
    rank_correlation,
    reward_model,
)
from rlhf_jax.sampling import SamplingConfig
from rlhf_jax.tasks import reviews
from rlhf_jax.tokenizer import ByteTokenizer
from rlhf_jax.transformer import TransformerConfig, TransformerLM, init_params

pytestmark = pytest.mark.timeout(300)


def test_bradley_terry_loss_is_bce_with_label_one():
    r_w = jnp.array([1.0, -0.5, 2.0, 0.0])
    r_l = jnp.array([0.0, 0.5, -1.0, 0.0])
    p = 1 / (1 + np.exp(-(np.asarray(r_w) - np.asarray(r_l))))
    bce = np.mean(-(1 * np.log(p) + 0 * np.log(1 - p)))
    np.testing.assert_allclose(bradley_terry_loss(r_w, r_l), bce, rtol=1e-6)
    # The margin shifts the gap.
    np.testing.assert_allclose(bradley_terry_loss(r_w, r_l, 0.5), bradley_terry_loss(r_w - 0.5, r_l), rtol=1e-6)


def test_bradley_terry_gradient_matches_closed_form():
    r_w, r_l = jnp.array([0.3, -1.2, 2.0]), jnp.array([0.1, 0.4, 2.5])
    g_w, g_l = jax.grad(lambda a, b: bradley_terry_loss(a, b) * 3, argnums=(0, 1))(r_w, r_l)
    sig = 1 / (1 + np.exp(-(np.asarray(r_w) - np.asarray(r_l))))
    # Eq. (49): dL/dr_w = -(1 - sigma(gap)), dL/dr_l = +(1 - sigma(gap)) (per pair, sum form).
    np.testing.assert_allclose(g_w, -(1 - sig), rtol=1e-5)
    np.testing.assert_allclose(g_l, 1 - sig, rtol=1e-5)


def test_pooling_picks_the_last_real_token_under_any_padding():
    mask = jnp.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]])
    np.testing.assert_array_equal(last_token_index(mask), [2, 4, 4, 2])
    values = jnp.arange(20.0).reshape(4, 5)
    np.testing.assert_array_equal(pool_last(values, mask), [2.0, 9.0, 14.0, 17.0])


def test_score_does_not_change_with_padding():
    cfg = TransformerConfig(vocab_size=259, num_layers=1, num_heads=2, d_model=32, max_len=32, dropout=0.0)
    model = reward_model(cfg)
    params = init_params(model, jax.random.PRNGKey(0))
    tok = ByteTokenizer()
    ids = [tok.bos_id] + tok.encode("ab cd") + [tok.eos_id]
    width = len(ids) + 9
    rows, masks = [], []
    for left in (0, 4, 9):  # right padding only, both sides, left padding only
        right = width - len(ids) - left
        rows.append([tok.pad_id] * left + ids + [tok.pad_id] * right)
        masks.append([0] * left + [1] * len(ids) + [0] * right)
    scores = make_score_fn(model)(params, jnp.array(rows), jnp.array(masks))
    alone = make_score_fn(model)(params, jnp.array([ids]), jnp.ones((1, len(ids)), jnp.int32))
    np.testing.assert_allclose(scores, float(alone[0]), atol=1e-5)


def test_overlong_examples_truncate_or_are_rejected_never_dropped():
    tok = ByteTokenizer()
    ids, mask, n = encode_sequences(tok, ["prompt!", "p"], ["response", "r"], max_length=10)
    assert n == 1 and ids.shape == (2, 10) and mask[0].sum() == 10
    assert ids[0, -1] == tok.eos_id  # the EOS survives truncation
    with pytest.raises(ValueError, match="data.jsonl:7"):
        encode_sequences(tok, ["prompt!"], ["response"], max_length=10, overlong="reject", where=["data.jsonl:7"])


@pytest.mark.parametrize("line,message", [
    ('{"prompt": "a", "chosen": "b"}', "missing field 'rejected'"),
    ('{"prompt": "a", "chosen": "b", "rejected": ""}', "'rejected' is empty"),
    ('{"prompt": "a", "chosen": 1, "rejected": "c"}', "'chosen' must be a string"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c", "margin": "big"}', "'margin' must be a number"),
    ('not json', "invalid JSON"),
])
def test_preference_jsonl_errors_name_the_line(tmp_path, line, message):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=f"prefs.jsonl:2: .*{message}"):
        load_preferences(path)


def test_preference_jsonl_round_trip(tmp_path):
    pairs = [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 0.5, "label_prob": 0.7}]
    write_preferences(tmp_path / "x.jsonl", pairs)
    rows, where = load_preferences(tmp_path / "x.jsonl")
    assert rows == [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 0.5}]
    assert where == [f"{tmp_path / 'x.jsonl'}:1"]


def test_expected_accuracy_weighs_each_pair_by_its_label_probability():
    q = np.array([0.9, 0.6, 0.5, 0.2])
    # Ordered as labelled, against the label, tie, against the label.
    got = expected_accuracy(np.array([1.0, -1.0, 0.0, -2.0]), np.array([0.0, 0.0, 0.0, 0.0]), q)
    np.testing.assert_allclose(got, np.mean([0.9, 0.4, 0.5, 0.8]))
    # A model that orders every pair as the gold reward does reaches the Bayes ceiling exactly.
    gold_order = np.where(q >= 0.5, 1.0, -1.0)
    np.testing.assert_allclose(expected_accuracy(gold_order, np.zeros(4), q), bayes_accuracy(q))


def test_label_probability_and_bayes_accuracy():
    q = label_probability(np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0]), tau=0.5, flip_prob=0.1)
    p = 1 / (1 + np.exp(-2.0))
    np.testing.assert_allclose(q, [0.9 * p + 0.1 * (1 - p), 0.5, 0.9 * (1 - p) + 0.1 * p])
    np.testing.assert_allclose(bayes_accuracy(q), np.mean([max(v, 1 - v) for v in q]))


def test_calibration_and_rank_correlation_helpers():
    calib = calibration_bins(np.array([2.0, 0.0]), np.array([0.0, 0.0]), n_bins=10)
    assert sum(calib["count"]) == 4
    np.testing.assert_allclose(rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]), 1.0)
    np.testing.assert_allclose(rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]), -1.0)
    # Ties get average ranks, as in scipy.stats.spearmanr.
    np.testing.assert_allclose(rank_correlation([1, 1, 2, 3], [1, 2, 3, 4]), 0.9486832980505138)


@pytest.mark.slow
def test_reward_model_reaches_bayes_ceiling_and_ranks_like_gold(reviews_models):
    m = reviews_models  # see conftest.py: SFT, pairs labelled at tau 0.25, the reward model
    tok, result, pairs = m.tokenizer, m.rm, m.pairs
    heldout_bayes = bayes_accuracy([pairs[i]["label_prob"] for i in result.heldout_index])
    last = result.history[-1]
    expected, accuracy = last["heldout_expected_accuracy"], last["heldout_accuracy"]
    print(f"held-out accuracy {accuracy:.3f} (expected {expected:.3f}), Bayes ceiling {m.bayes:.3f} "
          f"(held-out pairs {heldout_bayes:.3f})")
    # Within 3 points of the ceiling on seeds 0-2 (2.1, 2.5, 1.3; this fixture is seed 0); the bound
    # leaves 2 more for other CPUs' rounding.
    assert expected >= heldout_bayes - 0.05
    # The one sampled label per pair adds noise (sd ~1.2 points on 800 pairs), hence more room here.
    assert accuracy >= heldout_bayes - 0.08
    lm = TransformerLM(m.config)
    fresh = reviews.prompts(256, seed=7)
    texts, ended, _ = sample_responses(lm, m.sft_params, tok, fresh, SamplingConfig(max_new_tokens=40),
                                       jax.random.PRNGKey(5))
    gold = [reviews.gold_reward(t, bool(e)) for t, e in zip(texts, ended)]
    scores = RewardScorer(result.model, result.params, tok, norm=result.norm).score(fresh, texts)
    assert rank_correlation(scores, gold) > 0.6


def test_hh_rlhf_dialogues_split_at_the_last_shared_assistant_turn(tmp_path):
    path = tmp_path / "hh.jsonl"
    turn = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: A joke?\n\nAssistant:"
    rows = [{"chosen": turn + " Sure: puns.", "rejected": turn + " No."},
            {"chosen": "\n\nHuman: x", "rejected": "\n\nHuman: y"}]
    path.write_text(json.dumps(rows[0]) + "\n")
    pairs, _ = load_preferences(path)
    assert pairs == [{"prompt": turn, "chosen": " Sure: puns.", "rejected": " No.", "margin": 0.0}]
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1]) + "\n")
    with pytest.raises(ValueError, match=r"hh.jsonl:2: no 'prompt' field, and chosen and rejected share no"):
        load_preferences(path)
