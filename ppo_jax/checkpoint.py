"""Checkpoints: orbax for arrays (params, optimiser state, normaliser statistics), JSON for the config.

A checkpoint directory holds ``state/`` (orbax; written to a temporary name and renamed
on commit, so a killed save leaves no half checkpoint) and ``config.json`` plus
``meta.json`` (written to a temporary file, then ``os.replace``d). Arrays of a
multi-seed run keep their leading seed axis.

:class:`RunCheckpoints` are the periodic ones of a run in progress: the whole train
state (random key, environments and normalisers included) and the metrics so far, so
a killed run resumes exactly where its last checkpoint left it.

Checksums, format numbers and the periodic :class:`RunCheckpoints` come from the run
toolkit (:mod:`ppo_jax.run.checkpoints`); this module holds what is particular to a PPO train state.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from ppo_jax.config import PPOConfig
from ppo_jax.distributed import barrier
from ppo_jax.run.checkpoints import (
    CheckpointError,
    RunCheckpoints,
    check_format,
    orbax_restore,
    tree_checksums,
    verify_checksums,
    write_checkpoint,
)
from ppo_jax.run.outputs import read_json, write_json

PAYLOAD = "ppo_jax train state"
FORMAT = 2
"""Layout of the saved state. 2: the optimiser state is optax's (``partition`` of flattened,
hyperparameter-injected Adam per group); 1 held one hand-flattened Adam state per group."""


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
    payload = payload_from_state(state)
    write_checkpoint(directory / "state", payload)
    checksums = tree_checksums(payload)
    if jax.process_index() == 0:
        write_json(directory / "config.json", config.to_dict())
        write_json(directory / "meta.json", {"num_seeds": num_seeds, "format": FORMAT, "checksums": checksums})
    return directory


def _abstract_payload(config: PPOConfig, num_seeds: int | None) -> dict:
    from ppo_jax.train import make_train_fns

    init = make_train_fns(config).init
    if num_seeds is None:
        return jax.eval_shape(lambda k: payload_from_state(init(k)), jax.random.PRNGKey(0))
    keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
    return jax.eval_shape(lambda k: payload_from_state(jax.vmap(init)(k)), keys)


def load_config(directory: str | os.PathLike, *, run: bool = False) -> PPOConfig:
    """The config in ``directory/config.json`` (``run``: a run folder's, with its ``run`` entry)."""
    path = Path(directory) / "config.json"
    if not path.exists():
        raise CheckpointError(f"checkpoint: no config.json in {directory} (is it a checkpoint directory?)")
    saved = read_json(path, error=CheckpointError)
    if run:
        saved.pop("run", None)
    try:
        return PPOConfig.from_dict(saved)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: {err}") from None


def _single_device(abstract):
    """Onto this process's first device, whatever devices or processes saved it."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract)


def restore(directory: str | os.PathLike) -> tuple[PPOConfig, dict, int | None]:
    """Returns ``(config, payload, num_seeds)``; the payload has the structure :func:`save` wrote.

    ``directory`` is a checkpoint (``RUN/checkpoint``), a run folder (its final checkpoint,
    or its newest intact periodic one if the run did not finish), or a periodic
    checkpoint (``RUN/checkpoints/N``). Raises :class:`CheckpointError` naming the folder
    when what is there cannot be read or does not match its checksums.
    """
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint: {directory} is not a folder")
    if (directory / "checkpoint" / "state").exists() or (directory / "checkpoints").is_dir():
        if (directory / "checkpoint" / "meta.json").exists():
            return restore(directory / "checkpoint")
        return _restore_periodic(directory, None)
    if directory.name.isdigit() and (directory.parent.parent / "config.json").exists():
        return _restore_periodic(directory.parent.parent, int(directory.name))
    config = load_config(directory)
    meta_path = directory / "meta.json"
    for needed in (directory / "state", meta_path):
        if not needed.exists():
            raise CheckpointError(f"checkpoint: {directory} is incomplete (no {needed.name}; a save cut short?)")
    meta = read_json(meta_path, error=CheckpointError)
    check_format(meta, directory, FORMAT, PAYLOAD)
    num_seeds = meta.get("num_seeds")
    target = _single_device(_abstract_payload(config, num_seeds))
    payload = orbax_restore(lambda: ocp.StandardCheckpointer().restore(directory / "state", target), directory)
    verify_checksums(payload, meta, directory)
    return config, payload, num_seeds


def _restore_periodic(run_dir: Path, step: int | None) -> tuple[PPOConfig, dict, int | None]:
    """The payload of periodic checkpoint ``step`` (None: the newest intact one) of ``run_dir``."""
    from functools import partial

    from ppo_jax.train import make_train_fns

    config = load_config(run_dir, run=True)
    num_seeds = read_json(run_dir / "config.json", error=CheckpointError).get("run", {}).get("num_seeds", 1)
    fns = make_train_fns(config)
    state = jax.eval_shape(jax.vmap(fns.init), jax.random.split(jax.random.PRNGKey(0), num_seeds))
    metrics = jax.eval_shape(jax.vmap(partial(fns.run, num=1)), state).metrics
    like = {"state": _single_device(state),  # only shapes and dtypes matter for the metrics
            "metrics": {k: np.zeros((num_seeds, config.num_updates), v.dtype) for k, v in metrics.items()}}
    checkpoints = run_checkpoints(run_dir, create=False)
    if step is not None:
        tree, _ = checkpoints.restore(step, like)
    else:
        found = checkpoints.restore_latest(like, warn=lambda m: print(m, file=sys.stderr), set_aside=False)
        if found is None:
            raise CheckpointError(f"checkpoint: {run_dir} has no intact checkpoint "
                                  f"(no checkpoint/, nothing intact in checkpoints/)")
        tree = found[1]
    return config, payload_from_state(tree["state"]), num_seeds




def run_checkpoints(run_dir: Path, create: bool = True) -> RunCheckpoints:
    """The periodic checkpoints of a ``ppo-jax train`` run folder."""
    return RunCheckpoints(Path(run_dir) / "checkpoints", format=FORMAT, payload=PAYLOAD, create=create)
