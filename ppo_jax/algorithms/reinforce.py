"""REINFORCE (docs/theory.md §1, §2): Monte-Carlo policy gradient on complete episodes.

``grad J ~ mean_t grad log pi(a_t|s_t) (G_t - b(s_t))`` with ``G_t`` the discounted
reward-to-go of §1, summed to the episode's end: no critic in the target and no
bootstrapping. Every rollout starts fresh episodes and is at least as long as the time
limit, so each episode's first one ends inside it, whole; a later episode still running
when the rollout ends has no complete ``G_t`` and its steps are masked out. (With rollouts
that continued episodes across updates, an episode longer than the rollout contributed only
its tail, and the policy never learnt from the first steps of long episodes: CartPole
returns stalled near the 128-step rollout length.)
With ``baseline=True`` the state baseline ``b(s) = V(s)`` (§2: any function of
the state leaves the estimator unbiased) is fitted to ``G`` by regression, which lowers the
estimator's variance (§2); without it ``b = 0``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ppo_jax import losses, optim
from ppo_jax.algorithms.critic import regress_critic


def complete_episode_mask(done: jax.Array) -> jax.Array:
    """``[T, N]`` mask: 1 where step ``t`` belongs to an episode that ends at some ``t' >= t``
    within the rollout (its reward-to-go is complete), 0 on the unfinished tail."""
    ends_later = jnp.flip(jnp.cumsum(jnp.flip(done.astype(jnp.int32), 0), 0), 0)
    return (ends_later > 0).astype(jnp.float32)


def reinforce_update(network, tx, params, opt_state, obs, action, returns, mask, hp, key, *,
                     baseline: bool, epochs: int, minibatches: int):
    """One policy step on ``-mean_mask(log pi(a|s) (G - b(s)))`` (minus the entropy bonus), then,
    with a baseline, the critic's regression on ``G``. Inputs are flat ``[B, ...]``.
    Returns ``(params, opt_state, metrics)``."""
    values = network.apply({"params": params}, obs, method="value")
    weight = returns - values if baseline else returns

    def policy_loss(actor):
        dist = network.apply({"params": {**params, "actor": actor}}, obs, method="policy")
        pg = -losses.masked_mean(dist.log_prob(action) * weight, mask)
        entropy = losses.masked_mean(dist.entropy(), mask)
        return pg - hp.ent_coef * entropy, (pg, entropy)

    (_, (pg, entropy)), g = jax.value_and_grad(policy_loss, has_aux=True)(params["actor"])
    params, opt_state = optim.step_group(tx, "actor", params, opt_state, g)
    metrics = {"policy_loss": pg, "entropy": entropy, "complete_fraction": jnp.mean(mask),
               "value_loss": jnp.asarray(0.0)}
    if baseline:
        params, opt_state, metrics["value_loss"] = regress_critic(
            network, tx, params, opt_state, obs, returns, values, mask, hp, key, epochs=epochs,
            minibatches=minibatches)
    return params, opt_state, metrics


def update(network, tx, params, opt_state, batch, hp, key: jax.Array, config, shard_rows=None):
    """:func:`reinforce_update` in the signature of :data:`ppo_jax.algorithms.UPDATES`: the
    batch's ``advantage`` is the reward-to-go ``G`` and its ``mask`` the complete episodes."""
    return reinforce_update(network, tx, params, opt_state, batch.obs, batch.action, batch.advantage, batch.mask,
                            hp, key, baseline=config.algo == "reinforce-baseline", epochs=config.update_epochs,
                            minibatches=config.num_minibatches)
