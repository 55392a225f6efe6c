"""Reward functions (rlhf_jax.rewards): TRL's reward_funcs contract, weights, None, JAX rewards,
and one-line errors naming the function and the prompt; the arithmetic task's checks."""

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.data import load_prompt_rows
from rlhf_jax.rewards import RewardFunctionError, Rewards, jax_reward, load_function, reward_functions
from rlhf_jax.tasks import arithmetic

pytestmark = pytest.mark.timeout(60)

PROMPTS = ["What is 1+2?", "What is 10+20?", "Say hi"]
COMPLETIONS = ["3", "= 30", "hi"]
IDS = [[51], [61, 32, 51, 48], [104, 105]]
COLUMNS = {"answer": ["3", "30", None]}
TOKENS = (jnp.zeros((3, 2), jnp.int32), jnp.ones((3, 2), jnp.int32), jnp.asarray([[1, 2, 0], [1, 2, 3], [1, 0, 0]]),
          jnp.asarray([[1, 1, 0], [1, 1, 1], [1, 0, 0]]))


def correct(prompts, completions, completion_ids, answer, **kwargs):
    return [None if a is None else float(c.strip() == a) for c, a in zip(completions, answer)]


def brevity(completions, **kwargs):
    return [-0.1 * len(c) for c in completions]


def _score(*functions, weights=None):
    return Rewards(reward_functions(list(functions), weights)).score(PROMPTS, COMPLETIONS, IDS, COLUMNS, TOKENS)


def test_functions_get_the_columns_and_are_summed_with_weights_none_counting_zero():
    seen = {}

    def spy(prompts, completions, completion_ids, answer, **kwargs):
        seen.update(prompts=prompts, completions=completions, ids=completion_ids, answer=answer, extra=kwargs)
        return [0.0] * len(prompts)

    _score(spy)
    assert seen == {"prompts": PROMPTS, "completions": COMPLETIONS, "ids": IDS, "answer": COLUMNS["answer"],
                    "extra": {}}
    total, metrics = _score(correct, brevity, weights=[2.0, 0.5])
    np.testing.assert_allclose(total, [2.0 - 0.05, 0.0 - 0.2, 0.0 - 0.1], rtol=1e-6)
    assert metrics["reward/correct"] == pytest.approx(0.5)  # the mean over the two it scored
    assert metrics["reward/brevity"] == pytest.approx(-0.1 * 7 / 3)


def test_a_jax_reward_runs_compiled_on_the_token_ids():
    @jax_reward
    def response_tokens(prompt_ids, prompt_mask, response_ids, response_mask):
        return response_mask.sum(axis=1).astype(jnp.float32)

    total, metrics = _score(response_tokens, brevity, weights=[1.0, 0.0])
    np.testing.assert_allclose(total, [2.0, 3.0, 1.0])
    assert metrics["reward/response_tokens"] == pytest.approx(2.0)


@pytest.mark.parametrize("fn, message", [
    (lambda completions, **kw: [1.0 / (c == "hi") for c in completions],
     r"^reward function <lambda>: raised ZeroDivisionError: .* on prompt 'What is 1\+2\?'$"),
    (lambda completions, **kw: [1.0, 2.0], r"^reward function <lambda>: returned 2 values for 3 completions"),
    (lambda completions, **kw: [1.0, float("nan"), 0.0],
     r"^reward function <lambda>: returned nan for prompt 'What is 10\+20\?'$"),
    (lambda completions, **kw: [1.0, "yes", 0.0],
     r"^reward function <lambda>: returned str 'yes' for prompt 'What is 10\+20\?' \(a number or None"),
    (lambda completions, **kw: 1.0, r"^reward function <lambda>: returned float, not one value per completion"),
    (lambda completions, **kw: [None] * 3, r"^reward: every reward function returned None for prompt 'What is 1"),
])
def test_a_bad_function_stops_with_one_line_naming_it_and_the_prompt(fn, message):
    with pytest.raises(RewardFunctionError, match=message):
        _score(fn)


def test_load_function_names_what_is_wrong(tmp_path):
    assert load_function("rlhf_jax.tasks.arithmetic:exact_match") is arithmetic.exact_match
    file = tmp_path / "my_rewards.py"
    file.write_text("def length(completions, **kw):\n    return [float(len(c)) for c in completions]\n")
    assert load_function(f"{file}:length")(completions=["ab"]) == [2.0]
    for spec, message in [("nocolon", "must be module:function"),
                          ("no_such_module_xyz:f", "cannot import no_such_module_xyz"),
                          ("rlhf_jax.tasks.arithmetic:nope", "has no 'nope'"),
                          ("rlhf_jax.tasks.arithmetic:NAME", "is not a function"),
                          (f"{tmp_path}/missing.py:f", "no file")]:
        with pytest.raises(ValueError, match=f"^reward: .*{message}"):
            load_function(spec)
    with pytest.raises(ValueError, match="^reward_weights: 1 weights for 2 reward functions"):
        reward_functions([correct, brevity], [1.0])


def test_prompt_rows_keep_every_column_and_name_the_line_of_a_missing_one(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": "2", "level": 3}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: field 'level' is not on line 1"):
        load_prompt_rows(path)
    path.write_text('{"prompt": "a", "answer": "1"}\n\n{"prompt": "b"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:3: missing field 'answer'"):
        load_prompt_rows(path)
    path.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": 2}\n')
    rows, where = load_prompt_rows(path)
    assert rows == [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": 2}]
    assert where == [f"{path}:1", f"{path}:2"]


def test_arithmetic_checks_and_its_corpus_faults():
    rows = arithmetic.prompt_rows(200, seed=3)
    assert all(int(r["answer"]) == sum(map(int, r["prompt"][8:-1].split("+"))) for r in rows)
    completions = ["122", " 122 ", "= 122", "22", "It is 122", "abc"]
    answer = ["122"] * 6
    assert arithmetic.exact_match(completions, answer) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert arithmetic.accuracy(completions, answer) == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert arithmetic.format_reward(completions) == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    prompts, responses = arithmetic.sft_corpus(4000, seed=0)
    truth = [str(sum(map(int, p[8:-1].split("+")))) for p in prompts]
    carry = np.array([len(t) == 3 for t in truth])
    right = np.array(arithmetic.accuracy(responses, truth), bool)
    clean = np.array(arithmetic.format_reward(responses), bool)
    assert right[~carry].all()  # two-digit sums are always right
    assert abs(1 - right[carry].mean() - arithmetic.DROP_CARRY) < 0.03  # three-digit ones lose their 1
    assert abs(1 - clean.mean() - arithmetic.FORMAT_NOISE) < 0.03
