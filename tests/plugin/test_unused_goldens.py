"""Goldens that no test used are reported at the end of the run."""

import pytest

from plugin_helpers import ECHO_TEST

pytestmark = pytest.mark.kvm


def test_unused_goldens_are_reported(project):
    project.makepyfile(test_echo=ECHO_TEST)
    project.runpytest("--update-goldens").assert_outcomes(passed=1)
    stale = project.path / "traces" / "test_echo" / "test_renamed_long_ago.trace"
    stale.write_bytes((project.path / "traces" / "test_echo" / "test_echo.trace").read_bytes())
    result = project.runpytest("-p", "no:randomly", "test_echo.py")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["vmm: 1 golden traces were not used by any test*",
                                 "  traces/test_echo/test_renamed_long_ago.trace"])


def test_goldens_of_modules_that_did_not_run_are_not_reported(project):
    project.makepyfile(test_echo=ECHO_TEST, test_other="def test_x():\n    pass\n")
    project.runpytest("--update-goldens").assert_outcomes(passed=2)
    result = project.runpytest("test_other.py")
    result.assert_outcomes(passed=1)
    assert "not used by any test" not in result.stdout.str()
