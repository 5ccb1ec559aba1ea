"""The vm fixture: sessions in guest time, closed after the test, defaults from conftest."""

import pytest

pytestmark = pytest.mark.kvm


def test_vm_factory_drives_a_guest_with_pexpect_api(project):
    project.makepyfile('''
        import pexpect, re

        def test_it(vm):
            s = vm("guests/echo.bin")
            s.sendline("hi")
            assert s.expect(["nope", re.compile("h.")], timeout=1) == 1
            assert s.after == "hi" and s.now == 0.5
            assert s.expect([pexpect.TIMEOUT, "never"], timeout=2) == 0
            assert s.now == 2.5
            s.close()
            assert s.reason == "session-end" and s.exit_code == 0
            assert s.lines[:2] == ["hi", "hi"]
    ''')
    project.runpytest().assert_outcomes(passed=1)


def test_sessions_are_closed_after_the_test(project):
    project.makepyfile('''
        SESSIONS = []

        def test_one(vm):
            SESSIONS.append(vm("guests/echo.bin"))

        def test_two():
            assert SESSIONS[0].end is not None
            assert SESSIONS[0].reason == "session-end"
    ''')
    project.runpytest().assert_outcomes(passed=2)


def test_default_guest_and_options_from_conftest(project):
    project.makeconftest('''
        import pytest

        @pytest.fixture
        def vm_guest():
            return "guests/longmode.elf"

        @pytest.fixture
        def vm_options():
            return {"mem": "32M"}
    ''')
    project.makepyfile('''
        def test_it(vm):
            s = vm()
            s.expect("Hello from long mode!")
            assert s.machine.image.mem_size == 32 << 20
    ''')
    project.runpytest().assert_outcomes(passed=1)


def test_default_guest_from_the_ini_file(project):
    project.makeini("[pytest]\naddopts = -p no:cacheprovider\nvmm_guest = guests/longmode.elf\n")
    project.makepyfile('''
        def test_it(vm):
            vm().expect("Hello from long mode!")
    ''')
    project.runpytest().assert_outcomes(passed=1)


def test_without_kvm_sessions_run_on_the_emulator(project, monkeypatch):
    monkeypatch.setenv("VMM_KVM_PATH", "/nonexistent/kvm")
    monkeypatch.delenv("VMM_BACKEND", raising=False)
    project.makepyfile('''
        def test_it(vm):
            s = vm("guests/echo.bin")
            s.sendline("hi")
            s.expect("hi", timeout=1)
    ''')
    project.runpytest().assert_outcomes(passed=1)


def test_without_kvm_tests_skip_with_a_reason_and_the_summary_counts_them(project, monkeypatch):
    monkeypatch.setenv("VMM_KVM_PATH", "/nonexistent/kvm")
    monkeypatch.setenv("VMM_BACKEND", "kvm")         # KVM or nothing
    project.makepyfile('''
        def test_a(vm):
            vm("guests/echo.bin")

        def test_b(vm):
            vm("guests/echo.bin")

        def test_no_vm():
            pass
    ''')
    result = project.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["vmm: 2 tests skipped because /dev/kvm is not usable on this host"])
    result.stdout.fnmatch_lines(["SKIPPED*needs a usable /dev/kvm*"])


def test_a_guest_path_that_does_not_exist_fails_in_one_line_naming_the_rootdir(project):
    (project.path / "tox.ini").unlink()                  # a user's repository without one
    tests = project.mkdir("tests")
    (tests / "test_k.py").write_text(
        'def test_kernel(vm):\n    vm("kernel.bin")\n')
    project.chdir()
    result = project.runpytest("-p", "no:cacheprovider", "tests/test_k.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*vm('kernel.bin'): no guest file at */kernel.bin: a relative guest path is relative "
        "to pytest's rootdir, * (no pytest configuration file was found*"])
    assert "Traceback" not in result.stdout.str() and "site-packages" not in result.stdout.str()


def test_a_guest_that_cannot_boot_fails_in_one_line(project):
    (project.path / "guests" / "empty.bin").write_bytes(b"")
    project.makepyfile('def test_it(vm):\n    vm("guests/empty.bin")\n')
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*vm('guests/empty.bin'): guest file is empty: *empty.bin"])
    assert "site-packages" not in result.stdout.str()
