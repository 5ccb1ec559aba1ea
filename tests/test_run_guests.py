"""Every bundled guest runs with its documented command (on real KVM)."""

import pytest

pytestmark = pytest.mark.kvm


def test_echo_raw_prints_the_line_once_per_timer_period(vmm, guests):
    r = vmm("run", guests / "echo.bin", "--timeout", "1300ms", input=b"hello\n")
    assert r.returncode == 28, r            # ended by --timeout: the guest never halts
    assert len(r.lines) >= 1 and set(r.lines) == {"hello"}, r
    assert "--timeout" in r.stderr


def test_echo_elf_behaves_like_the_raw_build(vmm, guests):
    r = vmm("run", guests / "echo.elf", "--timeout", "1300ms", input=b"hello\n")
    assert r.returncode == 28, r
    assert len(r.lines) >= 1 and set(r.lines) == {"hello"}, r


def test_echo_a_new_line_replaces_the_old_one_and_backspace_edits(vmm, guests):
    # Both lines arrive at once; the guest consumes them in order, so only the last is echoed.
    r = vmm("run", guests / "echo.bin", "--timeout", "800ms", input=b"first\nsecx\x7fond\n")
    assert r.returncode == 28, r
    assert r.lines and set(r.lines) == {"second"}, r


def test_echo_prints_nothing_before_enter(vmm, guests):
    r = vmm("run", guests / "echo.bin", "--timeout", "700ms", input=b"no enter yet")
    assert r.returncode == 28 and r.stdout == "", r


def test_monitor_cpu_information_and_halt(vmm, guests):
    r = vmm("run", guests / "monitor.bin", input=b"1xh")
    assert r.returncode == 0, r
    assert r.lines[0] == "vmm monitor v1"
    assert "Vendor: GenuineIntel" in r.lines
    assert "Brand: vmm portable x86-64 CPU" in r.lines
    assert "Family: 6 Model: 58 Stepping: 9" in r.lines
    assert any(line.startswith("Invalid choice: x") for line in r.lines), r
    assert r.lines[-1] == "Halted."


def test_monitor_host_cpuid_shows_this_hosts_cpu(vmm, guests):
    r = vmm("run", guests / "monitor.bin", "--cpuid", "host", input=b"1h")
    assert r.returncode == 0, r
    assert "Brand: vmm portable x86-64 CPU" not in r.lines
    assert any(line.startswith("Vendor: ") for line in r.lines)


@pytest.mark.parametrize("guest", ["reset-hello.bin", "reset-hello-rep.bin"])
def test_reset_vector_greeting(vmm, guests, guest):
    r = vmm("run", guests / guest, "--entry", "reset")
    assert r.returncode == 0, r
    assert r.lines == ["Hello from the reset vector!"]


def test_reset_vector_spin_is_found_to_spin_forever(vmm, guests):
    r = vmm("run", guests / "reset-spin.bin", "--entry", "reset", "--timeout", "20s")
    assert r.returncode == 50, r
    assert "spins forever" in r.stderr


def test_long_mode_guest_prints_echoes_and_halts(vmm, guests):
    r = vmm("run", guests / "longmode.elf", input=b"abc\nhalt\n")
    assert r.returncode == 0, r
    assert r.lines == ["Hello from long mode!", "you typed: abc", "you typed: halt", "bye"] or \
        r.lines == ["Hello from long mode!", "you typed: abc", "bye"], r


def test_long_mode_guest_exit_device_status(vmm, guests):
    r = vmm("run", guests / "longmode.elf", input=b"exit\n")
    assert r.returncode == 1, r                # (0 << 1) | 1, as QEMU's isa-debug-exit
    assert "exit device" in r.stderr


def test_echo_elf_forced_into_long_mode_is_refused_cleanly_or_runs(vmm, guests):
    # An ELF32 guest in long mode is the user's choice; it must end with a report, not hang.
    r = vmm("run", guests / "echo.elf", "--mode", "long", "--timeout", "2s", input=b"x\n")
    assert r.returncode in (20, 22, 24, 28), r


def test_verbose_reports_counters(vmm, guests):
    r = vmm("run", guests / "reset-hello.bin", "--entry", "reset", "-v")
    assert r.returncode == 0
    assert "end reason halt" in r.stderr and "exits" in r.stderr
