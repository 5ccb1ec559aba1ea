"""Every way a run or a command can fail ends with its message and exit code, never a traceback."""

import pytest

from vmm.trace import read_trace

pytestmark = pytest.mark.kvm
FAULTS = "faults"


def test_computing_without_exits_is_stopped_by_the_watchdog(vmm, guests):
    r = vmm("run", guests / FAULTS / "busy.bin", "--timeout", "300ms")
    assert r.returncode == 28, r
    assert "passed --timeout (0.3s" in r.stderr


def test_a_loop_whose_state_repeats_ends_at_once_as_a_spin(vmm, guests, tmp_path):
    trace = tmp_path / "spin.trace"
    r = vmm("record", guests / FAULTS / "spin.bin", "--timeout", "20s", "-o", trace)
    assert r.returncode == 50, r
    assert "the guest spins forever at rip=0x1000" in r.stderr
    assert read_trace(str(trace)).end["reason"] == "spin"
    rep = vmm("replay", trace)
    assert rep.returncode == 0, rep
    assert "ended by spin" in rep.stderr


def test_a_loop_that_still_prints_is_not_a_spin(vmm, guests, tmp_path):
    # mov al, 'x'; out 0xe9, al; jmp back: the same registers and memory at every turn, but
    # output grows (batched, without exits, once coalescing starts).
    guest = tmp_path / "printer.bin"
    guest.write_bytes(bytes([0xB0, 0x78, 0xE6, 0xE9, 0xEB, 0xFA]))
    r = vmm("run", guest, "--max-output", "300K")
    assert r.returncode == 30, r            # output-flood, never "spin"


def test_a_loop_that_writes_memory_is_not_a_spin(vmm, guests, tmp_path):
    # inc word [0x2000]; jmp back: the same registers at every turn, but memory moves on.
    guest = tmp_path / "counter.bin"
    guest.write_bytes(bytes([0xFF, 0x06, 0x00, 0x20, 0xEB, 0xFA]))
    r = vmm("run", guest, "--timeout", "500ms")
    assert r.returncode == 28 and "passed --timeout" in r.stderr, r    # never "spin"


def test_a_busy_loop_with_interrupts_on_says_why_no_interrupt_came(vmm, guests, tmp_path):
    # sti; 1: inc eax; jmp 1b on the pc board: interrupts on, but never the same state twice.
    guest = tmp_path / "busy-sti.bin"
    guest.write_bytes(bytes([0xFB, 0x66, 0x40, 0xEB, 0xFC]))
    r = vmm("run", guest, "--board", "pc", "--timeout", "500ms", "--screen", "none")
    assert r.returncode == 28, r
    assert "computing with interrupts on" in r.stderr and "a hlt in the loop" in r.stderr
    assert "--backend emu --icount" in r.stderr          # names the mode that can place one


def test_triple_fault(vmm, guests):
    r = vmm("run", guests / FAULTS / "triple.bin")
    assert r.returncode == 20, r
    assert "triple-faulted" in r.stderr and "rip=" in r.stderr


def test_memory_outside_ram(vmm, guests):
    r = vmm("run", guests / FAULTS / "unmapped.bin", "--mode", "protected")
    assert r.returncode == 24, r
    assert "physical address 0xf0000000, outside its 16M of RAM" in r.stderr


def test_unknown_port_stops_the_run_with_a_report(vmm, guests):
    r = vmm("run", guests / FAULTS / "unknown-port.bin")
    assert r.returncode == 26, r
    assert r.lines == ["about to touch port 0x1234"]
    assert "wrote 0x5a to unknown port 0x1234 (1-byte OUT) at rip=0x" in r.stderr
    assert "--ignore-unknown-ports" in r.stderr


def test_unknown_port_ignored_on_request(vmm, guests):
    r = vmm("run", guests / FAULTS / "unknown-port.bin", "--ignore-unknown-ports")
    assert r.returncode == 0, r
    assert "unknown port 0x1234" in r.stderr and "ignored" in r.stderr


