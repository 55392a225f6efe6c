"""Critic regression: ``epochs x minibatches`` Adam steps of the (masked) value loss, eq. (30)/(31).

Used by REINFORCE with a baseline and by TRPO, whose policy steps are not gradient steps on
a joint loss; only the critic's parameter group moves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ppo_jax import losses, optim
from ppo_jax.minibatches import minibatch_epochs
from ppo_jax.networks import ActorCritic


def regress_critic(network, tx, flat: dict, unflatten, opt_state: dict, obs: jax.Array, targets: jax.Array,
                   old_values: jax.Array, mask: jax.Array, hp, lr: jax.Array, key: jax.Array, *,
                   epochs: int, minibatches: int) -> tuple[dict, dict, jax.Array]:
    """Fits ``V`` to ``targets`` on the samples with ``mask`` 1; ``flat`` holds the ``actor`` and
    ``critic`` flat vectors. Returns the new ``flat``, ``opt_state`` and the mean value loss."""
    def loss(critic_vec, mb):
        params = unflatten({"actor": flat["actor"], "critic": critic_vec})
        values = network.apply({"params": params}, mb["obs"], method=ActorCritic.value)
        return losses.value_loss(values, mb["target"], mb["old_value"], hp.value_clip_eps, mb["mask"])

    def step(carry, mb):
        vec, state = carry
        value_loss, g = jax.value_and_grad(loss)(vec, mb)
        new, new_state = optim.apply_gradients(tx, {"critic": vec}, {"critic": state}, {"critic": g}, {"critic": lr})
        return (new["critic"], new_state["critic"]), {"value_loss": value_loss}

    data = {"obs": obs, "target": targets, "old_value": old_values, "mask": mask}
    (vec, state), aux = minibatch_epochs(step, (flat["critic"], opt_state["critic"]), data, key, epochs=epochs,
                                         minibatches=minibatches)
    return {**flat, "critic": vec}, {**opt_state, "critic": state}, jnp.mean(aux["value_loss"])
