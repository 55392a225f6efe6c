"""Local Hugging Face folders in and out: nothing else in the package knows HF names.

:func:`load_pretrained` reads ``config.json``, the safetensors weights (one file, or shards
listed in ``model.safetensors.index.json``) and ``tokenizer.json`` with the special tokens
of ``tokenizer_config.json`` / ``special_tokens_map.json``; :func:`save_pretrained` writes
the same layout, as ``...ForCausalLM`` (a policy) or ``...ForSequenceClassification`` with
one label (a reward model), so that ``transformers`` loads what we train. Weights are read
with ``safetensors`` into JAX arrays (bfloat16 files included), never with torch, and never
downloaded.

Architectures: ``gpt2`` (``Conv1D`` weights are ``[in, out]``, already our kernels; q, k, v
packed along the output axis; learned positions; tied embeddings) and the Llama family,
``llama``, ``qwen2``, ``mistral`` (``nn.Linear`` weights are ``[out, in]``: transposed).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ppo_jax.run.outputs import atomic_path, read_json, write_json
from ppo_jax.run.validation import renamed_fields
from rlhf_jax.tokenizer import JsonTokenizer, Tokenizer
from rlhf_jax.transformer import TransformerConfig, TransformerLM, init_params

LLAMA_FAMILY = ("llama", "qwen2", "mistral")
ARCHITECTURES = ("gpt2", *LLAMA_FAMILY)


class HFFormatError(ValueError):
    """A local Hugging Face folder we cannot use; the message names the file and the key."""


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise HFFormatError(f"{path}: missing (is {path.parent} a Hugging Face model folder?)")
    return read_json(path, error=HFFormatError)


def config_from_hf(hf: dict, where: Path) -> TransformerConfig:
    """Our :class:`TransformerConfig` for a ``config.json`` (``where`` names it in errors)."""
    kind = hf.get("model_type")
    if kind not in ARCHITECTURES:
        raise HFFormatError(f"{where}: model_type {kind!r} is not supported (supported: {', '.join(ARCHITECTURES)})")

    def need(key):
        if key not in hf:
            raise HFFormatError(f"{where}: missing key {key!r}")
        return hf[key]

    if kind == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise HFFormatError(f"{where}: activation_function {act!r} is not supported (gelu_new only)")
        d = need("n_embd")
        return _checked(TransformerConfig(
            vocab_size=need("vocab_size"), max_len=need("n_positions"), num_layers=need("n_layer"),
            num_heads=need("n_head"), d_model=d, d_ff=hf.get("n_inner") or 4 * d, dropout=0.0, tie_embeddings=True,
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5), arch="gpt2"), GPT2_KEYS, where)
    if hf.get("hidden_act", "silu") != "silu":
        raise HFFormatError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported (silu only)")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise HFFormatError(f"{where}: rope scaling {rope_type!r} (key rope_scaling/rope_parameters) "
                            f"is not implemented")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    max_len = need("max_position_embeddings")
    window = hf.get("sliding_window") if hf.get("use_sliding_window", kind == "mistral") else None
    if window:  # attention beyond the window would differ: keep contexts inside it
        max_len = min(max_len, window)
    heads = need("num_attention_heads")
    d = need("hidden_size")
    if not isinstance(theta, (int, float)) or isinstance(theta, bool):
        raise HFFormatError(f"{where}: rope_theta: must be a number, got {theta!r}")
    if not isinstance(heads, int) or not isinstance(d, int) or heads <= 0:
        raise HFFormatError(f"{where}: num_attention_heads, hidden_size: must be positive integers, got {heads!r} "
                            f"and {d!r}")
    head_dim = hf.get("head_dim") or d // heads
    return _checked(TransformerConfig(
        vocab_size=need("vocab_size"), max_len=max_len, num_layers=need("num_hidden_layers"), num_heads=heads,
        d_model=d, d_ff=need("intermediate_size"), dropout=0.0, tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        layer_norm_eps=hf.get("rms_norm_eps", 1e-6), arch="llama", num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_size=0 if head_dim * heads == d else head_dim, rope_theta=float(theta),
        qkv_bias=kind == "qwen2" or bool(hf.get("attention_bias", False))), LLAMA_KEYS, where)


GPT2_KEYS = {"vocab_size": "vocab_size", "max_len": "n_positions", "num_layers": "n_layer", "num_heads": "n_head",
             "d_model": "n_embd", "d_ff": "n_inner", "layer_norm_eps": "layer_norm_epsilon"}
LLAMA_KEYS = {"vocab_size": "vocab_size", "max_len": "max_position_embeddings", "num_layers": "num_hidden_layers",
              "num_heads": "num_attention_heads", "d_model": "hidden_size", "d_ff": "intermediate_size",
              "num_kv_heads": "num_key_value_heads", "head_size": "head_dim", "layer_norm_eps": "rms_norm_eps",
              "rope_theta": "rope_theta"}
"""Our :class:`TransformerConfig` fields and the ``config.json`` keys they come from."""


def _checked(cfg: TransformerConfig, keys: dict[str, str], where: Path) -> TransformerConfig:
    """``cfg`` once valid; else an :class:`HFFormatError` naming the file and its keys, not ours."""
    try:
        cfg.validate()
    except ValueError as err:
        renamed = renamed_fields(str(err), lambda name: keys.get(name, name))
        raise HFFormatError(f"{where}: {renamed or err}") from None
    return cfg


def _name_map(cfg: TransformerConfig, kind: str) -> dict[tuple, tuple[str, bool]]:
    """Our parameter path -> (HF tensor name without the body prefix, transpose?)."""
    out: dict[tuple, tuple[str, bool]] = {}
    if kind == "gpt2":
        out[("wte", "embedding")] = ("wte.weight", False)
        out[("wpe", "embedding")] = ("wpe.weight", False)
        for i in range(cfg.num_layers):
            b, h = f"block_{i}", f"h.{i}."
            for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
                out[(b, ours, "scale")] = (h + theirs + ".weight", False)
                out[(b, ours, "bias")] = (h + theirs + ".bias", False)
            for ours, theirs in ((("attn", "qkv"), "attn.c_attn"), (("attn", "out"), "attn.c_proj"),
                                 (("fc",), "mlp.c_fc"), (("proj",), "mlp.c_proj")):
                out[(b, *ours, "kernel")] = (h + theirs + ".weight", False)
                out[(b, *ours, "bias")] = (h + theirs + ".bias", False)
        out[("ln_f", "scale")] = ("ln_f.weight", False)
        out[("ln_f", "bias")] = ("ln_f.bias", False)
        return out
    out[("wte", "embedding")] = ("embed_tokens.weight", False)
    for i in range(cfg.num_layers):
        b, h = f"block_{i}", f"layers.{i}."
        out[(b, "ln1", "scale")] = (h + "input_layernorm.weight", False)
        out[(b, "ln2", "scale")] = (h + "post_attention_layernorm.weight", False)
        for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("out", "o_proj")):
            out[(b, "attn", ours, "kernel")] = (h + f"self_attn.{theirs}.weight", True)
            if cfg.qkv_bias and ours != "out":
                out[(b, "attn", ours, "bias")] = (h + f"self_attn.{theirs}.bias", False)
        for ours in ("gate", "up", "down"):
            out[(b, ours, "kernel")] = (h + f"mlp.{ours}_proj.weight", True)
    out[("ln_f", "scale")] = ("norm.weight", False)
    return out


BODY = {"gpt2": "transformer.", "llama": "model.", "qwen2": "model.", "mistral": "model."}


class _Weights:
    """The tensors of a folder's safetensors file(s), opened lazily by name."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        index = folder / "model.safetensors.index.json"
        if index.exists():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise HFFormatError(f"{index}: missing key 'weight_map'")
            files = sorted(set(weight_map.values()))
        elif (folder / "model.safetensors").exists():
            files, weight_map = ["model.safetensors"], None
        else:
            raise HFFormatError(f"{folder}: no model.safetensors or model.safetensors.index.json")
        self.handles = {}
        for name in files:
            try:
                self.handles[name] = safe_open(str(folder / name), framework="flax")
            except Exception as err:
                raise HFFormatError(f"{folder / name}: not a readable safetensors file ({err})") from None
        self.where = {}
        for name, handle in self.handles.items():
            for key in handle.keys():
                self.where[key] = name
        if weight_map is not None:
            for key, name in weight_map.items():
                if self.where.get(key) != name:
                    raise HFFormatError(f"{index}: {key!r} is listed in {name} but is not there")
        self.folder = folder

    def keys(self) -> set[str]:
        return set(self.where)

    def get(self, key: str) -> jax.Array:
        return self.handles[self.where[key]].get_tensor(key)

    def file_of(self, key: str) -> Path:
        return self.folder / self.where[key]


