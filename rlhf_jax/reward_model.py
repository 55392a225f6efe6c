"""Reward model (docs/theory.md §10): Bradley-Terry loss, last-token pooling, training, scoring.

``r_phi(x, y) = Linear(LM_phi([x; y])_last)``: the transformer over
``[BOS] prompt response [EOS]`` and a scalar head (init N(0, 1/(d+1))) read
at the last real token, found from the attention mask so that left, right and no padding
all work (the common ``mask.sum(1) - 1`` is right only for right padding).
The loss is ``-log sigmoid(r_w - r_l)``, optionally with a margin
subtracted from the gap; it equals binary cross-entropy with label 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ppo_jax.optim import jit_gradient_step
from ppo_jax.run.validation import DictConfig, require_finite, require_positive, validate_part
from rlhf_jax import lora
from rlhf_jax.data import in_fixed_batches
from rlhf_jax.lora import LoRAConfig
from rlhf_jax.preferences import expected_accuracy
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
from rlhf_jax.transformer import TransformerConfig, TransformerLM, init_params


def last_token_index(mask: jax.Array) -> jax.Array:
    """Column of each row's last real token (mask 1), under any padding."""
    length = mask.shape[-1]
    return length - 1 - jnp.argmax(jnp.flip(mask.astype(jnp.int32), axis=-1), axis=-1)


def pool_last(values: jax.Array, mask: jax.Array) -> jax.Array:
    """``values[b, last_token_index(mask)[b]]`` for ``values`` of shape ``[B, L]``."""
    return jnp.take_along_axis(values, last_token_index(mask)[:, None], axis=-1)[:, 0]


def bradley_terry_loss(r_chosen: jax.Array, r_rejected: jax.Array, margin: jax.Array | float = 0.0) -> jax.Array:
    """Eq. (45)/(46): mean of ``-log sigmoid(r_w - r_l - margin)``."""
    return -jnp.mean(jax.nn.log_sigmoid(r_chosen - r_rejected - margin))


def preference_metrics(r_chosen: jax.Array, r_rejected: jax.Array) -> dict:
    """Accuracy (share of pairs with ``r_w > r_l``) and mean reward gap."""
    gap = r_chosen - r_rejected
    return {"accuracy": jnp.mean((gap > 0).astype(jnp.float32)), "reward_gap": jnp.mean(gap)}


def reward_model(config: TransformerConfig, adapters: LoRAConfig = lora.OFF) -> TransformerLM:
    return TransformerLM(config, lm_head=False, scalar_head=True, lora=adapters)


def init_from_lm(model: TransformerLM, lm_params: dict, key: jax.Array) -> dict:
    """The language model's body with a fresh scalar head (an untied LM head is dropped)."""
    fresh = init_params(model, key)
    params = {k: v for k, v in lm_params.items() if k not in ("lm_head", "scalar_head")}
    missing = set(fresh) - set(params) - {"scalar_head"}
    if missing:
        raise ValueError(f"init checkpoint: parameters {sorted(missing)} are missing (different architecture?)")
    params["scalar_head"] = fresh["scalar_head"]
    return params


def make_score_fn(model: TransformerLM) -> Callable:
    """Jitted ``score(params, ids, mask) -> [B]`` raw rewards (dropout off)."""

    @jax.jit
    def score(params, ids, mask):
        return pool_last(model.apply({"params": params}, ids, mask).scalar, mask)

    return score


@struct.dataclass
class PairBatch:
    """Chosen and rejected sequences ``[B, L]`` with masks, and a margin per pair."""

    chosen: jax.Array
    chosen_mask: jax.Array
    rejected: jax.Array
    rejected_mask: jax.Array
    margin: jax.Array

    def __getitem__(self, idx) -> "PairBatch":
        return PairBatch(self.chosen[idx], self.chosen_mask[idx], self.rejected[idx], self.rejected_mask[idx],
                         self.margin[idx])

    def __len__(self) -> int:
        return self.chosen.shape[0]


