"""Trace files are tests by themselves: pytest re-drives them against the guest they name."""

import os
import shutil

import pytest

from conftest import ROOT, kvm_usable
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


def test_a_trace_kvm_cannot_run_is_re_driven_on_the_emulator(project):
    # echo-p3-pm's golden: recorded on the emulator; this host's KVM stops at its first IRET
    # in protected mode (tests/test_irq_kernels.py), where the recording went on
    golden = ("traces/test_irq_kernels/"
              "test_echo_p3_pm_echoes_keys_from_irq_1_and_counts_ticks_from_irq_0.trace")
    for name in (golden, "guests/build/irq/echo-p3-pm.bin"):
        (project.path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, project.path / name)
    result = project.runpytest("traces", "-rA")
    if not kvm_usable() or os.environ.get("VMM_BACKEND") == "emu":
        result.assert_outcomes(passed=1)            # the emulator re-drives it in the first place
    elif os.environ.get("VMM_BACKEND") == "kvm":
        result.assert_outcomes(skipped=1)
        result.stdout.fnmatch_lines(["*KVM cannot run guests/build/irq/echo-p3-pm.bin*iretd*"])
    else:
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(["*KVM cannot run guests/build/irq/echo-p3-pm.bin*iretd*",
                                     "re-driven on the emulator"])
