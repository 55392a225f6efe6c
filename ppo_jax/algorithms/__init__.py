"""Update rules that consume a rollout batch, by name: ``UPDATES[config.algo](network, tx,
params, opt_state, batch, hp, key, config, shard_rows=None) -> (params, opt_state, metrics)``
(the names are ``ppo_jax.config.ALGORITHMS``)."""

from ppo_jax.algorithms import a2c, ppo, reinforce, trpo

UPDATES = {"ppo": ppo.update, "a2c": a2c.update, "trpo": trpo.update, "reinforce": reinforce.update,
           "reinforce-baseline": reinforce.update}
