"""Importing the packages changes no global state; ppo_jax.configure() makes the settings, once."""

import os
import subprocess
import sys

import pytest

from ppo_jax.run.configure import SCHEDULER_OFF

pytestmark = pytest.mark.timeout(120)

IMPORTS = """
import os, sys
before = os.environ.get("XLA_FLAGS")
import ppo_jax, ppo_jax.cli, ppo_jax.train, ppo_jax.experiment, ppo_jax.envs, ppo_jax.checkpoint
import rlhf_jax, rlhf_jax.cli, rlhf_jax.pipeline, rlhf_jax.sampling, rlhf_jax.ppo_trainer
from jax._src import xla_bridge
from ppo_jax.run import prng
print(os.environ.get("XLA_FLAGS") == before, xla_bridge.backends_are_initialized(), prng._installed,
      "gymnax" in sys.modules, "seaborn" in sys.modules, sys.unraisablehook is sys.__unraisablehook__)
"""

CONFIGURE = """
import os, sys
import ppo_jax
if sys.argv[1] == "late":
    import jax.numpy as jnp
    jnp.ones(1).block_until_ready()
ppo_jax.configure(sys.argv[2] or None)
ppo_jax.configure()  # the first call decides
from jax._src import xla_bridge
print(os.environ.get("XLA_FLAGS"), xla_bridge.backends_are_initialized())
"""


def _run(code, *args):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True)


def test_imports_change_no_global_state():
    out = _run(IMPORTS).stdout.split()
    assert out == ["True", "False", "False", "False", "False", "True"], out


@pytest.mark.parametrize("env, flags", [("", SCHEDULER_OFF), ("CartPole-v1", SCHEDULER_OFF),
                                        ("playground:CartpoleBalance", SCHEDULER_OFF), ("brax:hopper", "None")])
def test_configure_sets_the_scheduler_flag_for_the_environment_before_the_backend_starts(env, flags):
    early = _run(CONFIGURE, "early", env)
    assert early.stdout.split() == [flags, "False"] and early.stderr == ""  # configure starts nothing
    late = _run(CONFIGURE, "late", env)  # too late to change: nothing set, nothing said
    assert late.stdout.split() == ["None", "True"] and late.stderr == ""
