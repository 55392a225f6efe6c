"""network="gru": the recurrent actor-critic. Step by step it computes what one pass over the
sequence computes; its hidden state is zeroed exactly where an episode starts; the rollout's
stored hidden state and resets let the update recompute the rollout's log-probs and values; a
truncated step bootstraps from the final observation with the episode's memory; a run split in
chunks ends where the whole run does; and the update rules it cannot run are refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppo_jax.config import PPOConfig
from ppo_jax.envs import VecEnv, env_spec
from ppo_jax.networks import RecurrentActorCritic, forward
from ppo_jax.rollout import Batch, Memory, recurrent_rollout
from ppo_jax.train import init_params, make_network, make_train_fns

pytestmark = pytest.mark.timeout(300)

N, T, D = 3, 9, 5


def _net_and_params(shared_torso, continuous=False):
    net = RecurrentActorCritic(action_dim=2, continuous=continuous, hidden_sizes=(8, 6), activation="tanh",
                               shared_torso=shared_torso)
    params = net.init(jax.random.PRNGKey(0), net.initial_carry(N), jnp.zeros((N, 1, D)), jnp.ones((N, 1), bool))
    return net, params["params"]


def _inputs(seed=1):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    obs = jax.random.normal(k1, (N, T, D))
    reset = jax.random.bernoulli(k2, 0.25, (N, T)).at[:, 0].set(False)
    carry_scale = jax.random.normal(k3, (N, 8))
    return obs, reset, carry_scale


@pytest.mark.parametrize("shared_torso", [False, True])
def test_step_by_step_equals_the_sequence_forward(shared_torso):
    net, params = _net_and_params(shared_torso, continuous=True)
    obs, reset, start = _inputs()
    carry = jax.tree.map(lambda h: start, net.initial_carry(N))  # a non-zero state before the sequence
    apply = lambda c, o, r: net.apply({"params": params}, c, o, r, method=RecurrentActorCritic.unroll)  # noqa: E731
    hiddens, dist, value = apply(carry, obs, reset)
    c = carry
    for t in range(T):
        h, d, v = apply(c, obs[:, t:t + 1], reset[:, t:t + 1])
        for g in h:
            np.testing.assert_allclose(h[g][:, 0], hiddens[g][:, t], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(d.mean[:, 0], dist.mean[:, t], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v[:, 0], value[:, t], rtol=1e-5, atol=1e-6)
        c = jax.tree.map(lambda x: x[:, 0], h)
    # The hidden state is not a constant: the same observations from another state give other outputs.
    _, _, other = apply(net.initial_carry(N), obs, reset)
    assert np.abs(np.asarray(other[:, 0] - value[:, 0])).max() > 1e-3


@pytest.mark.parametrize("shared_torso", [False, True])
def test_the_hidden_state_is_reset_exactly_where_an_episode_starts(shared_torso):
    net, params = _net_and_params(shared_torso)
    obs, _, start = _inputs()
    k = 4
    reset = jnp.zeros((N, T), bool).at[:, k].set(True)
    apply = lambda c, o, r: net.apply({"params": params}, c, o, r, method=RecurrentActorCritic.unroll)  # noqa: E731
    carry = jax.tree.map(lambda h: start, net.initial_carry(N))
    h1, d1, v1 = apply(carry, obs, reset)
    # Another past (other observations and state before step k) leaves steps k.. bit for bit the same ...
    other_obs = obs.at[:, :k].set(-obs[:, :k] + 1.0)
    h2, d2, v2 = apply(net.initial_carry(N), other_obs, reset)
    np.testing.assert_array_equal(np.asarray(v1[:, k:]), np.asarray(v2[:, k:]))
    np.testing.assert_array_equal(np.asarray(d1.logits[:, k:]), np.asarray(d2.logits[:, k:]))
    assert np.abs(np.asarray(v1[:, :k] - v2[:, :k])).min() > 0  # ... and changes every step before it
    # ... and equals a fresh episode started at k from a zero state.
    h3, _, v3 = apply(net.initial_carry(N), obs[:, k:], jnp.zeros((N, T - k), bool))
    np.testing.assert_allclose(v1[:, k:], v3, rtol=1e-5, atol=1e-6)
    # Without the reset the past carries through.
    _, _, v4 = apply(carry, obs, jnp.zeros((N, T), bool))
    assert np.abs(np.asarray(v4[:, k] - v1[:, k])).max() > 1e-4


@pytest.mark.parametrize("shared_torso", [False, True])
def test_the_continued_value_is_the_next_steps_value_inside_an_episode(shared_torso):
    """V(next_obs[t]) after step t's hidden state: where the episode goes on it is step t+1's value
    (so the bootstrap of a truncation uses the same memory as every other step)."""
    net, params = _net_and_params(shared_torso)
    obs, _, _ = _inputs()
    reset = jnp.zeros((N, T), bool)
    hiddens, _, value = net.apply({"params": params}, net.initial_carry(N), obs, reset,
                                  method=RecurrentActorCritic.unroll)
    cont = net.apply({"params": params}, hiddens, jnp.roll(obs, -1, axis=1),
                     method=RecurrentActorCritic.continued_value)
    np.testing.assert_allclose(cont[:, :-1], value[:, 1:], rtol=1e-5, atol=1e-6)


def test_the_update_recomputes_the_rollout_from_the_stored_state():
    config = PPOConfig(env="CartPole-v1", network="gru", num_envs=4, num_steps=64, hidden_sizes=(16, 16),
                       num_minibatches=2, shared_torso=False)
    spec = env_spec(config.env)
    net = make_network(config, spec)
    params = init_params(net, spec, jax.random.PRNGKey(0))
    env = VecEnv(config.env, config.num_envs)
    obs, env_state = env.reset(jax.random.PRNGKey(1))
    unroll = lambda c, o, r: net.apply({"params": params}, c, o, r, method=RecurrentActorCritic.unroll)  # noqa: E731
    memory = Memory(net.initial_carry(4), jnp.ones((4,), bool))
    for chunk in range(2):  # the second rollout starts mid-episode with the first's hidden state
        start = memory
        env_state, obs, memory, traj, rec = jax.jit(recurrent_rollout, static_argnums=(0, 1, 6))(
            unroll, env, env_state, obs, memory, jax.random.PRNGKey(2 + chunk), 64)
        done = np.asarray(traj.done)
        assert done.any()  # episodes end inside the rollout (random CartPole lasts ~20 steps)
        first = np.asarray(rec.first)
        np.testing.assert_array_equal(first[0], np.asarray(start.first))
        np.testing.assert_array_equal(first[1:], done[:-1])  # a reset exactly after each end
        em = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
        batch = Batch(em(traj.obs), em(traj.action), em(traj.log_prob), em(rec.value), None, None,
                      first=em(rec.first), carry=start.carry)
        dist, value = forward(net, params, batch)
        np.testing.assert_allclose(dist.log_prob(batch.action), batch.log_prob, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(value, batch.value, rtol=1e-5, atol=1e-5)


def test_a_gru_run_in_chunks_ends_where_the_whole_run_does():
    config = PPOConfig(env="CartPole-v1", network="gru", num_envs=4, num_steps=32, hidden_sizes=(16,),
                       num_minibatches=2, total_timesteps=4 * 32 * 4)
    fns = make_train_fns(config)
    state = fns.init(jax.random.PRNGKey(0))
    whole = jax.jit(fns.run, static_argnums=1)(state, 4)
    half = jax.jit(fns.run, static_argnums=1)(state, 2)
    rest = jax.jit(fns.run, static_argnums=1)(half.state, 2)
    for a, b in zip(jax.tree.leaves(whole.state), jax.tree.leaves(rest.state)):  # the memory included
        np.testing.assert_array_equal(a, b)
    assert whole.state.memory is not None
    # The first minibatch of every update sees the rollout's own policy: ratio 1 up to rounding.
    assert np.abs(np.asarray(whole.metrics["first_minibatch_ratio_deviation"])).max() < 1e-5


@pytest.mark.parametrize("change, message", [
    (dict(algo="trpo"), "^network: 'gru' runs with ppo and a2c"),
    (dict(algo="reinforce", num_steps=512), "^network: 'gru' runs with ppo and a2c"),
    (dict(num_envs=6, num_minibatches=4, num_steps=32), "^num_minibatches: with network 'gru' a minibatch is whole "
                                                        r"environment sequences, so num_minibatches must divide "
                                                        r"num_envs \(6\), got 4$"),
])
def test_what_a_gru_cannot_run_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        PPOConfig(network="gru", **change).validate()


CUE = '''
import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

DELAY = 3


@struct.dataclass
class State(environment.EnvState):
    cue: jax.Array
    time: jax.Array


@struct.dataclass
class Params(environment.EnvParams):
    max_steps_in_episode: int = DELAY + 1


class Cue(environment.Environment):
    """A cue (+1 or -1) shown on the first step only, then DELAY blank steps; on the last one the
    action must name the cue: +1 if right, -1 if wrong. Without memory the best return is 0."""

    @property
    def default_params(self):
        return Params()

    def step_env(self, key, state, action, params):
        last = state.time == DELAY
        right = jnp.where(state.cue > 0, action == 1, action == 0)
        state = State(cue=state.cue, time=state.time + 1)
        return self.get_obs(state), state, jnp.where(last, jnp.where(right, 1.0, -1.0), 0.0), last, {}

    def reset_env(self, key, params):
        state = State(cue=jnp.where(jax.random.bernoulli(key), 1.0, -1.0), time=jnp.asarray(0))
        return self.get_obs(state), state

    def get_obs(self, state, params=None, key=None):
        return jnp.stack([jnp.where(state.time == 0, state.cue, 0.0), jnp.asarray(state.time == DELAY, jnp.float32)])

    def action_space(self, params=None):
        return spaces.Discrete(2)

    def observation_space(self, params):
        return spaces.Box(-1.0, 1.0, (2,), jnp.float32)


def make():
    return Cue()
'''


@pytest.mark.slow
def test_a_gru_remembers_what_an_mlp_cannot(tmp_path):
    """The cue is seen 3 steps before the action that must name it: the GRU learns it, the MLP
    can only guess (return 0 at best)."""
    from ppo_jax.run.named import load_named
    from ppo_jax.train import make_train

    (tmp_path / "cue_env.py").write_text(CUE)
    env = load_named(f"{tmp_path / 'cue_env.py'}:make", "env")()
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    last = {}
    for network in ("gru", "mlp"):
        config = PPOConfig(network=network, num_envs=16, num_steps=16, num_minibatches=2, update_epochs=4,
                           hidden_sizes=(32,), lr=3e-3, critic_lr=3e-3, total_timesteps=100 * 256)
        out = jax.jit(jax.vmap(make_train(config, env=env)))(keys)
        last[network] = np.asarray(out.metrics["episode_return"])[:, -10:].mean(axis=1)
    # Measured with these keys and with the splits of PRNGKey(2) and PRNGKey(4): the mean return of
    # the last 10 updates 1.0 for all six GRU runs, -0.088 to 0.003 for the MLP's (about 640
    # episodes each: the MLP's noise is ~0.04).
    assert last["gru"].min() > 0.8 and last["mlp"].max() < 0.3, last


def test_the_gru_is_flax_grucell_with_its_gates_side_by_side():
    """docs/theory.md §14's equations: the fused GRU with flax.linen.GRUCell's weights gives its
    outputs (GRUCell is the reference implementation of the same equations)."""
    import flax.linen as nn

    from ppo_jax.networks import GRU

    E, H = 5, 4
    x = jax.random.normal(jax.random.PRNGKey(0), (N, T, E))
    h0 = jax.random.normal(jax.random.PRNGKey(1), (N, H))
    cell = nn.GRUCell(H)
    p = cell.init(jax.random.PRNGKey(2), h0, x[:, 0])["params"]
    p = jax.tree.map(lambda w: w + 0.1 * jax.random.normal(jax.random.PRNGKey(3), w.shape), p)  # non-zero biases
    fused = {"input_kernel": jnp.concatenate([p[g]["kernel"] for g in ("ir", "iz", "in")], -1),
             "input_bias": jnp.concatenate([p[g]["bias"] for g in ("ir", "iz", "in")], -1),
             "hidden_kernel": jnp.concatenate([p[g]["kernel"] for g in ("hr", "hz", "hn")], -1),
             "hidden_bias": p["hn"]["bias"]}
    ours = GRU(H).apply({"params": fused}, h0, x, jnp.zeros((N, T), bool))
    h = h0
    for t in range(T):
        h, _ = cell.apply({"params": p}, h, x[:, t])
        np.testing.assert_allclose(ours[:, t], h, rtol=1e-5, atol=1e-6)
    shapes = jax.tree.map(jnp.shape, GRU(H).init(jax.random.PRNGKey(0), h0, x, jnp.zeros((N, T), bool))["params"])
    assert shapes == jax.tree.map(jnp.shape, fused)


def test_the_pomdp_preset_runs_from_the_command_line_and_its_checkpoint_evaluates(tmp_path):
    import json

    from ppo_jax.cli import main

    main(["train", "--env", "pomdp:CartPole-v1", "--total-timesteps", str(4 * 256), "--num-seeds", "1",
          "--eval-episodes", "2", "--no-progress", "--out", str(tmp_path / "run")])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["network"] == "gru" and summary["env"] == "pomdp:CartPole-v1"
    assert 0 < summary["final_return_per_seed"][0] <= 500
    main(["eval", "--checkpoint", str(tmp_path / "run"), "--episodes", "2"])
