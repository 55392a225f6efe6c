"""The PPO update (notes section 9, listing 6): epochs x minibatches of the clipped loss.

KL early stopping (listing 6) is a mask, not a ``break``: once a minibatch's approximate
KL exceeds ``target_kl`` the rest of the update's minibatches *and epochs* leave the
parameters and optimiser state unchanged (the listing's ``break`` only left the
minibatch loop). The step that crossed the target is kept, as in the listing.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from ppo_jax import losses, optim


@struct.dataclass
class Batch:
    """Flat ``[B, ...]`` samples for the update."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    advantage: jax.Array
    target: jax.Array


def permute_rows(tree, perm: jax.Array):
    """``tree`` with every leaf's rows reordered by ``perm``.

    Leaves of one dtype are concatenated and gathered once: on XLA:CPU each gather has a
    fixed cost that, per leaf, dominated the whole minibatch step.
    """
    leaves, treedef = jax.tree.flatten(tree)
    n = leaves[0].shape[0]
    out = [None] * len(leaves)
    for dtype in {leaf.dtype for leaf in leaves}:
        idx = [i for i, leaf in enumerate(leaves) if leaf.dtype == dtype]
        cols = [leaves[i].reshape((n, -1)) for i in idx]
        gathered = jnp.concatenate(cols, axis=1)[perm]
        start = 0
        for i, col in zip(idx, cols):
            width = col.shape[1]
            out[i] = gathered[:, start:start + width].reshape(leaves[i].shape)
            start += width
    return jax.tree.unflatten(treedef, out)


def ppo_loss(network, params, mb: Batch, hp, normalize_advantages: bool):
    """Total loss eq. (39) on a minibatch, with diagnostics as auxiliary output."""
    dist, value = network.apply({"params": params}, mb.obs)
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


def ppo_update(network, tx, params, opt_state, batch: Batch, hp, lrs: dict, key: jax.Array, *,
               update_epochs: int, num_minibatches: int, shared_torso: bool,
               per_minibatch_adv_norm: bool) -> tuple[Any, Any, dict]:
    """Runs ``update_epochs`` epochs, each a fresh permutation split into ``num_minibatches``.

    Returns new params, optimiser state and metrics averaged over the minibatch steps that
    were applied, plus ``first_minibatch_ratio_deviation`` (``max |r - 1|`` on epoch 0,
    minibatch 0, which must be 0: PITFALLS 4) and ``kl_stop_fraction`` (share of
    minibatch steps masked by KL early stopping).
    """
    batch_size = batch.obs.shape[0]
    mb_size = batch_size // num_minibatches
    grad_fn = jax.value_and_grad(ppo_loss, argnums=1, has_aux=True)

    def minibatch_step(carry, mb):
        params, opt_state, stopped = carry
        (_, aux), grads = grad_fn(network, params, mb, hp, per_minibatch_adv_norm)
        new_params, new_opt_state = optim.apply_gradients(tx, params, opt_state, grads, lrs, shared_torso)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(stopped, o, n), new, old)  # noqa: E731
        params, opt_state = keep(new_params, params), keep(new_opt_state, opt_state)
        aux["applied"] = 1.0 - stopped.astype(jnp.float32)
        stopped = stopped | ((hp.target_kl > 0) & (aux["approx_kl"] > hp.target_kl))
        return (params, opt_state, stopped), aux

    def epoch(carry, epoch_key):
        shuffled = permute_rows(batch, jax.random.permutation(epoch_key, batch_size))
        mbs = jax.tree.map(lambda x: x.reshape((num_minibatches, mb_size) + x.shape[1:]), shuffled)
        return jax.lax.scan(minibatch_step, carry, mbs)

    init = (params, opt_state, jnp.asarray(False))
    (params, opt_state, _), aux = jax.lax.scan(epoch, init, jax.random.split(key, update_epochs))
    applied = aux.pop("applied")
    n = jnp.maximum(applied.sum(), 1.0)
    metrics = {k: (v * applied).sum() / n for k, v in aux.items() if k != "max_ratio_deviation"}
    metrics["first_minibatch_ratio_deviation"] = aux["max_ratio_deviation"][0, 0]
    metrics["kl_stop_fraction"] = 1.0 - applied.mean()
    return params, opt_state, metrics
