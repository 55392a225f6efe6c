"""What every benchmark records about the machine, and how it writes its JSON."""

from __future__ import annotations

import json
import os
import platform
import sys

import jax

from ppo_jax.run.machine import cpu_model


def machine() -> dict:
    """Device, CPU model, platform, CPU count and versions: timings mean nothing without them."""
    return {"device": str(jax.devices()[0]), "cpu_model": cpu_model(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "jax": jax.__version__, "python": sys.version.split()[0],
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def write_result(path: str, result: dict) -> None:
    """Writes ``result`` with :func:`machine`'s fields, creating the folder (atomically: a
    benchmark that writes after every row keeps the last complete file if interrupted)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({**result, **machine()}, f, indent=2)
    os.replace(tmp, path)
