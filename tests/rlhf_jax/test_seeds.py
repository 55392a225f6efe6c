"""Named seed streams: within each family every stage has its own stream, and runs with other
seeds get other streams."""

import jax
import numpy as np
import pytest

from rlhf_jax import seeds

pytestmark = pytest.mark.timeout(60)


def test_each_stage_of_a_family_has_its_own_stream():
    for family in (seeds.PROMPTS, seeds.KEYS):
        assert len(set(family.values())) == len(family), family
        assert all(offset > 0 for offset in family.values())  # offset 0 is the run seed itself (SFT's)
    assert seeds.prompt_seed(7, "pairs") != seeds.prompt_seed(7, "rl_pool") != seeds.prompt_seed(7, "heldout")
    keys = [jax.random.key_data(seeds.stream_key(7, name)) for name in seeds.KEYS]
    assert len({tuple(np.asarray(k).tolist()) for k in keys}) == len(keys)


def test_streams_follow_the_run_seed_and_repeat():
    np.testing.assert_array_equal(seeds.stream_key(3, "evaluation"), seeds.stream_key(3, "evaluation"))
    assert not np.array_equal(seeds.stream_key(3, "evaluation"), seeds.stream_key(4, "evaluation"))
    assert seeds.prompt_seed(3, "heldout") + 1 == seeds.prompt_seed(4, "heldout")
    with pytest.raises(KeyError):
        seeds.prompt_seed(0, "no such stage")
