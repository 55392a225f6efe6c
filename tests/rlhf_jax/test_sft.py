"""SFT: response-only loss, its masking, and that training drives the loss down."""

import json

import jax
import numpy as np
import pytest

from rlhf_jax.sft import SFTConfig, encode_examples, sft_loss, train_sft
from rlhf_jax.tasks import reviews
from rlhf_jax.tokenizer import ByteTokenizer
from rlhf_jax.transformer import TransformerConfig

pytestmark = pytest.mark.timeout(300)


def test_encoding_masks_prompt_and_padding():
    tok = ByteTokenizer()
    data = encode_examples(tok, ["ab", "x"], ["cd", "yz"], max_length=8)
    np.testing.assert_array_equal(data.input_ids[0], [tok.bos_id, 97, 98, 99, 100, tok.eos_id, tok.pad_id, tok.pad_id])
    np.testing.assert_array_equal(data.loss_mask[0], [0, 0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(data.attention_mask[1], [1, 1, 1, 1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="example 1: response of 14 tokens"):
        encode_examples(tok, ["a"], ["long response"], max_length=8)


def test_loss_is_response_nll_and_prompt_tokens_get_no_gradient():
    tok = ByteTokenizer()
    data = encode_examples(tok, ["abc"], ["de"], max_length=8)
    logits = jax.random.normal(jax.random.PRNGKey(0), (1, 8, tok.vocab_size))
    # Plain numpy: the mean over response tokens (d, e, EOS) of -log softmax(logits[t-1])[token_t].
    z = np.asarray(logits[0], np.float64)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    ids = data.input_ids[0]
    want = -np.mean([logp[t - 1, ids[t]] for t in (4, 5, 6)])
    np.testing.assert_allclose(sft_loss(logits, data.input_ids, data.loss_mask), want, rtol=1e-5)
    grad = np.asarray(jax.grad(sft_loss)(logits, data.input_ids, data.loss_mask))[0]
    # Rows 3, 4, 5 predict the response tokens; every other row (predicting prompt or
    # padding, or the last position) gets exactly zero gradient.
    assert np.all(np.abs(grad[[3, 4, 5]]).sum(-1) > 0)
    np.testing.assert_array_equal(grad[[0, 1, 2, 6, 7]], 0.0)


def test_changing_prompt_targets_does_not_change_the_loss():
    """The loss never reads the logits that predict prompt tokens."""
    tok = ByteTokenizer()
    data = encode_examples(tok, ["abc"], ["de"], max_length=8)
    logits = jax.random.normal(jax.random.PRNGKey(1), (1, 8, tok.vocab_size))
    changed = logits.at[:, :3].add(jax.random.normal(jax.random.PRNGKey(2), (1, 3, tok.vocab_size)))
    assert float(sft_loss(logits, data.input_ids, data.loss_mask)) == float(sft_loss(changed, data.input_ids, data.loss_mask))


def test_sft_drives_loss_well_below_start():
    prompts, responses = reviews.sft_corpus(512, seed=0)
    cfg = SFTConfig(model=TransformerConfig(num_layers=1, num_heads=2, d_model=64, max_len=64, dropout=0.0),
                    steps=150, batch_size=16, lr=3e-3, warmup_steps=10, eval_every=50, eval_fraction=0.1)
    result = train_sft(cfg, ByteTokenizer(), prompts, responses)
    start = float(result.train_loss[:5].mean())
    end = float(result.train_loss[-10:].mean())
    assert start > 4.0  # about log(259) at initialisation
    assert end < 0.4 * start, (start, end)
    assert result.eval_loss[-1] < 0.4 * start
    assert result.eval_loss[-1] < result.eval_loss[0]


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="warmup_steps"):
        SFTConfig(steps=10, warmup_steps=10).validate()
    with pytest.raises(ValueError, match="max_length"):
        SFTConfig(max_length=100).validate()


def test_sft_run_is_the_command_as_a_library_function(tmp_path):
    from rlhf_jax import checkpoint as ckpt
    from rlhf_jax.experiment import generate_run, sft_run

    config = SFTConfig(model=TransformerConfig(num_layers=1, d_model=32, num_heads=2), steps=20, warmup_steps=2,
                       batch_size=8)
    summary, samples = sft_run(config, task="reviews", num_examples=64, num_samples=2, out=str(tmp_path / "sft"),
                               progress=False)
    assert len(samples) == 2 and summary["run_dir"] == str(tmp_path / "sft")
    assert json.loads((tmp_path / "sft" / "summary.json").read_text()) == json.loads(json.dumps(summary))
    model, params, tokenizer = ckpt.load(tmp_path / "sft")
    samples, run_dir = generate_run(model, params, tokenizer, ["Review of the lamp:"], num_samples=3,
                                    max_new_tokens=5, out=str(tmp_path / "gen"))
    assert len(samples) == 3 and (run_dir / "samples.json").exists()
    with pytest.raises(ValueError, match="num_samples"):
        generate_run(model, params, tokenizer, ["Review of the lamp:"], num_samples=0)
