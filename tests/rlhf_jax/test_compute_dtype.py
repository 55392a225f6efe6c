"""compute_dtype="auto": decided once by the probe, cached per machine, resolved inside a traced model."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import compute_dtype
from rlhf_jax.transformer import TransformerConfig, TransformerLM, init_params

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """A cache file in tmp_path and no decision kept in this process."""
    monkeypatch.setattr(compute_dtype, "cache_file", lambda: tmp_path / "compute_dtype.json")
    compute_dtype.decided.cache_clear()
    yield tmp_path / "compute_dtype.json"
    compute_dtype.decided.cache_clear()


@pytest.mark.parametrize("times, choice", [((2.0, 1.0), "bfloat16"), ((1.1, 1.0), "float32"), ((1.0, 2.0), "float32")])
def test_auto_picks_bfloat16_only_when_clearly_faster_and_caches_it(fresh, monkeypatch, times, choice):
    calls = []
    monkeypatch.setattr(compute_dtype, "probe", lambda: calls.append(1) or times)
    assert compute_dtype.resolve("auto") == choice
    assert compute_dtype.resolve("auto") == choice and len(calls) == 1  # kept in the process
    saved = json.loads(fresh.read_text())[compute_dtype.machine_key()]
    assert saved["choice"] == choice and (saved["float32_s"], saved["bfloat16_s"]) == times
    compute_dtype.decided.cache_clear()
    assert compute_dtype.resolve("auto") == choice and len(calls) == 1  # a new process reads the file
    assert compute_dtype.resolve("float32") == "float32" and compute_dtype.resolve("bfloat16") == "bfloat16"


def test_auto_resolves_inside_a_traced_model_to_the_same_outputs_as_its_choice(fresh):
    # The real probe runs here, in its own thread, while the model is being traced under jit.
    cfg = TransformerConfig(vocab_size=32, max_len=16, num_layers=1, num_heads=2, d_model=32, dropout=0.0,
                            compute_dtype="auto")
    params = init_params(TransformerLM(cfg), jax.random.PRNGKey(0))
    ids = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 0, 32)
    run = lambda c: jax.jit(lambda p: TransformerLM(c).apply({"params": p}, ids, jnp.ones_like(ids)).logits)(params)  # noqa: E731
    auto = run(cfg)
    saved = json.loads(fresh.read_text())[compute_dtype.machine_key()]
    assert saved["float32_s"] > 0 and saved["bfloat16_s"] > 0
    chosen = cfg.__class__(**{**cfg.to_dict(), "compute_dtype": saved["choice"]})
    np.testing.assert_array_equal(auto, run(chosen))


def test_a_bad_compute_dtype_is_refused_by_name():
    with pytest.raises(ValueError, match="compute_dtype: must be one of float32, bfloat16, auto, got 'float16'"):
        TransformerConfig(compute_dtype="float16").validate()
    with pytest.raises(ValueError, match="compute_dtype"):
        compute_dtype.resolve("half")