def test_output_flood(vmm, guests):
    r = vmm("run", guests / FAULTS / "flood.bin", "--max-output", "10K", "--timeout", "60s")
    assert r.returncode == 30, r
    assert "--max-output (10240 bytes)" in r.stderr
    assert 150 < len(r.lines) < 300


def test_invalid_instruction_is_named(vmm, guests):
    r = vmm("run", guests / FAULTS / "garbage.bin")
    assert r.returncode == 22, r
    assert "#UD invalid opcode" in r.stderr
    assert r.lines == ["jumping into garbage"]


def test_exit_device_status(vmm, guests):
    r = vmm("run", guests / FAULTS / "exit.bin")
    assert r.returncode == (0x21 << 1) | 1, r
    assert r.lines == ["exiting with 0x21"]


def test_bios_call_is_named(vmm, tmp_path):
    guest = tmp_path / "bios.bin"
    guest.write_bytes(b"\xb4\x0e\xcd\x10\xf4")      # mov ah, 0x0e; int 0x10; hlt
    r = vmm("run", guest)
    assert r.returncode == 22, r
    assert "BIOS interrupt int 0x10 at 0000:1002" in r.stderr


# --- bad input to the command itself ------------------------------------------------------
def test_missing_guest(vmm):
    r = vmm("run", "no/such/guest.bin")
    assert r.returncode == 10 and r.stderr == "vmm: error: guest file not found: no/such/guest.bin\n"


def test_empty_guest(vmm, tmp_path):
    (tmp_path / "empty.bin").write_bytes(b"")
    r = vmm("run", tmp_path / "empty.bin")
    assert r.returncode == 10 and "is empty" in r.stderr


def test_directory_as_guest(vmm, tmp_path):
    r = vmm("run", tmp_path)
    assert r.returncode == 10 and "is a directory" in r.stderr


def test_malformed_elf(vmm, tmp_path):
    (tmp_path / "bad.elf").write_bytes(b"\x7fELF" + b"\x02\x01\x01" + b"\xff" * 20)
    r = vmm("run", tmp_path / "bad.elf")
    assert r.returncode == 10 and "malformed ELF" in r.stderr, r
    assert len(r.stderr.splitlines()) == 1


def test_image_larger_than_ram(vmm, tmp_path):
    (tmp_path / "big.bin").write_bytes(b"\x90" * 70_000)
    r = vmm("run", tmp_path / "big.bin", "--mem", "64K")
    assert r.returncode == 10 and "does not fit" in r.stderr and "--mem" in r.stderr


def test_a_guest_larger_than_any_ram_is_refused_by_its_size(vmm, tmp_path):
    huge = tmp_path / "huge.bin"
    with open(huge, "wb") as f:                   # sparse: 3 GiB of nothing on disk
        f.truncate(3 << 30)
    r = vmm("run", huge)
    assert r.returncode == 10, r
    assert r.stderr.splitlines() == [
        f"vmm: error: guest file {huge} is 3G: larger than the most RAM a guest can have "
        "(2G, --mem 2G)"]


def test_advice_for_an_image_that_does_not_fit_names_a_mem_that_fits(vmm, tmp_path):
    (tmp_path / "big.bin").write_bytes(b"\x90" * 70_000)
    r = vmm("run", tmp_path / "big.bin", "--mem", "64K", "--mode", "protected")
    assert r.returncode == 10, r
    assert r.stderr.splitlines()[-1].endswith("of RAM: give at least --mem 1M"), r


