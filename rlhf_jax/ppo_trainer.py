"""The RLHF-PPO loop (docs/theory.md §11): sample, score, learn, repeat.

One iteration:

1. **sample** responses from the policy for a batch of left-padded prompts (full, tempered
   distribution: no top-k/top-p, so the sampler and the scorer agree);
2. **score** each (prompt, response) with the frozen reward model at its last real token,
   normalised, minus ``no_eos_penalty`` for a response that never emitted EOS
   (responses are cut at their first EOS); or with the task's gold reward (``reward="gold"``,
   the upper bound);
3. **learn** (one jitted program): tempered log-probs of the response tokens under the
   policy and the frozen reference (shifted by one, at the sampling temperature), values, the per-token
   rewards of docs/theory.md §11, token-level GAE through ``ppo_jax.gae`` with masked whitening,
   ``epochs x minibatches`` of the clipped PPO update through ``ppo_jax.losses``, and the
   adaptive KL controller's new coefficient.

The values come from a separate critic initialised from the reward model
(``value_model="critic"``, the common choice) or from a zero-initialised scalar head on the
policy (``value_model="policy-head"``). Adam's eps is optax's PyTorch-style 1e-8 outside
the square root. KL numbers are nats summed over a response (per
sequence), averaged over sequences.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh

from ppo_jax import losses
from ppo_jax.optim import jit_frozen_input
from ppo_jax.run.checkpoints import RunCheckpoints
from ppo_jax.run.interrupt import stop_if_requested, stoppable
from ppo_jax.run.validation import DictConfig, require_finite, require_positive, validate_part
from rlhf_jax import lora
from rlhf_jax.evaluation import PromptSource, decode_responses, evaluate_samples
from rlhf_jax.lora import LoRAConfig
from rlhf_jax.ppo import (
    AGGREGATIONS,
    RATIO_LEVELS,
    SURROGATES,
    adaptive_kl_beta,
    exact_kl,
    sequence_kl,
)
from rlhf_jax.reward_model import pool_last
from rlhf_jax.sampling import Generation, SamplingConfig, ended_with_eos, make_generate
from rlhf_jax.sharding import constrain_batch, constrain_params, data_mesh, put_batch, put_params
from rlhf_jax.tokenizer import Tokenizer
from rlhf_jax.transformer import TransformerLM, response_logits, token_log_probs, token_policy
from rlhf_jax.updates import UPDATES

VALUE_MODELS = ("critic", "policy-head")
ALGOS = tuple(UPDATES)
"""``ppo``: a critic and token-level GAE; ``grpo``/``rloo``: critic-free, ``group_size``
responses per prompt, the group's other rewards the baseline."""
REWARDS = ("proxy", "gold", "functions")


