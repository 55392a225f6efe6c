"""One supervised training loop; SFT, the reward model and DPO differ only in their loss.

A run splits its rows once into held-out and training rows (one seeded permutation, the same
generator then drawing the batches), builds AdamW with linear warm-up and cosine decay, jits
one gradient step (:func:`ppo_jax.optim.gradient_step`) and runs it over a stream of batches:
a fixed number of steps drawn with replacement (SFT) or epochs of shuffled batches (the reward
model, DPO). At the steps the caller names it evaluates, and those rows are the history.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Iterable, Iterator

import jax
import numpy as np
import optax

from ppo_jax.optim import WHOLE
from ppo_jax.run import prng
from ppo_jax.run.interrupt import stop_if_requested, stoppable
from ppo_jax.run.settings import save_interval_s


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


def require_rows(n: int, fraction: float, batch_size: int, what: str, *, at_least_one: bool) -> None:
    """:func:`require_batches` for ``n`` rows before they are split (:func:`holdout_split`'s
    counts), so a command can check its data before it makes a run folder."""
    n_held = int(round(fraction * n))
    require_batches(batch_size, n - (max(1, n_held) if at_least_one else n_held), what)


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
        progress: Callable[[int, int, float], None] | None = None, checkpoints=None,
        on_status: Callable[[str], None] | None = None, partition=None) -> tuple[Any, list, list[dict]]:
    """Runs ``step(params, opt_state, *args) -> (params, opt_state, loss, aux)`` on each ``args``
    of ``batches``. After step ``s`` (from 1) with ``evaluate_at(s)`` it appends
    ``evaluate(s, params, losses, auxes)`` to the history, the lists holding the steps since the
    last evaluation; then ``progress(s, total, loss)``. Returns ``(params, losses, history)``,
    ``losses`` one float32 scalar per step.

    With ``checkpoints`` (a :class:`ppo_jax.run.checkpoints.RunCheckpoints`) the run saves at
    evaluation steps before the last, at most one a minute, and resumes from the newest: the
    batches already taken are drawn again and skipped, so the resumed run ends with the very
    parameters of the uninterrupted one. Ctrl-C then stops at the next evaluation step, after
    saving it (:class:`ppo_jax.run.interrupt.Interrupted`); a second stops at once. With a
    ``partition`` (:func:`rlhf_jax.lora.partition`) a checkpoint holds the trainable part of the
    parameters alone (LoRA's adapters): the frozen part is the one ``params`` brings.
    """
    split, join = partition or WHOLE
    frozen = split(params)[1]
    prng.install()  # dropout draws a random array per layer and step: fuse its hash
    losses, auxes, history, since, start = [], [], [], 0, 0
    if checkpoints is not None:
        like = {"params": split(params)[0], "opt_state": opt_state, "losses": np.zeros(total, np.float32)}
        found = checkpoints.restore_latest(like, warn=on_status)
        if found is not None:
            start, tree, meta = found
            params, opt_state, history = join(tree["params"], frozen), tree["opt_state"], meta["history"]
            losses, since = [np.float32(x) for x in np.asarray(tree["losses"])[:start]], start
            if on_status is not None:
                on_status(f"resumed from {checkpoints.path(start)} (step {start} of {total})")
    last_save, interval = time.monotonic(), save_interval_s()
    with stoppable(checkpoints) as stop:
        for done, args in enumerate(itertools.islice(batches, start, None), start + 1):
            params, opt_state, loss, aux = step(params, opt_state, *args)
            losses.append(loss)
            auxes.append(aux)
            evaluated = evaluate_at(done)
            if evaluated:
                history.append(evaluate(done, params, losses[since:], auxes))
                since, auxes = len(losses), []
            if progress is not None:
                progress(done, total, float(loss))
            if checkpoints is None or not evaluated:
                continue  # saves and stops happen at evaluation steps
            if done < total and (stop.requested or time.monotonic() - last_save >= interval):
                padded = np.full(total, np.nan, np.float32)
                padded[:done] = np.asarray(jax.device_get(losses), np.float32)
                checkpoints.save(done, {"params": split(params)[0], "opt_state": opt_state, "losses": padded},
                                 {"history": history})
                last_save = time.monotonic()
            stop_if_requested(stop, checkpoints, done, total)
    if checkpoints is not None:
        checkpoints.wait()
    return params, losses, history
