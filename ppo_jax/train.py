"""``make_train(config) -> train(key, hparams=None)``: a whole training run as one pure function.

    train = make_train(PPOConfig(env="CartPole-v1"))
    out = jax.jit(train)(jax.random.PRNGKey(0))              # one seed
    outs = jax.jit(jax.vmap(train))(jax.random.split(key, 8))  # 8 seeds, one program
    hps = stack_hparams([cfg.replace(lr=lr) for lr in lrs])     # a sweep of traced fields
    outs = jax.jit(jax.vmap(train))(keys, hps)                 # ... still one compile

Data flow per update: rollout -> V on the batch -> GAE (form C) -> targets (docs/theory.md §5)
-> the update rule of ``config.algo`` (PPO epochs, one A2C step, a TRPO step and critic
regression; REINFORCE uses the Monte-Carlo reward-to-go instead of GAE) -> metrics. Metrics leave as arrays with a leading ``num_updates`` axis.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from ppo_jax import gae as gae_lib
from ppo_jax import losses, optim
from ppo_jax.adapters import adapter_of
from ppo_jax.algorithms import UPDATES
from ppo_jax.algorithms.reinforce import complete_episode_mask
from ppo_jax.config import HParams, PPOConfig
from ppo_jax.envs import EnvSpec, VecEnv, VecEnvState, env_spec, is_user_env, register_env
from ppo_jax.networks import ActorCritic, RecurrentActorCritic, UserActorCritic, is_recurrent
from ppo_jax.rollout import Batch, Memory, next_state_values, recurrent_rollout, rollout
from ppo_jax.run.configure import configure
from ppo_jax.user_network import is_user_network, register_network, user_network


@struct.dataclass
class TrainState:
    params: Any
    opt_state: Any
    env_state: VecEnvState
    obs: jax.Array
    key: jax.Array
    update: jax.Array
    memory: Any = None
    """A recurrent network's :class:`ppo_jax.rollout.Memory` (None for the others)."""


@struct.dataclass
class TrainOutput:
    state: TrainState
    metrics: dict


def make_network(config: PPOConfig, spec: EnvSpec | None = None):
    """The actor-critic module of ``config.network`` (:data:`ppo_jax.networks.NETWORKS`, or a user's module)."""
    spec = spec or env_spec(config.env)
    if config.network == "gru":
        return RecurrentActorCritic(action_dim=spec.action_dim, continuous=spec.continuous,
                                    hidden_sizes=tuple(config.hidden_sizes), activation=config.activation,
                                    shared_torso=config.shared_torso)
    if is_user_network(config.network):
        return UserActorCritic(user_network(config.network), spec.action_dim, spec.continuous, spec.obs_shape)
    return ActorCritic(action_dim=spec.action_dim, continuous=spec.continuous,
                       hidden_sizes=tuple(config.hidden_sizes), activation=config.activation,
                       shared_torso=config.shared_torso, obs_shape=spec.obs_shape if config.network == "cnn" else ())


def init_params(network, spec: EnvSpec, key: jax.Array):
    obs = jnp.zeros((1, spec.obs_dim), jnp.float32)
    if is_recurrent(network):
        return network.init(key, network.initial_carry(1), obs[:, None], jnp.ones((1, 1), bool))["params"]
    return network.init(key, obs)["params"]


