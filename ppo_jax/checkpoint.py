"""Checkpoints: orbax for arrays (params, optimiser state, normaliser statistics), JSON for the config.

A checkpoint directory holds ``state/`` (orbax; written to a temporary name and renamed
on commit, so a killed save leaves no half checkpoint) and ``config.json`` plus
``meta.json`` (written to a temporary file, then ``os.replace``d). Arrays of a
multi-seed run keep their leading seed axis.

:class:`RunCheckpoints` are the periodic ones of a run in progress: the whole train
state (random key, environments and normalisers included) and the metrics so far, so
a killed run resumes exactly where its last checkpoint left it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from ppo_jax.config import PPOConfig
from ppo_jax.distributed import barrier
from ppo_jax.outputs import write_json


def payload_from_state(state) -> dict:
    """The parts of a :class:`ppo_jax.train.TrainState` worth keeping."""
    return {"params": state.params, "opt_state": state.opt_state, "obs_stats": state.env_state.obs_stats,
            "return_stats": state.env_state.return_stats, "update": state.update}


def save(directory: str | os.PathLike, config: PPOConfig, state, num_seeds: int | None = None) -> Path:
    """Saves ``state`` (a TrainState, seed-batched when ``num_seeds``) and ``config`` to ``directory``."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "state").exists():
        raise FileExistsError(f"checkpoint: {directory / 'state'} already exists; choose a new directory")
    barrier("ppo_jax.checkpoint.save")  # every process has looked before any writes
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / "state", payload_from_state(state))
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        write_json(directory / "config.json", config.to_dict())
        write_json(directory / "meta.json", {"num_seeds": num_seeds, "format": 1})
    return directory


def _abstract_payload(config: PPOConfig, num_seeds: int | None) -> dict:
    from ppo_jax.train import make_train_fns

    init = make_train_fns(config).init
    if num_seeds is None:
        return jax.eval_shape(lambda k: payload_from_state(init(k)), jax.random.PRNGKey(0))
    keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
    return jax.eval_shape(lambda k: payload_from_state(jax.vmap(init)(k)), keys)


def load_config(directory: str | os.PathLike) -> PPOConfig:
    path = Path(directory) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"checkpoint: no config.json in {directory} (is it a checkpoint directory?)")
    try:
        return PPOConfig.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from err


def restore(directory: str | os.PathLike) -> tuple[PPOConfig, dict, int | None]:
    """Returns ``(config, payload, num_seeds)``; the payload has the structure :func:`save` wrote."""
    directory = Path(directory).absolute()
    config = load_config(directory)
    meta = json.loads((directory / "meta.json").read_text())
    num_seeds = meta.get("num_seeds")
    # Onto this process's first device, whatever devices or processes saved it.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          _abstract_payload(config, num_seeds))
    payload = ocp.StandardCheckpointer().restore(directory / "state", target)
    return config, payload, num_seeds


class RunCheckpoints:
    """Periodic checkpoints of a run in progress under ``directory/<step>/`` (orbax: each is
    written under a temporary name and renamed when complete; the newest two are kept).

    A checkpoint holds a pytree of arrays (for ``ppo-jax train``: ``{"state": TrainState,
    "metrics": {name: [num_seeds, num_updates]}}``, metrics after the step NaN) and an
    optional JSON ``meta`` dict, committed together. Every process of a multi-process run
    calls :meth:`save` and :meth:`restore` together.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        # Asynchronous: the arrays are copied to host memory, then written by a background
        # thread while training goes on; a checkpoint counts once renamed into place.
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=True,
                                               create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest(self) -> int | None:
        """The step of the newest complete checkpoint, or None (waits for a save in flight)."""
        self.manager.wait_until_finished()
        return self.manager.latest_step()

    def wait(self) -> None:
        """Blocks until the last :meth:`save` is on disk."""
        self.manager.wait_until_finished()

    def path(self, step: int) -> Path:
        return self.directory / str(step)

    def save(self, step: int, tree, meta: dict | None = None) -> Path:
        """Starts writing checkpoint ``step`` (host numpy leaves are copied first, so the
        caller may change them); it is complete once :meth:`wait` or :meth:`latest` returns."""
        tree = jax.tree.map(lambda x: x.copy() if isinstance(x, np.ndarray) else x, tree)
        args = {"tree": ocp.args.StandardSave(tree), "meta": ocp.args.JsonSave(meta or {})}
        self.manager.save(step, args=ocp.args.Composite(**args))
        return self.path(step)

    def restore(self, step: int, like) -> tuple[object, dict]:
        """``(tree, meta)`` of checkpoint ``step``; ``like`` (live arrays of the same run)
        gives the structure, shapes and device placement to restore into."""
        self.manager.wait_until_finished()
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) if isinstance(x, jax.Array) else x,
            like)
        out = self.manager.restore(step, args=ocp.args.Composite(tree=ocp.args.StandardRestore(abstract),
                                                                  meta=ocp.args.JsonRestore()))
        return out["tree"], out["meta"]
