"""Best-of-n sampling: the baseline curve an RLHF policy is compared with.

Draw ``n`` responses per prompt from the SFT policy and keep the one the reward model
scores highest. The KL divergence of that best-of-n distribution from the SFT policy is
``log n - (n - 1) / n`` nats (Stiennon et al. 2020, appendix; exact for continuous score
distributions without ties, an upper bound otherwise), so the curve of gold reward
against ``sqrt(KL)`` over n needs no density evaluation.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def best_of_n_kl(n: int) -> float:
    """``KL(best-of-n || pi) = log n - (n - 1) / n`` in nats (0 for n = 1)."""
    if n < 1:
        raise ValueError(f"best_of_n: n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def best_of_n_curve(proxy: np.ndarray, gold: np.ndarray, ns: Sequence[int]) -> list[dict]:
    """For each n: the mean proxy and gold reward of the response picked by the proxy among
    the first n samples of each prompt. ``proxy`` and ``gold`` are ``[prompts, samples]``."""
    proxy, gold = np.asarray(proxy, np.float64), np.asarray(gold, np.float64)
    if proxy.shape != gold.shape or proxy.ndim != 2:
        raise ValueError(f"best_of_n: proxy {proxy.shape} and gold {gold.shape} must both be [prompts, samples]")
    rows = []
    for n in ns:
        if not 1 <= n <= proxy.shape[1]:
            raise ValueError(f"best_of_n: n = {n} needs 1..{proxy.shape[1]} samples per prompt")
        pick = np.argmax(proxy[:, :n], axis=1)
        kl = best_of_n_kl(n)
        rows.append({"n": int(n), "kl": kl, "sqrt_kl": math.sqrt(kl),
                     "proxy_reward": float(np.take_along_axis(proxy, pick[:, None], 1).mean()),
                     "gold_reward": float(np.take_along_axis(gold, pick[:, None], 1).mean())})
    return rows
