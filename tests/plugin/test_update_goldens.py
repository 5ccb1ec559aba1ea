"""--update-goldens, and comparing with goldens: missing, matching, different."""

import pytest

from conftest import ROOT
from plugin_helpers import ECHO_TEST

pytestmark = pytest.mark.kvm


def test_first_run_without_a_golden_fails_with_a_hint(project):
    project.makepyfile(test_echo=ECHO_TEST)
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*no golden trace at traces/test_echo/test_echo.trace: run "
                                 "pytest with --update-goldens*"])


def test_update_goldens_writes_them_and_the_next_run_compares(project):
    project.makepyfile(test_echo=ECHO_TEST)
    result = project.runpytest("--update-goldens")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["vmm: wrote 1 golden traces under traces"])
    golden = project.path / "traces" / "test_echo" / "test_echo.trace"
    assert golden.exists()
    project.runpytest("test_echo.py").assert_outcomes(passed=1)
    project.runpytest().assert_outcomes(passed=1, deselected=1)   # checked once, by its test


def test_a_different_session_fails_with_a_diff(project):
    project.makepyfile(test_echo=ECHO_TEST)
    project.runpytest("--update-goldens").assert_outcomes(passed=1)
    project.makepyfile(test_echo=ECHO_TEST.replace('"hello"', '"hallo"'))
    result = project.runpytest("test_echo.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*console output differs from the golden trace*test_echo.trace",
        "*first difference at line 1:",
        "*expected: console: hello",
        "*actual:   console: hallo",
        "*--- golden",
        "*+++ actual",
        "*-console: hello",
        "*+console: hallo",
        "*actual trace kept: .vmm-artifacts/test_echo.py__test_echo.trace*vmm replay*",
    ])
    # each part of the report once (the short summary, which pytest leaves untruncated when
    # $CI is set, repeats the first line of the failure: not counted)
    text = result.stdout.str().split("short test summary info")[0]
    assert text.count("first difference at line") == 1
    assert text.count("--- golden") == 1
    assert text.count(".vmm-artifacts/test_echo.py__test_echo.trace") == 2   # kept; replay it


def test_a_golden_is_checked_once_when_its_test_runs_too(project):
    project.makepyfile(test_echo=ECHO_TEST)
    project.runpytest("--update-goldens").assert_outcomes(passed=1)
    project.makepyfile(test_echo=ECHO_TEST.replace('"hello"', '"hallo"'))
    result = project.runpytest()                 # collects test_echo.py and traces/
    result.assert_outcomes(failed=1, deselected=1)
    project.runpytest("traces").assert_outcomes(passed=1)   # on its own, the trace is a test


def test_the_guest_binary_may_change_if_it_behaves_the_same(project):
    project.makepyfile(test_echo=ECHO_TEST)
    project.runpytest("--update-goldens").assert_outcomes(passed=1)
    # next week's build: the ELF build of the same guest, in place of the raw one
    (project.path / "guests" / "echo.bin").write_bytes((ROOT / "guests/build/echo.elf").read_bytes())
    project.runpytest().assert_outcomes(passed=1, deselected=1)
    project.runpytest("traces").assert_outcomes(passed=1)        # the re-drive


def test_parametrized_tests_get_one_golden_each(project):
    project.makepyfile(test_params='''
        import pytest

        @pytest.mark.parametrize("word", ["a b", "c/d"])
        def test_words(vm, golden, word):
            s = vm("guests/echo.bin")
            s.sendline(word)
            s.expect(word, timeout=1)
            assert s == golden
    ''')
    project.runpytest("--update-goldens").assert_outcomes(passed=2)
    names = sorted(p.name for p in (project.path / "traces" / "test_params").iterdir())
    assert names == ["test_words-a_b.trace", "test_words-c_d.trace"]
    project.runpytest("test_params.py").assert_outcomes(passed=2)
