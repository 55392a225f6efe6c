"""Optimisers: Adam (eps 1e-5) after global-norm clipping, one per parameter group.

With separate actor and critic networks each network has its own
optimiser, learning rate and gradient-norm clip (``optax.partition`` over the groups
``"actor"`` and ``"critic"``); with a shared torso there is one group, ``"all"``.
Learning rates are hyperparameters in the optimiser state (``optax.inject_hyperparams``),
set once per update by :func:`set_learning_rates`: they are traced values annealed by the
update index (``1 - update / num_updates``, which counts updates, not optimiser steps, so a
KL-stopped update does not shift the schedule).

Each group's clip and Adam run on its parameters raveled into one vector
(``optax.flatten``): on XLA:CPU every leaf of a pytree costs a few small kernels per step
(Adam's moments, the clip, the KL mask), and the global norm of a group is the norm of
its vector, so the math is unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

ADAM_EPS = 1e-5


def group_names(shared_torso: bool) -> tuple[str, ...]:
    return ("all",) if shared_torso else ("actor", "critic")


def make_tx(max_grad_norm: float | jax.Array, shared_torso: bool) -> optax.GradientTransformation:
    """Per group: global-norm clipping (not per-element, which turns the step), then Adam with
    PyTorch-style eps 1e-5 and the group's learning rate (0 until :func:`set_learning_rates`)."""
    def group_tx():
        adam = optax.inject_hyperparams(optax.adam, static_args=("b1", "b2", "eps", "eps_root"),
                                        hyperparam_dtype=jnp.float32)(learning_rate=0.0, eps=ADAM_EPS)
        return optax.flatten(optax.chain(optax.clip_by_global_norm(max_grad_norm), adam))

    names = group_names(shared_torso)
    labels = "all" if shared_torso else {"actor": "actor", "critic": "critic"}
    return optax.partition({name: group_tx() for name in names}, labels)


def set_learning_rates(opt_state, lrs: dict):
    """``opt_state`` with group ``g``'s learning rate set to ``lrs[g]``."""
    for name, lr in lrs.items():
        in_group = lambda path, _, name=name: any(getattr(k, "key", None) == name for k in path)  # noqa: E731
        opt_state = optax.tree_utils.tree_set(opt_state, in_group, learning_rate=jnp.asarray(lr, jnp.float32))
    return opt_state


def group_lrs(lr: jax.Array, critic_lr: jax.Array, shared_torso: bool, scale: jax.Array = 1.0) -> dict:
    if shared_torso:
        return {"all": lr * scale}
    return {"actor": lr * scale, "critic": critic_lr * scale}


def step(tx, params, opt_state, grads):
    """One optimiser step of every group. Returns ``(params, opt_state)``."""
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


WHOLE = (lambda params: (params, {}), lambda trainable, frozen: trainable)
"""The partition (``(split, join)``) in which everything trains and nothing is frozen."""


def gradient_step(loss_fn, tx: optax.GradientTransformation, *, has_aux: bool = False, partition=None):
    """``update(params, opt_state, *args) -> (params, opt_state, loss, aux)``: the gradient of
    ``loss_fn(params, *args)`` (``(loss, aux)`` with ``has_aux``, else the loss and ``aux``
    None) and one step of ``tx``. Not jitted: the caller jits it, or calls it inside a scan.
    Every supervised and RLHF update takes its step through this one function.

    ``partition`` (``(split, join)``: ``split(params) -> (trainable, frozen)``) trains the
    first part alone: the gradient is taken with respect to it only, so the frozen part's
    gradient is never computed (not computed and then masked), and ``opt_state`` is ``tx``'s
    state of the trainable part (``tx.init(split(params)[0])``)."""
    grad_fn = jax.value_and_grad(lambda trainable, frozen, *args: loss_fn(join(trainable, frozen), *args),
                                 has_aux=has_aux)
    split, join = partition or WHOLE

    def update(params, opt_state, *args):
        trainable, frozen = split(params)
        value, grads = grad_fn(trainable, frozen, *args)
        loss, aux = value if has_aux else (value, None)
        trainable, opt_state = step(tx, trainable, opt_state, grads)
        return join(trainable, frozen), opt_state, loss, aux

    return update


def jit_frozen_input(fn, partition):
    """``jax.jit(fn)`` for ``fn(tree, *args) -> (tree, *rest)`` whose ``tree`` has a frozen part
    (``partition = (split, join)``): the compiled program takes the frozen part as an input
    and never returns it. A jitted function copies every array it returns, even one it was
    given unchanged, and a frozen pretrained model copied at every step doubles its memory."""
    split, join = partition

    @jax.jit
    def compiled(trainable, frozen, *args):
        tree, *rest = fn(join(trainable, frozen), *args)
        return (split(tree)[0], *rest)

    def call(tree, *args):
        trainable, frozen = split(tree)
        new, *rest = compiled(trainable, frozen, *args)
        return (join(new, frozen), *rest)

    return call


def jit_gradient_step(loss_fn, tx: optax.GradientTransformation, *, has_aux: bool = False, partition=None):
    """``jax.jit`` of :func:`gradient_step` for a caller that steps from Python; with a
    ``partition``, its frozen part an input only (:func:`jit_frozen_input`)."""
    if partition is None:
        return jax.jit(gradient_step(loss_fn, tx, has_aux=has_aux))
    return jit_frozen_input(gradient_step(loss_fn, tx, has_aux=has_aux, partition=partition), partition)


def step_group(tx, group: str, params: dict, opt_state, group_grads):
    """One optimiser step of ``group`` alone (``params[group]`` with ``group_grads``): the other
    groups' parameters *and* Adam states stay as they were, which a step of every group with
    zero gradients would not do (Adam's moments decay and its count moves)."""
    grads = {name: (group_grads if name == group else jax.tree.map(jnp.zeros_like, sub))
             for name, sub in params.items()}
    new_params, new_state = step(tx, params, opt_state, grads)
    kept = {name: (s if name == group else opt_state.inner_states[name])
            for name, s in new_state.inner_states.items()}
    return {**params, group: new_params[group]}, new_state._replace(inner_states=kept)
