"""--vmm-goldens DIR (and the vmm_goldens ini key) choose where goldens live."""

import pytest

from plugin_helpers import ECHO_TEST

pytestmark = pytest.mark.kvm


def test_goldens_directory_option(project):
    project.makepyfile(test_echo=ECHO_TEST)
    project.runpytest("--update-goldens", "--vmm-goldens", "golden-dir").assert_outcomes(passed=1)
    assert (project.path / "golden-dir" / "test_echo" / "test_echo.trace").exists()
    assert not (project.path / "traces").exists()
    project.runpytest("--vmm-goldens", "golden-dir", "test_echo.py").assert_outcomes(passed=1)
    project.runpytest("test_echo.py").assert_outcomes(failed=1)   # not in the default place


def test_goldens_directory_ini(project):
    project.makeini("[pytest]\naddopts = -p no:cacheprovider\nvmm_goldens = g\n")
    project.makepyfile(test_echo=ECHO_TEST)
    project.runpytest("--update-goldens").assert_outcomes(passed=1)
    assert (project.path / "g" / "test_echo" / "test_echo.trace").exists()
