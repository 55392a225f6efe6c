"""A user's function named on the command line: ``package.module:function`` (importable) or
``path/to/file.py:function``. One loader for every such flag (``ppo-jax train --env``,
``rlhf-jax rl --reward`` and ``--metric``); its errors name the flag's field."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable


def load_named(spec: str, field: str) -> Callable:
    """The callable ``spec`` names; a ``ValueError`` starting ``field: 'spec'`` says what is wrong
    (the form, a missing file, an import that fails, no such name, not callable)."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{field}: {spec!r} must be module:function or path/to/file.py:function")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise ValueError(f"{field}: {spec!r}: no file {path}")
        name = f"_user_{abs(hash(str(path.resolve())))}"
        loader_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as err:
            raise ValueError(f"{field}: {spec!r}: importing {path} raised {type(err).__name__}: {err}") from err
    else:
        try:
            module = importlib.import_module(module_name)
        except Exception as err:
            raise ValueError(f"{field}: {spec!r}: cannot import {module_name} ({type(err).__name__}: {err})") from err
    fn = getattr(module, attr, None)
    if fn is None:
        raise ValueError(f"{field}: {spec!r}: {module_name} has no {attr!r}")
    if not callable(fn):
        raise ValueError(f"{field}: {spec!r} is not a function ({type(fn).__name__})")
    return fn
