"""``arithmetic``: a verifiable task, two-digit additions checked by exact match.

Prompt ``"What is 37+85?"`` with an ``answer`` column (``"122"``); the wanted response is the
answer alone. Success is checked, not learned: :func:`exact_match` and :func:`format_reward`
are the training rewards (the contract of :mod:`rlhf_jax.rewards`), and :func:`accuracy`
(the first number in the response equals the answer, whatever surrounds it) is the held-out
metric, greedy and averaged over samples.

The SFT corpus (:func:`sft_corpus`) is imperfect on purpose, so that RL has room:

* where the sum has three digits (60% of the problems), the leading 1 is dropped in
  :data:`DROP_CARRY` of the examples (``"37+85"`` -> ``"22"``): an SFT policy that learns the
  corpus answers those problems wrongly more often than not, so its greedy answer is wrong
  there, while its samples are right often enough for a group of them to disagree;
* :data:`FORMAT_NOISE` of the responses wrap the number (``"= 122"``, ``"122."``,
  ``"It is 122"``), which :func:`accuracy` accepts and :func:`exact_match` does not.

Everything is generated from a seed: no download.
"""

from __future__ import annotations

import re

import numpy as np

NAME = "arithmetic"
LOW, HIGH = 10, 99
DROP_CARRY = 0.6
FORMAT_NOISE = 0.2
WRAPPERS = ("= {}", "{}.", "It is {}")
_NUMBER = re.compile(r"-?\d+")
_DIGITS = re.compile(r"\d+")


def prompt(a: int, b: int) -> str:
    return f"What is {a}+{b}?"


def _problems(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(LOW, HIGH + 1, size=(n, 2))


def prompt_rows(n: int, seed: int = 0) -> list[dict]:
    """``n`` problems as prompt-file rows: ``{"prompt": "What is 37+85?", "answer": "122"}``."""
    rng = np.random.default_rng(seed)
    return [{"prompt": prompt(int(a), int(b)), "answer": str(int(a + b))} for a, b in _problems(rng, n)]


def prompts(n: int, seed: int = 0) -> list[str]:
    return [r["prompt"] for r in prompt_rows(n, seed)]


def sft_corpus(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` (prompt, response) pairs with the corpus's deliberate faults (module docstring)."""
    rng = np.random.default_rng(seed)
    problems = _problems(rng, n)
    drop, wrap = rng.random(n) < DROP_CARRY, rng.random(n) < FORMAT_NOISE
    which = rng.integers(len(WRAPPERS), size=n)
    out_prompts, responses = [], []
    for (a, b), d, w, k in zip(problems, drop, wrap, which):
        total = int(a + b)
        answer = str(total % 100 if d and total >= 100 else total)
        out_prompts.append(prompt(int(a), int(b)))
        responses.append(WRAPPERS[k].format(answer) if w else answer)
    return out_prompts, responses


def exact_match(completions: list[str], answer: list[str], **kwargs) -> list[float]:
    """1 where the response is exactly the answer (surrounding spaces aside), else 0."""
    return [float(c.strip() == a) for c, a in zip(completions, answer)]


def format_reward(completions: list[str], **kwargs) -> list[float]:
    """1 where the response is digits alone, else 0 (a small weight keeps answers clean)."""
    return [float(_DIGITS.fullmatch(c.strip()) is not None) for c in completions]


def accuracy(completions: list[str], answer: list[str], **kwargs) -> list[float]:
    """The held-out metric: 1 where the first number in the response is the answer."""
    out = []
    for c, a in zip(completions, answer):
        m = _NUMBER.search(c)
        out.append(float(m is not None and m.group() == a))
    return out


REWARDS = (("rlhf_jax.tasks.arithmetic:exact_match", 1.0), ("rlhf_jax.tasks.arithmetic:format_reward", 0.2))
"""The task's training rewards and weights (used when ``rlhf-jax rl --task arithmetic`` gets no --reward)."""
METRIC = "rlhf_jax.tasks.arithmetic:accuracy"
"""The held-out metric."""
