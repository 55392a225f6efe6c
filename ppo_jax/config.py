"""Run configuration: one frozen dataclass, split into static (shape) and traced fields.

Static fields fix array shapes and program structure, so changing one recompiles.
Traced fields (:data:`TRACED_FIELDS`) are numbers the compiled program takes as inputs
(:class:`HParams`), so ``jax.vmap(train)(keys, hparams)`` sweeps them in one compile.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import struct

from ppo_jax.envs import validate_env_id
from ppo_jax.run.validation import DictConfig, require_finite, require_positive


@dataclass(frozen=True)
class PPOConfig(DictConfig):
    """PPO on a vectorised gymnax environment."""

    env: str = "CartPole-v1"
    """gymnax environment id, or your environment: module:function or path/to/file.py:function
    returning an object with gymnax's functional API (ppo_jax.envs.ENV_API)."""
    total_timesteps: int = 500_000
    """Environment steps per seed (all environments together)."""
    num_envs: int = 4
    """Parallel environments (static)."""
    num_steps: int = 128
    """Steps per environment per rollout (static); a batch is num_envs * num_steps."""
    update_epochs: int = 4
    """Passes over each batch (static)."""
    num_minibatches: int = 4
    """Minibatches per epoch (static); must divide num_envs * num_steps."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the actor and critic MLPs (static)."""
    activation: str = "tanh"
    """Hidden activation: tanh, relu or gelu (static)."""
    shared_torso: bool = False
    """One torso and one optimiser instead of two networks with two optimisers."""
    network: str = "mlp"
    """'mlp' (hidden layers on the flat observation), 'cnn' (a MinAtar-style 3x3 convolution on
    the observation's (H, W, C) frame first, then the hidden layers), 'gru' (an embedding, a GRU,
    then the hidden layers; ppo and a2c) or your Flax module: module:function or
    path/to/file.py:function returning it (ppo_jax.user_network) (static)."""
    normalize_observations: bool = False
    """Running observation normalisation, clipped to +-10 (static)."""
    normalize_rewards: bool = False
    """Scale rewards by the std of the discounted return (static)."""
    anneal_lr: bool = True
    """Anneal learning rates linearly to 0 over the updates (static)."""
    normalize_advantages: bool = True
    """Normalise advantages per minibatch, docs/theory.md §9 (static)."""
    per_minibatch_adv_norm: bool = True
    """Normalise advantages per minibatch (True) or once per batch (False) (static)."""
    algo: str = "ppo"
    """Update rule: ppo, a2c, trpo, reinforce or reinforce-baseline (static); all share the rollout."""
    cg_iters: int = 10
    """TRPO: conjugate-gradient iterations (static)."""
    backtrack_steps: int = 10
    """TRPO: line-search step halvings tried before the step is rejected (static)."""
    # Traced fields from here on.
    lr: float = 2.5e-4
    """Actor learning rate; the only one with a shared torso (traced)."""
    critic_lr: float = 2.5e-4
    """Critic learning rate with separate networks (traced)."""
    gamma: float = 0.99
    """Discount factor (traced)."""
    gae_lambda: float = 0.95
    """GAE lambda (traced)."""
    clip_eps: float = 0.2
    """PPO ratio clip epsilon, docs/theory.md §9 (traced)."""
    value_clip_eps: float = 0.0
    """Value clipping epsilon, docs/theory.md §5; 0 turns value clipping off (traced)."""
    vf_coef: float = 0.5
    """Value loss coefficient c1, docs/theory.md §9 (traced)."""
    ent_coef: float = 0.01
    """Entropy bonus coefficient c2, docs/theory.md §9 (traced)."""
    max_grad_norm: float = 0.5
    """Global-norm gradient clip, per optimiser (traced)."""
    target_kl: float = 0.0
    """Stop the remaining minibatches and epochs of an update once approx KL exceeds this; 0 disables (traced)."""
    trpo_delta: float = 0.01
    """TRPO: the trust region's radius, mean KL(pi_old || pi) <= delta, docs/theory.md §7 (traced)."""
    cg_damping: float = 0.1
    """TRPO: damping added to the Fisher-vector product (traced)."""

    # ----- derived sizes -----
    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def whole_episodes(self) -> bool:
        """REINFORCE's update rules learn from whole episodes (docs/theory.md §1): each rollout starts fresh
        episodes and must hold the longest one."""
        return self.algo in ("reinforce", "reinforce-baseline")

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.batch_size

    def hparams(self) -> "HParams":
        """The traced fields as a pytree of float32 scalars."""
        return HParams(**{name: jnp.asarray(getattr(self, name), jnp.float32) for name in TRACED_FIELDS})

    def replace(self, **changes) -> "PPOConfig":
        return dataclasses.replace(self, **changes)

    def validate(self) -> "PPOConfig":
        """Checks every field before anything compiles; raises ValueError naming the field."""
        require_finite(self)
        validate_env_id(self.env)
        if self.algo not in ALGORITHMS:
            raise ValueError(f"algo: must be one of {', '.join(ALGORITHMS)}, got {self.algo!r}")
        if self.shared_torso and self.algo in ("trpo", "reinforce", "reinforce-baseline"):
            raise ValueError(f"shared_torso: {self.algo} steps the policy and the critic separately; "
                             "it needs separate networks (shared_torso=False)")
        require_positive(self, "total_timesteps", "num_envs", "num_steps", "update_epochs", "num_minibatches",
                         "cg_iters", "backtrack_steps", integer=True)
        from ppo_jax.networks import NETWORKS
        from ppo_jax.user_network import check_user_network, is_user_network

        if is_user_network(self.network):
            if not self.shared_torso:
                raise ValueError(f"shared_torso: a network of your own ({self.network}) is one parameter tree with "
                                 "one optimiser; set shared_torso=True (--shared-torso)")
            from ppo_jax.envs import env_spec

            check_user_network(self.network, env_spec(self.env))
        elif self.network not in NETWORKS:
            raise ValueError(f"network: must be one of {', '.join(NETWORKS)} or module:function (your Flax module), "
                             f"got {self.network!r}")
        if self.network == "gru" and self.algo not in ("ppo", "a2c"):
            raise ValueError(f"network: 'gru' runs with ppo and a2c, which recompute each sequence from its stored "
                             f"hidden state; {self.algo} evaluates the policy one observation at a time")
        if self.network == "gru" and self.num_envs % self.num_minibatches:
            raise ValueError(f"num_minibatches: with network 'gru' a minibatch is whole environment sequences, so "
                             f"num_minibatches must divide num_envs ({self.num_envs}), got {self.num_minibatches}")
        if self.network == "cnn":
            from ppo_jax.envs import env_spec

            shape = env_spec(self.env).obs_shape
            if len(shape) != 3 or min(shape[:2]) < 3:
                raise ValueError(f"network: 'cnn' needs frames (H, W, C) of at least 3 x 3; {self.env}'s "
                                 f"observations are {shape}")
        if not self.hidden_sizes or any(int(h) <= 0 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes: must be positive layer widths, got {self.hidden_sizes!r}")
        from ppo_jax.networks import ACTIVATIONS

        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.batch_size % self.num_minibatches:
            raise ValueError(
                f"num_minibatches: {self.num_minibatches} does not divide the batch "
                f"num_envs * num_steps = {self.num_envs} * {self.num_steps} = {self.batch_size}")
        if self.whole_episodes:
            from ppo_jax.envs import env_spec

            limit = env_spec(self.env).max_steps
            if not limit:
                raise ValueError(f"env: {self.algo} learns from whole episodes and needs the environment's "
                                 f"time limit (params.max_steps_in_episode); {self.env!r} has none")
            if self.num_steps < limit:
                raise ValueError(
                    f"num_steps: {self.algo} learns from whole episodes, so a rollout must hold the longest one: "
                    f"num_steps >= {limit} ({self.env}'s time limit), got {self.num_steps}")
        if self.total_timesteps < self.batch_size:
            raise ValueError(
                f"total_timesteps: {self.total_timesteps} is below one update "
                f"(num_envs * num_steps = {self.batch_size})")
        for name in ("lr", "critic_lr", "clip_eps", "max_grad_norm", "trpo_delta"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be a positive finite number, got {value!r}")
        for name in ("gamma", "gae_lambda"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: must lie in [0, 1], got {value!r}")
        for name in ("value_clip_eps", "vf_coef", "ent_coef", "target_kl", "cg_damping"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
        return self

    def warn_remainder(self) -> None:
        """``num_updates = total // batch`` drops a remainder of steps silently; say what it drops."""
        remainder = self.total_timesteps % self.batch_size
        if remainder:
            warnings.warn(
                f"total_timesteps: {self.total_timesteps} is not a multiple of the batch "
                f"{self.batch_size}; {self.num_updates} updates run {self.num_updates * self.batch_size} steps",
                stacklevel=3)


ALGORITHMS = ("ppo", "a2c", "trpo", "reinforce", "reinforce-baseline")
TRACED_FIELDS = ("lr", "critic_lr", "gamma", "gae_lambda", "clip_eps", "value_clip_eps",
                 "vf_coef", "ent_coef", "max_grad_norm", "target_kl", "trpo_delta", "cg_damping")


@struct.dataclass
class HParams:
    """Traced hyperparameters (see :data:`TRACED_FIELDS`); stack them to sweep under ``vmap``."""

    lr: jax.Array
    critic_lr: jax.Array
    gamma: jax.Array
    gae_lambda: jax.Array
    clip_eps: jax.Array
    value_clip_eps: jax.Array
    vf_coef: jax.Array
    ent_coef: jax.Array
    max_grad_norm: jax.Array
    target_kl: jax.Array
    trpo_delta: jax.Array
    cg_damping: jax.Array


def stack_hparams(configs: list[PPOConfig]) -> HParams:
    """Stacks the traced fields of several configs (which must share their static fields) for ``vmap``."""
    static = [{k: v for k, v in c.to_dict().items() if k not in TRACED_FIELDS} for c in configs]
    for i, s in enumerate(static[1:], 1):
        diff = sorted(k for k in s if s[k] != static[0][k])
        if diff:
            raise ValueError(f"configs[{i}]: static field(s) {', '.join(diff)} differ from configs[0]; "
                             "only traced fields can be swept in one program")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *[c.hparams() for c in configs])


_PRESET_OVERRIDES: dict[str, dict] = {
    # PureJaxRL / CleanRL-style settings for classic control.
    # In 5e5 steps (deterministic return >= 475): lr 2.5e-4 / clip 0.2 solved 4 of 8 seeds,
    # lr 1e-3 / clip 0.2 solved 27 of 28, lr 1e-3 / clip 0.1 solved 28 of 28.
    "CartPole-v1": dict(total_timesteps=500_000, num_envs=4, num_steps=128, lr=1e-3, critic_lr=1e-3,
                        clip_eps=0.1),
    "Acrobot-v1": dict(total_timesteps=500_000, num_envs=4, num_steps=128, lr=2.5e-4, critic_lr=2.5e-4,
                       normalize_observations=True),
    "Pendulum-v1": dict(total_timesteps=1_000_000, num_envs=16, num_steps=256, update_epochs=10,
                        num_minibatches=32, lr=1e-3, critic_lr=1e-3, gamma=0.95, gae_lambda=0.95,
                        ent_coef=0.0, normalize_observations=True, normalize_rewards=True),
    # The goal's reward is all there is to find, and a seed whose first episodes all miss it
    # learns to stand still: 16 envs x 256 steps left 3-4 of 16 seeds at return 0, while 64
    # parallel first episodes (x 64 steps, the same batch) left none of 16 (gamma 0.99 or 0.999;
    # 0.999 saves more energy: 95.7 against 94.2).
    "MountainCarContinuous-v0": dict(total_timesteps=1_000_000, num_envs=64, num_steps=64, update_epochs=10,
                                     num_minibatches=32, lr=3e-4, critic_lr=3e-4, ent_coef=0.0, gamma=0.999,
                                     normalize_observations=True, normalize_rewards=True),
}
# CartPole with the velocities hidden needs memory: a GRU actor and a GRU critic, with the
# settings of rl-baselines3-zoo's recurrent PPO on CartPoleNoVel (8 envs x 32 steps, one
# minibatch, 20 epochs, gamma 0.98, lambda 0.8, no entropy bonus, normalised observations). Over 16
# seeds in 3e5 steps: IQM 494.2, worst 335.3; the same settings with network="mlp": IQM 40.7, best
# 44.6 (docs/ppo.md). With one torso and 10 epochs (three times faster) 3 of 4 seeds reached 500
# and the fourth 127 (flax's GRUCell then).
_PRESET_OVERRIDES["pomdp:CartPole-v1"] = dict(
    total_timesteps=300_000, network="gru", num_envs=8, num_steps=32, num_minibatches=1, update_epochs=20,
    gamma=0.98, gae_lambda=0.8, ent_coef=0.0, lr=1e-3, critic_lr=1e-3, clip_eps=0.2, normalize_observations=True,
    hidden_sizes=(64, 64), activation="relu")
# Brax and MuJoCo Playground (optional extras): continuous control with Brax's PPO settings
# scaled to a CPU budget (64 envs x 64 steps, 10 epochs x 32 minibatches, lr 3e-4, no entropy
# bonus, normalised observations and rewards). Over 16 seeds in 1e6 steps (docs/ppo.md): hopper's
# final return IQM 2085.6, worst 1283.2 (training return 36 at the start); CartpoleBalance's IQM
# 995.6, worst 881.7. One seed on a 2-core CPU takes 45 s (hopper) and 10 s (CartpoleBalance).
for _physics in ("brax:hopper", "playground:CartpoleBalance"):
    _PRESET_OVERRIDES[_physics] = dict(
        total_timesteps=1_000_000, num_envs=64, num_steps=64, update_epochs=10, num_minibatches=32, lr=3e-4,
        critic_lr=3e-4, ent_coef=0.0, normalize_observations=True, normalize_rewards=True)
# MinAtar: flattened 10x10xC observations into a wider MLP, as PureJaxRL does.
for _game in ("Breakout-MinAtar", "SpaceInvaders-MinAtar", "Asterix-MinAtar", "Freeway-MinAtar"):
    _PRESET_OVERRIDES[_game] = dict(total_timesteps=10_000_000, num_envs=64, num_steps=128, update_epochs=4,
                                    num_minibatches=8, lr=5e-3 if _game == "Freeway-MinAtar" else 5e-4,
                                    critic_lr=5e-3 if _game == "Freeway-MinAtar" else 5e-4,
                                    hidden_sizes=(256, 256), activation="relu", ent_coef=0.01)


# Per-algorithm changes to an environment's preset. A2C takes one gradient step per batch, so
# it wants many small batches: 8 envs x 8 steps (7812 updates in 5e5 steps) solved CartPole
# on 4 of 4 seeds, 4 envs x 128 steps on 1 of 2 and 16 x 16 on 1 of 4.
_ALGO_OVERRIDES: dict[tuple[str, str], dict] = {
    ("CartPole-v1", "a2c"): dict(num_envs=8, num_steps=8),
}


def preset(env_id: str, algo: str = "ppo") -> PPOConfig:
    """The tuned configuration for ``env_id`` and update rule ``algo`` (defaults where none)."""
    validate_env_id(env_id)
    config = PPOConfig(env=env_id, **{**_PRESET_OVERRIDES.get(env_id, {}), "algo": algo})
    config = config.replace(**_ALGO_OVERRIDES.get((env_id, algo), {}))
    if config.whole_episodes:
        from ppo_jax.envs import env_spec

        # Whole episodes: a rollout as long as the time limit, in whole 64-step blocks.
        config = config.replace(num_steps=max(config.num_steps, -(-env_spec(env_id).max_steps // 64) * 64))
    # The budget in whole updates (5e5 steps in 512-step batches: 976 updates, 499,712 steps),
    # so a preset's default run has no remainder to warn about.
    return config.replace(total_timesteps=config.num_updates * config.batch_size)


def preset_names() -> list[str]:
    return list(_PRESET_OVERRIDES)


__all__ = ["PPOConfig", "HParams", "ALGORITHMS", "TRACED_FIELDS", "stack_hparams", "preset", "preset_names"]
