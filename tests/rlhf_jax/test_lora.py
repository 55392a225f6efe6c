"""LoRA: the adapted layer's math, equality with the base at the start, merging, training the
adapters alone (no frozen weight gradients, no optimiser state for them), the reference
without a copy, checkpoints of the adapters alone with a pointer to their base."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from ppo_jax.optim import gradient_step
from ppo_jax.run.checkpoints import CheckpointError
from rlhf_jax import checkpoint as ckpt
from rlhf_jax import lora
from rlhf_jax.dpo import DPOConfig, train_dpo
from rlhf_jax.lora import LoRAConfig, LoRADense
from rlhf_jax.reward_model import RMConfig, train_reward_model
from rlhf_jax.sft import SFTConfig, make_optimizer, train_sft
from rlhf_jax.stages import supervised_checkpoints
from rlhf_jax.tokenizer import ByteTokenizer
from rlhf_jax.transformer import TransformerConfig, TransformerLM, init_params

pytestmark = pytest.mark.timeout(300)

SHAPES = {"gpt2": TransformerConfig(num_layers=2, d_model=64, num_heads=4, max_len=32, dropout=0.0),
          "llama": TransformerConfig(num_layers=2, d_model=64, num_heads=4, num_kv_heads=2, max_len=32, dropout=0.0,
                                     arch="llama", tie_embeddings=False, qkv_bias=True)}
RANK8 = LoRAConfig(rank=8, alpha=16.0)


def _model_and_params(arch, adapters=RANK8, seed=0):
    cfg = SHAPES[arch]
    base = init_params(TransformerLM(cfg), jax.random.PRNGKey(seed))
    return TransformerLM(cfg), base, TransformerLM(cfg, lora=adapters), lora.with_adapters(
        base, adapters, cfg.arch, jax.random.PRNGKey(seed + 1))


def _ids(batch=3, length=16, seed=2):
    ids = jax.random.randint(jax.random.PRNGKey(seed), (batch, length), 3, 259)
    return ids, jnp.ones_like(ids)


def _randomised_b(params, seed=3):
    """``params`` with every ``lora_b`` random, so the adapters change the model."""
    flat = traverse_util.flatten_dict(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(flat))
    return traverse_util.unflatten_dict({p: (0.05 * jax.random.normal(k, v.shape) if p[-1] == "lora_b" else v)
                                         for (p, v), k in zip(sorted(flat.items()), keys)})


def test_the_adapted_layer_is_x_w_plus_b_plus_scaled_x_a_b():
    x = np.random.default_rng(0).normal(size=(2, 5, 6)).astype(np.float32)
    layer = LoRADense(4, rank=3, scale=2.5, dropout=0.0, deterministic=True,
                      kernel_init=jax.nn.initializers.normal(1.0))
    params = layer.init(jax.random.PRNGKey(0), x)["params"]
    params = {**params, "lora_b": jax.random.normal(jax.random.PRNGKey(1), (3, 4)),
              "bias": jax.random.normal(jax.random.PRNGKey(2), (4,))}
    p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
    expected = x @ p["kernel"] + p["bias"] + 2.5 * (x @ p["lora_a"]) @ p["lora_b"]
    np.testing.assert_allclose(layer.apply({"params": params}, x), expected, rtol=1e-5, atol=1e-5)
    assert params["lora_a"].shape == (6, 3) and np.all(np.abs(params["lora_a"]) <= 1 / np.sqrt(6))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_at_initialisation_the_adapted_model_equals_its_base_exactly(arch):
    base_lm, base, lm, params = _model_and_params(arch)
    ids, mask = _ids()
    np.testing.assert_array_equal(lm.apply({"params": params}, ids, mask).logits,
                                  base_lm.apply({"params": base}, ids, mask).logits)
    # with_adapters builds the tree the adapted module itself would
    assert jax.tree.structure(params) == jax.tree.structure(init_params(lm, jax.random.PRNGKey(0)))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_merged_and_unmerged_forwards_agree(arch):
    base_lm, _, lm, params = _model_and_params(arch)
    params = _randomised_b(params)
    ids, mask = _ids()
    adapted = lm.apply({"params": params}, ids, mask).logits
    merged = base_lm.apply({"params": lora.merged(params, RANK8)}, ids, mask).logits
    base = base_lm.apply({"params": lora.without_adapters(params)}, ids, mask).logits
    assert float(jnp.abs(adapted - base).max()) > 1e-2  # the adapters do change the model
    np.testing.assert_allclose(merged, adapted, rtol=1e-4, atol=1e-4)


def test_targets_choose_the_layers_and_bad_ones_are_named():
    assert LoRAConfig(rank=4, targets="q,v").adapted_layers("llama") == ("q", "v")
    assert LoRAConfig(rank=4).adapted_layers("gpt2") == ("qkv", "out", "fc", "proj")
    assert LoRAConfig(rank=4, targets="o,up").adapted_layers("gpt2") == ("out", "fc")
    with pytest.raises(ValueError, match="lora.targets: 'gpt2' packs q, k and v"):
        lora.check(LoRAConfig(rank=4, targets="q,v"), "gpt2")
    with pytest.raises(ValueError, match="lora.targets: 'gpt2' has no gate layer"):
        lora.check(LoRAConfig(rank=4, targets="gate"), "gpt2")
    with pytest.raises(ValueError, match="lora.targets: lm_head is not a layer"):
        lora.check(LoRAConfig(rank=4, targets="q,lm_head"), "llama")
    with pytest.raises(ValueError, match="lora.rank"):
        lora.check(LoRAConfig(rank=-1), "llama")
    with pytest.raises(ValueError, match="lora.base_dtype"):
        lora.check(LoRAConfig(rank=2, base_dtype="float16"), "llama")
    _, base, _, params = _model_and_params("llama", LoRAConfig(rank=2, targets="q,v"))
    adapted = {p[-2] for p in traverse_util.flatten_dict(params) if p[-1] == "lora_a"}
    assert adapted == {"q", "v"}


def _lm_loss(lm):
    def loss(params, ids, mask):
        logits = lm.apply({"params": params}, ids, mask).logits
        return -jnp.mean(jax.nn.log_softmax(logits[:, :-1]) * jax.nn.one_hot(ids[:, 1:], logits.shape[-1])) * 259
    return loss


def _flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_step_trains_the_adapters_alone_and_never_forms_the_frozen_weight_gradients(arch):
    base_lm, base, lm, params = _model_and_params(arch)
    params = _randomised_b(params)  # B != 0: A's gradient is not zero either
    tx = optax.adam(1e-2)
    part = lora.partition(RANK8)
    trainable, frozen = part.split(params)
    opt = tx.init(trainable)
    ids, mask = _ids()
    step = gradient_step(_lm_loss(lm), tx, partition=part)
    new, _, _, _ = jax.jit(step)(params, opt, ids, mask)
    before, after = traverse_util.flatten_dict(params), traverse_util.flatten_dict(new)
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    assert changed == {p for p in before if p[-1] in ("lora_a", "lora_b")}
    for p in before:  # the frozen arrays pass through as they were
        if p not in changed:
            assert after[p].dtype == before[p].dtype
    # The optimiser holds Adam's two moments of the adapters, nothing of the frozen weights.
    opt_size = sum(x.size for x in jax.tree.leaves(opt) if x.ndim)
    n_train, n_total = lora.count(params)
    assert opt_size == 2 * n_train and n_train < 0.2 * n_total
    # No weight gradient of a frozen matrix: in XLA's own count of the step's work, the same
    # model trained whole (adapters and all) costs at least the frozen matrices' weight
    # gradients more, 2 x tokens x size each (the kernels, and a tied embedding as the LM head).
    lora_flops = _flops(step, params, opt, ids, mask)
    whole_flops = _flops(gradient_step(_lm_loss(lm), tx), params, tx.init(params), ids, mask)
    matrices = [v.size for p, v in traverse_util.flatten_dict(base).items()
                if p[-1] == "kernel" or p == ("wte", "embedding") and SHAPES[arch].tie_embeddings]
    weight_gradients = 2 * ids.size * sum(matrices)
    assert whole_flops - lora_flops > 0.95 * weight_gradients


def test_the_reference_is_the_policy_without_adapters_and_shares_its_arrays():
    _, base, _, params = _model_and_params("llama")
    ref = lora.without_adapters(params)
    for p, v in traverse_util.flatten_dict(ref).items():
        assert v is traverse_util.flatten_dict(params)[p]
    assert jax.tree.structure(ref) == jax.tree.structure(base)


def test_a_bfloat16_base_keeps_its_adapters_and_heads_in_float32():
    cfg = SHAPES["llama"]
    base = init_params(TransformerLM(cfg, scalar_head=True), jax.random.PRNGKey(0))
    half = LoRAConfig(rank=4, base_dtype="bfloat16")
    params = lora.with_adapters(base, half, "llama", jax.random.PRNGKey(1))
    flat = traverse_util.flatten_dict(params)
    assert {str(v.dtype) for p, v in flat.items() if p[-1].startswith("lora_") or p[0] == "scalar_head"} == \
        {"float32"}
    assert {str(v.dtype) for p, v in flat.items() if not (p[-1].startswith("lora_") or p[0] == "scalar_head")} == \
        {"bfloat16"}
    ids, mask = _ids()
    out = TransformerLM(cfg, scalar_head=True, lora=half).apply({"params": params}, ids, mask)
    assert out.logits.dtype == jnp.float32 and bool(jnp.isfinite(out.logits).all())


SFT = SFTConfig(model=TransformerConfig(num_layers=1, d_model=32, num_heads=2, max_len=32, dropout=0.0),
                steps=30, warmup_steps=2, eval_every=10, batch_size=8, max_length=32, lr=3e-3)
PROMPTS = [f"q{i}:" for i in range(64)]
RESPONSES = [f" a{i % 3}" for i in range(64)]
NEW_RESPONSES = [" xyz" for _ in range(64)]


def test_sft_with_lora_learns_with_the_base_frozen_and_resumes_from_adapters_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("RL_JAX_SAVE_INTERVAL_S", "0")
    tok = ByteTokenizer()
    base = train_sft(SFT, tok, PROMPTS, RESPONSES).params
    config = SFTConfig(**{**SFT.__dict__, "lora": LoRAConfig(rank=4, alpha=8.0), "lr": 1e-2})
    whole = train_sft(config, tok, PROMPTS, NEW_RESPONSES, params=base)
    assert whole.train_loss[-5:].mean() < 0.85 * whole.train_loss[:3].mean()  # 0.76 seen
    jax.tree.map(np.testing.assert_array_equal, lora.without_adapters(whole.params), base)

    def die_at_25(step, loss):
        if step + 1 == 25:
            raise KeyboardInterrupt

    saved = supervised_checkpoints(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        train_sft(config, tok, PROMPTS, NEW_RESPONSES, params=base, progress=die_at_25, checkpoints=saved)
    # The periodic checkpoint holds the adapters (and their Adam state) alone.
    trainable = lora.partition(config.lora).split(whole.params)[0]
    like = {"params": trainable, "opt_state": make_optimizer(config).init(trainable),
            "losses": np.zeros(config.steps, np.float32)}
    tree, _ = saved.restore(20, like)
    assert {p[-1] for p in traverse_util.flatten_dict(tree["params"])} == {"lora_a", "lora_b"}
    resumed = train_sft(config, tok, PROMPTS, NEW_RESPONSES, params=base, checkpoints=supervised_checkpoints(tmp_path))
    jax.tree.map(np.testing.assert_array_equal, whole.params, resumed.params)


def _rl(algo, value_model="critic"):
    from test_rlhf_trainer import TINY

    from rlhf_jax.ppo_trainer import RLHFConfig, make_programs
    from rlhf_jax.reward_model import reward_model

    config = RLHFConfig(algo=algo, batch_size=8, group_size=2, max_new_tokens=10, epochs=2, minibatches=2, lr=1e-2,
                        value_model=value_model, lora=LoRAConfig(rank=4))
    programs = make_programs(config, TINY, reward_model(TINY), prompt_len=5, max_new_tokens=10, eos_id=2, pad_id=0)
    sft = init_params(TransformerLM(TINY), jax.random.PRNGKey(0))
    rm_params = init_params(reward_model(TINY), jax.random.PRNGKey(1))
    ids = jax.random.randint(jax.random.PRNGKey(2), (8, 5), 3, 24)
    return config, programs, sft, rm_params, ids, jnp.ones_like(ids)


@pytest.mark.parametrize("algo, value_model", [("grpo", "critic"), ("ppo", "policy-head")])
def test_rl_with_lora_trains_the_adapters_against_the_base_as_reference(algo, value_model):
    from rlhf_jax.ppo_trainer import init_state

    config, programs, sft, rm_params, ids, mask = _rl(algo, value_model)
    state = init_state(config, programs, sft, rm_params)
    n_train, _ = lora.count(state.policy_params)
    assert sum(x.size for x in jax.tree.leaves(state.policy_opt) if x.ndim) == 2 * n_train
    # The reference is the policy's own frozen weights (ref_params None): no copy is passed.
    new, _, m = programs.iteration(state, None, rm_params, 0.0, 1.0, ids, mask, jax.random.PRNGKey(3))
    assert float(m["first_minibatch_ratio_deviation"]) < 1e-5 and abs(float(m["kl_exact"])) < 1e-6
    before, after = (traverse_util.flatten_dict(s.policy_params) for s in (state, new))
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    trained = {p for p in before if p[-1] in ("lora_a", "lora_b") or p[0] == "scalar_head"}
    assert changed and changed <= trained
    assert {p[-1] for p in changed} >= {"lora_b"}
    for p, v in traverse_util.flatten_dict(sft).items():
        np.testing.assert_array_equal(after[p], v)
    _, _, m2 = programs.iteration(new, None, rm_params, 0.0, 1.0, ids, mask, jax.random.PRNGKey(4))
    assert float(m2["kl_exact"]) > 0  # the adapted policy has moved from its base


def test_an_rl_run_with_lora_checkpoints_the_adapters_and_resumes_to_the_same_state(tmp_path):
    import functools

    from test_rlhf_trainer import _Prompts, _Tokenizer

    from ppo_jax.run.checkpoints import RunCheckpoints
    from rlhf_jax.ppo_trainer import init_state, train_rlhf
    from rlhf_jax.stages import RUN_FORMAT, RUN_PAYLOAD

    config, programs, sft, rm_params, ids, mask = _rl("grpo")
    run = functools.partial(train_rlhf, programs=programs, ref_params=sft, tokenizer=_Tokenizer(),
                            prompts=_Prompts(ids, mask), rm_params=rm_params, checkpoint_every=1)
    iterations = lambda n: config.__class__(**{**config.__dict__, "iterations": n})  # noqa: E731
    folder = lambda name: RunCheckpoints(tmp_path / name, format=RUN_FORMAT, payload=RUN_PAYLOAD)  # noqa: E731
    whole = run(iterations(2), state=init_state(config, programs, sft, rm_params), checkpoints=folder("whole"))
    run(iterations(1), state=init_state(config, programs, sft, rm_params), checkpoints=folder("b"))
    state = init_state(config, programs, sft, rm_params)
    saved = state.replace(policy_params=lora.partition(config.lora).split(state.policy_params)[0])
    tree, _ = folder("b").restore(1, saved)
    assert {p[-1] for p in traverse_util.flatten_dict(tree.policy_params)} == {"lora_a", "lora_b"}
    resumed = run(iterations(2), state=state, checkpoints=folder("b"))
    jax.tree.map(np.testing.assert_array_equal, resumed.state, whole.state)


def _rm_pairs(n=64):
    return [{"prompt": f"p{i}", "chosen": " good" * (1 + i % 2), "rejected": " bad" * (1 + i % 3)} for i in range(n)]


def test_a_reward_model_with_lora_trains_its_adapters_and_head_alone():
    lm_params = init_params(TransformerLM(SFT.model), jax.random.PRNGKey(0))
    config = RMConfig(model=SFT.model, epochs=2, batch_size=8, lr=1e-2, max_length=32, lora=LoRAConfig(rank=4))
    result = train_reward_model(config, ByteTokenizer(), _rm_pairs(), init_params_from=lm_params,
                                model_config=SFT.model)
    assert result.history[-1]["train_accuracy"] > 0.9
    flat = traverse_util.flatten_dict(result.params)
    for p, v in traverse_util.flatten_dict(lm_params).items():  # the body is the LM's, untouched
        np.testing.assert_array_equal(flat[p], v)
    new = {p for p in flat if p not in traverse_util.flatten_dict(lm_params)}
    assert {p[-1] for p in new if p[0] != "scalar_head"} == {"lora_a", "lora_b"}
    assert {p for p in new if p[0] == "scalar_head"} == {("scalar_head", "kernel"), ("scalar_head", "bias")}


def test_dpo_with_lora_starts_at_its_reference_and_keeps_the_base():
    lm = TransformerLM(SFT.model)
    params = init_params(lm, jax.random.PRNGKey(0))
    config = DPOConfig(model=SFT.model, epochs=2, batch_size=8, lr=1e-2, max_length=32, lora=LoRAConfig(rank=4))
    result = train_dpo(config, ByteTokenizer(), _rm_pairs(), params=params, model=lm)
    before = result.history[0]
    assert before["heldout_loss"] == pytest.approx(np.log(2), abs=1e-6) and before["heldout_accuracy"] == 0.5
    assert result.history[-1]["train_accuracy"] > 0.9
    jax.tree.map(np.testing.assert_array_equal, lora.without_adapters(result.params), params)


def test_a_lora_checkpoint_holds_the_adapters_and_loads_onto_its_base(tmp_path):
    tok = ByteTokenizer()
    base_lm = TransformerLM(SFT.model)
    base = init_params(base_lm, jax.random.PRNGKey(0))
    ckpt.save(tmp_path / "base", base, base_lm, tok)
    adapters = LoRAConfig(rank=4, base_dtype="bfloat16")
    lm = TransformerLM(SFT.model, lora=adapters)
    params = _randomised_b(lora.with_adapters(base, adapters, "gpt2", jax.random.PRNGKey(1)))
    ckpt.save(tmp_path / "adapted", params, lm, tok, base=tmp_path / "base")
    saved = (tmp_path / "adapted" / "params")
    assert sum(f.stat().st_size for f in saved.rglob("*") if f.is_file()) < 0.5 * sum(
        v.nbytes for v in jax.tree.leaves(base))
    model, loaded, _ = ckpt.load(tmp_path / "adapted", adapters=True)
    assert model.lora == adapters
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    plain, merged, _ = ckpt.load(tmp_path / "adapted")
    assert not plain.lora.active
    ids, mask = _ids()
    np.testing.assert_allclose(plain.apply({"params": merged}, ids, mask).logits,
                               lm.apply({"params": params}, ids, mask).logits, rtol=1e-4, atol=1e-4)
    # Without a base the whole tree is saved; with a moved base the error names both.
    ckpt.save(tmp_path / "whole", params, lm, tok)
    jax.tree.map(np.testing.assert_array_equal, ckpt.load(tmp_path / "whole", adapters=True)[1], params)
    (tmp_path / "base").rename(tmp_path / "moved")
    with pytest.raises(CheckpointError, match=r"adapted/model.json: its base model .*base is not a folder"):
        ckpt.load(tmp_path / "adapted")


PEFT_FIXTURES = Path(__file__).parent.parent / "fixtures" / "peft"


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_peft_adapter_folder_loads_onto_its_base_with_peft_s_logits(arch):
    from safetensors.numpy import load_file

    from rlhf_jax.hf import load_pretrained

    exp = load_file(str(PEFT_FIXTURES / arch / "expected.safetensors"))
    model, params, _ = load_pretrained(PEFT_FIXTURES / arch)  # base_model_name_or_path: ../../hf/<arch>/lm
    out = model.apply({"params": params}, jnp.asarray(exp["input_ids"]), jnp.asarray(exp["attention_mask"]))
    real = exp["attention_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(out.logits)[real], exp["logits"][real], atol=1e-4, rtol=0)
    _, base, _ = load_pretrained(PEFT_FIXTURES.parent / "hf" / arch / "lm")
    plain = model.apply({"params": base}, jnp.asarray(exp["input_ids"]), jnp.asarray(exp["attention_mask"]))
    assert np.abs(np.asarray(plain.logits)[real] - exp["logits"][real]).max() > 1e-2  # the adapter matters


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_our_adapters_written_as_a_peft_folder_load_back_to_the_adapted_model(tmp_path, arch):
    from rlhf_jax.hf import load_pretrained, save_peft_adapter

    base_folder = PEFT_FIXTURES.parent / "hf" / arch / "lm"
    base_lm, base, _ = load_pretrained(base_folder)
    adapters = LoRAConfig(rank=4, alpha=8.0, targets="q,k,v,o,up,down")
    lm = TransformerLM(base_lm.config, lora=adapters)
    params = _randomised_b(lora.with_adapters(base, adapters, base_lm.config.arch, jax.random.PRNGKey(1)))
    save_peft_adapter(tmp_path / "adapter", lm, params, base=str(base_folder))
    conf = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert conf["r"] == 4 and conf["lora_alpha"] == 8.0 and conf["fan_in_fan_out"] == (arch == "gpt2")
    loaded_lm, loaded, _ = load_pretrained(tmp_path / "adapter")
    ids, mask = _ids(length=12)
    ids = ids % base_lm.config.vocab_size
    np.testing.assert_allclose(loaded_lm.apply({"params": loaded}, ids, mask).logits,
                               lm.apply({"params": params}, ids, mask).logits, atol=1e-5, rtol=1e-5)


def test_rlhf_jax_rl_with_lora_points_to_its_base_exports_both_ways_and_resumes(tmp_path, monkeypatch):
    from test_rl import GPT2, TINY, _DyingBar, _same_run

    from rlhf_jax import rl
    from rlhf_jax.cli import main
    from rlhf_jax.hf import load_pretrained

    flags = [*TINY, "--lora.rank", "4", "--lr", "1e-2"]
    whole = tmp_path / "whole"
    main(["rl", "--model", str(GPT2), *flags, "--out", str(whole)])
    meta = json.loads((whole / "checkpoint" / "model.json").read_text())
    assert meta["base"] == str(GPT2.absolute()) and meta["lora"]["rank"] == 4
    assert json.loads((whole / "final.json").read_text())["kl"] > 0  # the adapters moved the policy
    plain, merged, _ = ckpt.load(whole)
    _, exported, _ = load_pretrained(whole / "hf")  # the merged Hugging Face export
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=0), exported, merged)
    main(["export", "--checkpoint", str(whole), "--out", str(tmp_path / "adapter"), "--adapter"])
    _, from_peft, _ = load_pretrained(tmp_path / "adapter")
    ids, mask = _ids(length=10)
    ids = ids % plain.config.vocab_size
    np.testing.assert_allclose(plain.apply({"params": from_peft}, ids, mask).logits,
                               plain.apply({"params": merged}, ids, mask).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(SystemExit):  # a plain checkpoint has no adapters to export
        main(["export", "--checkpoint", str(whole / "hf"), "--out", str(tmp_path / "nothing"), "--adapter"])

    killed = tmp_path / "killed"
    with monkeypatch.context() as m:
        m.setattr(rl, "progress_bar", lambda *a, **k: _DyingBar(at=2))
        with pytest.raises(SystemExit):
            main(["rl", "--model", str(GPT2), *flags, "--out", str(killed)])
    main(["rl", "--resume", str(killed), "--no-progress"])
    _same_run(whole, killed)


def test_the_pipeline_with_lora_on_every_stage_chains_its_checkpoints_to_the_model(tmp_path):
    from rlhf_jax.cli import main

    def jsonl(name, rows):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(tmp_path / name)

    sft = jsonl("sft.jsonl", [{"prompt": f"Review of the {i}:", "response": f" It is {w}."}
                              for i in ("lamp", "desk") for w in ("great", "dull", "fine")] * 4)
    prefs = jsonl("prefs.jsonl", [{"prompt": f"Review of the {i}:", "chosen": " It is great.",
                                   "rejected": f" It is {w}."} for i in ("lamp", "desk", "bike") for w in ("awful", "dull")]
                  * 4)
    prompts = jsonl("prompts.jsonl", [{"prompt": f"Review of the {i}:"} for i in ("lamp", "desk", "bike")] * 5)
    base = PEFT_FIXTURES.parent / "hf" / "qwen2" / "lm"
    run = tmp_path / "run"
    main(["pipeline", "--model", str(base), "--sft-data", sft, "--pref-data", prefs, "--prompts", prompts,
          "--out", str(run), "--sft.steps", "10", "--sft.warmup-steps", "1", "--sft.batch-size", "8", "--rm.epochs", "1",
          "--rm.batch-size", "8", "--ppo.iterations", "2", "--ppo.batch-size", "8", "--ppo.minibatches", "2",
          "--ppo.epochs", "1", "--ppo.max-new-tokens", "8", "--eval-prompts", "4", "--checkpoint-every", "1",
          "--no-progress", "--modes", "grpo", "dpo", "--dpo.batch-size", "8", "--dpo.epochs", "1",
          "--sft.lora.rank", "4", "--rm.lora.rank", "4", "--ppo.lora.rank", "4", "--dpo.lora.rank", "4"])
    base_of = {stage: json.loads((run / stage / "checkpoint" / "model.json").read_text()).get("base")
               for stage in ("sft", "rm", "grpo", "dpo")}
    sft_checkpoint = str(run / "sft" / "checkpoint")
    assert base_of == {"sft": str(base.absolute()), "rm": sft_checkpoint, "grpo": sft_checkpoint,
                       "dpo": sft_checkpoint}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["grpo"]["kl"] > 0 and np.isfinite(summary["dpo"]["proxy_reward"])
    for stage in ("rm", "grpo", "dpo"):  # each loads through the chain: its base, the SFT adapters on theirs
        model, params, _ = ckpt.load(run / stage)
        assert not model.lora.active and not lora.has_adapters(params)


def test_a_lora_checkpoint_on_a_run_folder_loads_its_base_through_the_run(tmp_path):
    tok = ByteTokenizer()
    base_lm = TransformerLM(SFT.model)
    base = init_params(base_lm, jax.random.PRNGKey(0))
    ckpt.save(tmp_path / "run" / "checkpoint", base, base_lm, tok)
    (tmp_path / "run" / "config.json").write_text("{}")  # a run folder's own config, not a Hugging Face one
    adapters = LoRAConfig(rank=4)
    params = _randomised_b(lora.with_adapters(base, adapters, "gpt2", jax.random.PRNGKey(1)))
    ckpt.save(tmp_path / "adapted", params, TransformerLM(SFT.model, lora=adapters), tok, base=tmp_path / "run")
    jax.tree.map(np.testing.assert_array_equal, ckpt.load(tmp_path / "adapted", adapters=True)[1], params)
