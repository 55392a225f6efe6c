"""Your environment: an object with gymnax's functional API, written here, trains through
make_train(config, env=...) and through ppo-jax train --env path/to/file.py:function, and a
killed run of it resumes to the uninterrupted result; an object lacking part of the API is one
line naming what is missing."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from procwatch import wait_for

from ppo_jax import checkpoint as ckpt
from ppo_jax.cli import main
from ppo_jax.config import PPOConfig

pytestmark = pytest.mark.timeout(300)

CHAIN = '''
import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

N = 6


@struct.dataclass
class State(environment.EnvState):
    pos: jax.Array
    time: int


@struct.dataclass
class Params(environment.EnvParams):
    max_steps_in_episode: int = 20


class Chain(environment.Environment):
    """Walk right along N cells: +1 at the end (terminated), -0.05 a step, 20 steps at most."""

    @property
    def default_params(self):
        return Params()

    def step_env(self, key, state, action, params):
        pos = jnp.clip(state.pos + 2 * action - 1, 0, N - 1)
        state = State(pos=pos, time=state.time + 1)
        done = pos == N - 1
        return self.get_obs(state), state, jnp.where(done, 1.0, -0.05), done, {}

    def reset_env(self, key, params):
        state = State(pos=jnp.asarray(0), time=0)
        return self.get_obs(state), state

    def get_obs(self, state, params=None, key=None):
        return jax.nn.one_hot(state.pos, N)

    def action_space(self, params=None):
        return spaces.Discrete(2)

    def observation_space(self, params):
        return spaces.Box(0.0, 1.0, (N,), jnp.float32)


def make():
    return Chain()
'''

FLAGS = ["--num-envs", "4", "--num-steps", "32", "--total-timesteps", str(40 * 128), "--update-epochs", "4",
         "--num-minibatches", "2", "--hidden-sizes", "32", "--lr", "3e-3", "--critic-lr", "3e-3", "--eval-episodes", "4",
         "--no-progress"]


@pytest.fixture
def chain_file(tmp_path):
    path = tmp_path / "chain_env.py"
    path.write_text(CHAIN)
    return path


def test_your_environment_object_trains_through_make_train(chain_file):
    from ppo_jax import make_train
    from ppo_jax.run.named import load_named

    env = load_named(f"{chain_file}:make", "env")()
    config = PPOConfig(num_envs=4, num_steps=32, total_timesteps=40 * 128, update_epochs=4, num_minibatches=2,
                       hidden_sizes=(32,), lr=3e-3, critic_lr=3e-3)
    out = jax.jit(make_train(config, env=env))(jax.random.PRNGKey(0))
    returns = np.asarray(out.metrics["episode_return"])
    # Measured on seeds 0-2: the mean finished-episode return of the first 5 updates -0.1 to 0.22, of the
    # last 5 0.8, the optimum (5 steps right).
    assert returns[-5:].mean() > 0.7 and returns[-5:].mean() > returns[:5].mean() + 0.3, returns


def test_ppo_jax_train_on_your_environment_file_and_a_killed_run_resumes(chain_file, tmp_path):
    from ppo_jax.experiment import resume_run

    # 1,000 updates, a checkpoint every 100: the kill lands with most of the run still to go.
    flags = [*FLAGS, "--total-timesteps", str(1000 * 128), "--checkpoint-every", "100"]
    args = ["train", "--env", f"{chain_file}:make", *flags]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", "from ppo_jax.console import main; main()", *args, "--out",
                             str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for((killed / "checkpoints" / "100").exists, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()  # it really died mid-run

    main(args + ["--out", str(tmp_path / "whole")])
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert min(summary["final_return_per_seed"]) > 0.7, summary  # deterministic evaluation; the optimum is 0.8
    assert resume_run(str(killed), progress=False)["resumed_from_update"] >= 100
    _, whole, _ = ckpt.restore(tmp_path / "whole" / "checkpoint")
    _, resumed, _ = ckpt.restore(killed / "checkpoint")
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):  # params, Adam state, normalisers
        np.testing.assert_array_equal(a, b)


def test_an_environment_without_part_of_the_api_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad_env.py"
    bad.write_text("class Half:\n    def reset(self, key, params):\n        pass\n\n"
                   "    default_params = None\n\n\ndef make():\n    return Half()\n")
    with pytest.raises(SystemExit):
        main(["train", "--env", f"{bad}:make", *FLAGS, "--out", str(tmp_path / "never")])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ppo-jax: error: env: '{bad}:make' returned a Half that has no step, observation_space, "
                   "action_space; an environment needs gymnax's functional API: reset(key, params), "
                   "step(key, state, action, params), observation_space(params), action_space(params) and "
                   "default_params"], err
    assert not (tmp_path / "never").exists()
    for spec, message in [("no_such_module_e:make", "cannot import no_such_module_e"),
                          (f"{tmp_path}/missing.py:make", "no file")]:
        with pytest.raises(SystemExit):
            main(["train", "--env", spec, *FLAGS])
        assert message in capsys.readouterr().err


def test_an_object_id_from_another_process_is_one_line(chain_file):
    from ppo_jax.envs import register_env, user_env
    from ppo_jax.run.named import load_named
    from ppo_jax.user_network import user_network

    env = load_named(f"{chain_file}:make", "env")()
    env_id = register_env(env)
    assert user_env(env_id) == (env, env.default_params)
    # A saved config names the object by its id; in a process that was not given it, that id means nothing.
    with pytest.raises(ValueError, match=r"^env: 'object:Chain@1' was an environment object of another "
                                         r"process; give it again \(make_train\(config, env=\.\.\.\)\) or name a "
                                         r"module:function$"):
        user_env("object:Chain@1")
    with pytest.raises(ValueError, match=r"^network: 'object:MLP@1' was a module of another process; give it "
                                         r"again \(make_train\(config, network=\.\.\.\)\)"):
        user_network("object:MLP@1")
