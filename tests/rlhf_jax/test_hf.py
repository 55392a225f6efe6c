"""Hugging Face folders in and out, against transformers' own outputs stored with the fixtures
(tests/fixtures/make_hf_fixtures.py made them; the suite needs neither torch nor transformers)."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from rlhf_jax.hf import HFFormatError, load_pretrained, save_pretrained
from rlhf_jax.reward_model import make_score_fn
from rlhf_jax.transformer import KVCache, TransformerConfig, TransformerLM, init_params

pytestmark = pytest.mark.timeout(300)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hf"
ARCHS = ["gpt2", "llama", "qwen2", "mistral"]


def _expected(arch: str) -> dict:
    return load_file(str(FIXTURES / arch / "expected.safetensors"))


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_and_scores_equal_transformers(arch):
    exp = _expected(arch)
    model, params, tok = load_pretrained(FIXTURES / arch / "lm")
    out = model.apply({"params": params}, jnp.asarray(exp["input_ids"]), jnp.asarray(exp["attention_mask"]))
    real = exp["attention_mask"].astype(bool)  # left-padded: every real token of every row
    np.testing.assert_allclose(np.asarray(out.logits)[real], exp["logits"][real], atol=1e-4, rtol=0)
    rm, rm_params, _ = load_pretrained(FIXTURES / arch / "cls", lm_head=False, scalar_head=True)
    scores = make_score_fn(rm)(rm_params, jnp.asarray(exp["cls_input_ids"]), jnp.asarray(exp["cls_attention_mask"]))
    np.testing.assert_allclose(np.asarray(scores), exp["scores"], atol=1e-4, rtol=0)
    assert tok.pad_id not in (tok.eos_id, tok.bos_id)  # masks decide padding, and a pad is never EOS


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_cache_decoding_equals_the_full_forward(arch):
    exp = _expected(arch)
    model, params, _ = load_pretrained(FIXTURES / arch / "lm")
    ids, mask = jnp.asarray(exp["input_ids"]), jnp.asarray(exp["attention_mask"])
    prompt = 6
    cache = KVCache.create(model.config, ids.shape[0], ids.shape[1])
    out = model.apply({"params": params}, ids[:, :prompt], mask[:, :prompt], cache)
    steps = [out.logits[:, -1]]
    cache = out.cache
    for t in range(prompt, ids.shape[1] - 1):
        out = model.apply({"params": params}, ids[:, t:t + 1], mask[:, t:t + 1], cache)
        steps.append(out.logits[:, -1])
        cache = out.cache
    full = model.apply({"params": params}, ids, mask).logits[:, prompt - 1:-1]
    real = np.asarray(mask[:, prompt - 1:-1]).astype(bool)
    np.testing.assert_allclose(np.asarray(jnp.stack(steps, 1))[real], np.asarray(full)[real], atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("head", ["lm", "cls"])
def test_save_then_load_is_identical_with_the_fixture_names_and_shapes(tmp_path, arch, head):
    kw = {} if head == "lm" else {"lm_head": False, "scalar_head": True}
    model, params, tok = load_pretrained(FIXTURES / arch / head, **kw)
    save_pretrained(tmp_path / "out", model, params, tok, kind=arch)
    model2, params2, tok2 = load_pretrained(tmp_path / "out", **kw)
    assert model2.config == model.config and (tok2.pad_id, tok2.eos_id, tok2.bos_id) == (tok.pad_id, tok.eos_id,
                                                                                         tok.bos_id)
    jax.tree.map(np.testing.assert_array_equal, params, params2)

    def shapes(folder):
        out = {}
        for f in folder.glob("*.safetensors"):
            with safe_open(str(f), framework="flax") as handle:
                out.update({k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()})
        return out

    assert shapes(tmp_path / "out") == shapes(FIXTURES / arch / head)
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["architectures"][0].endswith("ForCausalLM" if head == "lm" else "ForSequenceClassification") or (
        arch == "gpt2" and head == "lm" and saved["architectures"] == ["GPT2LMHeadModel"])
    assert saved["pad_token_id"] != saved["eos_token_id"]


def test_bfloat16_parameters_halve_memory_and_stay_close():
    exp = _expected("llama")
    model, params, _ = load_pretrained(FIXTURES / "llama" / "lm", dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    logits = model.apply({"params": params}, jnp.asarray(exp["input_ids"]), jnp.asarray(exp["attention_mask"])).logits
    real = exp["attention_mask"].astype(bool)
    assert logits.dtype == jnp.float32
    # Only the weights are rounded (activations stay float32): 0.002 on logits of size 0.4 here.
    np.testing.assert_allclose(np.asarray(logits)[real], exp["logits"][real], atol=0.01)


def test_activation_checkpointing_changes_nothing_but_memory():
    cfg = TransformerConfig(vocab_size=50, max_len=16, num_layers=2, num_heads=4, num_kv_heads=2, d_model=32,
                            d_ff=48, dropout=0.0, arch="llama", tie_embeddings=False)
    ids = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 0, 50)
    mask = jnp.ones_like(ids)

    def loss(params, remat):
        model = TransformerLM(TransformerConfig(**{**cfg.to_dict(), "remat": remat}))
        return jnp.mean(model.apply({"params": params}, ids, mask).logits ** 2)

    params = init_params(TransformerLM(cfg), jax.random.PRNGKey(0))
    plain, plain_grad = jax.value_and_grad(loss)(params, False)
    remat, remat_grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, True)
    np.testing.assert_allclose(remat, plain, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), remat_grad, plain_grad)


def _broken(tmp_path, arch="llama"):
    folder = tmp_path / "model"
    shutil.copytree(FIXTURES / arch / "lm", folder)
    return folder


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_bad_folders_name_the_file_and_key(tmp_path):
    folder = _broken(tmp_path)
    _edit_config(folder, model_type="falcon")
    with pytest.raises(HFFormatError, match=r"config.json: model_type 'falcon' is not supported"):
        load_pretrained(folder)
    _edit_config(folder, model_type="llama", rope_scaling={"rope_type": "yarn", "factor": 4.0}, rope_parameters=None)
    with pytest.raises(HFFormatError, match=r"config.json: rope scaling 'yarn' .* is not implemented"):
        load_pretrained(folder)
    _edit_config(folder, rope_scaling=None, hidden_size=48)
    with pytest.raises(HFFormatError, match=r"-of-00007.safetensors: model\.\S+ has shape .* config.json implies"):
        load_pretrained(folder)
    _edit_config(folder, hidden_size=32)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    victim = index["weight_map"]["model.norm.weight"]
    tensors = load_file(str(folder / victim))
    tensors.pop("model.norm.weight")
    save_file(tensors, str(folder / victim), metadata={"format": "pt"})
    with pytest.raises(HFFormatError, match=r"index.json: 'model.norm.weight' is listed in model-.* but is not there"):
        load_pretrained(folder)
    index["weight_map"].pop("model.norm.weight")
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(HFFormatError, match=r"missing weight 'model.norm.weight'"):
        load_pretrained(folder)
    (folder / "config.json").write_text("{\n  oops")
    with pytest.raises(HFFormatError, match=r"config.json:2: invalid JSON"):
        load_pretrained(folder)
    with pytest.raises(HFFormatError, match="is not a folder"):
        load_pretrained(tmp_path / "nothing")
    other = _broken(tmp_path / "x", "gpt2")
    _edit_config(other, n_positions=-1)  # named by its key in config.json, not by our field max_len
    with pytest.raises(HFFormatError, match=r"config.json: n_positions: must be positive, got -1$"):
        load_pretrained(other)
    _edit_config(other, n_positions=64, n_head="2")
    with pytest.raises(HFFormatError, match=r"config.json: n_head: must be an integer, got '2' \(str\)$"):
        load_pretrained(other)
    _edit_config(other, n_head=2)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        (other / name).unlink(missing_ok=True)
    with pytest.raises(HFFormatError, match=r"tokenizer_config.json: missing \(it names the special tokens"):
        load_pretrained(other)
    (other / "tokenizer.json").unlink()
    with pytest.raises(HFFormatError, match=r"tokenizer.json: missing"):
        load_pretrained(other)
    llama = _broken(tmp_path / "y")
    _edit_config(llama, max_position_embeddings=0)
    with pytest.raises(HFFormatError, match=r"config.json: max_position_embeddings: must be positive, got 0$"):
        load_pretrained(llama)


def test_no_bos_token_prepends_nothing():
    _, _, tok = load_pretrained(FIXTURES / "qwen2" / "lm")
    assert tok.bos_id is None and tok.bos_ids == []
    batch = tok.encode_batch(["Review of the lamp:"], add_bos=True)
    assert batch.input_ids[0].tolist() == tok.encode("Review of the lamp:")


@pytest.mark.slow
def test_sft_from_a_pretrained_folder_then_export_loads_back(tmp_path, capsys):
    from rlhf_jax import checkpoint as ckpt
    from rlhf_jax.cli import main

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": "Review of the lamp:", "response": f" The lamp is {w}."}) + "\n"
                            for w in ("bright", "cheap", "dull", "great") * 8))
    main(["sft", "--model", str(FIXTURES / "qwen2" / "lm"), "--data", str(data), "--steps", "20", "--warmup-steps",
          "2", "--batch-size", "8", "--eval-every", "10", "--num-samples", "2", "--out", str(tmp_path / "run"),
          "--no-progress"])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["heldout_loss"] < 5.0  # from ~ln(320) = 5.8 for a random model
    main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "hf"), "--kind", "qwen2"])
    model, params, _ = ckpt.load(tmp_path / "run")
    model2, params2, _ = load_pretrained(tmp_path / "hf")
    jax.tree.map(np.testing.assert_array_equal, params, params2)
    main(["generate", "--model", str(tmp_path / "hf"), "--prompt", "Review of the lamp:", "--max-new-tokens", "4",
          "--out", str(tmp_path / "gen")])
    assert "run folder:" in capsys.readouterr().out


@pytest.mark.slow
def test_pipeline_on_a_pretrained_model_and_your_own_data(tmp_path, capsys):
    from rlhf_jax.cli import main

    def jsonl(name, rows):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(tmp_path / name)

    words = ("bright", "cheap", "dull", "great", "awful", "fine")
    sft = jsonl("sft.jsonl", [{"prompt": f"Review of the {i}:", "response": f" It is {w}."}
                              for i in ("lamp", "desk") for w in words] * 4)
    # hh-rlhf layout: whole dialogues, the prompt is their shared part up to the last Assistant turn.
    prefs = jsonl("prefs.jsonl", [{"chosen": f"\n\nHuman: Review the {i}.\n\nAssistant: It is great.",
                                   "rejected": f"\n\nHuman: Review the {i}.\n\nAssistant: It is {w}."}
                                  for i in ("lamp", "desk", "bike", "book") for w in ("awful", "dull")] * 4)
    prompts = jsonl("prompts.jsonl", [{"prompt": f"Review of the {i}:"} for i in ("lamp", "desk", "bike")] * 5)
    run = tmp_path / "run"
    main(["pipeline", "--model", str(FIXTURES / "qwen2" / "lm"), "--sft-data", sft, "--pref-data", prefs,
          "--prompts", prompts, "--out", str(run), "--sft.steps", "10", "--sft.warmup-steps", "1",
          "--sft.batch-size", "8", "--rm.epochs", "1", "--rm.batch-size", "8", "--ppo.iterations", "2",
          "--ppo.batch-size", "8", "--ppo.minibatches", "2", "--ppo.epochs", "1", "--ppo.max-new-tokens", "8",
          "--eval-prompts", "4", "--checkpoint-every", "1", "--no-progress",
          "--modes", "proxy", "grpo", "rloo", "dpo", "--dpo.batch-size", "8", "--dpo.epochs", "1"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] is None and summary["gold_reward_final"] is None  # no gold reward for your data
    for mode in ("grpo", "rloo", "dpo"):  # the other methods on the loaded checkpoint too
        assert np.isfinite(summary[mode]["proxy_reward"]) and summary[mode]["kl"] >= 0.0, mode
    grpo = json.loads((run / "grpo" / "metrics.json").read_text())
    assert grpo[0]["first_minibatch_ratio_deviation"] < 1e-4 and "reward_std_within_groups" in grpo[0]
    rloo = json.loads((run / "rloo" / "metrics.json").read_text())
    assert rloo[-1]["non_score_reward"] != 0.0  # RLOO: the KL (non-zero after one update) is in the reward
    for name in ("grpo/checkpoint/model.json", "rloo/metrics.json", "dpo/metrics.json", "dpo/samples.json"):
        assert (run / name).exists(), name
    assert np.isfinite(summary["proxy_reward_final"]) and np.isfinite(summary["kl_final"])
    assert "ppo_gold" not in summary and "best_of_n" not in summary
    pairs = [json.loads(line) for line in (run / "rm" / "pairs.jsonl").read_text().splitlines()]
    assert pairs[0]["prompt"].endswith("\n\nAssistant:") and pairs[0]["chosen"] == " It is great."
    for name in ("sft/checkpoint/model.json", "rm/checkpoint/model.json", "ppo_proxy/checkpoint/model.json",
                 "proxy_vs_sqrt_kl.png"):
        assert (run / name).exists(), name
    from rlhf_jax import checkpoint as ckpt

    model, _, tok = ckpt.load(run / "ppo_proxy")
    assert model.config.arch == "llama" and tok.bos_id is None  # Qwen2's shape and tokenizer all the way
    assert "proxy_reward_final" in capsys.readouterr().out


def test_pipeline_own_data_needs_all_three_files(tmp_path, capsys):
    from rlhf_jax.cli import main

    with pytest.raises(SystemExit):
        main(["pipeline", "--sft-data", "x.jsonl", "--out", str(tmp_path / "p")])
    assert "your own data needs --sft-data, --pref-data and --prompts together" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pipeline", "--sft-data", "a", "--pref-data", "b", "--prompts", "c", "--modes", "gold"])
    assert "'gold' and 'best-of-n' need a task's gold reward" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
