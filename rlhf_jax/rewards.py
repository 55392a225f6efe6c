"""Reward functions you write in Python, with the contract of TRL's ``reward_funcs``.

A reward function is called once per batch with keyword lists::

    fn(prompts=[...], completions=[...], completion_ids=[[...], ...], **columns) -> [float | None, ...]

``completions`` are the decoded responses (cut at EOS), ``completion_ids`` their token ids (with
the EOS when there is one, as TRL passes them), and
``columns`` every other field of the prompt file (an ``answer``, say), one entry per completion.
It returns one number per completion, or None where it does not apply (a format check for
some prompts only). Write it with ``**kwargs`` so that columns it does not use are accepted.

Several functions are summed with weights (None counts 0; a completion that every function
skips is an error), and each one's mean is logged as ``reward/<name>``. A function marked
with :func:`jax_reward` is instead a JAX function of token ids and masks,
``fn(prompt_ids, prompt_mask, response_ids, response_mask) -> [B]``, compiled and run on
the device without decoding.

A function that raises, returns the wrong number of values, a non-number or a non-finite
value stops the run with a :class:`RewardFunctionError` naming the function and the prompt.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

import jax
import numpy as np

from ppo_jax.run.named import load_named

RESERVED = ("prompts", "completions", "completion_ids")
"""Keywords every function gets; a prompt file's column may not be called so."""


class RewardFunctionError(ValueError):
    """A reward function failed or returned something unusable (the message names it and the prompt)."""


def jax_reward(fn: Callable) -> Callable:
    """Marks ``fn(prompt_ids, prompt_mask, response_ids, response_mask) -> [B]`` as a JAX
    reward: traced and compiled once, run on the device on the sampled token ids."""
    fn.jax_reward = True
    return fn


def is_jax_reward(fn: Callable) -> bool:
    return bool(getattr(fn, "jax_reward", False))


def load_function(spec: str, field: str = "reward") -> Callable:
    """The callable ``spec`` names: ``package.module:function`` (importable) or
    ``path/to/file.py:function`` (errors name ``field``)."""
    return load_named(spec, field)


@dataclass(frozen=True)
class RewardFunction:
    name: str
    """Its name in the logs (``reward/<name>``) and in errors."""
    fn: Callable
    weight: float = 1.0

    @property
    def on_device(self) -> bool:
        return is_jax_reward(self.fn)


def reward_functions(functions: Sequence[Callable | str], weights: Sequence[float] | None = None
                     ) -> list[RewardFunction]:
    """Functions (or ``module:function`` names) with their weights (default 1 each), named by
    their ``__name__`` (with the module where two names clash)."""
    if not functions:
        raise ValueError("reward: give at least one reward function")
    if weights is not None and len(weights) != len(functions):
        raise ValueError(f"reward_weights: {len(weights)} weights for {len(functions)} reward functions")
    weights = [1.0] * len(functions) if weights is None else [float(w) for w in weights]
    for w in weights:
        if not math.isfinite(w):
            raise ValueError(f"reward_weights: must be finite, got {w}")
    loaded = [(f if isinstance(f, str) else None, load_function(f) if isinstance(f, str) else f) for f in functions]
    for spec, fn in loaded:
        if not callable(fn):
            raise ValueError(f"reward: {fn!r} is not a function")
    names = [getattr(fn, "__name__", type(fn).__name__) for _, fn in loaded]
    out = []
    for (spec, fn), name, w in zip(loaded, names, weights):
        if names.count(name) > 1:
            name = spec or f"{getattr(fn, '__module__', '?')}.{name}"
        out.append(RewardFunction(name, fn, w))
    return out


