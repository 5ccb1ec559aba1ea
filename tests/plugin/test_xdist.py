"""Under pytest-xdist (-n 2): goldens, artifacts per worker, and the unused-golden report."""

import pytest

from plugin_helpers import ECHO_TEST

pytestmark = pytest.mark.kvm

TWO_FAILING = '''
import pytest

@pytest.mark.parametrize("word", ["alpha", "beta", "gamma", "delta"])
def test_fails(vm, word):
    s = vm("guests/echo.bin")
    s.sendline(word)
    s.expect(word, timeout=1)
    assert False, word
'''


def test_artifacts_from_every_worker(project):
    project.makepyfile(test_par=TWO_FAILING)
    result = project.runpytest("-n", "2")
    result.assert_outcomes(failed=4)
    kept = sorted(p.name for p in (project.path / ".vmm-artifacts").iterdir())
    assert kept == [f"test_par.py__test_fails-{w}.trace"
                    for w in ("alpha", "beta", "delta", "gamma")]


def test_goldens_and_unused_report_under_xdist(project):
    project.makepyfile(test_echo=ECHO_TEST + ECHO_TEST.replace("test_echo(", "test_echo2("))
    project.runpytest("-n", "2", "--update-goldens").assert_outcomes(passed=2)
    stale = project.path / "traces" / "test_echo" / "test_gone.trace"
    stale.write_bytes((project.path / "traces" / "test_echo" / "test_echo.trace").read_bytes())
    result = project.runpytest("-n", "2", "test_echo.py")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["vmm: 1 golden traces were not used by any test*",
                                 "  traces/test_echo/test_gone.trace"])
