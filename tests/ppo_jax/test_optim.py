"""The flat-vector optimiser step must equal optax's clip + Adam on the parameter trees."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ppo_jax import optim

pytestmark = pytest.mark.timeout(120)


def _tree(key, scale=1.0):
    ks = jax.random.split(key, 4)
    return {"actor": {"w": scale * jax.random.normal(ks[0], (3, 5)), "b": scale * jax.random.normal(ks[1], (5,))},
            "critic": {"w": scale * jax.random.normal(ks[2], (3, 1)), "b": scale * jax.random.normal(ks[3], (1,))}}


@pytest.mark.parametrize("shared_torso", [False, True])
def test_flat_steps_match_optax_on_trees(shared_torso):
    params = _tree(jax.random.PRNGKey(0))
    lrs = optim.group_lrs(jnp.asarray(3e-3), jnp.asarray(1e-2), shared_torso)
    max_norm = 0.5
    tx = optim.make_tx(max_norm)
    flat, unflatten = optim.flatten_groups(params, shared_torso)
    state = optim.init_opt_state(tx, params, shared_torso)
    # Reference: one optax Adam (with lr) per group, on the pytree itself.
    ref_tx = {g: optax.chain(optax.clip_by_global_norm(max_norm), optax.adam(float(lrs[g]), eps=1e-5)) for g in lrs}
    ref_params = optim.groups(params, shared_torso)
    ref_state = {g: ref_tx[g].init(ref_params[g]) for g in lrs}
    for step in range(3):
        grads = _tree(jax.random.PRNGKey(step + 1), scale=10.0 ** step)  # the clip is active from step 1
        flat_grads, _ = optim.flatten_groups(grads, shared_torso)
        flat, state = optim.apply_gradients(tx, flat, state, flat_grads, lrs)
        g = optim.groups(grads, shared_torso)
        for name in lrs:
            upd, ref_state[name] = ref_tx[name].update(g[name], ref_state[name], ref_params[name])
            ref_params[name] = optax.apply_updates(ref_params[name], upd)
    got = unflatten(flat)
    want = optim.ungroup(ref_params, shared_torso)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got, want)

