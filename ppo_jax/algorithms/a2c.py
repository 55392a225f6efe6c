"""A2C (notes theorem 4.6): one gradient step per batch on the advantage form of the policy gradient.

``grad J = E[ grad log pi(a|s) A(s, a) ]`` with ``A`` estimated by GAE, so the policy loss
is ``-mean(log pi(a|s) A)``; the critic's value loss and the entropy bonus are added as in
eq. (39). No ratio, no clipping, no second pass over the data.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ppo_jax import losses, optim
from ppo_jax.rollout import Batch


def a2c_loss(network, params, batch: Batch, hp) -> tuple[jax.Array, dict]:
    dist, value = network.apply({"params": params}, batch.obs)
    logp = dist.log_prob(batch.action)
    policy_loss = -jnp.mean(logp * batch.advantage)
    value_loss = losses.value_loss(value, batch.target, batch.value, hp.value_clip_eps)
    entropy = losses.entropy_bonus(dist.entropy())
    total = losses.total_loss(policy_loss, value_loss, entropy, hp.vf_coef, hp.ent_coef)
    return total, {"total_loss": total, "policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy,
                   "approx_kl": losses.approx_kl_k3(logp, batch.log_prob)}


def a2c_update(network, tx, params, opt_state, batch: Batch, hp, lrs: dict, *, shared_torso: bool):
    """One optimiser step on the whole batch. Returns ``(params, opt_state, metrics)``."""
    flat, unflatten = optim.flatten_groups(params, shared_torso)
    (_, aux), grads = jax.value_and_grad(lambda f: a2c_loss(network, unflatten(f), batch, hp), has_aux=True)(flat)
    flat, opt_state = optim.apply_gradients(tx, flat, opt_state, grads, lrs)
    return unflatten(flat), opt_state, aux


def update(network, tx, params, opt_state, batch: Batch, hp, lrs: dict, key: jax.Array, config, shard_rows=None):
    """:func:`a2c_update` in the signature of :data:`ppo_jax.algorithms.UPDATES` (no key used)."""
    return a2c_update(network, tx, params, opt_state, batch, hp, lrs, shared_torso=config.shared_torso)
