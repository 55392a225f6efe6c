"""Run checkpoints carry their payload's own format number: a reader of another layout is refused by name."""

import numpy as np
import pytest

from ppo_jax.run.checkpoints import CheckpointFormatError, RunCheckpoints

pytestmark = pytest.mark.timeout(120)


def test_each_payload_numbers_its_own_formats(tmp_path):
    tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    writer = RunCheckpoints(tmp_path / "ck", format=3, payload="toy state")
    writer.save(5, tree, {"update": 5})
    writer.wait()
    step, back, meta = RunCheckpoints(tmp_path / "ck", format=3, payload="toy state").restore_latest(tree)
    assert step == 5 and meta["update"] == 5 and meta["format"] == 3
    np.testing.assert_array_equal(back["w"], tree["w"])
    with pytest.raises(CheckpointFormatError, match=r"holds a toy state in format 3, .*reads format 4"):
        RunCheckpoints(tmp_path / "ck", format=4, payload="toy state").restore_latest(tree)
    assert (tmp_path / "ck" / "5").is_dir()  # refused, not set aside as damaged
