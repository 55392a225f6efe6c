"""JSONL data: each line one JSON object with string fields; any bad line is an error naming file and line."""

from __future__ import annotations

import json
import os
from typing import Sequence


def read_jsonl(path: str | os.PathLike, fields: Sequence[str], optional: Sequence[str] = ()) -> list[dict]:
    """Objects of ``path`` with the required string ``fields`` (non-empty) and any ``optional`` ones.

    Blank lines are skipped; a line that is not a JSON object, lacks a field, or has an
    empty or non-string one raises ``ValueError("FILE:LINE: ...")``.
    """
    rows = []
    try:
        f = open(path, encoding="utf-8")
    except OSError as err:
        raise FileNotFoundError(f"{path}: cannot open ({err.strerror})") from err
    with f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg})") from err
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            for name in fields:
                if name not in obj:
                    raise ValueError(f"{path}:{lineno}: missing field {name!r}")
                if not isinstance(obj[name], str):
                    raise ValueError(f"{path}:{lineno}: field {name!r} must be a string, got {type(obj[name]).__name__}")
                if not obj[name].strip() and name != "prompt":
                    raise ValueError(f"{path}:{lineno}: field {name!r} is empty")
            rows.append({k: obj[k] for k in (*fields, *optional) if k in obj})
    if not rows:
        raise ValueError(f"{path}: no examples")
    return rows


def load_sft(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Prompts and responses of a JSONL file with ``prompt`` and ``response`` fields."""
    rows = read_jsonl(path, ("prompt", "response"))
    return [r["prompt"] for r in rows], [r["response"] for r in rows]