def _find(weights: _Weights, kind: str, name: str) -> str | None:
    for key in (BODY[kind] + name, name):  # saved from the full model, or from the bare body
        if key in weights.where:
            return key
    return None


def load_params(folder: Path, cfg: TransformerConfig, kind: str, *, lm_head: bool, scalar_head: bool,
                dtype=jnp.float32) -> dict:
    """Our parameter tree for ``cfg`` from the folder's weights; errors name the file and key."""
    weights = _Weights(folder)
    model = TransformerLM(cfg, lm_head=lm_head, scalar_head=scalar_head)
    shapes = jax.eval_shape(lambda k: init_params(model, k), jax.random.PRNGKey(0))
    names = _name_map(cfg, kind)
    if lm_head and not cfg.tie_embeddings:
        names[("lm_head", "kernel")] = ("lm_head.weight", True)
    if scalar_head:
        names[("scalar_head", "kernel")] = ("score.weight", True)
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        ours = tuple(p.key for p in path)
        if ours == ("scalar_head", "bias"):  # HF's score head has no bias
            flat[ours] = jnp.zeros(leaf.shape, dtype)
            continue
        if ours not in names:
            raise HFFormatError(f"{folder}: no weight for our parameter {'/'.join(ours)}")
        name, transpose = names[ours]
        key = name if name in ("lm_head.weight", "score.weight") else _find(weights, kind, name)
        if key is None or key not in weights.where:
            raise HFFormatError(f"{folder}: missing weight {BODY[kind] + name if key is None else key!r}")
        x = weights.get(key)
        x = x.T if transpose else x
        if tuple(x.shape) != tuple(leaf.shape):
            raise HFFormatError(f"{weights.file_of(key)}: {key} has shape {tuple(x.shape)}; config.json implies "
                                f"{tuple(leaf.shape)}")
        flat[ours] = jnp.asarray(x, dtype)
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return tree


