"""Checks shared by every config: kept free of heavy imports (rlhf_jax uses it too)."""

from __future__ import annotations

import dataclasses
import math


def require_finite(config, prefix: str = "") -> None:
    """Raises ValueError naming the first float field of the dataclass ``config`` (nested
    ones too, as ``outer.inner``) that is NaN or infinite: tyro and Python's json both
    accept 'nan' and 'inf', and a NaN learning rate trains to garbage without an error."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            require_finite(value, f"{prefix}{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{prefix}{f.name}: must be a finite number, got {value!r}")


def require_positive(obj, *names: str, integer: bool = False) -> None:
    """Raises ValueError naming the first of the fields ``names`` of ``obj`` that is not
    above 0 (with ``integer``, also one that is not an int: tyro and JSON give bools and
    floats where a count belongs)."""
    for name in names:
        value = getattr(obj, name)
        if integer and (not isinstance(value, int) or isinstance(value, bool)) or not value > 0:
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


class DictConfig:
    """``to_dict`` and its inverse ``from_dict`` (:func:`config_from_dict`) for a config dataclass."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        return config_from_dict(cls, d)
