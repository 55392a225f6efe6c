"""Critic regression: ``epochs x minibatches`` Adam steps of the (masked) value loss, eq. (30)/(31).

Used by REINFORCE with a baseline and by TRPO, whose policy steps are not gradient steps on
a joint loss; only the critic's parameter group moves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ppo_jax import losses, optim
from ppo_jax.networks import ActorCritic
from ppo_jax.packing import shuffled_indices


def regress_critic(network, tx, flat: dict, unflatten, opt_state: dict, obs: jax.Array, targets: jax.Array,
                   old_values: jax.Array, mask: jax.Array, hp, lr: jax.Array, key: jax.Array, *,
                   epochs: int, minibatches: int) -> tuple[dict, dict, jax.Array]:
    """Fits ``V`` to ``targets`` on the samples with ``mask`` 1; ``flat`` holds the ``actor`` and
    ``critic`` flat vectors. Returns the new ``flat``, ``opt_state`` and the mean value loss."""
    n = obs.shape[0]
    size = n // minibatches

    def loss(critic_vec, idx):
        params = unflatten({"actor": flat["actor"], "critic": critic_vec})
        values = network.apply({"params": params}, obs[idx], method=ActorCritic.value)
        return losses.value_loss(values, targets[idx], old_values[idx], hp.value_clip_eps, mask[idx])

    def step(carry, idx):
        vec, state = carry
        value_loss, g = jax.value_and_grad(loss)(vec, idx)
        new, new_state = optim.apply_gradients(tx, {"critic": vec}, {"critic": state}, {"critic": g}, {"critic": lr})
        return (new["critic"], new_state["critic"]), value_loss

    def epoch(carry, k):
        perm = shuffled_indices(k, n)[: size * minibatches].reshape(minibatches, size)
        return jax.lax.scan(step, carry, perm)

    (vec, state), value_losses = jax.lax.scan(epoch, (flat["critic"], opt_state["critic"]),
                                              jax.random.split(key, epochs))
    return {**flat, "critic": vec}, {**opt_state, "critic": state}, jnp.mean(value_losses)