@dataclass(frozen=True)
class RLHFConfig(DictConfig):
    """RLHF-PPO (or GRPO, RLOO) settings (shapes and switches are static; everything compiles once)."""

    iterations: int = 60
    """Sample-score-learn iterations."""
    batch_size: int = 64
    """Responses per iteration (PPO: one per prompt; GRPO/RLOO: group_size per prompt)."""
    algo: str = "ppo"
    """'ppo' (a critic, token-level GAE), 'grpo' (group-normalised advantages, the KL to the
    reference as a k3 loss term with coefficient kl_coef) or 'rloo' (leave-one-out baseline,
    the KL in the reward); GRPO and RLOO have no critic."""
    group_size: int = 4
    """GRPO/RLOO: responses sampled per prompt (at least 2; divides batch_size)."""
    scale_advantages: bool = True
    """GRPO: divide each group's centred rewards by their std (False: Dr. GRPO's unscaled form)."""
    loss_aggregation: str = "token-mean"
    """GRPO/RLOO: 'token-mean' (every token of a minibatch weighs the same) or 'sequence-mean'
    (every response weighs the same, the original GRPO). PPO always takes the token mean."""
    max_new_tokens: int = 40
    """Response tokens sampled per prompt (at most; fewer if the context is shorter)."""
    temperature: float = 1.0
    """Sampling temperature, also applied to the policy's and reference's log-probs."""
    epochs: int = 4
    """Passes over each iteration's batch."""
    minibatches: int = 4
    """Minibatches per pass (must divide batch_size)."""
    lr: float = 3e-5
    """Policy learning rate (Adam, eps 1e-8 PyTorch-style)."""
    critic_lr: float = 1e-4
    """Critic learning rate (a separate critic only)."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip of each model."""
    clip_eps: float = 0.2
    """PPO ratio clip (the lower one, 1 - clip_eps, when clip_eps_high is set)."""
    clip_eps_high: float | None = None
    """GRPO/RLOO: the upper ratio clip 1 + clip_eps_high apart from the lower (DAPO's clip-higher,
    0.28; CISPO's cap on its importance weight); None: clip_eps."""
    ratio_level: str = "token"
    """GRPO/RLOO: 'token' (a ratio per token) or 'sequence' (GSPO: one per response, the
    geometric mean of its token ratios; GSPO clips it at 3e-4 / 4e-4)."""
    surrogate: str = "clip"
    """GRPO/RLOO: 'clip' (PPO's clipped surrogate) or 'cispo' (REINFORCE with the clipped,
    stop-gradient importance weight: no token's gradient dropped)."""
    dynamic_sampling: bool = False
    """GRPO/RLOO (DAPO): drop the groups whose rewards are all equal (they teach nothing) and
    draw more prompts until the batch is full (at most sampling_rounds draws; then the
    batch is filled with dropped groups, counted in dynamic_sampling_filled)."""
    sampling_rounds: int = 4
    """With dynamic_sampling: the most batches drawn per iteration."""
    overlong_buffer: int = 0
    """GRPO/RLOO (DAPO): responses longer than max_new_tokens - overlong_buffer lose up to
    overlong_penalty, linearly, reaching it at max_new_tokens (0: off)."""
    overlong_penalty: float = 1.0
    """The soft over-length penalty at max_new_tokens."""
    value_clip_eps: float = 0.2
    """Value clip around the old values (0 = unclipped)."""
    vf_coef: float = 0.5
    """Value-loss weight with value_model='policy-head'."""
    ent_coef: float = 0.0
    """Entropy bonus weight."""
    gamma: float = 1.0
    """Discount over response tokens."""
    gae_lambda: float = 0.95
    """GAE lambda over response tokens."""
    kl_coef: float = 0.05
    """Initial beta of the per-token KL penalty (docs/theory.md §11)."""
    kl_estimator: str = "k1"
    """Per-token KL in the reward: 'k1' (log pi - log pi_ref) or 'k3'."""
    adaptive_kl: bool = False
    """Adapt beta towards target_kl (Ziegler et al. 2019)."""
    target_kl: float = 6.0
    """Target KL in nats per sequence for the adaptive controller."""
    kl_horizon: float = 10000.0
    """Horizon (samples) of the adaptive controller."""
    no_eos_penalty: float = 1.0
    """Subtracted from the reward-model score of a response without EOS (0 = off)."""
    value_model: str = "critic"
    """'critic' (separate model initialised from the reward model) or 'policy-head'."""
    whiten_advantages: bool = True
    """Masked whitening of the advantages over each iteration's response tokens."""
    seed: int = 0
    """Seed for prompts, sampling and minibatch order."""
    devices: int | None = None
    """Devices to split each batch across, data-parallel (default: all)."""
    fsdp: bool = False
    """Also split parameters and optimiser states across the devices (FSDP-style)."""
    frozen_dtype: str = "float32"
    """Parameters of the frozen reference and reward models: 'float32', or 'bfloat16' (half the
    memory; upcast to float32 in each matmul, activations and log-probs stay float32)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """Low-rank adapters on the policy (rank > 0): only they (and a policy's value head) train,
    and the reference is the policy without them (no copy of its weights). A critic trains whole."""

    def validate(self) -> None:
        require_finite(self)
        validate_part(self.lora, "lora")
        if self.frozen_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"frozen_dtype: must be 'float32' or 'bfloat16', got {self.frozen_dtype!r}")
        require_positive(self, "iterations", "batch_size", "max_new_tokens", "epochs", "minibatches", integer=True)
        if self.batch_size % self.minibatches:
            raise ValueError(f"minibatches: {self.minibatches} does not divide batch_size {self.batch_size}")
        require_positive(self, "temperature", "lr", "critic_lr", "max_grad_norm", "clip_eps", "target_kl", "kl_horizon")
        for name in ("value_clip_eps", "vf_coef", "ent_coef", "kl_coef", "no_eos_penalty"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma: must be in [0, 1], got {self.gamma}")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError(f"gae_lambda: must be in [0, 1], got {self.gae_lambda}")
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator: must be 'k1' or 'k3', got {self.kl_estimator!r}")
        if self.devices is not None and self.devices <= 0:
            raise ValueError(f"devices: must be a positive integer, got {self.devices}")
        if self.value_model not in VALUE_MODELS:
            raise ValueError(f"value_model: must be one of {', '.join(VALUE_MODELS)}, got {self.value_model!r}")
        if self.algo not in ALGOS:
            raise ValueError(f"algo: must be one of {', '.join(ALGOS)}, got {self.algo!r}")
        if self.loss_aggregation not in AGGREGATIONS:
            raise ValueError(f"loss_aggregation: must be one of {', '.join(AGGREGATIONS)}, "
                             f"got {self.loss_aggregation!r}")
        if self.ratio_level not in RATIO_LEVELS:
            raise ValueError(f"ratio_level: must be one of {', '.join(RATIO_LEVELS)}, got {self.ratio_level!r}")
        if self.surrogate not in SURROGATES:
            raise ValueError(f"surrogate: must be one of {', '.join(SURROGATES)}, got {self.surrogate!r}")
        if self.clip_eps_high is not None and not self.clip_eps_high > 0:
            raise ValueError(f"clip_eps_high: must be positive (or unset), got {self.clip_eps_high}")
        require_positive(self, "sampling_rounds", integer=True)
        if not 0 <= self.overlong_buffer <= self.max_new_tokens:
            raise ValueError(f"overlong_buffer: must be in [0, max_new_tokens={self.max_new_tokens}], "
                             f"got {self.overlong_buffer}")
        if not self.overlong_penalty >= 0:
            raise ValueError(f"overlong_penalty: must be >= 0, got {self.overlong_penalty}")
        if not self.critic_free:
            family = {"clip_eps_high": None, "ratio_level": "token", "surrogate": "clip", "dynamic_sampling": False,
                      "overlong_buffer": 0}
            changed = [k for k, v in family.items() if getattr(self, k) != v]
            if changed:
                raise ValueError(f"{changed[0]}: an option of the GRPO family (algo grpo or rloo); algo "
                                 f"{self.algo!r} does not take it")
        if self.critic_free:
            if self.group_size < 2:
                raise ValueError(f"group_size: {self.algo} needs at least 2 responses per prompt (the others are "
                                 f"each one's baseline), got {self.group_size}")
            if self.batch_size % self.group_size:
                raise ValueError(f"group_size: {self.group_size} does not divide batch_size {self.batch_size}")

    @property
    def critic_free(self) -> bool:
        return self.algo in ("grpo", "rloo")

    @property
    def responses_per_prompt(self) -> int:
        return self.group_size if self.critic_free else 1


@struct.dataclass
class RLHFState:
    """What changes over training: both models' parameters and optimiser states, and beta."""

    policy_params: Any
    critic_params: Any
    policy_opt: Any
    critic_opt: Any
    kl_coef: jax.Array


class RLHFPrograms(NamedTuple):
    """The compiled pieces of an iteration (see the module docstring).

    ``generate(policy_params, prompt_ids, prompt_mask, key) -> Generation``;
    ``score(rm_params, gen, norm_mean, norm_std) -> [B]``;
    ``learn(state, ref_params, gen, score, key) -> (state, metrics)``;
    ``iteration(state, ref_params, rm_params, norm_mean, norm_std, prompt_ids, prompt_mask, key)
    -> (state, gen, metrics)``, all of it in one program against the reward model (vmap it
    over ``state`` and ``key`` to run seeds side by side);
    ``kl(policy_params, ref_params, gen) -> [B]`` exact KL summed over each response.
    """

    generate: Callable
    score: Callable
    learn: Callable
    iteration: Callable
    kl: Callable
    policy: TransformerLM
    critic: TransformerLM | None
    policy_tx: optax.GradientTransformation
    critic_tx: optax.GradientTransformation
    mesh: Mesh | None = None
    """The devices the programs run on (``config.devices``); None for one device."""
    fsdp: bool = False


def make_programs(config: RLHFConfig, policy_config, rm_model: TransformerLM | None, *, prompt_len: int,
                  max_new_tokens: int, eos_id: int, pad_id: int) -> RLHFPrograms:
    """Builds the jitted pieces for prompts of ``prompt_len`` tokens and ``max_new_tokens`` responses.

    On several devices (``config.devices``) inputs placed by :func:`rlhf_jax.sharding.put_batch`
    / ``put_params`` run data-parallel, and ``learn`` keeps the parameters and optimiser
    states it returns where they came from (split across devices with ``config.fsdp``).
    """
    config.validate()
    mesh = data_mesh(config.devices)
    group = config.critic_free
    shared = not group and config.value_model == "policy-head"
    lora.check(config.lora, policy_config.arch)
    policy = TransformerLM(policy_config, lm_head=True, scalar_head=shared, lora=config.lora)
    reference = TransformerLM(policy_config)
    critic = None if shared or group else rm_model
    if critic is None and not shared and not group:
        raise ValueError("value_model: 'critic' is initialised from the reward model; give one or use 'policy-head'")
    p, t = prompt_len, config.temperature
    policy_tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(config.lr, eps=1e-8))
    critic_tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(config.critic_lr, eps=1e-8))
    rule = UPDATES[config.algo](config, policy, critic, policy_tx, critic_tx, prompt_len=p)
    generate = make_generate(policy, SamplingConfig(max_new_tokens=max_new_tokens, temperature=t),
                             eos_id=eos_id, pad_id=pad_id)

    def score(rm_params, gen: Generation, norm_mean, norm_std):
        raw = pool_last(rm_model.apply({"params": rm_params}, gen.sequences, gen.attention_mask).scalar,
                        gen.attention_mask)
        return (raw - norm_mean) / norm_std - config.no_eos_penalty * (1.0 - _ended(gen, eos_id))

    def kl(policy_params, ref_params, gen: Generation):
        return sequence_kl(policy, policy_params, reference, reference_params(ref_params, policy_params),
                           gen.sequences, gen.attention_mask, gen.response_mask, p, t)

    def learn(state: RLHFState, ref_params, gen: Generation, score, key):
        gen, score = constrain_batch((gen, score), mesh)
        seq, am, mask = gen.sequences, gen.attention_mask, gen.response_mask
        maskf = mask.astype(jnp.float32)
        tokens = seq[:, p:]
        out, logits = response_logits(policy, state.policy_params, seq, am, p)
        _, ref_logits = response_logits(reference, reference_params(ref_params, state.policy_params), seq, am, p)
        logp = token_log_probs(logits, tokens, t)
        ref_logp = token_log_probs(ref_logits, tokens, t)
        models, kl_tok, own_metrics = rule(state, gen, score, key, out, logp, ref_logp)
        kl_seq = kl_tok.sum(axis=1).mean()
        kl_coef = state.kl_coef
        if config.adaptive_kl:
            kl_coef = adaptive_kl_beta(kl_coef, kl_seq, config.target_kl, config.kl_horizon, seq.shape[0])
        entropy = token_policy(logits, t).entropy()
        metrics = {
            "score": score.mean(), "kl": kl_seq,
            "kl_exact": (exact_kl(logits, ref_logits, t) * maskf).sum(axis=1).mean(),
            "kl_coef": state.kl_coef, "entropy": losses.masked_mean(entropy, mask),
            "eos_rate": _ended(gen, eos_id).mean(), "response_length": maskf.sum(axis=1).mean(), **own_metrics,
        }
        return constrain_params(RLHFState(*models, kl_coef), mesh, config.fsdp), metrics

    def iteration(state, ref_params, rm_params, norm_mean, norm_std, prompt_ids, prompt_mask, key):
        k_sample, k_learn = jax.random.split(key)
        prompt_ids, prompt_mask = constrain_batch((prompt_ids, prompt_mask), mesh)
        gen = generate(state.policy_params, prompt_ids, prompt_mask, k_sample)
        new_state, metrics = learn(state, ref_params, gen, score(rm_params, gen, norm_mean, norm_std), k_learn)
        return new_state, gen, metrics

    # With LoRA the policy's frozen weights are an input of the compiled learn, never an output.
    return RLHFPrograms(generate, jax.jit(score), jit_frozen_input(learn, state_partition(config.lora)),
                        jax.jit(iteration), jax.jit(kl), policy, critic, policy_tx, critic_tx, mesh, config.fsdp)


