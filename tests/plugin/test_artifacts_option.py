"""--vmm-artifacts DIR: the actual traces of failed tests are kept there, and only of those."""

import subprocess

import pytest

from conftest import vmm_command

pytestmark = pytest.mark.kvm

FAILING_AND_PASSING = '''
def test_fails(vm):
    s = vm("guests/echo.bin")
    s.sendline("one")
    s.expect("one", timeout=1)
    assert s.lines == ["two"]

def test_passes(vm):
    s = vm("guests/echo.bin")
    s.sendline("one")
    s.expect("one", timeout=1)
'''


def test_failed_tests_keep_their_traces_which_replay(project):
    project.makepyfile(test_art=FAILING_AND_PASSING)
    result = project.runpytest("--vmm-artifacts", "kept")
    result.assert_outcomes(failed=1, passed=1)
    kept = sorted(p.name for p in (project.path / "kept").iterdir())
    assert kept == ["test_art.py__test_fails.trace"]
    result.stdout.fnmatch_lines(["*actual trace kept: *kept/test_art.py__test_fails.trace*"])
    replay = subprocess.run(vmm_command("replay", "-q", str(project.path / "kept" / kept[0])),
                            capture_output=True, text=True)
    assert replay.returncode == 0, replay.stderr


def test_default_artifacts_directory(project):
    project.makepyfile(test_art=FAILING_AND_PASSING)
    project.runpytest().assert_outcomes(failed=1, passed=1)
    assert (project.path / ".vmm-artifacts" / "test_art.py__test_fails.trace").exists()
