"""The unrolled threefry lowering on CPU draws the very same bits as JAX's rolled one."""

import json
import os
import subprocess
import sys

import jax
import pytest

from ppo_jax.run import prng

pytestmark = pytest.mark.timeout(120)

DRAWS = """
import json, sys
import jax, jax.numpy as jnp
import ppo_jax
ppo_jax.configure()  # installs the lowering unless RL_JAX_UNROLLED_THREEFRY=0

def draws(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"split": jax.random.key_data(jax.random.split(jax.random.wrap_key_data(key), 5)).sum(),
            "uniform": jax.random.uniform(k1, (7,)), "normal": jax.random.normal(k2, (3, 2)),
            "categorical": jax.random.categorical(k3, jnp.zeros((64, 4))),
            "permutation": jax.random.permutation(k1, 50), "fold": jax.random.fold_in(k2, 12345)}

keys = jax.random.split(jax.random.PRNGKey(3), 4)
out = {"jit": jax.jit(draws)(keys[0]), "vmap": jax.jit(jax.vmap(draws))(keys)}
print(json.dumps(jax.tree.map(lambda x: jnp.asarray(x).tolist(), out)))
"""


def _draws(unrolled: bool) -> dict:
    env = {**os.environ, prng.ENV: "1" if unrolled else "0", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", DRAWS], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


def test_unrolled_threefry_draws_the_same_bits_as_jax_default():
    assert _draws(unrolled=True) == _draws(unrolled=False)


LOOPS = """
import jax
from ppo_jax.run import prng
print(prng.install(), " while(" in jax.jit(lambda k: jax.random.uniform(k, (3,))).lower(jax.random.PRNGKey(0)).compile().as_text())
"""


@pytest.mark.parametrize("setting", ["1", "0"])
def test_random_draws_compile_without_a_loop_only_when_unrolled(setting):
    # In a subprocess: the registration is process-wide, and on JAX versions where it is not
    # used by default it must not reach the other tests' programs.
    env = {**os.environ, prng.ENV: setting, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", LOOPS], capture_output=True, text=True, env=env, check=True)
    installed, has_loop = out.stdout.split()
    # JAX's own CPU lowering has a five-round loop here
    assert (installed, has_loop) == (("True", "False") if setting == "1" else ("False", "True"))


def test_the_unrolled_lowering_is_the_default_only_on_measured_versions():
    assert prng.decide("0.10.2", None) == (True, None)
    assert prng.decide("0.11.2", None) == (False, None)  # its init program never finished compiling
    for version in ("0.12.0", "0.9.1", "1.0.0", "nightly"):
        used, note = prng.decide(version, None)
        assert not used and version in note and prng.ENV in note
    assert prng.decide("0.12.0", "1") == (True, None)
    assert prng.decide("0.10.2", "0") == (False, None)
    used, note = prng.decide("0.10.2", "yes")
    assert not used and "'yes'" in note


def test_the_process_uses_what_decide_says():
    # conftest leaves the variable unset unless the developer set it
    expected, _ = prng.decide(jax.__version__, os.environ.get(prng.ENV))
    from ppo_jax import configure

    configure()  # installs it if wanted

    assert prng._installed == expected
