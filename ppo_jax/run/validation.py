"""Checks shared by every config: kept free of heavy imports (rlhf_jax uses it too)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable

SEED_LIMIT = 2**63
"""Seeds are integers in ``[0, 2**63)``: what both JAX's and numpy's generators take."""


def _default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _kind_error(name: str, default, value) -> str | None:
    """What is wrong with ``value`` for a field whose default is ``default`` (None: nothing):
    a number field must hold a number (a string "0.001" is not one), an integer field an
    integer (numpy's too), a flag a bool."""
    if value is None or default is None:
        return None
    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, want = isinstance(value, numbers.Integral) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, want = isinstance(value, numbers.Real) and not isinstance(value, bool), "a number"
    else:
        return None
    return None if ok else f"{name}: must be {want}, got {value!r} ({type(value).__name__})"


def require_finite(config, prefix: str = "") -> None:
    """Raises ValueError naming the first field of the dataclass ``config`` (nested ones too,
    as ``outer.inner``) that is NaN or infinite (tyro and Python's json both accept 'nan' and
    'inf', and a NaN learning rate trains to garbage without an error), of the wrong kind for
    its default (a string where a number belongs), or a seed outside ``[0, 2**63)``."""
    for f in dataclasses.fields(config):
        value, name = getattr(config, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            require_finite(value, f"{name}.")
            continue
        error = _kind_error(name, _default(f), value)
        if error:
            raise ValueError(error)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}: must be a finite number, got {value!r}")
        if f.name == "seed" and isinstance(value, numbers.Integral) and not 0 <= value < SEED_LIMIT:
            raise ValueError(f"{name}: must be an integer in [0, 2**63), got {value!r}")


def require_seed(seed, name: str = "seed") -> None:
    """Raises ValueError naming ``name`` unless ``seed`` is an integer in ``[0, 2**63)``."""
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{name}: must be an integer in [0, 2**63), got {seed!r}")


def require_positive(obj, *names: str, integer: bool = False) -> None:
    """Raises ValueError naming the first of the fields ``names`` of ``obj`` that is not
    above 0 (with ``integer``, also one that is not an int: tyro and JSON give bools and
    floats where a count belongs)."""
    for name in names:
        value = getattr(obj, name)
        if integer and (not isinstance(value, numbers.Integral) or isinstance(value, bool)) or not value > 0:
            raise ValueError(f"{name}: must be {'a positive integer' if integer else 'positive'}, got {value!r}")


def config_from_dict(cls, d: dict):
    """``cls(**d)`` for a config dataclass read back from JSON: a key that is not a field is
    an error naming it, a dict where the field's default is a dataclass becomes that class
    (recursively), and a list where the default is a tuple becomes a tuple."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
    values = {}
    for name, value in d.items():
        f = fields[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = config_from_dict(type(default), value)
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)


def renamed_fields(message: str, rename: Callable[[str], str]) -> str | None:
    """``message`` (``"field[, field]: what is wrong"``, as the config checks word it) with each
    field passed through ``rename``; None when it does not start with field names."""
    fields, sep, rest = message.partition(": ")
    names = fields.split(", ")
    if not sep or not all(n.replace(".", "_").isidentifier() for n in names):
        return None
    return ", ".join(rename(n) for n in names) + f": {rest}"


def validate_part(config, prefix: str) -> None:
    """``config.validate()`` for a part of a larger config (``prefix``: its field there), its
    errors naming fields as the user sets them (``sft.warmup_steps``, not ``warmup_steps``)."""
    try:
        config.validate()
    except ValueError as err:
        renamed = renamed_fields(str(err), lambda name: f"{prefix}.{name}")
        if renamed is None:
            raise
        raise ValueError(renamed) from None


class DictConfig:
    """``to_dict`` and its inverse ``from_dict`` (:func:`config_from_dict`) for a config dataclass."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        return config_from_dict(cls, d)