def state_partition(adapters: LoRAConfig) -> lora.Partition:
    """:func:`rlhf_jax.lora.partition` of the policy's parameters, on the whole state: ``split``
    gives the state with the policy's trainable part and the frozen part apart."""
    part = lora.partition(adapters)

    def split(state: RLHFState):
        trainable, frozen = part.split(state.policy_params)
        return state.replace(policy_params=trainable), frozen

    return lora.Partition(split, lambda state, frozen: state.replace(policy_params=part.join(state.policy_params,
                                                                                             frozen)))


def reference_params(ref_params, policy_params):
    """The reference policy's parameters: ``ref_params``, or when None (a LoRA policy) the
    policy's own frozen weights without its adapters and value head (the same arrays)."""
    if ref_params is not None:
        return ref_params
    return {k: v for k, v in lora.without_adapters(policy_params).items() if k != "scalar_head"}


def _ended(gen: Generation, eos_id: int) -> jax.Array:
    """1.0 where the response emitted EOS."""
    return ended_with_eos(gen.response, gen.response_mask, eos_id).astype(jnp.float32)


def with_value_head(programs: RLHFPrograms, params, seed: int = 0) -> dict:
    """``params`` as the programs' policy takes them: with PPO's policy-head, a zero-initialised
    value head (its first values are 0; one that ``params`` brings is replaced); with LoRA,
    fresh adapters (the policy then equals ``params``'s)."""
    policy = programs.policy
    if policy.scalar_head:
        d = policy.config.d_model
        params = {**params, "scalar_head": {"kernel": jnp.zeros((d, 1)), "bias": jnp.zeros((1,))}}
    return lora.with_adapters(dict(params), policy.lora, policy.config.arch,
                              jax.random.fold_in(jax.random.PRNGKey(seed), 1))


