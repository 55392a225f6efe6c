"""Direct preference optimisation (DPO, Rafailov et al. 2023): the policy is its own reward model.

The KL-regularised objective (docs/theory.md §11, §13; arXiv:2305.18290) ``max E[r] - beta KL(pi || pi_ref)`` is maximised by
``pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x)``, so ``r(x, y) = beta log(pi*(y|x) /
pi_ref(y|x)) + beta log Z(x)``. Put into the Bradley-Terry likelihood (docs/theory.md §10, the reward
model's loss) the ``Z(x)`` of the two responses to one prompt cancel:

    L = -log sigmoid(beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))])

with ``log pi(y|x)`` summed over the response tokens (EOS included). No reward model, no
sampling: one pass over the preference pairs, the reference's log-probs computed once.
``label_smoothing = eps`` assumes each label is flipped with probability ``eps``
(conservative DPO): ``L = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import struct

from ppo_jax.optim import jit_gradient_step
from ppo_jax.run.validation import DictConfig, require_finite, require_positive, validate_part
from rlhf_jax import lora
from rlhf_jax.data import in_fixed_batches
from rlhf_jax.lora import LoRAConfig
from rlhf_jax.sft import SFTBatch, encode_examples
from rlhf_jax.supervised import (
    adamw_warmup_cosine,
    epoch_batches,
    epoch_row,
    fit,
    holdout_split,
    require_batches,
    require_rows,
)
from rlhf_jax.tokenizer import Tokenizer
from rlhf_jax.transformer import TransformerConfig, TransformerLM, token_log_probs


@dataclass(frozen=True)
class DPOConfig(DictConfig):
    """DPO settings (the policy and the reference start from the same model)."""

    model: TransformerConfig = field(default_factory=lambda: TransformerConfig(num_layers=2, d_model=128, max_len=64))
    """The transformer's shape when the policy is trained from scratch first (a task's SFT)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """Low-rank adapters (rank > 0): only they train; the reference is the model without them."""
    beta: float = 0.1
    """Strength of the implicit KL penalty: the reward is beta log(pi / pi_ref)."""
    label_smoothing: float = 0.0
    """Assumed probability that a label is flipped (conservative DPO), in [0, 0.5)."""
    epochs: int = 2
    """Passes over the training pairs."""
    batch_size: int = 32
    """Pairs per step."""
    lr: float = 3e-4
    """Peak learning rate (linear warm-up over the first 5% of steps, then cosine decay)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (matrices and embeddings only)."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip."""
    max_length: int = 64
    """Tokens per sequence; longer prompts lose their start."""
    overlong: str = "skip"
    """A pair with a response too long for max_length: 'skip' it (counted in the result) or
    'reject' (an error naming it). Cutting a response would change its log-prob."""
    heldout_fraction: float = 0.1
    """Share of the pairs held out for the per-epoch evaluation."""
    seed: int = 0
    """Seed of the split and the batch order."""

    def validate(self) -> None:
        require_finite(self)
        validate_part(self.model, "model")
        lora.check(self.lora, self.model.arch)
        require_positive(self, "epochs", "batch_size", "max_length")
        if not self.beta > 0:
            raise ValueError(f"beta: must be positive, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing: must be in [0, 0.5), got {self.label_smoothing}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be positive, got {self.lr}")
        if self.overlong not in ("skip", "reject"):
            raise ValueError(f"overlong: must be 'skip' or 'reject', got {self.overlong!r}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction: must be in (0, 1), got {self.heldout_fraction}")