def load_tokenizer(folder: Path, pad_token_id: int | None = None) -> JsonTokenizer:
    """``tokenizer.json`` with the special tokens named in ``tokenizer_config.json`` /
    ``special_tokens_map.json``. No BOS token: none is prepended. No pad token: a vocabulary id
    that is neither EOS nor BOS pads (masks, not ids, decide what is padding)."""
    path = folder / "tokenizer.json"
    if not path.exists():
        raise HFFormatError(f"{path}: missing (the tokenizers-format tokenizer is needed)")
    specials: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / name).exists():
            for key, value in _read_json(folder / name).items():
                if key in ("bos_token", "eos_token", "pad_token") and key not in specials:
                    specials[key] = value.get("content") if isinstance(value, dict) else value
    if not specials.get("eos_token"):
        if not any((folder / name).exists() for name in ("special_tokens_map.json", "tokenizer_config.json")):
            raise HFFormatError(f"{folder / 'tokenizer_config.json'}: missing (it names the special tokens, "
                                f"eos_token at least; special_tokens_map.json may name them instead)")
        raise HFFormatError(f"{folder / 'tokenizer_config.json'}: missing key 'eos_token'")
    return JsonTokenizer(str(path), eos_token=specials["eos_token"], bos_token=specials.get("bos_token"),
                         pad_token=specials.get("pad_token"), pad_id=pad_token_id)