def as_policy_params(programs: RLHFPrograms, params) -> dict:
    """``params`` as the programs' sampler takes them: a policy without adapters (the SFT
    policy, a DPO result) gets adapters that change nothing when the programs' policy has LoRA."""
    policy = programs.policy
    if not policy.lora.active or lora.has_adapters(params):
        return params
    return lora.with_adapters(dict(params), policy.lora, policy.config.arch, jax.random.PRNGKey(0))


def init_state(config: RLHFConfig, programs: RLHFPrograms, sft_params, rm_params=None) -> RLHFState:
    """The policy starts at the SFT parameters; the critic at the reward model's
    (or, with a policy head, a zero-initialised head: its first values are 0)."""
    policy_params = jax.tree.map(jnp.asarray, with_value_head(programs, sft_params, config.seed))
    critic_params = {} if config.critic_free or config.value_model == "policy-head" else rm_params
    critic_params = jax.tree.map(jnp.asarray, critic_params)
    trainable = lora.partition(config.lora).split(policy_params)[0]
    state = RLHFState(policy_params, critic_params, programs.policy_tx.init(trainable),
                      programs.critic_tx.init(critic_params), jnp.asarray(config.kl_coef, jnp.float32))
    if programs.mesh is None:
        # Every leaf committed to the device, as learn's outputs are: a state of mixed
        # committed (loaded parameters) and uncommitted leaves (the KL coefficient) would make
        # the second iteration compile learn again (seconds per stage).
        return jax.device_put(state, jax.devices()[0])
    return put_params(state, programs.mesh, programs.fsdp)