def _prompt_of(prompts: Sequence[str], i: int) -> str:
    text = prompts[i]
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _checked(rf: RewardFunction, values, prompts: Sequence[str]) -> list[float | None]:
    """``values`` as floats and Nones, or a :class:`RewardFunctionError` naming what is wrong."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise RewardFunctionError(f"reward function {rf.name}: returned {type(values).__name__}, not one value per "
                                  f"completion (first prompt {_prompt_of(prompts, 0)})")
    values = list(np.asarray(values, dtype=object).reshape(-1)) if isinstance(values, np.ndarray) else list(values)
    if len(values) != len(prompts):
        raise RewardFunctionError(f"reward function {rf.name}: returned {len(values)} values for {len(prompts)} "
                                  f"completions (first prompt {_prompt_of(prompts, 0)})")
    out = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        if not isinstance(v, numbers.Real):
            raise RewardFunctionError(f"reward function {rf.name}: returned {type(v).__name__} {v!r} for prompt "
                                      f"{_prompt_of(prompts, i)} (a number or None is needed)")
        if not math.isfinite(float(v)):
            raise RewardFunctionError(f"reward function {rf.name}: returned {float(v)} for prompt "
                                      f"{_prompt_of(prompts, i)}")
        out.append(float(v))
    return out


def _call(rf: RewardFunction, prompts, completions, completion_ids, columns: dict) -> list[float | None]:
    try:
        values = rf.fn(prompts=list(prompts), completions=list(completions), completion_ids=completion_ids,
                       **columns)
    except Exception as err:
        # Which prompt? Call it on each completion alone; the first that raises is named.
        for i in range(len(prompts)):
            try:
                rf.fn(prompts=[prompts[i]], completions=[completions[i]], completion_ids=[completion_ids[i]],
                      **{k: [v[i]] for k, v in columns.items()})
            except Exception as single:
                raise RewardFunctionError(f"reward function {rf.name}: raised {type(single).__name__}: {single} "
                                          f"on prompt {_prompt_of(prompts, i)}") from single
        raise RewardFunctionError(f"reward function {rf.name}: raised {type(err).__name__}: {err} on the batch "
                                  f"starting with prompt {_prompt_of(prompts, 0)}") from err
    return _checked(rf, values, prompts)


class Rewards:
    """Scores sampled completions with the weighted reward functions.

    ``score(prompts, completions, completion_ids, columns, tokens)`` returns ``(total [B],
    metrics)``: the weighted sum and each function's mean over the completions it scored.
    ``tokens`` is ``(prompt_ids, prompt_mask, response_ids, response_mask)`` for the JAX
    functions (on the device)."""

    def __init__(self, functions: Sequence[RewardFunction]):
        if not functions:
            raise ValueError("reward: give at least one reward function")
        self.functions = list(functions)
        self._compiled = {rf.name: jax.jit(rf.fn) for rf in self.functions if rf.on_device}

    @property
    def names(self) -> list[str]:
        return [rf.name for rf in self.functions]

    def score(self, prompts: Sequence[str], completions: Sequence[str], completion_ids: list[list[int]],
              columns: dict[str, list], tokens: tuple) -> tuple[np.ndarray, dict]:
        n = len(prompts)
        total, covered = np.zeros(n, np.float64), np.zeros(n, bool)
        metrics = {}
        for rf in self.functions:
            if rf.on_device:
                values = _checked(rf, np.asarray(jax.device_get(self._compiled[rf.name](*tokens))).reshape(-1)
                                  .tolist(), prompts)
            else:
                values = _call(rf, prompts, completions, completion_ids, columns)
            scored = [v for v in values if v is not None]
            if scored:
                metrics[f"reward/{rf.name}"] = float(np.mean(scored))
            for i, v in enumerate(values):
                if v is not None:
                    total[i] += rf.weight * v
                    covered[i] = True
        if not covered.all():
            i = int(np.argmin(covered))
            raise RewardFunctionError(f"reward: every reward function returned None for prompt {_prompt_of(prompts, i)}"
                                      f" (functions: {', '.join(self.names)})")
        return total.astype(np.float32), metrics