def dpo_loss(logp_chosen: jax.Array, logp_rejected: jax.Array, ref_chosen: jax.Array, ref_rejected: jax.Array,
             beta: float | jax.Array, label_smoothing: float | jax.Array = 0.0) -> tuple[jax.Array, dict]:
    """The DPO loss (module docstring) averaged over pairs, from sequence log-probs ``[B]``.

    Metrics: ``accuracy`` of the implicit reward ``beta log(pi / pi_ref)`` (a tie counts 1/2),
    ``margin`` (its mean chosen-minus-rejected gap), ``chosen_reward``/``rejected_reward``, and
    ``chosen_logp_drift``/``rejected_logp_drift`` (mean ``log pi - log pi_ref``: DPO is known
    to push both down, the rejected one faster).
    """
    chosen = logp_chosen - ref_chosen
    rejected = logp_rejected - ref_rejected
    h = beta * (chosen - rejected)
    loss = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(h) - label_smoothing * jax.nn.log_sigmoid(-h)
    metrics = {"accuracy": jnp.mean((h > 0) + 0.5 * (h == 0)), "margin": jnp.mean(h),
               "chosen_reward": beta * jnp.mean(chosen), "rejected_reward": beta * jnp.mean(rejected),
               "chosen_logp_drift": jnp.mean(chosen), "rejected_logp_drift": jnp.mean(rejected)}
    return jnp.mean(loss), metrics


def sequence_log_probs(model: TransformerLM, params, batch: SFTBatch) -> jax.Array:
    """``log pi(y|x)``: the sum over response tokens (``loss_mask``, EOS included) of each
    token's log-prob from the logits one position earlier. ``[B]``, float32."""
    logits = model.apply({"params": params}, batch.input_ids, batch.attention_mask).logits
    logp = token_log_probs(logits[:, :-1], batch.input_ids[:, 1:])
    return (logp * batch.loss_mask[:, 1:]).sum(axis=-1)


@struct.dataclass
class PairRows:
    """A preference set as two :class:`SFTBatch`es, chosen and rejected, row ``i`` one pair."""

    chosen: SFTBatch
    rejected: SFTBatch

    def __getitem__(self, idx) -> "PairRows":
        return PairRows(self.chosen[idx], self.rejected[idx])

    def __len__(self) -> int:
        return len(self.chosen)


def encode_pair_rows(tokenizer: Tokenizer, pairs: Sequence[dict], max_length: int,
                     where: Sequence[str] | None = None) -> PairRows:
    """``[BOS] prompt response [EOS]`` rows for the chosen and the rejected responses, with
    response masks; a response too long for ``max_length`` is an error naming its pair."""
    prompts = [p["prompt"] for p in pairs]
    return PairRows(encode_examples(tokenizer, prompts, [p["chosen"] for p in pairs], max_length, where),
                    encode_examples(tokenizer, prompts, [p["rejected"] for p in pairs], max_length, where))


@dataclass
class DPOResult:
    params: dict
    history: list[dict]
    """Per epoch: train loss and accuracy, held-out loss, accuracy, margin and log-prob drifts."""
    wall_s: float
    skipped: int
    """Pairs left out because a response did not fit ``max_length`` (``overlong='skip'``)."""


def check_dpo_pairs(config: DPOConfig, tokenizer: Tokenizer, pairs: Sequence[dict], where: Sequence[str] | None,
                    model_config: TransformerConfig) -> tuple[PairRows, int]:
    """The checks of :func:`train_dpo` that need no model: the config, responses that fit
    ``max_length`` (``overlong='skip'`` leaves the others out, ``'reject'`` names the first),
    and enough training pairs for a batch. Returns the encoded pairs and how many were left out."""
    config.validate()
    if config.max_length > model_config.max_len:
        raise ValueError(f"max_length: {config.max_length} exceeds the model's max_len {model_config.max_len}")
    skipped = 0
    if config.overlong == "skip":
        longest = [max(len(tokenizer.encode(p["chosen"])), len(tokenizer.encode(p["rejected"]))) for p in pairs]
        fits = [i for i, n in enumerate(longest) if n + 1 < config.max_length]  # + 1: the EOS
        skipped = len(pairs) - len(fits)
        pairs = [pairs[i] for i in fits]
        where = [where[i] for i in fits] if where is not None else None
        if len(pairs) < 2:
            raise ValueError(f"max_length: only {len(pairs)} pairs have responses that fit {config.max_length} tokens")
    data = encode_pair_rows(tokenizer, pairs, config.max_length, where)
    require_rows(len(data), config.heldout_fraction, config.batch_size, "pairs", at_least_one=True)
    return data, skipped


