"""What `pip install vmm` gives: the extras the docs name, and clear errors without them."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from conftest import ROOT


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_pytest_extra_brings_pytest_and_hypothesis():
    extra = {req.split(">")[0].split("=")[0] for req in project()["optional-dependencies"]["pytest"]}
    assert extra == {"pytest", "hypothesis"}


def test_the_plugin_is_registered_under_the_pytest11_entry_point():
    assert project()["entry-points"]["pytest11"] == {"vmm": "harness.pytest_plugin"}


@pytest.mark.parametrize("module, missing, message", [
    ("harness.strategies", "hypothesis", "harness.strategies needs Hypothesis, which is not "
                                         "installed: pip install 'vmm[pytest]'"),
    ("harness.pytest_plugin", "pytest", "harness.pytest_plugin is vmm's pytest plugin, and "
                                        "pytest is not installed: pip install 'vmm[pytest]'"),
])
def test_without_the_extra_the_import_error_says_what_to_install(module, missing, message):
    # sys.modules[name] = None makes `import name` fail as if the package were not installed.
    code = (f"import sys; sys.modules[{missing!r}] = None\n"
            f"try:\n    import {module}\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.stdout.strip().startswith(message), out


def test_the_library_part_of_harness_needs_neither():
    code = ("import sys; sys.modules['pytest'] = sys.modules['hypothesis'] = None\n"
            "from harness import GuestSession; import harness.golden; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.stdout.strip() == "ok", out
