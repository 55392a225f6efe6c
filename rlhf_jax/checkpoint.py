"""Model checkpoints: parameters (orbax), the transformer config and the tokenizer.

A checkpoint directory holds ``params/`` (orbax; committed by rename, so a killed save
leaves no half checkpoint), ``model.json`` (the :class:`TransformerConfig` and which heads
exist) and ``tokenizer.json`` when the model uses a user's tokenizer (copied, so the
checkpoint stands alone), with ``tokenizer_meta.json`` naming its special tokens.
``model.json`` also holds a checksum of each parameter array, checked on load: a damaged
or partial checkpoint is one :class:`ppo_jax.run.checkpoints.CheckpointError` naming its folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from ppo_jax.run.checkpoints import (
    CheckpointError,
    orbax_restore,
    tree_checksums,
    verify_checksums,
    write_checkpoint,
)
from ppo_jax.run.outputs import read_json, write_json
from rlhf_jax.tokenizer import ByteTokenizer, JsonTokenizer, Tokenizer
from rlhf_jax.transformer import TransformerConfig, TransformerLM, init_params


def save(directory: str | os.PathLike, params, model: TransformerLM, tokenizer: Tokenizer,
         extra: dict | None = None) -> Path:
    """Saves params, model config and tokenizer; ``extra`` (JSON-able) goes to ``extra.json``."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "params").exists():
        raise FileExistsError(f"checkpoint: {directory / 'params'} already exists; choose a new directory")
    write_checkpoint(directory / "params", params)
    checksums = tree_checksums(params)
    write_json(directory / "model.json", {"config": model.config.to_dict(), "lm_head": model.lm_head,
                                          "scalar_head": model.scalar_head, "format": 1, "checksums": checksums})
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
        raise CheckpointError(f"checkpoint: {path} is missing (is {path.parent} a model checkpoint?)")
    value = read_json(path, error=CheckpointError)
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def load(directory: str | os.PathLike) -> tuple[TransformerLM, dict, Tokenizer]:
    """Returns ``(model, params, tokenizer)``. ``directory`` is a checkpoint or a run folder
    holding one as ``checkpoint/``; raises :class:`CheckpointError` naming the folder if it
    is missing, damaged or incomplete."""
    directory = Path(directory).absolute()
    if not (directory / "model.json").exists() and (directory / "checkpoint" / "model.json").exists():
        directory = directory / "checkpoint"
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint: {directory} is not a folder")
    meta = _read_json(directory / "model.json")
    try:
        model = TransformerLM(TransformerConfig.from_dict(meta["config"]), lm_head=meta["lm_head"],
                              scalar_head=meta["scalar_head"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{directory / 'model.json'}: not a model description "
                              f"({type(err).__name__}: {err})") from None
    if not (directory / "params").is_dir():
        raise CheckpointError(f"checkpoint: {directory} is incomplete (no params/)")
    target = jax.eval_shape(lambda k: init_params(model, k), jax.random.PRNGKey(0))
    params = orbax_restore(lambda: ocp.StandardCheckpointer().restore(directory / "params", target), directory)
    verify_checksums(params, meta, directory)
    if (directory / "tokenizer.json").exists():
        tokenizer = JsonTokenizer(str(directory / "tokenizer.json"), **_read_json(directory / "tokenizer_meta.json"))
    else:
        tokenizer = ByteTokenizer()
    return model, params, tokenizer
