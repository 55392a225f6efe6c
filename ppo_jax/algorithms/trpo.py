"""TRPO (docs/theory.md §7; arXiv:1502.05477): the trust-region problem solved by conjugate gradient and a line search.

    maximise_theta  L(theta) = E[ pi_theta(a|s) / pi_old(a|s) * A(s, a) ]
    subject to      KL_bar(theta) = E_s[ KL(pi_old(.|s) || pi_theta(.|s)) ] <= delta

Linearising L and taking the quadratic model of KL_bar at theta_old (its Hessian there is
the Fisher matrix F) gives the natural-gradient direction ``x = F^-1 g`` with
``g = grad L(theta_old)``, scaled to the trust region's boundary,
``step = sqrt(2 delta / x^T F x) x``. ``F x`` is never formed as a matrix: it is the
Hessian-vector product of KL_bar (``jax.jvp`` of ``jax.grad``), plus ``damping * x``.
Because the quadratic model can be wrong, a backtracking line search tries
``step, b step, b^2 step, ...`` and accepts the first that improves the surrogate and keeps
the *exact* mean KL within delta; if none does, the policy is left unchanged.
The critic is trained by regression on its targets as in the other algorithms.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree


def conjugate_gradient(matvec: Callable[[jax.Array], jax.Array], b: jax.Array, iters: int,
                       tol: float = 1e-10) -> jax.Array:
    """Approximately solves ``A x = b`` for symmetric positive-definite ``A`` given as ``matvec``.

    A fixed number of iterations (a static shape for ``jit``); once the squared residual is
    below ``tol`` the iterate is frozen, so extra iterations are harmless.
    """

    def body(carry, _):
        x, r, p, rr = carry
        done = rr < tol
        ap = matvec(p)
        alpha = rr / jnp.maximum(p @ ap, 1e-30)
        x_new, r_new = x + alpha * p, r - alpha * ap
        rr_new = r_new @ r_new
        p_new = r_new + (rr_new / jnp.maximum(rr, 1e-30)) * p
        keep = lambda new, old: jnp.where(done, old, new)  # noqa: E731
        return (keep(x_new, x), keep(r_new, r), keep(p_new, p), keep(rr_new, rr)), None

    x0 = jnp.zeros_like(b)
    (x, _, _, _), _ = jax.lax.scan(body, (x0, b, b, b @ b), None, iters)
    return x


def fisher_vector_product(mean_kl: Callable[[jax.Array], jax.Array], theta: jax.Array, v: jax.Array,
                          damping: float | jax.Array = 0.0) -> jax.Array:
    """``(H + damping I) v`` with ``H`` the Hessian of ``mean_kl`` at ``theta`` (the Fisher
    matrix when ``mean_kl(theta) = KL_bar(pi_old || pi_theta)`` and ``theta = theta_old``)."""
    return jax.jvp(jax.grad(mean_kl), (theta,), (v,))[1] + damping * v


def trpo_step(surrogate: Callable[[jax.Array], jax.Array], mean_kl: Callable[[jax.Array], jax.Array],
              theta: jax.Array, *, delta: float | jax.Array, damping: float | jax.Array, cg_iters: int,
              backtrack_steps: int, backtrack_coef: float = 0.5,
              fisher_kl: Callable[[jax.Array], jax.Array] | None = None) -> tuple[jax.Array, dict]:
    """One TRPO policy step on the flat policy parameters ``theta`` (= theta_old).

    ``surrogate(theta)`` is L (to maximise) and ``mean_kl(theta)`` is KL_bar from the old
    policy, which the line search checks exactly. ``fisher_kl`` (default ``mean_kl``) is
    the KL whose Hessian serves as F, e.g. on a subsample of the batch to save work.
    Returns the new parameters and diagnostics: ``kl`` and ``improvement`` of the
    accepted step (0 if none), ``accepted`` (1/0), ``step_fraction`` (``b^k``, 0 if none),
    ``expected_improvement`` (``g . step`` of the full step).
    """
    g = jax.grad(surrogate)(theta)
    fvp = lambda v: fisher_vector_product(fisher_kl or mean_kl, theta, v, damping)  # noqa: E731
    x = conjugate_gradient(fvp, g, cg_iters)
    shs = x @ fvp(x)
    step = jnp.sqrt(2.0 * delta / jnp.maximum(shs, 1e-12)) * x
    fractions = backtrack_coef ** jnp.arange(backtrack_steps, dtype=theta.dtype)
    candidates = theta[None, :] + fractions[:, None] * step[None, :]
    base = surrogate(theta)
    improvement = jax.vmap(surrogate)(candidates) - base
    kls = jax.vmap(mean_kl)(candidates)
    ok = (improvement > 0) & (kls <= delta) & jnp.isfinite(improvement) & jnp.isfinite(kls)
    first = jnp.argmax(ok)  # the largest acceptable step
    accepted = ok.any()
    new_theta = jnp.where(accepted, candidates[first], theta)
    info = {"kl": jnp.where(accepted, kls[first], 0.0), "improvement": jnp.where(accepted, improvement[first], 0.0),
            "accepted": accepted.astype(jnp.float32), "step_fraction": jnp.where(accepted, fractions[first], 0.0),
            "expected_improvement": g @ step}
    return new_theta, info


def trpo_update(network, tx, params, opt_state, batch, hp, key, *, cg_iters: int, backtrack_steps: int,
                epochs: int, minibatches: int):
    """The policy step of :func:`trpo_step` on the actor's flat parameters, then the critic's
    regression on the GAE targets (``epochs x minibatches``). ``batch`` is a flat
    :class:`~ppo_jax.rollout.Batch`. Returns ``(params, opt_state, metrics)``."""
    from ppo_jax.algorithms.critic import regress_critic

    # The step is vector math (conjugate gradient, Fisher-vector products): the actor as one vector.
    theta, unravel = ravel_pytree(params["actor"])
    old = jax.lax.stop_gradient(network.apply({"params": params}, batch.obs, method="policy"))

    def dist(actor_vec):
        return network.apply({"params": {**params, "actor": unravel(actor_vec)}}, batch.obs, method="policy")

    def surrogate(actor_vec):  # the trust-region problem's objective
        return jnp.mean(jnp.exp(dist(actor_vec).log_prob(batch.action) - batch.log_prob) * batch.advantage)

    def mean_kl(actor_vec):
        return jnp.mean(old.kl(dist(actor_vec)))

    theta, info = trpo_step(surrogate, mean_kl, theta, delta=hp.trpo_delta, damping=hp.cg_damping,
                            cg_iters=cg_iters, backtrack_steps=backtrack_steps)
    new_params, opt_state, value_loss = regress_critic(
        network, tx, {**params, "actor": unravel(theta)}, opt_state, batch.obs,
        batch.target, batch.value, jnp.ones_like(batch.value), hp, key, epochs=epochs, minibatches=minibatches)
    entropy = jnp.mean(network.apply({"params": new_params}, batch.obs, method="policy").entropy())
    return new_params, opt_state, {**info, "value_loss": value_loss, "entropy": entropy}


def update(network, tx, params, opt_state, batch, hp, key: jax.Array, config, shard_rows=None):
    """:func:`trpo_update` in the signature of :data:`ppo_jax.algorithms.UPDATES`."""
    return trpo_update(network, tx, params, opt_state, batch, hp, key, cg_iters=config.cg_iters,
                       backtrack_steps=config.backtrack_steps, epochs=config.update_epochs,
                       minibatches=config.num_minibatches)
