"""A2C (docs/theory.md §3): one gradient step per batch on the advantage form of the policy gradient.

``grad J = E[ grad log pi(a|s) A(s, a) ]`` with ``A`` estimated by GAE, so the policy loss
is ``-mean(log pi(a|s) A)``; the critic's value loss and the entropy bonus are added as in
docs/theory.md §9. No ratio, no clipping, no second pass over the data.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ppo_jax import losses, optim
from ppo_jax.networks import forward
from ppo_jax.rollout import Batch


def a2c_loss(network, params, batch: Batch, hp) -> tuple[jax.Array, dict]:
    dist, value = forward(network, params, batch)
    logp = dist.log_prob(batch.action)
    policy_loss = -jnp.mean(logp * batch.advantage)
    value_loss = losses.value_loss(value, batch.target, batch.value, hp.value_clip_eps)
    entropy = losses.entropy_bonus(dist.entropy())
    total = losses.total_loss(policy_loss, value_loss, entropy, hp.vf_coef, hp.ent_coef)
    return total, {"total_loss": total, "policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy,
                   "approx_kl": losses.approx_kl_k3(logp, batch.log_prob)}


def a2c_update(network, tx, params, opt_state, batch: Batch, hp):
    """One optimiser step on the whole batch. Returns ``(params, opt_state, metrics)``."""
    (_, aux), grads = jax.value_and_grad(lambda p: a2c_loss(network, p, batch, hp), has_aux=True)(params)
    params, opt_state = optim.step(tx, params, opt_state, grads)
    return params, opt_state, aux


def update(network, tx, params, opt_state, batch: Batch, hp, key: jax.Array, config, shard_rows=None):
    """:func:`a2c_update` in the signature of :data:`ppo_jax.algorithms.UPDATES` (no key used)."""
    return a2c_update(network, tx, params, opt_state, batch, hp)
