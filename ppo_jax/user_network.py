"""Your own Flax module as the network: ``config.network = "module:function"`` (or
``path/to/file.py:function``), the function returning the module, or
``make_train(config, network=module)``.

The module maps an observation batch (the environment's own shape) to ``(distribution
parameters, value)``; :class:`ppo_jax.networks.UserActorCritic` makes the distribution. It is
one network with one optimiser, so it runs with ``shared_torso=True`` and the update rules
that step actor and critic together (ppo, a2c).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from ppo_jax.run.configure import SCHEDULER_OFF
from ppo_jax.run.named import Named, load_named
from ppo_jax.run.settings import note_once

_networks = Named("network", "a module")


def is_user_network(name: str) -> bool:
    return ":" in name


def register_network(module) -> str:
    """An id for the Flax module ``module``, usable as ``config.network`` in this process."""
    import flax.linen as nn

    if not isinstance(module, nn.Module):
        raise ValueError(f"network: a {type(module).__name__} is not a Flax linen Module")
    return _networks.give(module)


def user_network(name: str):
    """The module ``name`` stands for (made once per process)."""
    return _networks.get(name, _make_network)


def _make_network(name: str):
    import flax.linen as nn

    factory = load_named(name, "network")
    try:
        module = factory()
    except Exception as err:
        raise ValueError(f"network: {name!r} raised {type(err).__name__}: {err}") from err
    if not isinstance(module, nn.Module):
        raise ValueError(f"network: {name!r} returned a {type(module).__name__}, not a Flax linen Module")
    return module


# Primitives that XLA:CPU runs as LAPACK custom calls.
LAPACK_PRIMITIVES = frozenset({"qr", "householder_product", "geqrf", "eigh", "svd", "cholesky", "lu"})


def lapack_primitives(jaxpr) -> set[str]:
    """The :data:`LAPACK_PRIMITIVES` a (closed) jaxpr holds, nested ones included."""
    found: set[str] = set()

    def walk(j):
        for eqn in getattr(j, "jaxpr", j).eqns:
            if eqn.primitive.name in LAPACK_PRIMITIVES:
                found.add(eqn.primitive.name)
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                        walk(sub)

    walk(jaxpr)
    return found


def check_user_network(name: str, spec) -> None:
    """Traces the module once on a batch of 2 observations (shapes only, nothing compiles) and
    raises one ValueError naming what its output lacks."""
    from ppo_jax.networks import UserActorCritic

    net = UserActorCritic(user_network(name), spec.action_dim, spec.continuous, spec.obs_shape)
    obs = jnp.zeros((2, spec.obs_dim), jnp.float32)
    what = f"network: {name!r}"
    try:
        variables = jax.eval_shape(net.init, jax.random.PRNGKey(0), obs)
        module_out = jax.eval_shape(lambda v: net.module.apply({"params": v["params"]["module"]},
                                                               obs.reshape((2,) + tuple(spec.obs_shape))), variables)
    except Exception as err:
        raise ValueError(f"{what} failed on observations of shape (batch,) + {tuple(spec.obs_shape)}: "
                         f"{type(err).__name__}: {err}") from err
    if not (isinstance(module_out, (tuple, list)) and len(module_out) == 2):
        got = (f"one array of shape {module_out.shape}" if hasattr(module_out, "shape")
               else type(module_out).__name__)
        raise ValueError(f"{what} must return (distribution parameters, value); it returned {got}")
    head, value = module_out
    lapack = lapack_primitives(jax.make_jaxpr(net.init)(jax.random.PRNGKey(0), obs))
    if lapack and SCHEDULER_OFF not in os.environ.get("XLA_FLAGS", ""):
        # Under vmap (seeds) a batched LAPACK call deadlocked XLA:CPU's concurrency-optimised
        # scheduler on a 2-core machine; ppo_jax's own networks initialise without one.
        note_once(f"ppo-jax: note: {what} initialises with {', '.join(sorted(lapack))} (flax's orthogonal init is a "
                  "QR): vmapped over seeds on a 2-core CPU, XLA's concurrency-optimised scheduler (on for this "
                  "environment) can deadlock on it; use ppo_jax.orthogonal_init.orthogonal, or set "
                  f"XLA_FLAGS={SCHEDULER_OFF} before JAX starts")
    if value.shape not in ((2,), (2, 1)):
        raise ValueError(f"{what}: the value must have shape (batch,) or (batch, 1), got {value.shape} for batch 2")
    if spec.continuous:
        if not (isinstance(head, (tuple, list)) and len(head) == 2):
            raise ValueError(f"{what}: continuous actions need (mean, log_std) as the distribution parameters")
        if head[0].shape != (2, spec.action_dim):
            raise ValueError(f"{what}: the mean must have shape (batch, {spec.action_dim}), got {head[0].shape}")
        if head[1].shape not in ((spec.action_dim,), (2, spec.action_dim)):
            raise ValueError(f"{what}: log_std must have shape ({spec.action_dim},) or (batch, {spec.action_dim}), "
                             f"got {head[1].shape}")
    elif getattr(head, "shape", None) != (2, spec.action_dim):
        raise ValueError(f"{what}: the logits must have shape (batch, {spec.action_dim}) for "
                         f"{spec.action_dim} actions, got {getattr(head, 'shape', type(head).__name__)}")