@dataclass
class RLHFResult:
    state: RLHFState
    history: list[dict]
    wall_s: float


def frozen_params(config: RLHFConfig, params):
    """``params`` (of models that do not learn) in ``config.frozen_dtype``."""
    if config.frozen_dtype == "bfloat16":
        return jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    return params


Scorer = Callable[[list, Generation], tuple]
"""``scorer(prompt_indices, gen) -> (score [B], metrics)``: a batch's rewards, from the pool
indices of its prompts and the sampled responses, and metrics of its own for the history."""


def train_rlhf(config: RLHFConfig, programs: RLHFPrograms, state: RLHFState, *, ref_params, tokenizer: Tokenizer,
               prompts: PromptSource, rm_params=None, rm_norm: dict | None = None, reward: str = "proxy",
               gold_reward: Callable[[str, str, bool], float] | None = None, scorer: Scorer | None = None,
               progress: Callable[[int, dict], None] | None = None, checkpoints: RunCheckpoints | None = None,
               checkpoint_every: int = 0) -> RLHFResult:
    """Runs ``config.iterations`` iterations from ``state``; returns the final state and per-iteration metrics.

    ``reward="proxy"`` optimises the reward model's score; ``"gold"`` optimises
    ``gold_reward(prompt, response, ended_with_eos)`` computed on the host; ``"functions"``
    optimises what ``scorer`` returns (:data:`Scorer`: reward functions). Whenever both the proxy and the
    gold reward are available both are recorded (``proxy_reward``, ``gold_reward``), with the wall time of
    each phase (``time_sample``, ``time_score``, ``time_update``, seconds).

    With ``config.dynamic_sampling`` (GRPO/RLOO) groups whose rewards are all equal are
    dropped and more prompts drawn until the batch is full (at most ``config.sampling_rounds``
    draws).

    Iteration ``i`` draws its prompts and keys from ``(config.seed, i)`` alone, so with
    ``checkpoints`` (saved every ``checkpoint_every`` iterations and at the end: the state
    and the history so far) a run resumes from the newest checkpoint and ends exactly as
    the uninterrupted run. A NaN/inf stops the run naming the iteration and the metric,
    before the bad state is saved.
    """
    if reward not in REWARDS:
        raise ValueError(f"reward: must be one of {', '.join(REWARDS)}, got {reward!r}")
    if reward == "proxy" and rm_params is None:
        raise ValueError("reward: 'proxy' needs a reward model")
    if reward == "gold" and gold_reward is None:
        raise ValueError("reward: 'gold' needs the task's gold reward")
    if reward == "functions" and scorer is None:
        raise ValueError("reward: 'functions' needs a scorer")
    norm = rm_norm or {"mean": 0.0, "std": 1.0}
    mesh = programs.mesh
    if programs.policy.lora.active:
        ref_params = None  # the policy's base weights are the reference (reference_params)
    ref_params, rm_params = put_params(frozen_params(config, (ref_params, rm_params)), mesh, programs.fsdp)
    if scorer is None:
        scorer = _model_or_gold_scorer(programs, tokenizer, prompts, rm_params, norm, reward, gold_reward)
    history, start = [], 0
    part = state_partition(programs.policy.lora)  # with LoRA a checkpoint holds the adapters alone
    frozen = part.split(state)[1]
    saved = lambda st: part.split(st)[0]  # noqa: E731
    found = (checkpoints.restore_latest(saved(state), warn=lambda m: print(m, file=sys.stderr)) if checkpoints
             else None)
    if found is not None:
        start, state, meta = found
        state = part.join(state, frozen)
        history = meta["history"]
    t_start = time.perf_counter()
    request = lambda: print("stopping after this iteration (Ctrl-C again to stop now)", file=sys.stderr)  # noqa: E731
    with stoppable(checkpoints, on_request=request) as stop:
        state, history = _iterations(config, programs, state, history, start, ref_params=ref_params,
                                     prompts=prompts, scorer=scorer, progress=progress,
                                     checkpoints=checkpoints, checkpoint_every=checkpoint_every, stop=stop,
                                     saved=saved)
    if checkpoints is not None:
        checkpoints.wait()
    return RLHFResult(state, history, time.perf_counter() - t_start)


