"""LoRA: low-rank adapters on the transformer's linear layers (Hu et al. 2021, arXiv:2106.09685).

An adapted layer computes ``y = x W + b + (alpha / r) * dropout(x) A B`` with the base ``W``
(and ``b``) frozen and only ``A [in, r]`` and ``B [r, out]`` trained (docs/theory.md §15).
``B`` starts at zero, so an adapted model starts exactly equal to its base.

The adapters live in the parameter tree beside the kernel they adapt (``.../q/lora_a``,
``.../q/lora_b``), so dropping them gives the base model's tree, leaf for leaf, sharing its
arrays: the reference policy of the KL and of DPO is :func:`without_adapters` of the policy's
parameters, no second copy of the weights. :func:`partition` splits a tree into what trains
(the adapters and any scalar head: a reward model's or a value head, trained whole) and what
stays frozen; :func:`ppo_jax.optim.gradient_step` differentiates the first part alone, so the
optimiser holds nothing for the frozen weights and their weight-gradient matmuls are never
formed. :func:`merged` folds the adapters into the kernels (``W + (alpha / r) A B``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from ppo_jax.optim import WHOLE
from ppo_jax.run.validation import DictConfig, renamed_fields, require_finite
from rlhf_jax.matmul import matmul, matmul_bf16

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
"""Layers LoRA can adapt, by their role: attention's query, key, value and output projections
and the MLP's gate, up and down projections (the LM head and the embeddings never)."""

LAYERS = {"gpt2": {"qkv": ("q", "k", "v"), "out": ("o",), "fc": ("up",), "proj": ("down",)},
          "llama": {"q": ("q",), "k": ("k",), "v": ("v",), "out": ("o",), "gate": ("gate",), "up": ("up",),
                    "down": ("down",)}}
"""Each architecture's Dense layers (by module name) and the roles they play; GPT-2 packs q, k
and v into one layer, so it takes all three or none."""

ADAPTER_LEAVES = ("lora_a", "lora_b")
TRAINED_WHOLE = ("scalar_head",)
"""Top-level parameter groups trained in full beside the adapters (a reward model's or value head)."""


