"""Your Flax module as the network: make_train(config, network=module) and --network
path/to/file.py:function. Given the same parameters it computes exactly what the built-in shared
actor-critic computes (so the distribution is made right from its output), it trains discrete and
continuous policies, and a module with the wrong output is one line naming what is wrong."""

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppo_jax.cli import main
from ppo_jax.config import PPOConfig
from ppo_jax.envs import env_spec
from ppo_jax.networks import ActorCritic, UserActorCritic
from ppo_jax.train import make_train

pytestmark = pytest.mark.timeout(300)

MODULE = '''
import math

import flax.linen as nn
import jax.numpy as jnp


class Mine(nn.Module):
    """Tanh MLP torso, logits and a value: what ppo_jax's shared actor-critic is."""

    actions: int = 2

    @nn.compact
    def __call__(self, obs):
        x = obs
        for size in (32, 32):
            x = nn.tanh(nn.Dense(size, kernel_init=nn.initializers.orthogonal(math.sqrt(2)))(x))
        logits = nn.Dense(self.actions, kernel_init=nn.initializers.orthogonal(0.01))(x)
        return logits, nn.Dense(1)(x)


def make():
    return Mine()
'''


class Gaussian(nn.Module):
    @nn.compact
    def __call__(self, obs):
        x = nn.tanh(nn.Dense(32)(obs))
        log_std = self.param("log_std", nn.initializers.zeros, (1,))
        return (nn.Dense(1, kernel_init=nn.initializers.orthogonal(0.01))(x), log_std), nn.Dense(1)(x)[..., 0]


def _load(tmp_path):
    path = tmp_path / "my_net.py"
    path.write_text(MODULE)
    return path


def test_your_module_computes_what_the_built_in_network_computes(tmp_path):
    from ppo_jax.run.named import load_named

    mine = load_named(f"{_load(tmp_path)}:make", "network")()
    ours = ActorCritic(action_dim=2, continuous=False, hidden_sizes=(32, 32), activation="tanh", shared_torso=True)
    obs = jax.random.normal(jax.random.PRNGKey(0), (7, 4))
    p = ours.init(jax.random.PRNGKey(1), obs)["params"]
    # The same numbers under the module's own names.
    transplanted = {"module": {"Dense_0": p["torso"]["Dense_0"], "Dense_1": p["torso"]["Dense_1"],
                               "Dense_2": p["policy_head"]["Dense_0"], "Dense_3": p["value_head"]["Dense_0"]}}
    user = UserActorCritic(mine, 2, False)
    d_user, v_user = user.apply({"params": transplanted}, obs)
    d_ours, v_ours = ours.apply({"params": p}, obs)
    np.testing.assert_array_equal(d_user.logits, d_ours.logits)
    np.testing.assert_array_equal(v_user, v_ours)
    assert v_user.shape == (7,)  # the module's (batch, 1) value squeezed
    action = jnp.arange(7) % 2
    grad = lambda net, params: jax.grad(lambda q: net.apply({"params": q}, obs)[0].log_prob(action).sum())(params)  # noqa: E731
    g_user, g_ours = grad(user, transplanted), grad(ours, p)
    np.testing.assert_allclose(g_user["module"]["Dense_2"]["kernel"], g_ours["policy_head"]["Dense_0"]["kernel"],
                               rtol=1e-6)


def test_your_module_trains_through_make_train_and_the_command_line(tmp_path):
    from ppo_jax.run.named import load_named

    config = PPOConfig(env="CartPole-v1", shared_torso=True, num_envs=4, num_steps=128, total_timesteps=250 * 512,
                       lr=1e-3, clip_eps=0.1)
    out = jax.jit(make_train(config, network=load_named(f"{_load(tmp_path)}:make", "network")()))(jax.random.PRNGKey(0))
    returns = np.asarray(out.metrics["episode_return"])
    # Seeds 0-2 measured: the mean finished-episode return of the first 10 updates 26.7-32.0, of the
    # last 10 95.6-123.6 (one torso and one optimiser learn CartPole slower than the preset's two).
    assert returns[-10:].mean() > 60 and returns[-10:].mean() > returns[:10].mean() + 30, returns
    assert set(out.state.params) == {"module"}

    main(["train", "--env", "CartPole-v1", "--network", f"{_load(tmp_path)}:make", "--shared-torso",
          "--total-timesteps", str(4 * 512), "--num-seeds", "2", "--eval-episodes", "2", "--no-progress",
          "--out", str(tmp_path / "run")])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    returns = summary["final_return_per_seed"]
    assert len(returns) == 2 and all(math.isfinite(r) for r in returns), returns


