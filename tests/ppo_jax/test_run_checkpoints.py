"""Run checkpoints carry their payload's own format number: a reader of another layout is refused by
name; a write that fails is one error naming why and the last complete checkpoint."""

import resource
from contextlib import contextmanager

import numpy as np
import pytest

from ppo_jax.run.checkpoints import (
    CheckpointFormatError,
    CheckpointWriteError,
    RunCheckpoints,
    short_reason,
    write_checkpoint,
)

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


def test_arrays_with_a_zero_length_axis_are_kept(tmp_path):
    """MJX's state (Brax, Playground) holds empty arrays, which orbax refuses to save."""
    import jax
    import jax.numpy as jnp

    tree = {"w": jnp.arange(3.0), "act": jnp.zeros((4, 0), jnp.float32), "n": jnp.zeros((0,), jnp.int32)}
    writer = RunCheckpoints(tmp_path / "ck", format=1, payload="toy state")
    writer.save(1, tree, {"update": 1})
    writer.wait()
    _, back, _ = RunCheckpoints(tmp_path / "ck", format=1, payload="toy state").restore_latest(tree)
    assert jax.tree.map(jnp.shape, back) == jax.tree.map(jnp.shape, tree)
    assert back["act"].dtype == jnp.float32 and back["n"].dtype == jnp.int32
    np.testing.assert_array_equal(back["w"], tree["w"])


@contextmanager
def _file_size_limit(limit: int):
    """Writes of more than ``limit`` bytes to a file fail (EFBIG, as a full disk fails them)."""
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before)


def test_a_failed_save_is_one_error_naming_the_last_complete_checkpoint(tmp_path):
    tree = {"w": np.arange(4096, dtype=np.float32)}  # 16 KiB: over the limit below
    ck = RunCheckpoints(tmp_path / "ck", format=1, payload="toy state")
    ck.save(1, tree)
    ck.wait()
    with _file_size_limit(1024):
        with pytest.raises(CheckpointWriteError) as err:
            ck.save(2, tree)
            ck.wait()
    assert str(err.value) == (f"checkpoint: cannot write to {tmp_path / 'ck'} (File too large); "
                              f"the last complete checkpoint is {tmp_path / 'ck' / '1'}")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["1"]  # the half-written one removed
    with pytest.raises(CheckpointWriteError):  # orbax's manager is not trusted again
        ck.save(3, tree)
    assert ck.steps() == [1] and ck.latest() == 1  # what is on disk, without waiting on orbax


def test_a_failed_single_checkpoint_is_one_error_and_leaves_nothing(tmp_path):
    with _file_size_limit(1024), pytest.raises(CheckpointWriteError, match=r"cannot write to .* \(File too large\)$"):
        write_checkpoint(tmp_path / "params", {"w": np.random.default_rng(0).standard_normal(4096)})
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointWriteError, match=r"\(Not a directory\)|\(File exists\)"):
        write_checkpoint(tmp_path / "file" / "params", {"w": np.zeros(3, np.float32)})


def test_short_reason_gives_the_operating_systems_reason():
    assert short_reason(OSError(30, "Read-only file system", "/x")) == "Read-only file system"
    assert short_reason(ValueError("RESOURCE_EXHAUSTED: Error writing \"a/0.0\" in OCDBT database: Failed to write "
                                   "37085 bytes to file 5: No space left on device [os_error_code='28']")) == \
        "No space left on device"
    assert short_reason(ValueError("first line\nsecond")) == "first line"
