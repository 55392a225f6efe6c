"""``praise``: the ``reviews`` grammar with a gold reward that has headroom above the SFT policy.

Prompts and SFT corpus are those of :mod:`rlhf_jax.tasks.reviews` (1-4 distinct adjectives
per response). Gold reward ``r*(prompt, response)`` of a response (the text up to its first EOS):

* +0.25 per distinct positive adjective, -0.25 per distinct negative one;
* -0.25 per repeated adjective (saying "great" twice earns nothing);
* -0.25 per word beyond :data:`WORD_BUDGET`;
* -1 if the response never emitted EOS, and -0.5 if it names no known adjective.

A 12-word list of all eight positive adjectives ("The lamp is great, bright, ..., handy.")
scores 2.0, while the best an SFT sample can score is 1.0 (four positive adjectives, about
one sample in 400), so optimisation has room to show. The exploitable correlate: in SFT
samples a higher gold reward goes with more positive words, so a proxy learned from SFT
pairs can come to like long lists and repeats, which the SFT data never shows; past the word
budget, and with repeats, the gold reward falls while such a proxy keeps rising.
"""

from __future__ import annotations

from rlhf_jax.tasks.reviews import _WORD, SENTIMENT, WORD_BUDGET, prompt, prompts, sft_corpus  # noqa: F401

NAME = "praise"


def gold_reward(response: str, ended_with_eos: bool = True) -> float:
    """The gold reward described in the module docstring (``response`` cut at its first EOS)."""
    words = _WORD.findall(response.lower())
    adjectives = [w for w in words if w in SENTIMENT]
    distinct = set(adjectives)
    reward = 0.25 * sum(SENTIMENT[w] for w in distinct)
    reward -= 0.25 * (len(adjectives) - len(distinct))
    reward -= 0.25 * max(0, len(words) - WORD_BUDGET)
    if not adjectives:
        reward -= 0.5
    if not ended_with_eos:
        reward -= 1.0
    return reward
