"""Supervised fine-tuning: next-token cross-entropy on response tokens only.

The SFT model is the reference policy ``pi_ref`` of RLHF (docs/theory.md §11: the token
policy before RL). Each example is ``[BOS] prompt response [EOS]``, right-padded;
the loss is the mean over response tokens (EOS included) of ``-log pi(y_t | x, y_<t)``,
read from the logits one position earlier. Prompt and padding positions
carry no loss and so give no gradient. AdamW with linear warm-up then cosine decay,
weight decay on matrices only, global-norm clipping.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from ppo_jax.optim import jit_gradient_step
from ppo_jax.run.validation import DictConfig, require_finite, require_positive, validate_part
from rlhf_jax import lora
from rlhf_jax.lora import LoRAConfig
from rlhf_jax.supervised import (
    adamw_warmup_cosine,
    fit,
    holdout_split,
    require_batches,
    require_rows,
    sampled_batches,
)
from rlhf_jax.tokenizer import Tokenizer
from rlhf_jax.transformer import TransformerConfig, TransformerLM, init_params


@dataclass(frozen=True)
class SFTConfig(DictConfig):
    """Supervised fine-tuning settings."""

    model: TransformerConfig = field(default_factory=lambda: TransformerConfig(num_layers=2, d_model=128, max_len=64))
    """The transformer trained from scratch."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """Low-rank adapters (rank > 0): only they train, the model's weights stay frozen."""
    steps: int = 600
    """Optimiser steps."""
    batch_size: int = 32
    """Examples per step."""
    lr: float = 3e-3
    """Peak learning rate."""
    warmup_steps: int = 50
    """Linear warm-up steps, then cosine decay to 10% of the peak."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay (matrices and embeddings only)."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip."""
    max_length: int = 64
    """Tokens per example; longer prompts lose their start, longer responses are an error."""
    eval_fraction: float = 0.05
    """Share of examples held out for the evaluation loss."""
    eval_every: int = 100
    """Steps between evaluations."""
    seed: int = 0
    """Seed for initialisation, batching and dropout."""

    def validate(self) -> None:
        require_finite(self)
        validate_part(self.model, "model")
        lora.check(self.lora, self.model.arch)
        require_positive(self, "steps", "batch_size", "max_length", "eval_every")
        if not self.lr > 0:
            raise ValueError(f"lr: must be positive, got {self.lr}")
        if self.warmup_steps < 0 or self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps: must be in [0, steps), got {self.warmup_steps}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction: must be in [0, 1), got {self.eval_fraction}")
        if self.max_length > self.model.max_len:
            raise ValueError(f"max_length: {self.max_length} exceeds the model's max_len {self.model.max_len}")


@struct.dataclass
class SFTBatch:
    """``input_ids``, ``attention_mask`` and ``loss_mask`` (1 on response tokens and EOS), all ``[B, L]``."""

    input_ids: jax.Array
    attention_mask: jax.Array
    loss_mask: jax.Array

    def __getitem__(self, idx) -> "SFTBatch":
        return SFTBatch(self.input_ids[idx], self.attention_mask[idx], self.loss_mask[idx])

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def encode_examples(tokenizer: Tokenizer, prompts: Sequence[str], responses: Sequence[str],
                    max_length: int, where: Sequence[str] | None = None) -> SFTBatch:
    """Right-padded ``[BOS] prompt response [EOS]`` rows with the response's loss mask.

    A response too long for ``max_length`` is an error naming it: ``where[i]`` (e.g.
    ``"data.jsonl:6"``) says where example ``i`` came from, else ``example i+1``."""
    if len(prompts) != len(responses):
        raise ValueError(f"responses: {len(responses)} responses for {len(prompts)} prompts")
    n = len(prompts)
    ids = np.full((n, max_length), tokenizer.pad_id, np.int32)
    attn = np.zeros((n, max_length), np.int32)
    loss = np.zeros((n, max_length), np.int32)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        prompt_ids = tokenizer.bos_ids + tokenizer.encode(p)
        response_ids = tokenizer.encode(r) + [tokenizer.eos_id]
        if len(response_ids) >= max_length:
            at = where[i] if where is not None else f"example {i + 1}"
            raise ValueError(f"{at}: response of {len(response_ids)} tokens (with EOS) does not fit "
                             f"max_length {max_length} with its prompt")
        prompt_ids = prompt_ids[max(0, len(prompt_ids) + len(response_ids) - max_length):]  # keep the prompt's end
        row = prompt_ids + response_ids
        ids[i, :len(row)] = row
        attn[i, :len(row)] = 1
        loss[i, len(prompt_ids):len(row)] = 1
    return SFTBatch(ids, attn, loss)


