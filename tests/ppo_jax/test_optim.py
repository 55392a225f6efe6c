"""The grouped optimiser (partition of flattened, injected Adam) must step each group exactly as
a plain optax clip + Adam on that group's tree with that group's learning rate."""

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


def _groups(tree, shared_torso):
    return {"all": tree} if shared_torso else dict(tree)


def _reference(max_norm, lr):
    return optax.chain(optax.clip_by_global_norm(max_norm), optax.adam(lr, eps=1e-5))


def _close(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), a, b)


@pytest.mark.parametrize("shared_torso", [False, True])
def test_grouped_steps_match_plain_optax_per_group(shared_torso):
    params = _tree(jax.random.PRNGKey(0))
    lrs = optim.group_lrs(jnp.asarray(3e-3), jnp.asarray(1e-2), shared_torso)
    max_norm = 0.5
    tx = optim.make_tx(max_norm, shared_torso)
    state = optim.set_learning_rates(tx.init(params), lrs)
    ref_tx = {g: _reference(max_norm, float(lrs[g])) for g in lrs}
    ref_params = _groups(params, shared_torso)
    ref_state = {g: ref_tx[g].init(ref_params[g]) for g in lrs}
    for step in range(3):
        grads = _tree(jax.random.PRNGKey(step + 1), scale=10.0 ** step)  # the clip is active from step 1
        params, state = optim.step(tx, params, state, grads)
        g = _groups(grads, shared_torso)
        for name in lrs:
            upd, ref_state[name] = ref_tx[name].update(g[name], ref_state[name], ref_params[name])
            ref_params[name] = optax.apply_updates(ref_params[name], upd)
    _close(_groups(params, shared_torso), ref_params)


def test_a_group_step_leaves_the_other_group_and_its_adam_state_alone():
    params = _tree(jax.random.PRNGKey(0))
    tx = optim.make_tx(1.0, False)
    state = optim.set_learning_rates(tx.init(params), {"actor": 3e-3, "critic": 1e-2})
    grads = _tree(jax.random.PRNGKey(1))
    params, state = optim.step(tx, params, state, grads)  # both groups have Adam history now
    ref = {g: _reference(1.0, lr) for g, lr in (("actor", 3e-3), ("critic", 1e-2))}
    ref_state = {g: ref[g].update(grads[g], ref[g].init(params[g]), params[g])[1] for g in ref}
    ref_params = dict(params)
    for step in range(2):
        g = _tree(jax.random.PRNGKey(step + 2))["critic"]
        params, state = optim.step_group(tx, "critic", params, state, g)
        upd, ref_state["critic"] = ref["critic"].update(g, ref_state["critic"], ref_params["critic"])
        ref_params["critic"] = optax.apply_updates(ref_params["critic"], upd)
    _close(params, ref_params)
    # The actor's Adam state is still after one step: its next step matches the reference's second.
    g = _tree(jax.random.PRNGKey(9))["actor"]
    params, state = optim.step_group(tx, "actor", params, state, g)
    upd, _ = ref["actor"].update(g, ref_state["actor"], ref_params["actor"])
    _close(params["actor"], optax.apply_updates(ref_params["actor"], upd))


def test_learning_rates_are_set_per_group_and_traceable():
    params = _tree(jax.random.PRNGKey(0))
    tx = optim.make_tx(1.0, False)

    @jax.jit
    def lrs_in_state(a, c):
        state = optim.set_learning_rates(tx.init(params), {"actor": a, "critic": c})
        found = optax.tree_utils.tree_get_all_with_path(state, "learning_rate")
        return {jax.tree_util.keystr(path[:2]): v for path, v in found}

    got = lrs_in_state(jnp.asarray(0.25), jnp.asarray(0.5))
    assert sorted(float(v) for v in got.values()) == [0.25, 0.5] and len(got) == 2
