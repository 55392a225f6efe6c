"""The declared versions are the tested ones: pyproject.toml's lower bounds equal the pins CI's
full run installs (.ci/lowest.txt), this environment satisfies them, and the README says
which versions are tested."""

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.version import Version

from ppo_jax.adapters import ADAPTERS

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
SIMULATORS = [adapter.extra for adapter in ADAPTERS.values() if adapter.extra]
"""Extras CI does not install (physics simulators the adapters use; their tests skip without them).
Their lower bounds are the versions the adapters were tried with, outside CI."""


def _lower_bounds() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    bounds = {}
    extras = [deps for name, deps in project["optional-dependencies"].items() if name not in SIMULATORS]
    for extra in [project["dependencies"], *extras]:
        for requirement in extra:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9A-Za-z.]*)", requirement)
            assert match, f"pyproject.toml: {requirement!r} has no plain lower bound"
            bounds[match[1]] = match[2]
    return bounds


def _pins() -> dict[str, str]:
    pins = {}
    for number, line in enumerate((REPO / ".ci" / "lowest.txt").read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f".ci/lowest.txt:{number}: {line!r} is not NAME==VERSION"
            pins[name.strip()] = version.strip()
    return pins


def test_lower_bounds_are_the_versions_ci_pins():
    assert _lower_bounds() == _pins()


def test_this_environment_satisfies_the_lower_bounds():
    for name, lower in _lower_bounds().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # an extra this environment did not install
        assert Version(installed) >= Version(lower), f"{name} {installed} is below the declared {lower}"


def test_readme_names_the_tested_versions():
    readme = (REPO / "README.md").read_text()
    assert f"jax {_lower_bounds()['jax']}" in readme
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f"Python {requires.removeprefix('>=')}" in readme


def test_the_prng_lowering_was_measured_on_the_lowest_jax():
    from ppo_jax.run import prng

    assert prng.jax_minor(_lower_bounds()["jax"]) in prng.MEASURED
