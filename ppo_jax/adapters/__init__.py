"""Environments shipped as adapters, named ``prefix:name`` as ``config.env``:

- ``pomdp:<classic-control id>``: the gymnax environment with its velocities hidden from the
  observation (a task that needs memory; :mod:`ppo_jax.adapters.pomdp`);
- ``brax:<name>`` and ``playground:<name>``: Brax and MuJoCo Playground environments, with
  termination and truncation kept apart (:mod:`ppo_jax.adapters.physics`; optional extras).

Each adapter module has ``make(name) -> (env, params)`` with gymnax's functional API.
"""

ADAPTERS = {"pomdp": "ppo_jax.adapters.pomdp", "brax": "ppo_jax.adapters.brax",
            "playground": "ppo_jax.adapters.playground"}
"""Prefix -> the module whose ``make(name)`` builds the environment."""