def encode_sequences(tokenizer: Tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int,
                     overlong: str = "truncate", where: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Right-padded ``[BOS] prompt response [EOS]``; returns ids, mask and the number truncated.

    An example longer than ``max_length`` loses prompt tokens from its start, then response
    tokens before its EOS (``overlong="truncate"``), or is an error naming it
    (``overlong="reject"``; ``where[i]`` says where example ``i`` came from).
    """
    if overlong not in ("truncate", "reject"):
        raise ValueError(f"overlong: must be 'truncate' or 'reject', got {overlong!r}")
    ids = np.full((len(prompts), max_length), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(prompts), max_length), np.int32)
    truncated = 0
    for i, (p, r) in enumerate(zip(prompts, responses)):
        prompt_ids, response_ids = tokenizer.bos_ids + tokenizer.encode(p), tokenizer.encode(r)
        n = len(prompt_ids) + len(response_ids) + 1
        if n > max_length:
            if overlong == "reject":
                at = where[i] if where is not None else f"example {i}"
                raise ValueError(f"{at}: {n} tokens exceed max_length {max_length} (overlong='reject')")
            truncated += 1
            cut = min(n - max_length, len(prompt_ids))
            prompt_ids = prompt_ids[cut:]
            response_ids = response_ids[: max_length - 1 - len(prompt_ids)]
        row = prompt_ids + response_ids + [tokenizer.eos_id]
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask, truncated


def encode_pairs(tokenizer: Tokenizer, pairs: Sequence[dict], max_length: int, overlong: str = "truncate",
                 where: Sequence[str] | None = None) -> tuple[PairBatch, int]:
    prompts = [p["prompt"] for p in pairs]
    c_ids, c_mask, n1 = encode_sequences(tokenizer, prompts, [p["chosen"] for p in pairs], max_length, overlong, where)
    r_ids, r_mask, n2 = encode_sequences(tokenizer, prompts, [p["rejected"] for p in pairs], max_length, overlong, where)
    margin = np.asarray([float(p.get("margin", 0.0)) for p in pairs], np.float32)
    return PairBatch(c_ids, c_mask, r_ids, r_mask, margin), n1 + n2


@dataclass(frozen=True)
class RMConfig(DictConfig):
    """Reward-model training settings."""

    model: TransformerConfig = field(default_factory=lambda: TransformerConfig(num_layers=2, d_model=128, max_len=64))
    """Transformer shape (ignored when initialising from an SFT checkpoint, which brings its own)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """Low-rank adapters (rank > 0): only they and the scalar head train, the body stays frozen."""
    epochs: int = 3
    """Passes over the training pairs."""
    batch_size: int = 32
    """Pairs per step."""
    lr: float = 1e-3
    """Peak learning rate (linear warm-up over 5% of the steps, then cosine decay)."""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip."""
    max_length: int = 64
    """Tokens per sequence."""
    overlong: str = "truncate"
    """'truncate' (drop prompt start, then response end; EOS kept) or 'reject' (error) for longer examples."""
    use_margin: bool = False
    """Subtract each pair's 'margin' field from the reward gap in the loss."""
    heldout_fraction: float = 0.1
    """Share of pairs held out for evaluation."""
    normalize: bool = True
    """Shift and scale scores so the training responses score mean 0, std 1."""
    seed: int = 0
    """Seed for the head's init and the batching."""

    def validate(self) -> None:
        require_finite(self)
        validate_part(self.model, "model")
        lora.check(self.lora, self.model.arch)
        require_positive(self, "epochs", "batch_size", "max_length")
        if not self.lr > 0:
            raise ValueError(f"lr: must be positive, got {self.lr}")
        if self.overlong not in ("truncate", "reject"):
            raise ValueError(f"overlong: must be 'truncate' or 'reject', got {self.overlong!r}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction: must be in (0, 1), got {self.heldout_fraction}")


@dataclass
class RMResult:
    params: dict
    model: TransformerLM
    history: list[dict]
    norm: dict
    heldout: PairBatch
    heldout_index: np.ndarray
    heldout_scores: tuple[np.ndarray, np.ndarray]
    truncated: int
    wall_s: float


def score_batches(score: Callable, params, ids: np.ndarray, mask: np.ndarray, batch_size: int) -> np.ndarray:
    """Scores in fixed-size batches (the last padded by repetition) so one program serves all."""
    return in_fixed_batches(lambda idx: score(params, ids[idx], mask[idx]), len(ids), batch_size)


def check_rm_pairs(config: RMConfig, tokenizer: Tokenizer, pairs: Sequence[dict], where: Sequence[str] | None,
                   model_config: TransformerConfig) -> tuple[PairBatch, int]:
    """The checks of :func:`train_reward_model` that need no model: the config, sequences that
    fit (or are cut, as ``overlong`` says), and enough training pairs for a batch. Returns the
    encoded pairs and how many sequences were cut."""
    config.validate()
    if config.max_length > model_config.max_len:
        raise ValueError(f"max_length: {config.max_length} exceeds the model's max_len {model_config.max_len}")
    data, truncated = encode_pairs(tokenizer, pairs, config.max_length, config.overlong, where)
    require_rows(len(data), config.heldout_fraction, config.batch_size, "pairs", at_least_one=True)
    return data, truncated


def train_reward_model(config: RMConfig, tokenizer: Tokenizer, pairs: Sequence[dict], *, init_params_from=None,
                       model_config: TransformerConfig | None = None, where: Sequence[str] | None = None,
                       progress: Callable[[int, int, float], None] | None = None, checkpoints=None,
                       on_status: Callable[[str], None] | None = None) -> RMResult:
    """Trains on ``pairs`` (dicts with prompt/chosen/rejected[/margin]); evaluates on held-out pairs each epoch.

    ``init_params_from`` (an LM's params, with ``model_config``) initialises the body from SFT.
    ``progress(step, total_steps, loss)`` is called after each step. With ``checkpoints`` it
    saves periodically and resumes (:func:`rlhf_jax.supervised.fit`).
    """
    model = reward_model(model_config or config.model, config.lora)
    lora.check(config.lora, model.config.arch)
    data, truncated = check_rm_pairs(config, tokenizer, pairs, where, model.config)
    if not config.use_margin:
        data = data.replace(margin=np.zeros_like(data.margin))
    rng, held, train_rows = holdout_split(len(data), config.heldout_fraction, config.seed, at_least_one=True)
    heldout, train = data[held], data[train_rows]
    # Pairs labelled here by sampling carry the labeller's probability: score against it too.
    heldout_label_prob = (np.asarray([pairs[i]["label_prob"] for i in held])
                          if all("label_prob" in p for p in pairs) else None)
    require_batches(config.batch_size, len(train), "pairs")
    key = jax.random.PRNGKey(config.seed)
    body = reward_model(model.config)
    params = init_params(body, key) if init_params_from is None else init_from_lm(body, init_params_from, key)
    params = lora.with_adapters(params, config.lora, model.config.arch, jax.random.fold_in(key, 1))
    part = lora.partition(config.lora)
    steps_per_epoch = len(train) // config.batch_size
    total = steps_per_epoch * config.epochs
    tx = adamw_warmup_cosine(config.lr, max(1, total // 20), total, config.weight_decay, config.max_grad_norm)

    def loss_fn(params, b: PairBatch):
        # One forward pass over chosen and rejected together.
        ids = jnp.concatenate([b.chosen, b.rejected])
        mask = jnp.concatenate([b.chosen_mask, b.rejected_mask])
        r = pool_last(model.apply({"params": params}, ids, mask).scalar, mask)
        r_c, r_r = jnp.split(r, 2)
        return bradley_terry_loss(r_c, r_r, b.margin), preference_metrics(r_c, r_r)

    score = make_score_fn(model)
    scores = None

    def evaluate(done, params, losses, auxes) -> dict:
        nonlocal scores
        r_c = score_batches(score, params, heldout.chosen, heldout.chosen_mask, config.batch_size)
        r_r = score_batches(score, params, heldout.rejected, heldout.rejected_mask, config.batch_size)
        m = preference_metrics(r_c, r_r)
        scores = (r_c, r_r)
        row = {**epoch_row(done // steps_per_epoch, losses, auxes),
               "heldout_loss": float(bradley_terry_loss(r_c, r_r, heldout.margin)),
               "heldout_accuracy": float(m["accuracy"]), "heldout_reward_gap": float(m["reward_gap"])}
        if heldout_label_prob is not None:
            row["heldout_expected_accuracy"] = expected_accuracy(r_c, r_r, heldout_label_prob)
        return row

    t0 = time.perf_counter()
    params, _, history = fit(jit_gradient_step(loss_fn, tx, has_aux=True, partition=part), params,
                             tx.init(part.split(params)[0]),
                             ((data[idx],) for idx in epoch_batches(rng, train_rows, config.batch_size, config.epochs)),
                             total, evaluate_at=lambda s: s % steps_per_epoch == 0, evaluate=evaluate,
                             progress=progress, checkpoints=checkpoints, on_status=on_status, partition=part)
    norm = {"mean": 0.0, "std": 1.0}
    if config.normalize:
        all_scores = np.concatenate([score_batches(score, params, train.chosen, train.chosen_mask, config.batch_size),
                                     score_batches(score, params, train.rejected, train.rejected_mask,
                                                   config.batch_size)])
        norm = {"mean": float(all_scores.mean()), "std": float(all_scores.std() + 1e-8)}
    return RMResult(params, model, history, norm, heldout, held, scores, truncated,
                    time.perf_counter() - t0)


class RewardScorer:
    """``score(prompts, responses) -> np.ndarray``: pads and batches for the caller.

    Scores are normalised with ``norm`` (mean 0, std 1 on the SFT responses it was fitted on).
    """

    def __init__(self, model: TransformerLM, params, tokenizer: Tokenizer, *, norm: dict | None = None,
                 max_length: int | None = None, batch_size: int = 64):
        self.model, self.params, self.tokenizer = model, params, tokenizer
        self.norm = norm or {"mean": 0.0, "std": 1.0}
        self.max_length = max_length or model.config.max_len
        self.batch_size = batch_size
        self._score = make_score_fn(model)

    def raw(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        ids, mask, _ = encode_sequences(self.tokenizer, prompts, responses, self.max_length)
        return score_batches(self._score, self.params, ids, mask, self.batch_size)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        if len(prompts) != len(responses):
            raise ValueError(f"responses: {len(responses)} responses for {len(prompts)} prompts")
        return (self.raw(prompts, responses) - self.norm["mean"]) / self.norm["std"]


def calibration_bins(r_chosen: np.ndarray, r_rejected: np.ndarray, n_bins: int = 10) -> dict:
    """Predicted vs empirical preference probability on pairs seen in both orders.

    For a pair, the model predicts ``P(first preferred) = sigmoid(r_first - r_second)``;
    taking each pair as (chosen, rejected) with outcome 1 and as (rejected, chosen) with
    outcome 0 gives predictions with known outcomes. Returns per-bin mean prediction,
    empirical frequency and count (empty bins omitted).
    """
    gap = np.asarray(r_chosen, np.float64) - np.asarray(r_rejected, np.float64)
    pred = np.concatenate([1 / (1 + np.exp(-gap)), 1 / (1 + np.exp(gap))])
    outcome = np.concatenate([np.ones_like(gap), np.zeros_like(gap)])
    bins = np.minimum((pred * n_bins).astype(int), n_bins - 1)
    out = {"predicted": [], "empirical": [], "count": []}
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            out["predicted"].append(float(pred[sel].mean()))
            out["empirical"].append(float(outcome[sel].mean()))
            out["count"].append(int(sel.sum()))
    return out


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (``scipy.stats.spearmanr``, ties at their average rank);
    NaN when either side is constant."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)
