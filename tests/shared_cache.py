"""Results that several tests share, computed once per test run whichever xdist worker needs
them first (pytest-xdist's xdist_group does not keep tests on one worker under pytest 9)."""

from __future__ import annotations

import os
import pickle
from typing import Callable


def computed_once(name: str, compute: Callable[[], object]):
    """``compute()``'s result, pickled in this run's cache folder (``JAX_COMPILATION_CACHE_DIR``,
    which conftest.py makes per run) by the first worker to ask; the others wait and load it."""
    from filelock import FileLock

    folder = os.environ["JAX_COMPILATION_CACHE_DIR"]
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}.pkl")
    with FileLock(path + ".lock"):
        if os.path.exists(path):
            with open(path, "rb") as f:
                return pickle.load(f)
        value = compute()
        with open(path + ".tmp", "wb") as f:
            pickle.dump(value, f)
        os.replace(path + ".tmp", path)
        return value
