"""One supervised training loop; SFT, the reward model and DPO differ only in their loss.

A run splits its rows once into held-out and training rows (one seeded permutation, the same
generator then drawing the batches), builds AdamW with linear warm-up and cosine decay, jits
one gradient step (:func:`ppo_jax.optim.gradient_step`) and runs it over a stream of batches:
a fixed number of steps drawn with replacement (SFT) or epochs of shuffled batches (the reward
model, DPO). At the steps the caller names it evaluates, and those rows are the history.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import jax
import numpy as np
import optax

from ppo_jax.run import prng


def adamw_warmup_cosine(lr: float, warmup_steps: int, total_steps: int, weight_decay: float,
                        max_grad_norm: float) -> optax.GradientTransformation:
    """Global-norm clip, then AdamW (decay on matrices and embeddings only) with linear warm-up
    and cosine decay to 10% of ``lr``."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, total_steps, end_value=0.1 * lr)
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)  # noqa: E731
    return optax.chain(optax.clip_by_global_norm(max_grad_norm),
                       optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask))


def holdout_split(n: int, fraction: float, seed: int, *, at_least_one: bool
                  ) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
    """``(rng, heldout, train)``: row indices from one permutation seeded by ``seed``, the
    first ``round(fraction * n)`` held out (at least one with ``at_least_one``). ``rng`` goes
    on to draw the batches, so the split and the batch order are one stream."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_held = int(round(fraction * n))
    if at_least_one:
        n_held = max(1, n_held)
    return rng, order[:n_held], order[n_held:]


def require_batches(batch_size: int, n_train: int, what: str) -> None:
    if n_train < batch_size:
        raise ValueError(f"batch_size: {batch_size} exceeds the {n_train} training {what}")


def sampled_batches(rng: np.random.Generator, n_train: int, batch_size: int, steps: int) -> Iterator[np.ndarray]:
    """``steps`` batches of positions in ``range(n_train)``, each drawn with replacement."""
    for _ in range(steps):
        yield rng.integers(n_train, size=batch_size)


def epoch_batches(rng: np.random.Generator, rows: np.ndarray, batch_size: int, epochs: int) -> Iterator[np.ndarray]:
    """``epochs`` passes over ``rows``, each reshuffled and cut into whole batches (the rest of
    a pass is left out of that pass)."""
    for _ in range(epochs):
        perm = rng.permutation(rows)
        for s in range(len(rows) // batch_size):
            yield perm[s * batch_size:(s + 1) * batch_size]


def epoch_row(epoch: int, losses: list, auxes: list) -> dict:
    """The training part of a per-epoch history row: mean loss and accuracy over its steps."""
    return {"epoch": epoch, "train_loss": float(np.mean(jax.device_get(losses))),
            "train_accuracy": float(np.mean(jax.device_get([a["accuracy"] for a in auxes])))}


def fit(step: Callable, params, opt_state, batches: Iterable[tuple], total: int, *,
        evaluate_at: Callable[[int], bool], evaluate: Callable[[int, Any, list, list], dict],
        progress: Callable[[int, int, float], None] | None = None) -> tuple[Any, list, list[dict]]:
    """Runs ``step(params, opt_state, *args) -> (params, opt_state, loss, aux)`` on each ``args``
    of ``batches``. After step ``s`` (from 1) with ``evaluate_at(s)`` it appends
    ``evaluate(s, params, losses, auxes)`` to the history, the lists holding the steps since the
    last evaluation; then ``progress(s, total, loss)``. Returns ``(params, losses, history)``,
    ``losses`` one device scalar per step."""
    prng.install()  # dropout draws a random array per layer and step: fuse its hash
    losses, auxes, history, since = [], [], [], 0
    for done, args in enumerate(batches, 1):
        params, opt_state, loss, aux = step(params, opt_state, *args)
        losses.append(loss)
        auxes.append(aux)
        if evaluate_at(done):
            history.append(evaluate(done, params, losses[since:], auxes[since:]))
            since = len(losses)
        if progress is not None:
            progress(done, total, float(loss))
    return params, losses, history
