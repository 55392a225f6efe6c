"""The RLHF-PPO loop: compiled iteration, value-model choices, best-of-n, bf16 matmuls, learning."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from rlhf_jax.best_of_n import best_of_n_curve, best_of_n_kl
from rlhf_jax.ppo_trainer import (
    PromptSource,
    RLHFConfig,
    evaluate_policy,
    init_state,
    make_programs,
    train_rlhf,
)
from rlhf_jax.reward_model import reward_model
from rlhf_jax.tasks import reviews
from rlhf_jax.transformer import TransformerConfig, TransformerLM, init_params

pytestmark = pytest.mark.timeout(300)

TINY = TransformerConfig(vocab_size=24, max_len=24, num_layers=1, num_heads=2, d_model=32, dropout=0.0)


@functools.cache
def _programs(config: RLHFConfig):
    return make_programs(config, TINY, reward_model(TINY), prompt_len=5, max_new_tokens=10, eos_id=2, pad_id=0)


def _tiny(value_model="critic"):
    """A tiny policy, reward model and left-padded prompts; programs compiled once per value model.

    The adaptive KL controller with the k3 estimator (never negative) and a tiny target is on,
    so that its direction can be checked inside the compiled iteration too.
    """
    config = RLHFConfig(batch_size=8, max_new_tokens=10, epochs=2, minibatches=2, lr=1e-3, value_model=value_model,
                        adaptive_kl=True, target_kl=1e-3, kl_horizon=100.0, kl_estimator="k3")
    programs = _programs(config)
    sft = init_params(TransformerLM(TINY), jax.random.PRNGKey(0))
    rm_params = init_params(reward_model(TINY), jax.random.PRNGKey(1))
    ids = jax.random.randint(jax.random.PRNGKey(2), (8, 5), 3, 24)
    mask = (jnp.arange(5)[None, :] >= jnp.arange(8)[:, None] % 3).astype(jnp.int32)  # left padding 0-2
    return config, programs, sft, rm_params, jnp.where(mask == 1, ids, 0), mask


@pytest.mark.parametrize("value_model", ["critic", "policy-head"])
def test_iteration_ratio_one_first_minibatch_and_masks(value_model):
    config, programs, sft, rm_params, ids, mask = _tiny(value_model)
    state = init_state(config, programs, sft, rm_params)
    new, gen, m = programs.iteration(state, sft, rm_params, 0.0, 1.0, ids, mask, jax.random.PRNGKey(3))
    assert float(m["first_minibatch_ratio_deviation"]) < 1e-5  # the first ratio is exactly 1
    assert abs(float(m["first_minibatch_approx_kl"])) < 1e-7
    assert abs(float(m["kl"])) < 1e-6 and abs(float(m["kl_exact"])) < 1e-6  # policy == reference at the start
    assert all(np.isfinite(float(v)) for v in m.values())
    assert not np.allclose(jax.tree.leaves(new.policy_params)[0], jax.tree.leaves(state.policy_params)[0])
    if value_model == "critic":  # the critic starts as the reward model and learns
        jax.tree.map(np.testing.assert_array_equal, state.critic_params, rm_params)
        assert not np.allclose(jax.tree.leaves(new.critic_params)[0], jax.tree.leaves(rm_params)[0])
    else:  # a zero value head on the policy: the first values are exactly 0
        assert float(m["value_mean"]) == 0.0 and new.critic_params == {}
    # A second iteration from the updated policy has a positive KL to the reference.
    _, _, m2 = programs.iteration(new, sft, rm_params, 0.0, 1.0, ids, mask, jax.random.PRNGKey(4))
    assert float(m2["kl_exact"]) > 0


def test_same_key_same_run_and_seeds_vmap_to_different_runs():
    config, programs, sft, rm_params, ids, mask = _tiny()
    state = init_state(config, programs, sft, rm_params)
    a = programs.iteration(state, sft, rm_params, 0.0, 1.0, ids, mask, jax.random.PRNGKey(3))
    b = programs.iteration(state, sft, rm_params, 0.0, 1.0, ids, mask, jax.random.PRNGKey(3))
    jax.tree.map(np.testing.assert_array_equal, a[0], b[0])
    states = jax.tree.map(lambda x: jnp.stack([x, x]), state)
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    run = jax.vmap(programs.iteration, in_axes=(0, None, None, None, None, None, None, 0))
    new, gen, m = run(states, sft, rm_params, 0.0, 1.0, ids, mask, keys)
    assert not np.array_equal(gen.sequences[0], gen.sequences[1])
    assert not np.allclose(jax.tree.leaves(new.policy_params)[0][0], jax.tree.leaves(new.policy_params)[0][1])
    # The vmapped seed 0 is the single run of that key.
    single = programs.iteration(state, sft, rm_params, 0.0, 1.0, ids, mask, keys[0])
    np.testing.assert_array_equal(gen.sequences[0], single[1].sequences)
    np.testing.assert_allclose(m["policy_loss"][0], single[2]["policy_loss"], rtol=1e-4, atol=1e-6)


def test_adaptive_kl_coefficient_moves_inside_the_iteration():
    config, programs, sft, rm_params, ids, mask = _tiny()
    state = init_state(config, programs, sft, rm_params)
    state, _, _ = programs.iteration(state, sft, rm_params, 0.0, 1.0, ids, mask, jax.random.PRNGKey(3))
    # KL 0 < target on the first iteration: beta falls by the clipped 20% * 8 / 100.
    np.testing.assert_allclose(state.kl_coef, config.kl_coef * (1 - 0.2 * 8 / 100), rtol=1e-6)
    state, _, m = programs.iteration(state, sft, rm_params, 0.0, 1.0, ids, mask, jax.random.PRNGKey(4))
    # k3 is never negative; once the policy has moved it is above this tiny target: beta rises.
    assert float(m["kl"]) > 1e-3 and float(state.kl_coef) > float(m["kl_coef"])


def test_config_errors_name_the_field():
    for kw, field in (({"minibatches": 3}, "minibatches"), ({"kl_estimator": "k2"}, "kl_estimator"),
                      ({"value_model": "shared"}, "value_model"), ({"gae_lambda": 1.5}, "gae_lambda"),
                      ({"lr": 0.0}, "lr")):
        with pytest.raises(ValueError, match=field):
            RLHFConfig(**kw).validate()


def test_best_of_n_kl_and_selection():
    assert best_of_n_kl(1) == 0.0
    np.testing.assert_allclose(best_of_n_kl(4), math.log(4) - 0.75)
    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    rows = best_of_n_curve(proxy, gold, [1, 3, 8])
    np.testing.assert_allclose(rows[0]["gold_reward"], gold[:, 0].mean())
    pick = proxy[:, :3].argmax(1)
    np.testing.assert_allclose(rows[1]["gold_reward"], gold[np.arange(50), pick].mean())
    np.testing.assert_allclose(rows[2]["proxy_reward"], proxy.max(1).mean())
    assert rows[0]["proxy_reward"] < rows[1]["proxy_reward"] < rows[2]["proxy_reward"]
    with pytest.raises(ValueError, match="best_of_n"):
        best_of_n_curve(proxy, gold, [9])
    # The formula against a direct computation: the best of n iid draws from a categorical
    # with many equiprobable outcomes has KL -> log n - (n - 1) / n.
    k, n = 100_000, 4
    ranks = np.arange(1, k + 1) / k
    p_best = ranks ** n - (ranks - 1 / k) ** n
    np.testing.assert_allclose(np.sum(p_best * np.log(p_best * k)), best_of_n_kl(n), atol=1e-3)


def test_bfloat16_matmuls_match_float32_and_their_gradients():
    cfg = TransformerConfig(vocab_size=40, max_len=16, num_layers=2, num_heads=2, d_model=64, dropout=0.0)
    f32, bf16 = TransformerLM(cfg), TransformerLM(cfg.__class__(**{**cfg.to_dict(), "compute_dtype": "bfloat16"}))
    ids = jax.random.randint(jax.random.PRNGKey(1), (3, 12), 0, 40)
    mask = jnp.ones_like(ids)
    params = jax.jit(f32.init)(jax.random.PRNGKey(0), ids, mask)["params"]

    def loss(model, p):
        return jnp.mean(model.apply({"params": p}, ids, mask).logits ** 2)

    la, ga = jax.jit(jax.value_and_grad(lambda p: loss(f32, p)))(params)
    lb, gb = jax.jit(jax.value_and_grad(lambda p: loss(bf16, p)))(params)
    np.testing.assert_allclose(lb, la, rtol=2e-2)
    flat_a, flat_b = ravel_pytree(ga)[0], ravel_pytree(gb)[0]
    cos = float(flat_a @ flat_b / (jnp.linalg.norm(flat_a) * jnp.linalg.norm(flat_b)))
    assert cos > 0.999, cos
    assert bf16.apply({"params": params}, ids, mask).logits.dtype == jnp.float32  # log-probs in float32 under bfloat16
    with pytest.raises(ValueError, match="compute_dtype"):
        cfg.__class__(compute_dtype="float16").validate()


@pytest.mark.slow
def test_ppo_raises_gold_reward_over_sft_on_three_seeds(reviews_models):
    """End to end on the reviews task: the reward model trained on SFT samples, then 10
    PPO iterations against it; every seed's gold reward on held-out prompts rises."""
    m = reviews_models
    tok = m.tokenizer
    config = RLHFConfig(iterations=10, batch_size=64)
    eval_prompts = reviews.prompts(128, seed=99)
    source = PromptSource(tok, reviews.prompts(1000, seed=11), also=eval_prompts)
    max_new = min(config.max_new_tokens, m.config.max_len - source.width)
    programs = make_programs(config, m.config, m.rm.model, prompt_len=source.width, max_new_tokens=max_new,
                             eos_id=tok.eos_id, pad_id=tok.pad_id)
    gold = lambda p, y, e: reviews.gold_reward(y, e)  # noqa: E731
    common = dict(ref_params=m.sft_params, tokenizer=tok, prompts=source, rm_params=m.rm.params, rm_norm=m.rm.norm)
    before = evaluate_policy(programs, m.sft_params, eval_prompts=eval_prompts, key=jax.random.PRNGKey(0),
                             batch_size=64, gold_reward=gold, **common)
    for seed in range(3):
        cfg = RLHFConfig(iterations=10, batch_size=64, seed=seed)
        result = train_rlhf(cfg, programs, init_state(cfg, programs, m.sft_params, m.rm.params),
                            gold_reward=gold, **common)
        after = evaluate_policy(programs, result.state.policy_params, eval_prompts=eval_prompts,
                                key=jax.random.PRNGKey(0), batch_size=64, gold_reward=gold, **common)
        print(f"seed {seed}: gold {before['gold_reward']:.3f} -> {after['gold_reward']:.3f}, "
              f"proxy {before['proxy_reward']:.3f} -> {after['proxy_reward']:.3f}, KL {after['kl']:.2f} nats")
        assert after["gold_reward"] > before["gold_reward"] + 0.3
        assert after["proxy_reward"] > before["proxy_reward"]
        assert 0.0 < after["kl"] < 50.0
        assert all(np.isfinite(h["kl"]) and np.isfinite(h["kl_exact"]) for h in result.history)
        assert result.history[0]["first_minibatch_ratio_deviation"] < 1e-5


