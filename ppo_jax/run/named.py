"""A user's function named on the command line: ``package.module:function`` (importable) or
``path/to/file.py:function``. One loader for every such flag (``ppo-jax train --env``,
``rlhf-jax rl --reward`` and ``--metric``); its errors name the flag's field."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable


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


class Named:
    """What a config field's names stand for in this process: objects given to it
    (``object:Type@id``, :meth:`give`) and objects made once from a name (:meth:`get`)."""

    def __init__(self, field: str, what: str):
        self.field, self.what = field, what
        self._objects: dict[str, Any] = {}

    def give(self, obj, value: Any = None) -> str:
        """An id for ``obj``, usable as the field's value in this process; it stands for
        ``value`` (default ``obj``)."""
        name = f"object:{type(obj).__name__}@{id(obj):x}"
        self._objects[name] = obj if value is None else value
        return name

    def get(self, name: str, make: Callable[[str], Any]) -> Any:
        """What ``name`` stands for: the given object, or ``make(name)``, called once per process."""
        if name not in self._objects:
            if name.startswith("object:"):
                raise ValueError(f"{self.field}: {name!r} was {self.what} of another process; give it again "
                                 f"(make_train(config, {self.field}=...)) or name a module:function")
            self._objects[name] = make(name)
        return self._objects[name]
