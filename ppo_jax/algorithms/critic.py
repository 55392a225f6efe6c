"""Critic regression: ``epochs x minibatches`` Adam steps of the (masked) value loss, docs/theory.md §5.

Used by REINFORCE with a baseline and by TRPO, whose policy steps are not gradient steps on
a joint loss; only the critic's parameter group moves.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ppo_jax import losses, optim
from ppo_jax.minibatches import minibatch_epochs


def regress_critic(network, tx, params: dict, opt_state, obs: jax.Array, targets: jax.Array, old_values: jax.Array,
                   mask: jax.Array, hp, key: jax.Array, *, epochs: int,
                   minibatches: int) -> tuple[dict, Any, jax.Array]:
    """Fits ``V`` to ``targets`` on the samples with ``mask`` 1, moving only the ``critic`` group
    of ``params`` (and its optimiser state). Returns the new ``params``, ``opt_state`` and the
    mean value loss."""
    def loss(critic, mb):
        values = network.apply({"params": {**params, "critic": critic}}, mb["obs"], method="value")
        return losses.value_loss(values, mb["target"], mb["old_value"], hp.value_clip_eps, mb["mask"])

    def step(carry, mb):
        params, state = carry
        value_loss, g = jax.value_and_grad(loss)(params["critic"], mb)
        return optim.step_group(tx, "critic", params, state, g), {"value_loss": value_loss}

    data = {"obs": obs, "target": targets, "old_value": old_values, "mask": mask}
    (params, opt_state), aux = minibatch_epochs(step, (params, opt_state), data, key, epochs=epochs,
                                                minibatches=minibatches)
    return params, opt_state, jnp.mean(aux["value_loss"])
