"""Optimisers: Adam (eps 1e-5) after global-norm clipping, one per parameter group.

With separate actor and critic networks (listing 6) each network has its own
optimiser, learning rate and gradient-norm clip; with a shared torso there is one
group, ``"all"``. The learning rate is applied outside optax so that it can be a traced
value annealed by the update index (PITFALLS 6: ``1 - update / num_updates``, i.e.
``count // (epochs * minibatches)`` in optimiser steps), and so that a masked
(KL-stopped) step leaves both parameters and optimiser state untouched.
"""

from __future__ import annotations

import jax
import optax

ADAM_EPS = 1e-5


def make_tx(max_grad_norm: float | jax.Array) -> optax.GradientTransformation:
    """Global-norm clipping (not per-element, PITFALLS 7), then Adam's scaling, PyTorch-style eps 1e-5."""
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.scale_by_adam(eps=ADAM_EPS))


def groups(tree, shared_torso: bool) -> dict:
    """Parameter groups: ``{"all": tree}`` or ``{"actor": ..., "critic": ...}``."""
    return {"all": tree} if shared_torso else {"actor": tree["actor"], "critic": tree["critic"]}


def ungroup(grouped: dict, shared_torso: bool):
    return grouped["all"] if shared_torso else {"actor": grouped["actor"], "critic": grouped["critic"]}


def init_opt_state(tx: optax.GradientTransformation, params, shared_torso: bool) -> dict:
    return {name: tx.init(p) for name, p in groups(params, shared_torso).items()}


def apply_gradients(tx, params, opt_state: dict, grads, lrs: dict, shared_torso: bool):
    """One optimiser step per group with learning rate ``lrs[group]``; returns (params, opt_state)."""
    p, g = groups(params, shared_torso), groups(grads, shared_torso)
    new_params, new_state = {}, {}
    for name in p:
        updates, new_state[name] = tx.update(g[name], opt_state[name], p[name])
        new_params[name] = jax.tree.map(lambda w, u, lr=lrs[name]: w - lr * u, p[name], updates)
    return ungroup(new_params, shared_torso), new_state


def group_lrs(lr: jax.Array, critic_lr: jax.Array, shared_torso: bool, scale: jax.Array = 1.0) -> dict:
    if shared_torso:
        return {"all": lr * scale}
    return {"actor": lr * scale, "critic": critic_lr * scale}