def train_dpo(config: DPOConfig, tokenizer: Tokenizer, pairs: Sequence[dict], *, params, model: TransformerLM,
              where: Sequence[str] | None = None,
              progress: Callable[[int, int, float], None] | None = None, checkpoints=None,
              on_status: Callable[[str], None] | None = None) -> DPOResult:
    """DPO from ``params`` (also the frozen reference) on ``pairs`` (prompt, chosen, rejected).

    ``progress(step, total_steps, loss)`` after each step. The held-out pairs are evaluated
    before training (loss ``log 2``, accuracy 1/2: the policy is the reference) and after each
    epoch. With ``checkpoints`` it saves periodically and resumes (:func:`rlhf_jax.supervised.fit`).
    """
    data, skipped = check_dpo_pairs(config, tokenizer, pairs, where, model.config)
    lora.check(config.lora, model.config.arch)
    rng, heldout, train = holdout_split(len(data), config.heldout_fraction, config.seed, at_least_one=True)
    require_batches(config.batch_size, len(train), "pairs")

    ref_logp = jax.jit(lambda p, rows: sequence_log_probs(model, p, rows))
    # The reference's log-probs, once for every pair (the reference never changes).
    ref = {side: in_fixed_batches(lambda idx, rows=getattr(data, side): ref_logp(params, rows[idx]), len(data),
                                  config.batch_size)
           for side in ("chosen", "rejected")}
    # With LoRA the policy is the reference plus adapters: the base weights are not copied.
    model = TransformerLM(model.config, model.lm_head, model.scalar_head, lora=config.lora)
    params = lora.with_adapters(params, config.lora, model.config.arch, jax.random.PRNGKey(config.seed))
    part = lora.partition(config.lora)
    seq_logp = jax.jit(lambda p, rows: sequence_log_probs(model, p, rows)) if config.lora.active else ref_logp
    steps_per_epoch = len(train) // config.batch_size
    total = steps_per_epoch * config.epochs
    tx = adamw_warmup_cosine(config.lr, max(1, total // 20), total, config.weight_decay, config.max_grad_norm)

    def loss_fn(p, rows: PairRows, ref_c, ref_r):
        # One forward pass over chosen and rejected together.
        both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), rows.chosen, rows.rejected)
        logp_c, logp_r = jnp.split(sequence_log_probs(model, p, both), 2)
        return dpo_loss(logp_c, logp_r, ref_c, ref_r, config.beta, config.label_smoothing)

    def evaluate(p) -> dict:
        held = data[heldout]
        logp = {side: in_fixed_batches(lambda idx, rows=getattr(held, side): seq_logp(p, rows[idx]), len(held),
                                       config.batch_size)
                for side in ("chosen", "rejected")}
        loss, m = dpo_loss(logp["chosen"], logp["rejected"], ref["chosen"][heldout], ref["rejected"][heldout],
                           config.beta, config.label_smoothing)
        return {"heldout_loss": float(loss), **{f"heldout_{k}": float(v) for k, v in m.items()}}

    before = {"epoch": 0, **evaluate(params)}
    t0 = time.perf_counter()
    batches = ((data[idx], ref["chosen"][idx], ref["rejected"][idx])
               for idx in epoch_batches(rng, train, config.batch_size, config.epochs))
    params, _, history = fit(jit_gradient_step(loss_fn, tx, has_aux=True, partition=part), params,
                             tx.init(part.split(params)[0]), batches,
                             total, evaluate_at=lambda s: s % steps_per_epoch == 0,
                             evaluate=lambda s, p, losses, auxes: {**epoch_row(s // steps_per_epoch, losses, auxes),
                                                                   **evaluate(p)},
                             progress=progress, checkpoints=checkpoints, on_status=on_status, partition=part)
    history = [before, *history]
    return DPOResult(params, history, time.perf_counter() - t0, skipped)