def test_a_continuous_module_returns_mean_and_log_std():
    config = PPOConfig(env="Pendulum-v1", shared_torso=True, num_envs=4, num_steps=32, total_timesteps=4 * 128)
    out = jax.jit(make_train(config, network=Gaussian()))(jax.random.PRNGKey(0))
    assert np.isfinite(np.asarray(out.metrics["total_loss"])).all()
    assert out.state.params["module"]["log_std"].shape == (1,)


class WrongLogits(nn.Module):
    @nn.compact
    def __call__(self, obs):
        return nn.Dense(3)(obs), nn.Dense(1)(obs)


class NoValue(nn.Module):
    @nn.compact
    def __call__(self, obs):
        return nn.Dense(2)(obs)


class WrongValue(nn.Module):
    @nn.compact
    def __call__(self, obs):
        return nn.Dense(2)(obs), nn.Dense(3)(obs)


@pytest.mark.parametrize("module, shared, message", [
    (WrongValue(), True, r"^network: 'object:WrongValue@[0-9a-f]+': the value must have shape \(batch,\) or "
                         r"\(batch, 1\), got \(2, 3\) for batch 2$"),
    (WrongLogits(), True, r"^network: 'object:WrongLogits@[0-9a-f]+': the logits must have shape \(batch, 2\) "
                          r"for 2 actions, got \(2, 3\)$"),
    (NoValue(), True, r"^network: 'object:NoValue@[0-9a-f]+' must return \(distribution parameters, value\); "
                      r"it returned one array of shape \(2, 2\)$"),
    (WrongLogits(), False, r"^shared_torso: a network of your own .* is one parameter tree with one optimiser; "
                           r"set shared_torso=True \(--shared-torso\)$"),
])
def test_a_module_with_the_wrong_output_is_one_line(module, shared, message):
    with pytest.raises(ValueError, match=message):
        make_train(PPOConfig(env="CartPole-v1", shared_torso=shared), network=module)


def test_the_module_sees_the_environments_own_observation_shape():
    seen = []

    class Frames(nn.Module):
        @nn.compact
        def __call__(self, obs):
            seen.append(obs.shape)
            x = obs.reshape(obs.shape[:-3] + (-1,))
            return nn.Dense(env_spec("Breakout-MinAtar").action_dim)(x), nn.Dense(1)(x)

    make_train(PPOConfig(env="Breakout-MinAtar", shared_torso=True, total_timesteps=4 * 512), network=Frames())
    assert seen and all(s[-3:] == (10, 10, 4) for s in seen), seen


class FlaxOrthogonal(nn.Module):
    kernel_init: object = None

    @nn.compact
    def __call__(self, obs):
        x = nn.tanh(nn.Dense(16, kernel_init=self.kernel_init)(obs))
        return nn.Dense(2)(x), nn.Dense(1)(x)


def test_with_the_scheduler_on_a_module_that_initialises_with_a_qr_gets_one_note(capsys, monkeypatch):
    from ppo_jax.orthogonal_init import orthogonal

    monkeypatch.delenv("XLA_FLAGS", raising=False)  # as for a Brax environment: XLA's default, the scheduler on
    config = PPOConfig(env="CartPole-v1", shared_torso=True, total_timesteps=2048)
    make_train(config, network=FlaxOrthogonal(nn.initializers.orthogonal()))
    err = capsys.readouterr().err
    assert err.count("ppo-jax: note: network: 'object:FlaxOrthogonal@") == 1, err
    assert "initialises with qr" in err and "ppo_jax.orthogonal_init.orthogonal" in err
    make_train(config, network=FlaxOrthogonal(orthogonal()))
    assert "note" not in capsys.readouterr().err