def test_at_the_most_ram_there_is_no_more_mem_to_advise(vmm, tmp_path):
    (tmp_path / "top.bin").write_bytes(b"\x90" * 8192)
    r = vmm("run", tmp_path / "top.bin", "--mem", "2G", "--mode", "protected",
            "--load", hex((2 << 30) - 4096))
    assert r.returncode == 10, r
    assert "it cannot fit: a guest has at most 2G of RAM" in r.stderr, r
    assert "give at least" not in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--mem", "1"], "vmm: error: --mem of 1 byte is out of range: give between 64K and 2G"),
    (["--timeout", "-1s"], "vmm run: error: argument --timeout: bad duration '-1s': a duration "
                           "cannot be negative"),
    (["--timeout", "0s"], "vmm run: error: argument --timeout: '0s' is no time at all: give a "
                          "duration above zero, e.g. 500ms, 10s"),
    (["--clock", "virtual", "--max-time", "0ms"], "vmm run: error: argument --max-time: '0ms' "
                                                  "is no time at all: give a duration above "
                                                  "zero, e.g. 500ms, 10s"),
    (["--max-output", "-5"], "vmm run: error: argument --max-output: bad size '-5': a size "
                             "cannot be negative"),
])
def test_the_last_line_of_a_refused_flag_says_what_is_wrong(vmm, guests, args, message):
    r = vmm("run", guests / "echo.bin", *args)
    assert r.returncode == 2, r
    assert r.stderr.splitlines()[-1] == message


def test_run_help_lists_every_exit_status_a_run_can_end_with(vmm):
    from vmm.errors import EXIT_CODES
    text = vmm("run", "--help").stdout
    replay_only = {"diverged", "redrive-differs", "truncated-end", "debugger",
                   "stop-at-unreached", "cannot-run"}
    for reason, code in EXIT_CODES.items():
        if reason not in replay_only:
            assert f" {code} " in text.replace("\n", " "), (reason, code)


@pytest.mark.parametrize("args, needle", [
    (["--mem", "lots"], "bad size"),
    (["--mode", "unreal"], "invalid choice"),
    (["--timeout", "5"], "write a number with a unit"),
    (["--load", "here"], "bad address"),
    (["--entry", "reset", "--load", "0x2000"], "drop --load"),
    (["--mem", "3G"], "out of range"),
])
def test_nonsensical_flags(vmm, guests, args, needle):
    r = vmm("run", guests / "echo.bin", *args)
    assert r.returncode == 2, r
    assert needle in r.stderr


def test_no_kvm(vmm, guests):
    r = vmm("run", guests / "echo.bin", "--backend", "kvm", env={"VMM_KVM_PATH": "/nonexistent/kvm"})
    assert r.returncode == 12, r
    assert r.stderr.startswith("vmm: error: /nonexistent/kvm does not exist")


def test_no_kvm_auto_runs_on_the_emulator_with_a_note(vmm, guests):
    r = vmm("run", guests / FAULTS / "exit.bin",
            env={"VMM_KVM_PATH": "/nonexistent/kvm", "VMM_BACKEND": "auto"})
    assert r.returncode == (0x21 << 1) | 1, r
    assert r.lines == ["exiting with 0x21"]
    note = r.stderr.splitlines()[0]
    assert note.startswith("vmm: /nonexistent/kvm does not exist") and "emulator" in note, r


def test_help_documents_every_flag(vmm):
    r = vmm("run", "--help")
    assert r.returncode == 0
    for flag in ("--mode", "--load", "--entry", "--mem", "--stack", "--cpuid", "--timeout",
                 "--max-output", "--ignore-unknown-ports", "Ctrl-]", "exit status"):
        assert flag in r.stdout


def test_negative_counts_are_refused_by_name(vmm, tmp_path):
    r = vmm("inspect", tmp_path / "t.trace", "--limit", "-3")
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == ("vmm inspect: error: argument --limit: expected a whole "
                                         "number, 0 or more, not '-3'")
    r = vmm("grade", "--rubric", "r.toml", "--out", tmp_path, "-j", "-1", "x.bin")
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == ("vmm grade: error: argument -j/--jobs: expected a "
                                         "positive whole number, not '-1'")
