import os

# PITFALLS 17: set before JAX's CPU backend starts (ppo_jax sets it too, on import).
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_enable_concurrency_optimized_scheduler=false")

from dataclasses import dataclass  # noqa: E402

import pytest  # noqa: E402

import ppo_jax  # noqa: E402,F401


@dataclass
class ReviewsModels:
    """An SFT policy and a reward model trained on its preference pairs (the reviews task)."""

    config: object
    tokenizer: object
    sft_params: dict
    pairs: list
    bayes: float
    rm: object  # RMResult


@pytest.fixture(scope="session")
def reviews_models() -> ReviewsModels:
    """Trained once per session (about 90 s on 2 CPU cores), shared by the reward-model
    regression and the end-to-end RLHF test."""
    from rlhf_jax.preferences import make_preference_pairs
    from rlhf_jax.reward_model import RMConfig, train_reward_model
    from rlhf_jax.sampling import SamplingConfig
    from rlhf_jax.sft import SFTConfig, train_sft
    from rlhf_jax.tasks import reviews
    from rlhf_jax.tokenizer import ByteTokenizer
    from rlhf_jax.transformer import TransformerConfig, TransformerLM

    tok = ByteTokenizer()
    mc = TransformerConfig(num_layers=2, num_heads=2, d_model=64, max_len=64, dropout=0.0)
    prompts, responses = reviews.sft_corpus(2048, seed=0)
    sft = train_sft(SFTConfig(model=mc, steps=600, batch_size=32, lr=3e-3, warmup_steps=20, eval_every=200),
                    tok, prompts, responses)
    pairs, bayes = make_preference_pairs(TransformerLM(mc), sft.params, tok, reviews.prompts(3000, seed=1),
                                         reviews.gold_reward, sampling=SamplingConfig(max_new_tokens=40), tau=0.25,
                                         seed=0)
    rm = train_reward_model(RMConfig(model=mc, epochs=3, batch_size=32, lr=1e-3), tok, pairs,
                            init_params_from=sft.params, model_config=mc)
    return ReviewsModels(mc, tok, sft.params, pairs, bayes, rm)
