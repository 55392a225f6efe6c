"""Checkpoints: orbax for arrays (params, optimiser state, normaliser statistics), JSON for the config.

A checkpoint directory holds ``state/`` (orbax; written to a temporary name and renamed
on commit, so a killed save leaves no half checkpoint) and ``config.json`` plus
``meta.json`` (written to a temporary file, then ``os.replace``d). Arrays of a
multi-seed run keep their leading seed axis.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from ppo_jax import optim
from ppo_jax.config import PPOConfig
from ppo_jax.envs import RunningStats, env_spec
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
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / "state", payload_from_state(state))
    checkpointer.wait_until_finished()
    write_json(directory / "config.json", config.to_dict())
    write_json(directory / "meta.json", {"num_seeds": num_seeds, "format": 1})
    return directory


def _abstract_payload(config: PPOConfig, num_seeds: int | None) -> dict:
    from ppo_jax.train import init_params, make_network

    spec = env_spec(config.env)
    network = make_network(config, spec)

    def init(key):
        params = init_params(network, spec, key)
        tx = optim.make_tx(config.max_grad_norm)
        return {"params": params, "opt_state": optim.init_opt_state(tx, params, config.shared_torso),
                "obs_stats": RunningStats.create((spec.obs_dim,)), "return_stats": RunningStats.create(()),
                "update": jnp.asarray(0, jnp.int32)}

    if num_seeds is None:
        return jax.eval_shape(init, jax.random.PRNGKey(0))
    return jax.eval_shape(jax.vmap(init), jax.random.split(jax.random.PRNGKey(0), num_seeds))


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
    target = _abstract_payload(config, num_seeds)
    payload = ocp.StandardCheckpointer().restore(directory / "state", target)
    return config, payload, num_seeds
