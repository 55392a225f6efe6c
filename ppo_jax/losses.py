"""PPO loss terms and diagnostics (docs/theory.md §5, §6, §8, §9). Pure functions of arrays.

Every mean here is over the leading (sample) axis of a minibatch, as in the sample
estimates of docs/theory.md §5, §6 and §9. With ``mask`` (token-level RLHF: prompt and padding
positions are 0) a mean is over the masked-in entries only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_mean(x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """``mean(x)``, or ``sum(x * mask) / sum(mask)`` (0 if the mask is empty)."""
    if mask is None:
        return jnp.mean(x)
    m = mask.astype(x.dtype)
    return (x * m).sum() / jnp.maximum(m.sum(), 1.0)


def importance_ratio(logp_new: jax.Array, logp_old: jax.Array) -> jax.Array:
    """Importance ratio (docs/theory.md §6), ``r_t = exp(log pi_theta - log pi_theta_old)``."""
    return jnp.exp(logp_new - logp_old)


def clipped_surrogate_loss(ratio: jax.Array, advantages: jax.Array, clip_eps: float | jax.Array,
                           mask: jax.Array | None = None, clip_eps_high: float | jax.Array | None = None) -> jax.Array:
    """PPO policy loss (docs/theory.md §9): ``-mean(min(r A, clip(r, 1-eps, 1+eps) A))``.

    The negative of the clipped objective, to be minimised. ``clip_eps_high`` (DAPO's
    "clip-higher", Yu et al. 2025) sets the upper bound ``1 + clip_eps_high`` apart from the
    lower one; None: the same as ``clip_eps``.
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + high) * advantages
    return -masked_mean(jnp.minimum(unclipped, clipped), mask)


def value_loss(
    values: jax.Array,
    targets: jax.Array,
    old_values: jax.Array | None = None,
    clip_eps: float | jax.Array = 0.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Value loss (docs/theory.md §5) ``mean((V - R)^2)``; the clipped form when ``clip_eps > 0``.

    Clipped: ``V_clip = V_old + clip(V - V_old, -eps, eps)`` and the loss is
    ``mean(max((V - R)^2, (V_clip - R)^2))``. ``clip_eps`` may be traced; ``<= 0`` (or no
    ``old_values``) gives the plain mean squared error.
    """
    unclipped = jnp.square(values - targets)
    if old_values is None:
        return masked_mean(unclipped, mask)
    v_clip = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
    clipped = jnp.maximum(unclipped, jnp.square(v_clip - targets))
    return masked_mean(jnp.where(clip_eps > 0, clipped, unclipped), mask)


def entropy_bonus(entropy: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean policy entropy, the ``E_t[H(pi(.|s_t))]`` term of docs/theory.md §6."""
    return masked_mean(entropy, mask)


def total_loss(
    policy_loss: jax.Array,
    value_loss_: jax.Array,
    entropy: jax.Array,
    vf_coef: float | jax.Array,
    ent_coef: float | jax.Array,
) -> jax.Array:
    """Total PPO loss (docs/theory.md §9): ``L_policy + c1 L_value - c2 H``."""
    return policy_loss + vf_coef * value_loss_ - ent_coef * entropy


def normalize_advantages(advantages: jax.Array, eps: float = 1e-8, mask: jax.Array | None = None) -> jax.Array:
    """Advantage normalisation (docs/theory.md §9): ``(A - mean(A)) / (std(A) + eps)``.

    With ``mask`` the mean and (population) std are taken over masked entries only and
    masked-out entries come back as 0.
    """
    if mask is None:
        return (advantages - advantages.mean()) / (advantages.std() + eps)
    m = mask.astype(advantages.dtype)
    n = jnp.maximum(m.sum(), 1.0)
    mean = (advantages * m).sum() / n
    var = (jnp.square(advantages - mean) * m).sum() / n
    return (advantages - mean) / (jnp.sqrt(var) + eps) * m


def approx_kl_k1(logp_new: jax.Array, logp_old: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """k1 estimate of ``KL(pi_old || pi_new)``: ``mean(log pi_old - log pi_new)`` (unbiased, noisy, can be < 0)."""
    return masked_mean(logp_old - logp_new, mask)


def approx_kl_k3(logp_new: jax.Array, logp_old: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """The ``(r - 1) - log r`` estimator (k3, docs/theory.md §8): unbiased for ``KL(pi_old || pi_new)``, always >= 0."""
    log_ratio = logp_new - logp_old
    return masked_mean(jnp.expm1(log_ratio) - log_ratio, mask)


def clip_fraction(ratio: jax.Array, clip_eps: float | jax.Array, mask: jax.Array | None = None,
                  clip_eps_high: float | jax.Array | None = None) -> jax.Array:
    """Share of samples whose ratio lies outside ``[1 - eps, 1 + eps_high]`` (``eps_high``
    None: ``eps``)."""
    if clip_eps_high is None:
        return masked_mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32), mask)
    return masked_mean(((ratio < 1.0 - clip_eps) | (ratio > 1.0 + clip_eps_high)).astype(jnp.float32), mask)


def explained_variance(predictions: jax.Array, targets: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """``1 - Var(targets - predictions) / Var(targets)``; 1 is perfect, <= 0 no better than a constant.

    With ``mask`` the variances are over the masked-in entries. NaN when the targets have
    zero variance.
    """
    def var(x):
        return masked_mean((x - masked_mean(x, mask)) ** 2, mask)

    var_t = var(targets)
    return jnp.where(var_t > 0, 1.0 - var(targets - predictions) / jnp.where(var_t > 0, var_t, 1.0), jnp.nan)