def _model_or_gold_scorer(programs, tokenizer, prompts, rm_params, norm, reward, gold_reward) -> Scorer:
    """The reward model's score (``proxy``) or the task's gold reward, each recorded when available."""
    def score(idx, gen):
        row = {}
        proxy = None
        if rm_params is not None:
            proxy = programs.score(rm_params, gen, norm["mean"], norm["std"])
            row["proxy_reward"] = float(jnp.mean(proxy))
        if gold_reward is not None:
            texts, ended = decode_responses(tokenizer, gen)
            gold = np.asarray([gold_reward(prompts.pool[i], y, bool(e)) for i, y, e in zip(idx, texts, ended)],
                              np.float32)
            row["gold_reward"] = float(gold.mean())
        return (proxy if reward == "proxy" else gold), row

    return score


def _sample_batch(config, programs, state, prompts, scorer, rng, key):
    """One iteration's responses and scores: ``(gen, score, row, times)``, ``row`` the scorer's
    metrics, ``times`` the sampling and scoring seconds. With dynamic sampling, groups of equal
    rewards are replaced by groups of further draws (docstring of :func:`train_rlhf`)."""
    mesh, g = programs.mesh, config.responses_per_prompt  # GRPO/RLOO: a prompt's group in adjacent rows
    groups = config.batch_size // g
    t_sample = t_score = 0.0
    kept, spare, row = [], [], {}
    for round_ in range(config.sampling_rounds if config.dynamic_sampling else 1):
        idx = [i for i in prompts.draw_indices(rng, groups) for _ in range(g)]
        ids, mask = put_batch(prompts.encode([prompts.pool[i] for i in idx]), mesh)
        t0 = time.perf_counter()
        gen = jax.block_until_ready(programs.generate(state.policy_params, ids, mask,
                                                      key if round_ == 0 else jax.random.fold_in(key, round_)))
        t1 = time.perf_counter()
        score, metrics = scorer(idx, gen)
        t_score += time.perf_counter() - t1
        t_sample += t1 - t0
        if round_ == 0:
            row = dict(metrics)  # the metrics of the first draw, as without dynamic sampling
        if not config.dynamic_sampling:
            return gen, score, row, {"time_sample": t_sample, "time_score": t_score}
        varied = np.asarray(score).reshape(groups, g).std(axis=1) > 0
        for j in range(groups):
            (kept if varied[j] else spare).append((gen, score, j))
        if round_ == 0:
            row["kept_group_fraction"] = float(varied.mean())
        if len(kept) >= groups:
            break
    filled = max(0, groups - len(kept))
    chosen = (kept + spare[-filled:] if filled else kept)[:groups]
    take = lambda x, j: x[j * g:(j + 1) * g]  # noqa: E731
    gen = jax.tree.map(lambda *xs: jnp.concatenate(xs), *[jax.tree.map(lambda x, j=j: take(x, j), gn)
                                                           for gn, _, j in chosen])
    score = jnp.concatenate([take(jnp.asarray(sc), j) for _, sc, j in chosen])
    row.update(sampling_rounds=float(round_ + 1), dynamic_sampling_filled=float(filled))
    return put_batch(gen, mesh), score, row, {"time_sample": t_sample, "time_score": t_score}