def sft_loss(logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """Mean over response tokens of ``-log softmax(logits[t-1])[token_t]`` (float32)."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, input_ids[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]
    mask = loss_mask[:, 1:].astype(jnp.float32)
    return (nll * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def make_optimizer(config: SFTConfig) -> optax.GradientTransformation:
    return adamw_warmup_cosine(config.lr, config.warmup_steps, config.steps, config.weight_decay,
                               config.max_grad_norm)


def make_steps(model: TransformerLM, tx: optax.GradientTransformation) -> tuple[Callable, Callable]:
    """Jitted ``train_step(params, opt_state, batch, key) -> (params, opt_state, loss, None)`` and
    ``eval_loss(params, batch)``."""

    def loss_fn(params, batch: SFTBatch, key, deterministic):
        out = model.apply({"params": params}, batch.input_ids, batch.attention_mask, deterministic=deterministic,
                          rngs=None if deterministic else {"dropout": key})
        return sft_loss(out.logits, batch.input_ids, batch.loss_mask)

    train_step = jit_gradient_step(lambda params, batch, key: loss_fn(params, batch, key, False), tx,
                                   partition=lora.partition(model.lora))
    eval_loss = jax.jit(lambda params, batch: loss_fn(params, batch, None, True))
    return train_step, eval_loss


def evaluate(eval_loss: Callable, params, data: SFTBatch, batch_size: int) -> float:
    """Token-weighted mean loss over ``data`` in fixed-size batches (the last one padded by repetition)."""
    if len(data) == 0:
        return float("nan")
    total, tokens = 0.0, 0.0
    for start in range(0, len(data), batch_size):
        idx = np.arange(start, start + batch_size) % len(data)
        valid = np.arange(start, start + batch_size) < len(data)
        chunk = data[idx[valid]]
        weight = float(chunk.loss_mask[:, 1:].sum())
        # Pad to a fixed batch with zero-loss rows so one compiled program serves every chunk.
        pad = batch_size - len(chunk)
        if pad:
            filler = data[np.zeros(pad, np.int64)]
            chunk = SFTBatch(*(np.concatenate([a, b]) for a, b in
                               zip((chunk.input_ids, chunk.attention_mask, chunk.loss_mask),
                                   (filler.input_ids, filler.attention_mask, np.zeros_like(filler.loss_mask)))))
        total += float(eval_loss(params, chunk)) * weight
        tokens += weight
    return total / max(tokens, 1.0)


@dataclass
class SFTResult:
    params: dict
    train_loss: np.ndarray
    eval_steps: list[int]
    eval_loss: list[float]
    wall_s: float


def check_sft_data(config: SFTConfig, tokenizer: Tokenizer, n_examples: int) -> None:
    """The checks of :func:`train_sft` that need only the sizes: the config, a tokenizer the
    model's vocabulary holds, and enough training examples for a batch."""
    config.validate()
    if tokenizer.vocab_size > config.model.vocab_size:
        raise ValueError(f"model.vocab_size: {config.model.vocab_size} is smaller than the tokenizer's "
                         f"{tokenizer.vocab_size}")
    require_rows(n_examples, config.eval_fraction, config.batch_size, "examples", at_least_one=False)


def train_sft(config: SFTConfig, tokenizer: Tokenizer, prompts: Sequence[str], responses: Sequence[str],
              progress: Callable[[int, float], None] | None = None, params=None, checkpoints=None,
              on_status: Callable[[str], None] | None = None) -> SFTResult:
    """Fine-tunes (from ``params``, else from scratch) on the pairs; ``progress(step, loss)`` after each step.
    With ``checkpoints`` it saves periodically and resumes (:func:`rlhf_jax.supervised.fit`)."""
    check_sft_data(config, tokenizer, len(prompts))
    data = encode_examples(tokenizer, prompts, responses, config.max_length)
    rng, held, train = holdout_split(len(data), config.eval_fraction, config.seed, at_least_one=False)
    eval_data, train_data = data[held], data[train]
    require_batches(config.batch_size, len(train_data), "examples")

    model = TransformerLM(config.model, lora=config.lora)
    key = jax.random.PRNGKey(config.seed)
    key, k_init = jax.random.split(key)
    if params is None:
        params = init_params(TransformerLM(config.model), k_init)
    params = lora.with_adapters(params, config.lora, config.model.arch, jax.random.fold_in(k_init, 1))
    part = lora.partition(config.lora)
    tx = make_optimizer(config)
    train_step, eval_loss = make_steps(model, tx)

    def batches():
        key_ = key
        for idx in sampled_batches(rng, len(train_data), config.batch_size, config.steps):
            key_, k_step = jax.random.split(key_)
            yield train_data[idx], k_step

    t0 = time.perf_counter()
    params, losses, history = fit(
        train_step, params, tx.init(part.split(params)[0]), batches(), config.steps, partition=part,
        evaluate_at=lambda s: s % config.eval_every == 0 or s == config.steps,
        evaluate=lambda s, p, *_: {"step": s, "loss": evaluate(eval_loss, p, eval_data, config.batch_size)},
        progress=None if progress is None else lambda s, _, loss: progress(s - 1, loss), checkpoints=checkpoints,
        on_status=on_status)
    train_loss = np.asarray(jax.device_get(losses), np.float32)
    return SFTResult(params, train_loss, [h["step"] for h in history], [h["loss"] for h in history],
                     time.perf_counter() - t0)
