import os
import tempfile

# The scheduler flag ppo_jax.configure() sets for gymnax environments, set before any test starts
# JAX's backend (tests of Brax environments run with it too; it changes speed, not results).
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_enable_concurrency_optimized_scheduler=false")

# One persistent compilation cache for this test run, shared by the xdist workers and the
# subprocesses the tests start: many tests (and the killed-and-resumed runs) compile the
# same programs, and on XLA:CPU compiling is most of the suite's time. A size limit turns
# on JAX's file lock, so concurrent writers and readers never see a half-written entry.
# Set before JAX is imported: JAX reads these once.
# The first process to get here (the controller) picks the folder; workers inherit it.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
JIT_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                                  os.path.join(tempfile.gettempdir(), f"ppo-jax-test-jit-cache-{os.getpid()}"))
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

from dataclasses import dataclass  # noqa: E402

import pytest  # noqa: E402

import ppo_jax  # noqa: E402,F401


def pytest_collection_modifyitems(config, items):
    """Long tests (marked slow) first: the two workers then end on short tests together
    instead of one of them idling while the other finishes a long one. Of the tests that
    share the trained reviews models, the one that trains them goes first and the other
    last among the long ones, so it finds them ready instead of waiting (pytest-xdist's
    xdist_group does not keep tests on one worker under pytest 9)."""

    trains = {"reviews_models": "test_reward_model_reaches", "ppo_on_four_devices": "test_sharded_ppo"}

    def order(item):
        for fixture, first in trains.items():
            if fixture in getattr(item, "fixturenames", ()):
                return (0, 0) if first in item.nodeid else (0, 2)
        return (0, 1) if item.get_closest_marker("slow") is not None else (1, 0)

    items.sort(key=order)


def pytest_unconfigure(config):
    if _OWN_CACHE and not hasattr(config, "workerinput"):  # the controller, after every worker is done
        import shutil

        shutil.rmtree(JIT_CACHE, ignore_errors=True)


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
    """Trained once per test run (about 100 s on 2 CPU cores), shared by the reward-model
    regression and the end-to-end RLHF test: the first worker to need it trains it and leaves
    it in the run's cache folder; a worker that needs it meanwhile waits, then loads it."""
    import jax
    from shared_cache import computed_once

    return computed_once("reviews_models", lambda: jax.device_get(_train_reviews_models()))


def _train_reviews_models() -> ReviewsModels:
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
    # 8000 pairs (800 held out): with 3000, the held-out expected accuracy ended 3.3-3.8 points
    # under the Bayes ceiling on seeds 0-2; with 8000, 1.3-2.5 points (same schedule).
    pairs, bayes = make_preference_pairs(TransformerLM(mc), sft.params, tok, reviews.prompts(8000, seed=1),
                                         reviews.gold_reward, sampling=SamplingConfig(max_new_tokens=40), tau=0.25,
                                         seed=0)
    rm = train_reward_model(RMConfig(model=mc, epochs=3, batch_size=32, lr=1e-3), tok, pairs,
                            init_params_from=sft.params, model_config=mc)
    return ReviewsModels(mc, tok, sft.params, pairs, bayes, rm)
