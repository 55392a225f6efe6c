"""Advantage estimators (docs/theory.md §1, §3-§5).

All inputs are time-major: arrays of shape ``[T, ...]`` where any trailing axes are
batch axes (environments). Episode ends are given as two separate flags:

- ``terminated[t]``: the transition at ``t`` entered a terminal state, so nothing is
  bootstrapped past it (``V(s_{t+1}) = 0``);
- ``truncated[t]``: the episode was cut by a time limit at ``t``; the next state still
  has a value, ``next_values[t] = V(info["final_observation"])``.

``next_values[t]`` is the value of the state *actually reached* by step ``t`` (the
final observation on an episode end, not the reset observation), so every form below
bootstraps correctly at the last step of a rollout and at truncations. A step that is
both terminated and truncated counts as terminated.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def _flags(terminated: jax.Array, truncated: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """Returns (not_terminated, not_done) as floats."""
    term = jnp.asarray(terminated).astype(bool)
    done = term | jnp.asarray(truncated).astype(bool)
    return (~term).astype(dtype), (~done).astype(dtype)


def _check(*arrays) -> None:
    """Module-boundary check: every per-step input is ``[T, ...]`` with the same shape."""
    chex.assert_equal_shape([jnp.asarray(a) for a in arrays])


def td_errors(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    gamma: float | jax.Array,
) -> jax.Array:
    """One-step TD errors, docs/theory.md §3: ``delta_t = r_t + gamma (1 - term_t) V(s'_t) - V(s_t)``."""
    not_term = 1.0 - jnp.asarray(terminated).astype(rewards.dtype)
    return rewards + gamma * not_term * next_values - values


def gae(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    gamma: float | jax.Array,
    lam: float | jax.Array,
) -> jax.Array:
    """GAE form C (docs/theory.md §4), the O(T) backward recursion used in training.

    ``A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}`` with
    ``done_t = terminated_t or truncated_t`` and ``A_T = 0``, computed with
    ``jax.lax.scan`` in reverse.

    Args:
      rewards: ``[T, ...]`` rewards ``r_t``.
      values: ``[T, ...]`` ``V(s_t)`` under the policy that collected the data.
      next_values: ``[T, ...]`` ``V(s'_t)`` of the state reached by step ``t``
        (``V(final_observation)`` on an episode end).
      terminated: ``[T, ...]`` true where step ``t`` ended in a terminal state.
      truncated: ``[T, ...]`` true where step ``t`` hit a time limit.
      gamma: discount factor.
      lam: GAE lambda.

    Returns:
      ``[T, ...]`` advantages.
    """
    _check(rewards, values, next_values, terminated, truncated)
    deltas = td_errors(rewards, values, next_values, terminated, gamma)
    _, not_done = _flags(terminated, truncated, rewards.dtype)

    def step(next_adv, x):
        delta, nd = x
        adv = delta + gamma * lam * nd * next_adv
        return adv, adv

    _, advantages = jax.lax.scan(step, jnp.zeros_like(deltas[0]), (deltas, not_done), reverse=True, unroll=16)
    return advantages


def _alive_matrix(not_done: jax.Array) -> jax.Array:
    """``M[t, j] = 1`` iff ``j >= t`` and no episode ends at steps ``t .. j-1``.

    ``not_done`` is ``[T, ...]``; the result is ``[T, T, ...]``.
    """
    T = not_done.shape[0]
    ends = 1.0 - not_done
    csum = jnp.concatenate([jnp.zeros_like(ends[:1]), jnp.cumsum(ends, axis=0)], axis=0)
    # Number of episode ends strictly before j, counted from t.
    between = csum[None, :T] - csum[:T, None]
    upper = (jnp.arange(T)[None, :] >= jnp.arange(T)[:, None]).astype(not_done.dtype)
    upper = upper.reshape(upper.shape + (1,) * (not_done.ndim - 1))
    return upper * (between == 0).astype(not_done.dtype)


def _power_matrix(base: float | jax.Array, T: int, dtype) -> jax.Array:
    """``P[t, j] = base ** (j - t)`` for ``j >= t`` (0 elsewhere)."""
    idx = jnp.arange(T)
    exponent = (idx[None, :] - idx[:, None]).astype(dtype)
    return jnp.where(exponent >= 0, jnp.power(base, jnp.maximum(exponent, 0)), 0.0).astype(dtype)


def _expand(m: jax.Array, ndim: int) -> jax.Array:
    return m.reshape(m.shape + (1,) * (ndim - 1))


def gae_direct_sum(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    gamma: float | jax.Array,
    lam: float | jax.Array,
) -> jax.Array:
    """GAE form A (docs/theory.md §4): ``A_t = sum_l (gamma lambda)^l delta_{t+l}``.

    The sum runs to the end of the episode containing ``t`` or the end of the rollout,
    whichever comes first. O(T^2) memory; a reference for tests, not for training.
    Arguments as in :func:`gae`.
    """
    _check(rewards, values, next_values, terminated, truncated)
    T = rewards.shape[0]
    deltas = td_errors(rewards, values, next_values, terminated, gamma)
    _, not_done = _flags(terminated, truncated, rewards.dtype)
    weights = _alive_matrix(not_done) * _expand(_power_matrix(gamma * lam, T, rewards.dtype), rewards.ndim)
    return jnp.sum(weights * deltas[None], axis=1)


def lambda_returns(
    rewards: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    gamma: float | jax.Array,
    lam: float | jax.Array,
) -> jax.Array:
    """The lambda-return (docs/theory.md §4), computed directly from n-step returns.

    ``R_t^(lambda) = (1 - lambda) sum_{n=1}^{N-1} lambda^{n-1} R_t^(n) + lambda^{N-1} R_t^(N)``,
    where ``R_t^(n) = sum_{k<n} gamma^k r_{t+k} + gamma^n V(s_{t+n})`` and ``N`` is the
    number of steps from ``t`` to the end of its episode or of the rollout (the longest
    n-step return takes the remaining weight, as for a finite trajectory). A terminal
    step bootstraps with 0. O(T^2) memory; a reference for tests.
    """
    _check(rewards, next_values, terminated, truncated)
    T = rewards.shape[0]
    dtype = rewards.dtype
    not_term, not_done = _flags(terminated, truncated, dtype)
    alive = _alive_matrix(not_done)  # [t, k]: step k is in t's segment
    disc = _expand(_power_matrix(gamma, T, dtype), rewards.ndim)  # gamma^(k-t)
    # G[t, k] = n-step return from t ending after step k (n = k - t + 1).
    discounted_rewards = alive * disc * rewards[None]
    partial_sums = jnp.cumsum(discounted_rewards, axis=1)
    bootstrap = disc * gamma * (not_term * next_values)[None]
    n_step = partial_sums + bootstrap
    # The segment's last step: alive at k, and either an episode ends at k or k = T-1.
    is_last_row = jnp.zeros((T,), dtype).at[T - 1].set(1.0)
    ends_here = jnp.maximum(1.0 - not_done, _expand(is_last_row, rewards.ndim))
    lam_pow = _expand(_power_matrix(lam, T, dtype), rewards.ndim)
    weights = alive * lam_pow * jnp.where(ends_here[None] > 0, 1.0, 1.0 - lam)
    return jnp.sum(weights * n_step, axis=1)


def gae_lambda_return(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    truncated: jax.Array,
    gamma: float | jax.Array,
    lam: float | jax.Array,
) -> jax.Array:
    """GAE form B (docs/theory.md §4): ``A_t = R_t^(lambda) - V(s_t)``. Arguments as in :func:`gae`."""
    return lambda_returns(rewards, next_values, terminated, truncated, gamma, lam) - values


def reward_to_go(rewards: jax.Array, dones: jax.Array, gamma: float | jax.Array) -> jax.Array:
    """Discounted reward-to-go (docs/theory.md §1): ``R_t = sum_{k>=t} gamma^(k-t) r_k`` within an episode.

    ``dones[t]`` marks the last step of an episode; the sum restarts after it. Steps of an
    episode still running at the end of the array sum only what was observed (no
    bootstrap): that is the Monte-Carlo quantity of §1 for complete episodes only.
    """
    not_done = 1.0 - jnp.asarray(dones).astype(rewards.dtype)

    def step(next_ret, x):
        r, nd = x
        ret = r + gamma * nd * next_ret
        return ret, ret

    _, returns = jax.lax.scan(step, jnp.zeros_like(rewards[0]), (rewards, not_done), reverse=True)
    return returns


def value_targets(advantages: jax.Array, values: jax.Array) -> jax.Array:
    """Value regression targets (docs/theory.md §5): ``R_t^target = A_t + V_old(s_t)``.

    Call this with the raw advantages, before any normalisation (§9).
    """
    return advantages + values
