"""The PPO update (docs/theory.md §9; arXiv:1707.06347): epochs x minibatches of the clipped loss.

KL early stopping is a mask, not a ``break``: once a minibatch's approximate
KL exceeds ``target_kl`` the rest of the update's minibatches *and epochs* leave the
parameters and optimiser state unchanged (a plain ``break`` would only leave the
minibatch loop). The step that crossed the target is kept, as in the usual implementations.
``hp.target_kl`` None means early stopping is statically off (no mask at all).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ppo_jax import losses, optim
from ppo_jax.minibatches import minibatch_epochs
from ppo_jax.networks import forward
from ppo_jax.rollout import Batch

AUX_NAMES = ("total_loss", "policy_loss", "value_loss", "entropy", "approx_kl", "approx_kl_k1",
             "clip_fraction", "max_ratio_deviation")


def ppo_loss(network, params, mb: Batch, hp, normalize_advantages: bool):
    """Total loss (docs/theory.md §9) on a minibatch, with diagnostics as auxiliary output."""
    dist, value = forward(network, params, mb)
    logp = dist.log_prob(mb.action)
    ratio = losses.importance_ratio(logp, mb.log_prob)
    adv = losses.normalize_advantages(mb.advantage) if normalize_advantages else mb.advantage
    policy_loss = losses.clipped_surrogate_loss(ratio, adv, hp.clip_eps)
    value_loss = losses.value_loss(value, mb.target, mb.value, hp.value_clip_eps)
    entropy = losses.entropy_bonus(dist.entropy())
    loss = losses.total_loss(policy_loss, value_loss, entropy, hp.vf_coef, hp.ent_coef)
    aux = {
        "total_loss": loss,
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "approx_kl": losses.approx_kl_k3(logp, mb.log_prob),
        "approx_kl_k1": losses.approx_kl_k1(logp, mb.log_prob),
        "clip_fraction": losses.clip_fraction(ratio, hp.clip_eps),
        "max_ratio_deviation": jnp.max(jnp.abs(ratio - 1.0)),
    }
    return loss, aux


def ppo_update(network, tx, params, opt_state, batch: Batch, hp, key: jax.Array, *,
               update_epochs: int, num_minibatches: int, per_minibatch_adv_norm: bool,
               shard_rows=None) -> tuple[Any, Any, dict]:
    """Runs ``update_epochs`` epochs, each a fresh permutation split into ``num_minibatches``.

    Returns new params, optimiser state and metrics averaged over the minibatch steps that
    were applied, plus ``first_minibatch_ratio_deviation`` (``max |r - 1|`` on epoch 0,
    minibatch 0, which must be 0: off 1, the old log-probs came from another policy or
    normaliser) and ``kl_stop_fraction`` (share of minibatch steps masked by KL early
    stopping). ``shard_rows``, if given, constrains each minibatch's rows to be split across
    devices, so each device takes the gradient of its rows and XLA averages them (data
    parallelism inside the compiled update).
    """
    loss = lambda p, mb: ppo_loss(network, p, mb, hp, per_minibatch_adv_norm)  # noqa: E731
    grad_fn = jax.value_and_grad(loss, has_aux=True)

    def minibatch_step(carry, mb):
        params, opt_state = carry
        if shard_rows is not None:
            mb = shard_rows(mb)
        (_, aux), grads = grad_fn(params, mb)
        return optim.step(tx, params, opt_state, grads), aux

    (params, opt_state), aux = minibatch_epochs(
        minibatch_step, (params, opt_state), batch, key, epochs=update_epochs, minibatches=num_minibatches,
        stop_when=None if hp.target_kl is None else lambda aux: (hp.target_kl > 0) & (aux["approx_kl"] > hp.target_kl))
    applied = aux.pop("applied") if "applied" in aux else jnp.ones_like(aux["total_loss"])
    n = jnp.maximum(applied.sum(), 1.0)
    metrics = {k: (v * applied).sum() / n for k, v in aux.items() if k != "max_ratio_deviation"}
    metrics["first_minibatch_ratio_deviation"] = aux["max_ratio_deviation"][0, 0]
    metrics["kl_stop_fraction"] = 1.0 - applied.mean()
    return params, opt_state, metrics


def update(network, tx, params, opt_state, batch: Batch, hp, key: jax.Array, config, shard_rows=None):
    """:func:`ppo_update` with its sizes and switches from ``config`` (the signature of every
    rule in :data:`ppo_jax.algorithms.UPDATES`)."""
    return ppo_update(network, tx, params, opt_state, batch, hp, key, update_epochs=config.update_epochs,
                      num_minibatches=config.num_minibatches, shard_rows=shard_rows,
                      per_minibatch_adv_norm=config.normalize_advantages and config.per_minibatch_adv_norm)