class _Prompts:  # the tiny model's own token ids, not a real tokenizer's
    pool = [None]

    def __init__(self, ids, mask):
        self.ids, self.mask = ids, mask

    def draw_indices(self, rng, n):
        return [0] * n

    def encode(self, prompts):
        return self.ids, self.mask


class _Tokenizer:
    eos_id = 2

    def decode_batch(self, response, response_mask):
        return [""] * len(response)


def test_resumed_run_ends_as_the_uninterrupted_one_and_a_nan_keeps_the_last_good_checkpoint(tmp_path):
    from ppo_jax.run.checkpoints import RunCheckpoints
    from rlhf_jax.stages import RUN_FORMAT, RUN_PAYLOAD

    config, programs, sft, rm_params, ids, mask = _tiny()
    run = functools.partial(train_rlhf, programs=programs, ref_params=sft, tokenizer=_Tokenizer(),
                            prompts=_Prompts(ids, mask), rm_params=rm_params, checkpoint_every=1)
    with_iterations = lambda n: config.__class__(**{**config.to_dict(), "iterations": n})  # noqa: E731
    whole = run(with_iterations(2), state=init_state(config, programs, sft, rm_params),
                checkpoints=RunCheckpoints(tmp_path / "whole", format=RUN_FORMAT, payload=RUN_PAYLOAD))
    # "Killed" after its first checkpoint: the same run stopped after one iteration, then resumed.
    run(with_iterations(1), state=init_state(config, programs, sft, rm_params), checkpoints=RunCheckpoints(tmp_path / "b", format=RUN_FORMAT, payload=RUN_PAYLOAD))
    resumed = run(with_iterations(2), state=init_state(config, programs, sft, rm_params),
                  checkpoints=RunCheckpoints(tmp_path / "b", format=RUN_FORMAT, payload=RUN_PAYLOAD))
    jax.tree.map(np.testing.assert_array_equal, resumed.state, whole.state)
    assert [r["policy_loss"] for r in resumed.history] == [r["policy_loss"] for r in whole.history]
    assert len(resumed.history) == 2

    # A NaN score at the second iteration: the error names it and the checkpoint of the first.
    calls = []

    def gold(prompt, response, ended):
        calls.append(1)
        return float("nan") if len(calls) > config.batch_size else 0.0

    with pytest.raises(FloatingPointError, match=r"iteration 1: non-finite gold_reward.*last good checkpoint: .*c/1"):
        run(with_iterations(3), state=init_state(config, programs, sft, rm_params), rm_params=None, reward="gold",
            gold_reward=gold, checkpoints=RunCheckpoints(tmp_path / "c", format=RUN_FORMAT, payload=RUN_PAYLOAD))
