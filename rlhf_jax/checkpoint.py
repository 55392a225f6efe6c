"""Model checkpoints: parameters (orbax), the transformer config and the tokenizer.

A checkpoint directory holds ``params/`` (orbax; committed by rename, so a killed save
leaves no half checkpoint), ``model.json`` (the :class:`TransformerConfig` and which heads
exist) and ``tokenizer.json`` when the model uses a user's tokenizer (copied, so the
checkpoint stands alone), with ``tokenizer_meta.json`` naming its special tokens.
``model.json`` also holds a checksum of each parameter array, checked on load: a damaged
or partial checkpoint is one :class:`ppo_jax.run.checkpoints.CheckpointError` naming its folder.

A model with LoRA adapters (:mod:`rlhf_jax.lora`) saved with the ``base`` it was trained on
(a Hugging Face folder or our checkpoint) holds its trainable parameters alone (the adapters
and any scalar head) and the base's path in ``model.json``; :func:`load` reads the base again
and puts the adapters on it. Without a base the whole tree is saved.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import traverse_util

from ppo_jax.run.checkpoints import (
    CheckpointError,
    orbax_restore,
    tree_checksums,
    verify_checksums,
    write_checkpoint,
)
from ppo_jax.run.outputs import read_json, write_json
from rlhf_jax import lora
from rlhf_jax.lora import LoRAConfig
from rlhf_jax.tokenizer import ByteTokenizer, JsonTokenizer, Tokenizer
from rlhf_jax.transformer import TransformerConfig, TransformerLM, init_params


def save(directory: str | os.PathLike, params, model: TransformerLM, tokenizer: Tokenizer,
         extra: dict | None = None, base: str | os.PathLike | None = None) -> Path:
    """Saves params, model config and tokenizer; ``extra`` (JSON-able) goes to ``extra.json``.
    With LoRA and ``base`` (the folder the frozen weights came from), only the trainable
    parameters are saved, with the base's path."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "params").exists():
        raise FileExistsError(f"checkpoint: {directory / 'params'} already exists; choose a new directory")
    meta = {"config": model.config.to_dict(), "lm_head": model.lm_head, "scalar_head": model.scalar_head,
            "format": 1}
    if model.lora.active:
        meta["lora"] = model.lora.to_dict()
        if base is not None:
            params = lora.partition(model.lora).split(params)[0]
            meta["base"] = str(Path(base).absolute())
    write_checkpoint(directory / "params", params)
    write_json(directory / "model.json", {**meta, "checksums": tree_checksums(params)})
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


def _folder(directory: str | os.PathLike) -> Path:
    """A checkpoint folder: ``directory`` itself, or the ``checkpoint/`` of a run folder."""
    directory = Path(directory).absolute()
    if not (directory / "model.json").exists() and (directory / "checkpoint" / "model.json").exists():
        return directory / "checkpoint"
    return directory


def is_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` is our model checkpoint or a run folder holding one (a run folder
    has a config.json too, of another kind than a Hugging Face folder's)."""
    return (_folder(directory) / "model.json").exists()


def base_of(directory: str | os.PathLike) -> str | None:
    """The base model folder a LoRA checkpoint's adapters go on (None: none recorded)."""
    return _read_json(_folder(directory) / "model.json").get("base")


def _base_weights(base: str, shapes, adapters: LoRAConfig, directory: Path):
    """The frozen weights of a LoRA checkpoint: the tree ``shapes`` read from the model at
    ``base`` (a Hugging Face folder or our checkpoint), in ``adapters.base_dtype``."""
    from rlhf_jax.hf import HFFormatError, load_pretrained

    path = Path(base)
    if not path.is_dir():
        raise CheckpointError(f"{directory / 'model.json'}: its base model {path} is not a folder (moved or "
                              f"deleted?); the checkpoint holds the adapters alone")
    try:
        _, weights, _ = load(path) if is_checkpoint(path) else load_pretrained(path)
    except (HFFormatError, CheckpointError) as err:
        raise CheckpointError(f"{directory / 'model.json'}: its base model: {err}") from None
    flat = traverse_util.flatten_dict(weights)
    out = {}
    for key, shape in traverse_util.flatten_dict(shapes).items():
        if key not in flat or flat[key].shape != shape.shape:
            raise CheckpointError(f"{directory / 'model.json'}: its base model {path} has no parameter "
                                  f"{'/'.join(key)} of shape {shape.shape}")
        out[key] = flat[key].astype(adapters.base_dtype)
    return traverse_util.unflatten_dict(out)


def load(directory: str | os.PathLike, adapters: bool = False) -> tuple[TransformerLM, dict, Tokenizer]:
    """Returns ``(model, params, tokenizer)``. ``directory`` is a checkpoint or a run folder
    holding one as ``checkpoint/``; raises :class:`CheckpointError` naming the folder if it
    is missing, damaged or incomplete. A LoRA model comes with its adapters folded into its
    weights (a plain model), or with ``adapters=True`` as it was trained (adapters apart)."""
    directory = _folder(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint: {directory} is not a folder")
    meta = _read_json(directory / "model.json")
    try:
        model = TransformerLM(TransformerConfig.from_dict(meta["config"]), lm_head=meta["lm_head"],
                              scalar_head=meta["scalar_head"], lora=LoRAConfig.from_dict(meta.get("lora", {})))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{directory / 'model.json'}: not a model description "
                              f"({type(err).__name__}: {err})") from None
    if not (directory / "params").is_dir():
        raise CheckpointError(f"checkpoint: {directory} is incomplete (no params/)")
    target = jax.eval_shape(lambda k: init_params(model, k), jax.random.PRNGKey(0))
    part = lora.partition(model.lora)
    trainable, frozen_shapes = part.split(target)
    frozen_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, model.lora.base_dtype), frozen_shapes)
    target = trainable if "base" in meta else part.join(trainable, frozen_shapes)
    params = orbax_restore(lambda: ocp.StandardCheckpointer().restore(directory / "params", target), directory)
    verify_checksums(params, meta, directory)
    if "base" in meta:
        params = part.join(params, _base_weights(meta["base"], frozen_shapes, model.lora, directory))
    if model.lora.active and not adapters:
        params = lora.merged(params, model.lora)
        model = TransformerLM(model.config, model.lm_head, model.scalar_head)
    if (directory / "tokenizer.json").exists():
        tokenizer = JsonTokenizer(str(directory / "tokenizer.json"), **_read_json(directory / "tokenizer_meta.json"))
    else:
        tokenizer = ByteTokenizer()
    return model, params, tokenizer
