"""Trace files are tests by themselves: pytest re-drives them against the guest they name."""

import pytest

from conftest import ROOT
from plugin_helpers import ECHO_TEST

pytestmark = pytest.mark.kvm


def test_goldens_are_collected_and_re_driven(project):
    project.makepyfile(test_echo=ECHO_TEST)
    project.runpytest("--update-goldens").assert_outcomes(passed=1)
    result = project.runpytest("traces", "-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*traces/test_echo/test_echo.trace::test_echo.trace PASSED*"])


def test_a_guest_that_changed_behaviour_fails_with_a_diff(project):
    project.makepyfile(test_echo=ECHO_TEST)
    project.runpytest("--update-goldens").assert_outcomes(passed=1)
    (project.path / "guests" / "echo.bin").write_bytes(
        (ROOT / "guests/build/longmode.elf").read_bytes())
    result = project.runpytest("traces")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*re-drive differs*", "*-console: hello*"])


def test_a_trace_without_a_guest_path_fails_clearly(project, guests, vmm):
    (project.path / "t").mkdir()
    r = vmm("record", guests / "echo.bin", "--clock", "virtual", "--max-time", "1s",
            "-o", project.path / "t" / "plain.trace", input=b"x\n")
    assert r.returncode == 28
    result = project.runpytest("t")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*does not say where its guest is built*"])


def test_a_corrupt_trace_file_fails_clearly(project):
    (project.path / "bad.trace").write_text("not a trace\n")
    result = project.runpytest("bad.trace")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*is not a vmm trace*"])


def test_the_ini_switch_turns_trace_collection_off(project):
    project.makeini("[pytest]\naddopts = -p no:cacheprovider\nvmm_trace_tests = false\n")
    (project.path / "bad.trace").write_text("not a trace\n")
    result = project.runpytest("bad.trace")
    assert result.ret == 4 or result.ret == 5        # nothing collected: usage error / no tests
