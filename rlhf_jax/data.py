"""JSONL data: each line one JSON object with string fields; any bad line is an error naming file and line.
And the fixed-size batching every host-side loop over examples uses."""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any, Callable, Sequence

import numpy as np

from ppo_jax.run.outputs import atomic_path


def read_jsonl(path: str | os.PathLike, fields: Sequence[str], optional: Sequence[str] = (),
               numbered: bool = False, all_fields: bool = False) -> list[dict]:
    """Objects of ``path`` with the required string ``fields`` (non-empty) and any ``optional`` ones
    (``all_fields``: every field).

    With ``numbered`` each row also has ``"_line"``, its line number. Blank lines are skipped;
    a line that is not a JSON object, lacks a field, or has an empty or non-string one raises
    ``ValueError("FILE:LINE: ...")``.
    """
    rows = []
    try:
        f = open(path, "rb")
    except OSError as err:
        raise FileNotFoundError(f"{path}: cannot open ({err.strerror})") from err
    with f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte {err.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg})") from err
            except RecursionError:
                raise ValueError(f"{path}:{lineno}: invalid JSON (nested too deeply)") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            for name in fields:
                if name not in obj:
                    raise ValueError(f"{path}:{lineno}: missing field {name!r}")
                if not isinstance(obj[name], str):
                    raise ValueError(f"{path}:{lineno}: field {name!r} must be a string, got {type(obj[name]).__name__}")
                if not obj[name].strip() and name != "prompt":
                    raise ValueError(f"{path}:{lineno}: field {name!r} is empty")
            row = dict(obj) if all_fields else {k: obj[k] for k in (*fields, *optional) if k in obj}
            for name, value in row.items():
                if isinstance(value, str) and not _encodable(value):
                    raise ValueError(f"{path}:{lineno}: field {name!r} holds a lone surrogate escape (not text)")
            if numbered:
                row["_line"] = lineno
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no examples")
    return rows


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def load_sft(path: str | os.PathLike) -> tuple[list[str], list[str], list[str]]:
    """Prompts and responses of a JSONL file with ``prompt`` and ``response`` fields, and for
    each ``"FILE:LINE"`` so later errors can say where it came from."""
    rows = read_jsonl(path, ("prompt", "response"), numbered=True)
    return [r["prompt"] for r in rows], [r["response"] for r in rows], [f"{path}:{r['_line']}" for r in rows]


ASSISTANT_TURN = "\n\nAssistant:"


def split_dialogues(chosen: str, rejected: str, where: str) -> tuple[str, str, str]:
    """``(prompt, chosen, rejected)`` of two whole dialogues in the Anthropic hh-rlhf layout: the
    prompt is their shared prefix up to and including its last ``"\n\nAssistant:"`` turn."""
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(ASSISTANT_TURN)
    if cut < 0:
        raise ValueError(f"{where}: no 'prompt' field, and chosen and rejected share no "
                         f"{ASSISTANT_TURN.strip()!r} turn to take one from")
    end = cut + len(ASSISTANT_TURN)
    prompt, chosen, rejected = chosen[:end], chosen[end:], rejected[end:]
    if not chosen.strip() or not rejected.strip():
        raise ValueError(f"{where}: after the shared prompt, chosen or rejected is empty")
    return prompt, chosen, rejected