def episode_return_stats(returns: jax.Array, done: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean raw return of the episodes that finished in a batch (NaN if none), and their count."""
    done = done.astype(jnp.float32)
    count = done.sum()
    mean = jnp.where(count > 0, (returns * done).sum() / jnp.maximum(count, 1.0), jnp.nan)
    return mean, count


class TrainFns(NamedTuple):
    """A training run in two pure pieces, for runs that stop between updates (checkpoints).

    ``init(key, hparams=None) -> TrainState`` and ``run(state, num, hparams=None) ->
    TrainOutput`` (``num`` static: that many updates, metrics with a leading ``num`` axis).
    ``run(init(key), config.num_updates)`` is ``train(key)``; a run split into chunks
    ends in the same state, because everything random comes from ``state.key``.
    """

    init: Callable
    run: Callable


def make_train_fns(config: PPOConfig, progress: Callable[[Any], None] | None = None,
                   env_sharding: Callable[[Any], Any] | None = None) -> TrainFns:
    """Validates ``config`` (before any tracing) and returns :class:`TrainFns`.

    ``progress``, if given, is called on the host with the update index after every
    update (through ``jax.debug.callback``; once per seed under ``vmap``).
    ``env_sharding``, if given, maps a pytree whose leaves lead with the environment
    axis to itself with sharding constraints (see :func:`ppo_jax.distributed.leading_axis_constraint`):
    XLA then runs each device's environments there and averages the gradients of the
    sharded minibatch rows across devices, inside the one compiled program.
    """
    configure(config.env)
    config.validate()
    config.warn_remainder()
    spec = env_spec(config.env)
    network = make_network(config, spec)
    recurrent = is_recurrent(network)
    num_updates = config.num_updates
    shard = env_sharding or (lambda tree: tree)
    # gymnax's and the shipped adapters' only truncation is their time limit; a user's
    # environment may truncate for reasons of its own, at any step.
    one_cut_per_env = ((not is_user_env(config.env) or adapter_of(config.env) is not None)
                       and spec.max_steps >= config.num_steps)

    def make_env(hp: HParams) -> VecEnv:
        return VecEnv(config.env, config.num_envs, normalize_observations=config.normalize_observations,
                      normalize_rewards=config.normalize_rewards, gamma=hp.gamma)

    def init(key: jax.Array, hparams: HParams | None = None) -> TrainState:
        hp = config.hparams() if hparams is None else hparams
        tx = optim.make_tx(hp.max_grad_norm, config.shared_torso)
        key, k_init, k_reset = jax.random.split(key, 3)
        params = init_params(network, spec, k_init)
        obs, env_state = make_env(hp).reset(k_reset)
        memory = None
        if recurrent:
            memory = Memory(network.initial_carry(config.num_envs), jnp.ones((config.num_envs,), bool))
        obs, env_state, memory = shard((obs, env_state, memory))
        return TrainState(params, tx.init(params), env_state, obs, key, jnp.asarray(0, jnp.int32), memory)

    def run(state: TrainState, num: int, hparams: HParams | None = None) -> TrainOutput:
        hp = config.hparams() if hparams is None else hparams
        if hparams is None and config.target_kl == 0:
            # KL early stopping known to be off: the update leaves its mask out, a select over
            # every parameter and Adam moment per minibatch step (8-14% of a CartPole run on
            # XLA:CPU at 8 vmapped seeds). The results are the same bit for bit.
            hp = hp.replace(target_kl=None)
        env = make_env(hp)
        tx = optim.make_tx(hp.max_grad_norm, config.shared_torso)

        def update_step(state: TrainState, _):
            key, k_roll, k_update = jax.random.split(state.key, 3)
            env_state, obs, memory = state.env_state, state.obs, state.memory
            if config.whole_episodes:
                # Every rollout starts fresh episodes, so each one that starts in it ends in it
                # (num_steps >= the time limit): the reward-to-go needs whole episodes, and an episode cut
                # at the rollout's end would only ever contribute its tail.
                k_roll, k_restart = jax.random.split(k_roll)
                obs, env_state = env.restart(k_restart, env_state)
            if recurrent:
                unroll_fn = lambda c, o, r: network.apply({"params": state.params}, c, o, r,  # noqa: E731
                                                          method=RecurrentActorCritic.unroll)
                env_state, obs, memory, traj, rec = recurrent_rollout(unroll_fn, env, env_state, obs, memory, k_roll,
                                                                      config.num_steps)
                values = rec.value
                # V(next_obs[t]) right after step t's hidden state: the next step's value where the
                # episode goes on, the final observation's where it was cut (a truncation bootstraps).
                next_values = network.apply({"params": state.params}, rec.hiddens, traj.next_obs,
                                            method=RecurrentActorCritic.continued_value)
                # Rows are whole environment sequences [N, T, ...], recomputed from the stored carry.
                flat = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
            else:
                policy_fn = lambda o: network.apply({"params": state.params}, o, method="policy")  # noqa: E731
                env_state, obs, traj = rollout(policy_fn, env, env_state, obs, k_roll, config.num_steps)
                value_fn = lambda o: network.apply({"params": state.params}, o, method="value")  # noqa: E731
                values = value_fn(traj.obs)
                next_values = next_state_values(value_fn, traj, values, obs, one_cut_per_env)
                flat = lambda x: x.reshape((config.batch_size,) + x.shape[2:])  # noqa: E731
            lr_scale = 1.0 - state.update / num_updates if config.anneal_lr else 1.0
            lrs = optim.group_lrs(hp.lr, hp.critic_lr, config.shared_torso, lr_scale)
            mask = None
            if config.whole_episodes:
                # Monte-Carlo reward-to-go of complete episodes (docs/theory.md §1): no bootstrap, no GAE.
                advantages = targets = gae_lib.reward_to_go(traj.reward, traj.done, hp.gamma)
                mask = flat(complete_episode_mask(traj.done))
            else:
                advantages = gae_lib.gae(traj.reward, values, next_values, traj.terminated, traj.truncated,
                                         hp.gamma, hp.gae_lambda)
                targets = gae_lib.value_targets(advantages, values)  # before normalising the advantages
                batch_norm = config.normalize_advantages and (config.algo != "ppo" or not config.per_minibatch_adv_norm)
                if batch_norm:
                    advantages = losses.normalize_advantages(advantages)
            batch = Batch(flat(traj.obs), flat(traj.action), flat(traj.log_prob), flat(values), flat(advantages),
                          flat(targets), mask)
            if recurrent:
                batch = batch.replace(first=flat(rec.first), carry=state.memory.carry)
            opt_state = optim.set_learning_rates(state.opt_state, lrs)  # this update's, for every rule
            params, opt_state, metrics = UPDATES[config.algo](network, tx, state.params, opt_state, batch, hp,
                                                              k_update, config, shard_rows=env_sharding)

            ep_return, ep_count = episode_return_stats(traj.episode_return, traj.done)
            ep_length, _ = episode_return_stats(traj.episode_length.astype(jnp.float32), traj.done)
            metrics.update(
                episode_return=ep_return, episode_length=ep_length, episodes_finished=ep_count,
                explained_variance=losses.explained_variance(values, targets),
                learning_rate=lrs["all" if config.shared_torso else "actor"],
                env_steps=(state.update + 1) * config.batch_size)
            if progress is not None:
                jax.debug.callback(progress, state.update)
            env_state, obs, memory = shard((env_state, obs, memory))
            new_state = TrainState(params, opt_state, env_state, obs, key, state.update + 1, memory)
            return new_state, metrics

        state, metrics = jax.lax.scan(update_step, state, None, num)
        return TrainOutput(state, metrics)

    return TrainFns(init, run)


def make_train(config: PPOConfig, progress: Callable[[Any], None] | None = None,
               env_sharding: Callable[[Any], Any] | None = None, env=None, network=None):
    """Validates ``config`` (before any tracing) and returns the pure ``train(key, hparams=None)``:
    ``config.num_updates`` updates from a fresh state (arguments as :func:`make_train_fns`).
    ``env``, an object with gymnax's functional API (:data:`ppo_jax.envs.ENV_API`), replaces
    ``config.env``; ``network``, a Flax module (:mod:`ppo_jax.user_network`), ``config.network``."""
    if env is not None:
        config = dataclasses.replace(config, env=register_env(env))
    if network is not None:
        config = dataclasses.replace(config, network=register_network(network))
    fns = make_train_fns(config, progress, env_sharding)

    def train(key: jax.Array, hparams: HParams | None = None) -> TrainOutput:
        return fns.run(fns.init(key, hparams), config.num_updates, hparams)

    return train
