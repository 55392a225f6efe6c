"""Model checkpoints: parameters (orbax), the transformer config and the tokenizer.

A checkpoint directory holds ``params/`` (orbax; committed by rename, so a killed save
leaves no half checkpoint), ``model.json`` (the :class:`TransformerConfig` and which heads
exist) and ``tokenizer.json`` when the model uses a user's tokenizer (copied, so the
checkpoint stands alone), with ``tokenizer_meta.json`` naming its special tokens.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from ppo_jax.outputs import write_json
from rlhf_jax.tokenizer import ByteTokenizer, JsonTokenizer, Tokenizer
from rlhf_jax.transformer import TransformerConfig, TransformerLM, init_params


def save(directory: str | os.PathLike, params, model: TransformerLM, tokenizer: Tokenizer,
         extra: dict | None = None) -> Path:
    """Saves params, model config and tokenizer; ``extra`` (JSON-able) goes to ``extra.json``."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "params").exists():
        raise FileExistsError(f"checkpoint: {directory / 'params'} already exists; choose a new directory")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / "params", params)
    checkpointer.wait_until_finished()
    write_json(directory / "model.json", {"config": model.config.to_dict(), "lm_head": model.lm_head,
                                          "scalar_head": model.scalar_head, "format": 1})
    if isinstance(tokenizer, JsonTokenizer):
        shutil.copyfile(tokenizer.path, directory / "tokenizer.json")
        write_json(directory / "tokenizer_meta.json", tokenizer.special_tokens)
    if extra is not None:
        write_json(directory / "extra.json", extra)
    return directory


def load_extra(directory: str | os.PathLike) -> dict:
    """What :func:`save` got as ``extra`` (empty if nothing)."""
    path = Path(directory) / "extra.json"
    return _read_json(path) if path.exists() else {}


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint: {path} is missing (is {path.parent} a model checkpoint?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from err


def load(directory: str | os.PathLike) -> tuple[TransformerLM, dict, Tokenizer]:
    """Returns ``(model, params, tokenizer)``."""
    directory = Path(directory).absolute()
    meta = _read_json(directory / "model.json")
    model = TransformerLM(TransformerConfig.from_dict(meta["config"]), lm_head=meta["lm_head"],
                          scalar_head=meta["scalar_head"])
    target = jax.eval_shape(lambda k: init_params(model, k), jax.random.PRNGKey(0))
    params = ocp.StandardCheckpointer().restore(directory / "params", target)
    if (directory / "tokenizer.json").exists():
        tokenizer = JsonTokenizer(str(directory / "tokenizer.json"), **_read_json(directory / "tokenizer_meta.json"))
    else:
        tokenizer = ByteTokenizer()
    return model, params, tokenizer
