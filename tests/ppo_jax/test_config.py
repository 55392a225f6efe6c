"""Config validation happens before compilation and names the field."""

import pytest

from ppo_jax import PPOConfig, make_train, preset, stack_hparams
from ppo_jax.adapters import adapter_of
from ppo_jax.config import preset_names

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("changes, pattern", [
    (dict(num_minibatches=3), r"num_minibatches: 3 does not divide the batch num_envs \* num_steps = 4 \* 128 = 512"),
    (dict(lr=0.0), r"lr: must be a positive"),
    (dict(critic_lr=-1e-3), r"critic_lr: must be a positive"),
    (dict(env="CartPole"), r"env: unknown environment id 'CartPole'.*Valid ids: .*CartPole-v1"),
    (dict(total_timesteps=100), r"total_timesteps: 100 is below one update"),
    (dict(gamma=1.5), r"gamma: must lie in \[0, 1\]"),
    (dict(num_envs=0), r"num_envs: must be a positive integer"),
    (dict(target_kl=-0.1), r"target_kl: must be a finite number >= 0"),
    (dict(activation="swish"), r"activation: must be one of"),
    (dict(algo="sac"), r"algo: must be one of ppo, a2c, trpo, reinforce, reinforce-baseline"),
    (dict(algo="trpo", shared_torso=True), r"shared_torso: trpo steps the policy and the critic separately"),
    (dict(algo="trpo", trpo_delta=0.0), r"trpo_delta: must be a positive"),
    (dict(cg_iters=0), r"cg_iters: must be a positive integer"),
    (dict(algo="reinforce"), r"num_steps: reinforce learns from whole episodes, so a rollout must hold the longest "
                             r"one: num_steps >= 500 \(CartPole-v1's time limit\), got 128"),
])
def test_bad_config_names_the_field(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        make_train(PPOConfig().replace(**changes))


def test_remainder_warning():
    with pytest.warns(UserWarning, match="total_timesteps: 1000 is not a multiple of the batch 512"):
        make_train(PPOConfig(total_timesteps=1000))


def test_presets_are_valid():
    for name in ["CartPole-v1", "Acrobot-v1", "Pendulum-v1", "MountainCarContinuous-v0", "Breakout-MinAtar",
                 "SpaceInvaders-MinAtar", "Asterix-MinAtar", "Freeway-MinAtar", "pomdp:CartPole-v1"]:
        assert name in preset_names()
        preset(name).validate()
    for algo in ("ppo", "a2c", "trpo", "reinforce", "reinforce-baseline"):
        assert preset("CartPole-v1", algo).validate().algo == algo
    assert preset("CartPole-v1", "a2c").num_envs == 8


def test_stack_hparams_refuses_static_differences():
    with pytest.raises(ValueError, match=r"configs\[1\]: static field\(s\) num_envs"):
        stack_hparams([PPOConfig(), PPOConfig(num_envs=8)])
    hp = stack_hparams([PPOConfig(lr=1e-3), PPOConfig(lr=2e-3)])
    assert hp.lr.shape == (2,)


def test_config_round_trips_through_dict():
    c = PPOConfig(hidden_sizes=(32, 16), lr=1e-3)
    assert PPOConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown field"):
        PPOConfig.from_dict({"learning_rate": 1.0})


def test_preset_defaults_run_whole_updates_without_a_warning():
    import importlib.util
    import warnings

    from ppo_jax.config import ALGORITHMS

    for name in preset_names():
        adapter = adapter_of(name)
        if adapter and adapter.library and importlib.util.find_spec(adapter.library) is None:
            continue  # an optional extra that is not installed (its message: test_physics_adapter.py)
        for algo in ALGORITHMS:
            config = preset(name, algo)
            assert config.total_timesteps % config.batch_size == 0, (name, algo)
            if config.network == "gru" and algo not in ("ppo", "a2c"):
                with pytest.raises(ValueError, match="^network: 'gru' runs with ppo and a2c"):
                    make_train(config)
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a UserWarning here would fail the test
                make_train(config)
    cartpole = preset("CartPole-v1")  # 5e5 steps in 512-step batches, rounded down to whole updates
    assert (cartpole.total_timesteps, cartpole.num_updates) == (499_712, 976)


def test_compilation_cache_folder_and_switch(tmp_path, monkeypatch, capsys):
    from ppo_jax.run import compile_cache, settings

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv("PPO_JAX_COMPILATION_CACHE", raising=False)
    monkeypatch.setenv("RL_JAX_COMPILATION_CACHE", "0")
    assert compile_cache.enable() is None
    monkeypatch.setenv("RL_JAX_COMPILATION_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.default_folder() == tmp_path / "rl-jax" / "xla"
    assert capsys.readouterr().err == ""
    # The spelling of earlier releases still works, with one deprecation line.
    monkeypatch.delenv("RL_JAX_COMPILATION_CACHE")
    monkeypatch.setenv("PPO_JAX_COMPILATION_CACHE", "0")
    monkeypatch.setattr(settings, "_noted", set())
    assert compile_cache.enable() is None and compile_cache.enable() is None
    err = capsys.readouterr().err
    assert err.count("PPO_JAX_COMPILATION_CACHE is deprecated; use RL_JAX_COMPILATION_CACHE") == 1
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "own"))
    monkeypatch.delenv("PPO_JAX_COMPILATION_CACHE")
    assert compile_cache.enable() is None  # JAX's own setting wins


def test_reinforce_presets_hold_a_whole_episode_per_rollout():
    from ppo_jax.envs import env_spec

    for name in ["CartPole-v1", "Acrobot-v1", "Pendulum-v1", "MountainCarContinuous-v0"]:
        for algo in ("reinforce", "reinforce-baseline"):
            config = preset(name, algo).validate()
            assert env_spec(name).max_steps <= config.num_steps < env_spec(name).max_steps + 64, (name, algo)


@pytest.mark.timeout(60)
def test_every_algorithm_name_has_one_update_rule():
    from ppo_jax.algorithms import UPDATES
    from ppo_jax.config import ALGORITHMS

    assert tuple(UPDATES) == ALGORITHMS


@pytest.mark.timeout(60)
def test_configs_come_back_from_json_whole():
    import json

    from rlhf_jax.pipeline import PipelineConfig

    config = PPOConfig(hidden_sizes=(32, 16), lr=1e-3)
    assert PPOConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # lists back to tuples
    pipeline = PipelineConfig()
    assert PipelineConfig.from_dict(json.loads(json.dumps(pipeline.to_dict()))) == pipeline  # nested configs
    with pytest.raises(ValueError, match=r"TransformerConfig: unknown field\(s\) widht"):
        PipelineConfig.from_dict({"sft": {"model": {"widht": 3}}})