def load_preferences(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """Pairs of a JSONL file with ``prompt``, ``chosen``, ``rejected`` (and optional numeric
    ``margin``), or hh-rlhf's ``chosen`` and ``rejected`` whole dialogues with no ``prompt``
    (see :func:`split_dialogues`).

    Returns the pairs and, for each, ``"FILE:LINE"`` so later errors can say where it came from.
    A pair whose chosen and rejected responses are the same text teaches nothing (its loss
    only pulls the two scores together): such pairs are left out with a warning naming the
    first; a file of nothing else is an error.
    """
    rows, where, same = [], [], []
    for lineno, row in _numbered(read_jsonl(path, ("chosen", "rejected"), optional=("prompt", "margin"),
                                            numbered=True)):
        if "prompt" not in row:
            row["prompt"], row["chosen"], row["rejected"] = split_dialogues(row["chosen"], row["rejected"],
                                                                            f"{path}:{lineno}")
        elif not isinstance(row["prompt"], str):
            raise ValueError(f"{path}:{lineno}: field 'prompt' must be a string, got {type(row['prompt']).__name__}")
        margin = row.get("margin", 0.0)
        if isinstance(margin, bool) or not isinstance(margin, (int, float)):
            raise ValueError(f"{path}:{lineno}: field 'margin' must be a number, got {type(margin).__name__}")
        if not math.isfinite(margin):  # Python's json reads NaN and Infinity
            raise ValueError(f"{path}:{lineno}: field 'margin' must be a finite number, got {margin}")
        if row["chosen"] == row["rejected"]:
            same.append(lineno)
            continue
        rows.append({**row, "margin": float(margin)})
        where.append(f"{path}:{lineno}")
    if same and not rows:
        raise ValueError(f"{path}: every pair has the same chosen and rejected text (line {same[0]} and on): "
                         f"nothing to learn a preference from")
    if same:
        warnings.warn(f"{path}: {len(same)} of {len(same) + len(rows)} pairs have the same chosen and rejected "
                      f"text (first at line {same[0]}); they are left out", stacklevel=2)
    return rows, where


def load_prompts(path: str | os.PathLike) -> list[str]:
    """The ``prompt`` field of each line of a JSONL file."""
    return [r["prompt"] for r in read_jsonl(path, ("prompt",))]


def load_prompt_rows(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """Every line of a JSONL prompt file with all its fields (``prompt`` a string; the others,
    such as an ``answer``, are what reward functions get as keyword lists), and for each
    ``"FILE:LINE"``. Every line must have the first line's fields."""
    rows = read_jsonl(path, ("prompt",), numbered=True, all_fields=True)
    columns, first = [k for k in rows[0] if k != "_line"], rows[0]["_line"]
    where = []
    for row in rows:
        missing = [c for c in columns if c not in row]
        extra = [c for c in row if c not in columns and c != "_line"]
        if missing or extra:
            what = f"missing field {missing[0]!r}" if missing else f"field {extra[0]!r} is not on line {first}"
            raise ValueError(f"{path}:{row['_line']}: {what} (every line needs the same fields: {', '.join(columns)})")
        where.append(f"{path}:{row.pop('_line')}")
    return rows, where


def _numbered(rows):
    for row in rows:
        yield row.pop("_line"), row


def write_preferences(path: str | os.PathLike, pairs: Sequence[dict]) -> None:
    """Writes pairs as JSONL (``prompt``, ``chosen``, ``rejected``, ``margin`` and, for sampled
    pairs, the labeller's ``label_prob``), atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for p in pairs:
            keys = ("prompt", "chosen", "rejected", "margin", "label_prob")
            f.write(json.dumps({k: p[k] for k in keys if k in p}) + "\n")


def padded_chunks(items: Sequence, batch_size: int):
    """``(chunk, real)`` over ``items`` in fixed-size chunks, the last one padded by repeating its
    last item (so one compiled program serves all); only the first ``real`` entries count."""
    for start in range(0, len(items), batch_size):
        chunk = list(items[start:start + batch_size])
        real = len(chunk)
        yield chunk + [chunk[-1]] * (batch_size - real), real


def in_fixed_batches(fn: Callable[[np.ndarray], Any], n: int, batch_size: int) -> np.ndarray:
    """``fn(idx)`` over ``range(n)`` in index batches of exactly ``batch_size`` (the last padded by
    wrapping round to the start, so one compiled program serves all), the results concatenated
    without the padding's rows."""
    out = []
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size) % n
        out.append(np.asarray(fn(idx))[: min(batch_size, n - start)])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)
