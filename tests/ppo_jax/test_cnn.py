"""network="cnn": a MinAtar-style convolution on the observation's frame, which the rollout keeps
flat; its output matches a hand computation, it trains, and a frame-less environment is refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppo_jax.config import PPOConfig
from ppo_jax.envs import env_spec
from ppo_jax.networks import ConvTorso
from ppo_jax.train import init_params, make_network, make_train

pytestmark = pytest.mark.timeout(300)


def test_the_convolution_sees_the_frame_the_flat_observation_came_from():
    shape = (5, 4, 2)
    frames = jax.random.uniform(jax.random.PRNGKey(0), (3,) + shape)
    torso = ConvTorso(shape, features=4)
    params = torso.init(jax.random.PRNGKey(1), frames.reshape(3, -1))["params"]
    out = np.asarray(torso.apply({"params": params}, frames.reshape(3, -1)))
    assert out.shape == (3, 3 * 2 * 4)  # (5-2) x (4-2) positions x 4 channels, flattened
    kernel, bias = np.asarray(params["Conv_0"]["kernel"]), np.asarray(params["Conv_0"]["bias"])
    f = np.asarray(frames)
    by_hand = np.zeros((3, 3, 2, 4))
    for b in range(3):
        for i in range(3):
            for j in range(2):
                window = f[b, i:i + 3, j:j + 3, :]  # rows, columns, channels of the frame
                by_hand[b, i, j] = np.maximum(np.einsum("hwc,hwco->o", window, kernel) + bias, 0.0)
    np.testing.assert_allclose(out, by_hand.reshape(3, -1), rtol=1e-5, atol=1e-6)
    # The leading axes are free: a [T, B, D] rollout gives the same features row by row.
    stacked = torso.apply({"params": params}, jnp.stack([frames.reshape(3, -1)] * 2))
    np.testing.assert_allclose(stacked[1], out, rtol=1e-6)


@pytest.mark.parametrize("shared_torso", [False, True])
def test_a_cnn_agent_trains_on_minatar_frames(shared_torso):
    config = PPOConfig(env="Breakout-MinAtar", network="cnn", num_envs=4, num_steps=16, total_timesteps=4 * 64,
                       update_epochs=1, num_minibatches=2, hidden_sizes=(32,), shared_torso=shared_torso)
    spec = env_spec(config.env)
    assert spec.obs_shape == (10, 10, 4)
    params = init_params(make_network(config, spec), spec, jax.random.PRNGKey(0))
    convs = [k for k in jax.tree_util.tree_flatten_with_path(params)[0] if "Conv_0" in jax.tree_util.keystr(k[0])]
    assert len(convs) == (2 if shared_torso else 4)  # kernel and bias, in each torso
    out = jax.jit(make_train(config))(jax.random.PRNGKey(0))
    for name in ("total_loss", "entropy"):
        assert np.isfinite(np.asarray(out.metrics[name])).all(), name


def test_cnn_on_observations_without_a_frame_is_refused():
    with pytest.raises(ValueError, match=r"^network: 'cnn' needs frames \(H, W, C\) of at least 3 x 3; "
                                         r"CartPole-v1's observations are \(4,\)$"):
        PPOConfig(env="CartPole-v1", network="cnn").validate()
    with pytest.raises(ValueError, match="^network: must be one of mlp, cnn, gru or module:function"):
        PPOConfig(network="lstm").validate()