def _iterations(config, programs, state, history, start, *, ref_params, prompts, scorer, progress, checkpoints,
                checkpoint_every, stop, saved):
    """Iterations ``start..config.iterations`` of :func:`train_rlhf`; returns ``(state, history)``."""
    mesh = programs.mesh
    for it in range(start, config.iterations):
        rng = np.random.default_rng([config.seed, it])
        k_sample, k_learn = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(config.seed), it))
        gen, score, row, times = _sample_batch(config, programs, state, prompts, scorer, rng, k_sample)
        row = {"iteration": it, **row}
        score = put_batch(jnp.asarray(score), mesh)
        t2 = time.perf_counter()
        state, metrics = programs.learn(state, ref_params, gen, score, k_learn)
        metrics = jax.device_get(metrics)
        t3 = time.perf_counter()
        row.update({k: float(v) for k, v in metrics.items()})
        row.update(times, time_update=t3 - t2)
        bad = [k for k, v in row.items() if not np.isfinite(v)]
        if bad:
            last = checkpoints.latest() if checkpoints is not None else None
            kept = f"; last good checkpoint: {checkpoints.path(last)}" if last is not None else ""
            raise FloatingPointError(f"iteration {it}: non-finite {', '.join(bad)} "
                                     f"({row[bad[0]]}; lower lr or raise kl_coef){kept}")
        history.append(row)
        done = it + 1
        if checkpoints is not None and (stop.requested or checkpoint_every > 0 and (
                done % checkpoint_every == 0 or done == config.iterations)):
            checkpoints.save(done, saved(state), {"history": list(history)})
        if progress is not None:
            progress(it, row)
        stop_if_requested(stop, checkpoints, done, config.iterations)
    return state, history


def evaluate_policy(programs: RLHFPrograms, policy_params, *, ref_params, tokenizer: Tokenizer, prompts: PromptSource,
                    eval_prompts: Sequence[str], key: jax.Array, batch_size: int, rm_params=None,
                    rm_norm: dict | None = None, gold_reward: Callable | None = None) -> dict:
    """:func:`evaluate_samples` with the programs' sampler, exact KL and (given ``rm_params``)
    reward-model score, normalised by ``rm_norm``."""
    norm = rm_norm or {"mean": 0.0, "std": 1.0}
    score = (None if rm_params is None
             else lambda gen: programs.score(rm_params, gen, norm["mean"], norm["std"]))
    return evaluate_samples(programs.generate, programs.kl, as_policy_params(programs, policy_params),
                            ref_params=ref_params, tokenizer=tokenizer,
                            prompts=prompts, eval_prompts=eval_prompts, key=key, batch_size=batch_size, score=score,
                            gold_reward=gold_reward)