@dataclass(frozen=True)
class LoRAConfig(DictConfig):
    """Low-rank adapters (rank 0: off, every weight trains)."""

    rank: int = 0
    """Rank r of each adapter (0: full fine-tuning)."""
    alpha: float = 16.0
    """Scale numerator: the adapter's output is multiplied by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the adapters' input where training uses dropout: SFT (the reward model, DPO
    and RL train without)."""
    targets: str = "all"
    """Comma-separated layers among q, k, v, o, gate, up, down, or 'all' (every one the model has)."""
    base_dtype: str = "float32"
    """The frozen base weights: 'float32' or 'bfloat16' (half their memory; matmuls accumulate in float32)."""

    def validate(self) -> None:
        require_finite(self)
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 0:
            raise ValueError(f"rank: must be an integer >= 0 (0 = off), got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"alpha: must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.base_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"base_dtype: must be 'float32' or 'bfloat16', got {self.base_dtype!r}")
        names = self.target_names
        unknown = [n for n in names if n not in TARGETS]
        if not names or unknown:
            raise ValueError(f"targets: {', '.join(unknown) or 'nothing'} is not a layer LoRA adapts; "
                             f"name some of {', '.join(TARGETS)} (or 'all')")

    @property
    def active(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def target_names(self) -> tuple[str, ...]:
        if self.targets.strip() == "all":
            return TARGETS
        return tuple(n.strip() for n in self.targets.split(",") if n.strip())

    def adapted_layers(self, arch: str) -> tuple[str, ...]:
        """The Dense layers (module names) of ``arch`` that carry adapters; an error when a
        target names a layer the architecture lacks or splits GPT-2's packed q, k, v."""
        if not self.active:
            return ()
        wanted = set(self.target_names)
        roles = LAYERS[arch]
        if self.targets.strip() != "all":
            missing = wanted - {r for rs in roles.values() for r in rs}
            if missing:
                raise ValueError(f"targets: '{arch}' has no {', '.join(sorted(missing))} layer")
        if arch == "gpt2" and 0 < len(wanted & {"q", "k", "v"}) < 3:
            raise ValueError("targets: 'gpt2' packs q, k and v into one layer: name all three or none")
        return tuple(name for name, rs in roles.items() if set(rs) <= wanted)


OFF = LoRAConfig()


def check(lora: LoRAConfig, arch: str, prefix: str = "lora") -> None:
    """``lora``'s own checks and its targets against ``arch``, errors naming ``prefix.field``."""
    try:
        lora.validate()
        lora.adapted_layers(arch)
    except ValueError as err:
        renamed = renamed_fields(str(err), lambda name: f"{prefix}.{name}")
        if renamed is None:
            raise
        raise ValueError(renamed) from None


class LoRADense(nn.Module):
    """``nn.Dense`` (same parameter names, same matmul) plus ``(alpha / r) dropout(x) A B``."""

    features: int
    rank: int
    scale: float
    dropout: float
    deterministic: bool
    kernel_init: Callable
    use_bias: bool = True
    bf16: bool = False

    @nn.compact
    def __call__(self, x):
        fan_in = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (fan_in, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else None
        a = self.param("lora_a", adapter_a_init, (fan_in, self.rank))
        b = self.param("lora_b", nn.initializers.zeros, (self.rank, self.features))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=None)
        mm = matmul_bf16 if self.bf16 else matmul
        y = mm(x, kernel)
        if bias is not None:
            y = y + bias
        h = nn.Dropout(self.dropout)(x, deterministic=self.deterministic) if self.dropout else x
        return y + self.scale * mm(mm(h, a.astype(x.dtype)), b.astype(x.dtype))


def adapter_a_init(key, shape, dtype=jnp.float32):
    """PEFT's ``A``: Kaiming-uniform with a = sqrt(5) over the fan-in, U(-1/sqrt(in), 1/sqrt(in))."""
    bound = 1.0 / math.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _is_adapter(path: tuple) -> bool:
    return path[-1] in ADAPTER_LEAVES


def _trains(path: tuple) -> bool:
    return _is_adapter(path) or path[0] in TRAINED_WHOLE


class Partition(NamedTuple):
    """``split(params) -> (trainable, frozen)`` and its inverse ``join(trainable, frozen)``."""

    split: Callable
    join: Callable


def _split(params):
    flat = traverse_util.flatten_dict(params)
    trainable = {p: v for p, v in flat.items() if _trains(p)}
    frozen = {p: v for p, v in flat.items() if not _trains(p)}
    return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def _join(trainable, frozen):
    if not frozen:
        return trainable
    return traverse_util.unflatten_dict({**traverse_util.flatten_dict(frozen),
                                         **traverse_util.flatten_dict(trainable)})


def partition(lora: LoRAConfig | None) -> Partition:
    """How a model with ``lora`` splits its parameters: with adapters, into the adapters (and
    scalar heads) and the frozen rest; without, everything trains (``split`` is the identity)."""
    if lora is None or not lora.active:
        return Partition(*WHOLE)
    return Partition(_split, _join)


def without_adapters(params):
    """The base model's tree: ``params`` less its adapters (the same arrays, nothing copied)."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({p: v for p, v in flat.items() if not _is_adapter(p)})


def has_adapters(params) -> bool:
    return any(_is_adapter(p) for p in traverse_util.flatten_dict(params))


def with_adapters(params, lora: LoRAConfig, arch: str, key: jax.Array):
    """``params`` of a base model with fresh adapters (``A`` as PEFT draws it, ``B = 0``) on
    ``lora``'s layers and the frozen weights in ``lora.base_dtype``; unchanged without LoRA."""
    if not lora.active:
        return params
    layers = set(lora.adapted_layers(arch))
    flat = traverse_util.flatten_dict(params)
    out = {}
    kernels = sorted(p for p in flat if p[-1] == "kernel" and len(p) >= 2 and p[-2] in layers)
    for i, path in enumerate(kernels):
        fan_in, fan_out = flat[path].shape
        out[path[:-1] + ("lora_a",)] = adapter_a_init(jax.random.fold_in(key, i), (fan_in, lora.rank))
        out[path[:-1] + ("lora_b",)] = jnp.zeros((lora.rank, fan_out), jnp.float32)
    if not kernels:
        raise ValueError(f"targets: no layer of these parameters is named {', '.join(sorted(layers))}")
    dtype = jnp.dtype(lora.base_dtype)
    for path, value in flat.items():
        if _is_adapter(path):
            continue  # a tree that already had adapters gets fresh ones
        value = jnp.asarray(value)
        out[path] = value if _trains(path) or value.dtype == dtype else value.astype(dtype)
    return traverse_util.unflatten_dict(out)


def merged(params, lora: LoRAConfig):
    """The base model's tree with each adapter folded into its kernel, ``W + (alpha / r) A B``,
    in float32 (a bfloat16 base's merged kernels too: the adapter's small change would round away)."""
    flat = traverse_util.flatten_dict(params)
    out = {}
    for path, value in flat.items():
        if _is_adapter(path):
            continue
        a = flat.get(path[:-1] + ("lora_a",)) if path[-1] == "kernel" else None
        if a is not None:
            b = flat[path[:-1] + ("lora_b",)]
            delta = lora.scale * jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32),
                                            precision=jax.lax.Precision.HIGHEST)
            value = value.astype(jnp.float32) + delta
        out[path] = value
    return traverse_util.unflatten_dict(out)


def count(params) -> tuple[int, int]:
    """``(trainable, total)`` numbers of parameters of an adapted tree (all trainable without adapters)."""
    flat = traverse_util.flatten_dict(params)
    total = sum(int(v.size) for v in flat.values())
    if not has_adapters(params):
        return total, total
    return sum(int(v.size) for p, v in flat.items() if _trains(p)), total
