"""Each use of a private JAX module falls back to the public path when a JAX version moved it."""

import sys

import pytest

from ppo_jax import distributed
from ppo_jax.run import settings

pytestmark = pytest.mark.timeout(60)


def test_barrier_falls_back_to_a_collective_barrier_when_the_client_moved(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "jax._src.distributed", None)  # makes its import fail
    monkeypatch.setattr(settings, "_noted", set())
    assert distributed._coordination_client() is None
    assert distributed._coordination_client() is None
    err = capsys.readouterr().err
    assert err.count("ppo-jax: note:") == 1 and "collective barrier" in err

    monkeypatch.setattr(distributed.jax, "process_count", lambda: 2)
    calls = []
    from jax.experimental import multihost_utils

    monkeypatch.setattr(multihost_utils, "sync_global_devices", calls.append)
    distributed.barrier("probe")
    assert len(calls) == 1 and calls[0].startswith("probe:")


def test_barrier_uses_the_coordination_client_with_our_timeout(monkeypatch):
    calls = []

    class Client:
        def wait_at_barrier(self, label, timeout_in_ms):
            calls.append((label, timeout_in_ms))

    private = pytest.importorskip("jax._src.distributed")
    monkeypatch.setattr(private.global_state, "client", Client())
    monkeypatch.setattr(distributed.jax, "process_count", lambda: 2)
    distributed.barrier("probe", timeout_s=7)
    assert len(calls) == 1 and calls[0][0].startswith("probe:") and calls[0][1] == 7000
