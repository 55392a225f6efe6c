"""Orthogonal initialisation without a LAPACK call: QR by Householder reflections in JAX ops.

``jax.nn.initializers.orthogonal`` draws a Gaussian matrix and takes the Q factor of its QR
decomposition (sign-corrected so that R's diagonal is positive: then Q is uniform on the
orthogonal group; Mezzadri 2007, arXiv:math-ph/0609050). On a CPU that QR is a LAPACK custom
call, and a vmapped program holding a batched one (every ``jax.vmap(train)`` over seeds) can
deadlock XLA:CPU's concurrency-optimised scheduler on a 2-core machine: two thunks each hold
one of the pool's two threads (2 hangs in 10 runs of 8 seeds x 64 CartPole environments).
Switching that scheduler off avoids the hang but serialises independent work, which Brax's
programs gain from (:func:`ppo_jax.run.configure.configure` leaves it on for them).

Here the QR is Householder's, as plain array operations in two ``fori_loop``s, so the
programs that initialise networks hold no custom call. The draw is the same: the same key
gives the same Gaussian matrix, and the sign-corrected Q of a full-rank matrix is unique, so
the result equals ``jax.nn.initializers.orthogonal``'s up to rounding (tests/ppo_jax/
test_orthogonal_init.py).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def householder_q(z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(Q, diag R)`` of the thin QR of a tall ``z`` (``[p, q]``, ``p >= q``): ``Q`` is ``[p, q]``
    with orthonormal columns and ``z = Q R`` with ``R`` upper triangular (Golub and Van Loan,
    Matrix Computations, §5.2). Each reflection ``I - 2 v v^T`` zeroes column ``k`` below the
    diagonal; ``Q`` is the reflections applied in reverse order to the first ``q`` columns of
    the identity."""
    p, q = z.shape
    rows = jnp.arange(p)

    def reduce(k, carry):
        a, vs = carry
        col = jax.lax.dynamic_index_in_dim(a, k, axis=1, keepdims=False)
        x = jnp.where(rows >= k, col, 0.0)
        xk = jax.lax.dynamic_index_in_dim(x, k, keepdims=False)
        # The reflection sends x to -sign(x_k) |x| e_k: adding, never subtracting, two numbers
        # of one sign keeps v's k-th entry free of cancellation.
        alpha = -jnp.where(xk >= 0, 1.0, -1.0) * jnp.linalg.norm(x)
        v = x - alpha * (rows == k)
        norm = jnp.linalg.norm(v)
        v = jnp.where(norm > 0, v / jnp.where(norm > 0, norm, 1.0), 0.0)
        return a - 2.0 * jnp.outer(v, v @ a), vs.at[k].set(v)

    r, vs = jax.lax.fori_loop(0, q, reduce, (z, jnp.zeros((q, p), z.dtype)))

    def expand(i, e):
        v = vs[q - 1 - i]
        return e - 2.0 * jnp.outer(v, v @ e)

    return jax.lax.fori_loop(0, q, expand, jnp.eye(p, q, dtype=z.dtype)), jnp.diagonal(r)


def orthogonal_matrix(key: jax.Array, n: int, m: int, dtype=jnp.float32) -> jax.Array:
    """An ``[n, m]`` matrix with orthonormal rows (``n <= m``) or columns (``n >= m``), uniform:
    :func:`jax.random.orthogonal`'s draw (the same Gaussian ``[max, min]`` matrix from ``key``),
    with its QR by :func:`householder_q`."""
    z = jax.random.normal(key, (max(n, m), min(n, m)), dtype)
    q, d = householder_q(z)
    x = q * jnp.sign(d)[None, :]
    return x.T if n < m else x


def orthogonal(scale: float = 1.0, column_axis: int = -1):
    """A Flax kernel initialiser equal to ``jax.nn.initializers.orthogonal(scale, column_axis)``
    up to rounding: the kernel reshaped to ``[rest, columns]`` is :func:`orthogonal_matrix`."""

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        if len(shape) < 2:
            raise ValueError(f"orthogonal init needs a kernel of 2 or more axes, got shape {tuple(shape)}")
        if any(d == 0 for d in shape):
            return jnp.zeros(shape, dtype)
        n_cols = shape[column_axis]
        n_rows = math.prod(shape) // n_cols
        q = orthogonal_matrix(key, n_rows, n_cols, dtype)
        q = jnp.reshape(q, tuple(np.delete(np.asarray(shape), column_axis)) + (n_cols,))
        return jnp.asarray(scale, dtype) * jnp.moveaxis(q, -1, column_axis)

    return init