def load_pretrained(path: str | os.PathLike, dtype: str = "float32", *, lm_head: bool = True,
                    scalar_head: bool = False) -> tuple[TransformerLM, dict, JsonTokenizer]:
    """``(model, params, tokenizer)`` from a local Hugging Face folder. ``scalar_head``
    reads the ``score`` head of a ``...ForSequenceClassification`` checkpoint; ``dtype``
    (``"float32"`` or ``"bfloat16"``) is the parameters' dtype (bfloat16 halves the memory of
    frozen reference and reward models). ``~`` in ``path`` is the user's home, as in a shell.
    A PEFT LoRA adapter folder (``adapter_config.json``) loads as its base model (a local
    folder) with the adapters folded into the weights (:func:`load_peft_adapter`)."""
    folder = Path(path).expanduser()
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype: must be 'float32' or 'bfloat16', got {dtype!r}")
    if not folder.is_dir():
        raise HFFormatError(f"model: {folder} is not a folder")
    if (folder / "adapter_config.json").exists() and not (folder / "config.json").exists():
        return load_peft_adapter(folder, dtype, lm_head=lm_head, scalar_head=scalar_head)
    hf = _read_json(folder / "config.json")
    cfg = config_from_hf(hf, folder / "config.json")
    kind = hf["model_type"]
    if scalar_head and int(hf.get("num_labels", len(hf.get("id2label") or {}) or 2)) != 1:
        raise HFFormatError(f"{folder / 'config.json'}: a reward model needs num_labels 1")
    pad = hf.get("pad_token_id")
    tokenizer = load_tokenizer(folder, pad if isinstance(pad, int) else None)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise HFFormatError(f"{folder / 'tokenizer.json'}: {tokenizer.vocab_size} tokens for a vocab_size of "
                            f"{cfg.vocab_size} in config.json")
    model = TransformerLM(cfg, lm_head=lm_head, scalar_head=scalar_head)
    params = load_params(folder, cfg, kind, lm_head=lm_head, scalar_head=scalar_head,
                         dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
    return model, params, tokenizer


def _hf_config(cfg: TransformerConfig, kind: str, head: str, pad_id: int, eos_id: int, bos_id) -> dict:
    common = {"model_type": kind, "vocab_size": cfg.vocab_size, "eos_token_id": eos_id, "bos_token_id": bos_id,
              "pad_token_id": pad_id, "dtype": "float32"}
    suffix = "ForCausalLM" if head == "lm" else "ForSequenceClassification"
    prefix = {"gpt2": "GPT2", "llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}[kind]
    common["architectures"] = [prefix + ("LMHeadModel" if kind == "gpt2" and head == "lm" else suffix)]
    if head == "score":
        common.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    if kind == "gpt2":
        return {**common, "n_positions": cfg.max_len, "n_embd": cfg.d_model, "n_layer": cfg.num_layers,
                "n_head": cfg.num_heads, "n_inner": cfg.ff_width, "layer_norm_epsilon": cfg.layer_norm_eps,
                "activation_function": "gelu_new", "tie_word_embeddings": True,
                # Our dropout, not GPT-2's default 0.1, which would make a trainer's policy differ from its reference.
                "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout}
    return {**common, "hidden_size": cfg.d_model, "intermediate_size": cfg.ff_width,
            "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim, "max_position_embeddings": cfg.max_len,
            "rms_norm_eps": cfg.layer_norm_eps, "rope_theta": cfg.rope_theta, "hidden_act": "silu",
            "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": cfg.qkv_bias and kind == "llama",
            "attention_dropout": cfg.dropout,
            **({"use_sliding_window": False, "sliding_window": None} if kind != "llama" else {})}


def save_pretrained(path: str | os.PathLike, model: TransformerLM, params: dict, tokenizer: Tokenizer, *,
                    kind: str | None = None) -> Path:
    """Writes ``model`` as a Hugging Face folder that transformers loads: ``...ForCausalLM``
    if it has an LM head, else ``...ForSequenceClassification`` (one label, the scalar head
    as ``score``; its bias, which transformers' score head lacks, is left out: a constant
    shift of every score, recorded in ``config.json`` as ``score_bias``). ``pad_token_id``
    is the tokenizer's pad id, never EOS, so transformers pools the last real token."""
    from safetensors.numpy import save_file

    cfg = model.config
    kind = kind or ("gpt2" if cfg.arch == "gpt2" else "llama")
    if (kind == "gpt2") != (cfg.arch == "gpt2") or kind not in ARCHITECTURES:
        raise ValueError(f"kind: {kind!r} does not fit arch {cfg.arch!r}")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    names = _name_map(cfg, kind)
    tensors = {}
    host = jax.device_get(params)
    for path_, leaf in jax.tree_util.tree_flatten_with_path(host)[0]:
        ours = tuple(p.key for p in path_)
        if ours in names:
            name, transpose = names[ours]
            key = BODY[kind] + name
        elif ours == ("lm_head", "kernel"):
            key, transpose = "lm_head.weight", True
        elif ours == ("scalar_head", "kernel"):
            key, transpose = "score.weight", True
        elif ours == ("scalar_head", "bias"):
            continue
        else:
            raise ValueError(f"params: {'/'.join(ours)} has no Hugging Face name")
        x = np.asarray(leaf, np.float32)
        tensors[key] = np.ascontiguousarray(x.T if transpose else x)
    head = "lm" if model.lm_head else "score"
    hf = _hf_config(cfg, kind, head, tokenizer.pad_id, tokenizer.eos_id, tokenizer.bos_id)
    if head == "score":
        hf["score_bias"] = float(np.asarray(host["scalar_head"]["bias"]).reshape(-1)[0])
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json(folder / "config.json", hf)
    tokenizer.save_hf(folder)
    return folder


PEFT_PREFIX = "base_model.model."
"""PEFT's prefix of every tensor name in an adapter file (the wrapped model's own names follow)."""


def _adapted_modules(cfg: TransformerConfig, kind: str, layers: tuple[str, ...] | None = None) -> dict[tuple, str]:
    """Our kernel path -> the full name of its Hugging Face module, for the Dense layers
    ``layers`` (None: every one)."""
    return {path: BODY[kind] + name.removesuffix(".weight") for path, (name, _) in _name_map(cfg, kind).items()
            if path[-1] == "kernel" and (layers is None or path[-2] in layers)}


def save_peft_adapter(path: str | os.PathLike, model: TransformerLM, params: dict, *, base: str,
                      kind: str | None = None) -> Path:
    """Writes ``model``'s LoRA adapters as a PEFT adapter folder (``adapter_config.json``,
    ``adapter_model.safetensors``) that ``peft.PeftModel.from_pretrained`` puts on the Hugging
    Face model at ``base``: ``lora_A.weight = A^T [r, in]``, ``lora_B.weight = B^T [out, r]``,
    the same ``alpha / r`` scale; a reward model's score head as a module saved whole."""
    from safetensors.numpy import save_file

    cfg, adapters = model.config, model.lora
    if not adapters.active:
        raise ValueError("model: it has no LoRA adapters to export as a PEFT adapter (export it merged)")
    kind = kind or ("gpt2" if cfg.arch == "gpt2" else "llama")
    modules = _adapted_modules(cfg, kind, adapters.adapted_layers(cfg.arch))
    host = jax.device_get(params)
    tensors = {}
    for ours, module in modules.items():
        node = host
        for key in ours[:-1]:
            node = node[key]
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(np.asarray(node["lora_a"], np.float32).T)
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(np.asarray(node["lora_b"], np.float32).T)
    saved_whole = None
    if model.scalar_head:
        saved_whole = ["score"]
        tensors[f"{PEFT_PREFIX}score.weight"] = np.ascontiguousarray(
            np.asarray(host["scalar_head"]["kernel"], np.float32).T)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM" if model.lm_head else "SEQ_CLS",
              "base_model_name_or_path": str(base), "r": adapters.rank, "lora_alpha": adapters.alpha,
              "lora_dropout": adapters.dropout, "target_modules": sorted(modules.values()), "bias": "none",
              "fan_in_fan_out": kind == "gpt2", "modules_to_save": saved_whole, "inference_mode": True,
              "use_rslora": False, "use_dora": False, "init_lora_weights": True, "layers_to_transform": None,
              "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {}}
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "adapter_model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json(folder / "adapter_config.json", config)
    return folder


def load_peft_adapter(folder: Path, dtype: str = "float32", *, lm_head: bool = True,
                      scalar_head: bool = False) -> tuple[TransformerLM, dict, JsonTokenizer]:
    """A PEFT LoRA adapter folder as ``(model, params, tokenizer)``: its base (the local folder
    ``base_model_name_or_path``) with ``W + (lora_alpha / r) A B`` for each adapted layer."""
    where = folder / "adapter_config.json"
    conf = _read_json(where)
    for key, want in (("peft_type", "LORA"), ("use_rslora", False), ("use_dora", False)):
        if conf.get(key, want) != want:
            raise HFFormatError(f"{where}: {key} {conf.get(key)!r} is not supported (LoRA: {key} {want!r})")
    for key in ("r", "lora_alpha", "base_model_name_or_path"):
        if key not in conf:
            raise HFFormatError(f"{where}: missing key {key!r}")
    if conf.get("rank_pattern") or conf.get("alpha_pattern"):
        raise HFFormatError(f"{where}: rank_pattern / alpha_pattern (per-layer ranks) are not supported")
    base = Path(str(conf["base_model_name_or_path"])).expanduser()
    if not base.is_absolute():
        base = (folder / base) if (folder / base).is_dir() else base
    if not (base / "config.json").exists():
        raise HFFormatError(f"{where}: base_model_name_or_path {str(base)!r} is not a local Hugging Face folder "
                            f"(nothing is downloaded)")
    model, params, tokenizer = load_pretrained(base, dtype, lm_head=lm_head, scalar_head=scalar_head)
    kind = "gpt2" if model.config.arch == "gpt2" else "llama"  # the Llama family shares its names
    weights_file = folder / "adapter_model.safetensors"
    if not weights_file.exists():
        raise HFFormatError(f"{folder}: no adapter_model.safetensors")
    from safetensors import safe_open

    with safe_open(str(weights_file), framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    scale = float(conf["lora_alpha"]) / float(conf["r"])
    used = set()
    for ours, module in _adapted_modules(model.config, kind).items():
        a_key, b_key = f"{PEFT_PREFIX}{module}.lora_A.weight", f"{PEFT_PREFIX}{module}.lora_B.weight"
        if a_key not in tensors:
            continue
        if b_key not in tensors:
            raise HFFormatError(f"{weights_file}: {a_key} has no {b_key}")
        delta = scale * (tensors[a_key].astype(np.float32).T @ tensors[b_key].astype(np.float32).T)
        node = params
        for key in ours[:-1]:
            node = node[key]
        if delta.shape != node["kernel"].shape:
            raise HFFormatError(f"{weights_file}: {a_key} and {b_key} make a {delta.shape} change of a "
                                f"{tuple(node['kernel'].shape)} weight")
        node["kernel"] = (node["kernel"].astype(jnp.float32) + delta).astype(node["kernel"].dtype)
        used |= {a_key, b_key}
    if scalar_head and f"{PEFT_PREFIX}score.weight" in tensors:
        params["scalar_head"]["kernel"] = jnp.asarray(tensors[f"{PEFT_PREFIX}score.weight"].T, params[
            "scalar_head"]["kernel"].dtype)
        used.add(f"{PEFT_PREFIX}score.weight")
    unused = sorted(set(tensors) - used)
    if unused:
        raise HFFormatError(f"{weights_file}: {len(unused)} tensors fit no layer of the base model, e.g. {unused[0]}")
    return model, params, tokenizer
