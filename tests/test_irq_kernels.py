"""The interrupt-driven kernels of guests/irq/ (issue 15): tick-real.bin (real mode, IVT),
tick-pm.elf (protected mode, IDT; the emulator only on this host) and spin-wait.bin on the pc
board, and echo-p3.bin on the p3 board (its optional PIC: the timer on IRQ 0, the keyboard on
IRQ 1) and echo-p3-pm.bin, the same in protected mode (IDT; the emulator only on this host).
Each runs under the virtual clock with scripted keys, records and replays exactly (across
backends where the host allows), and the pc ones show the same as under QEMU. Goldens:
traces/test_irq_kernels/. And preempt.bin, two busy-loop tasks switched by IRQ 0, for
instruction-count interrupts (tests/test_icount.py): checked against QEMU for its structure.

Every test runs once per usable backend (conftest.BACKEND_MODULES: the vmm_backend fixture sets
$VMM_BACKEND, which every vmm run here follows unless it names --backend)."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import GUESTS, kvm_usable, records_without_info, test_backends
from vmm.trace import read_trace

pytestmark = pytest.mark.kvm

IRQ = "guests/build/irq/"
TICK_REAL, TICK_PM, SPIN = IRQ + "tick-real.bin", IRQ + "tick-pm.elf", IRQ + "spin-wait.bin"
BACKENDS = test_backends()
RTC_LINE = "RTC 2000-01-01 00:00:00"          # the virtual clock's epoch (docs/devices.md)
KEYS = "hi there 42\n"
# 300 ticks of 100 Hz: the count on row 0, the date on row 1, the echoed keys from row 2
SCREEN = ["ticks 300 done", RTC_LINE, "hi there 42"]
COM1 = [RTC_LINE, "hi there 42", "done"]
EXIT_OK = 33                                    # OUT 0x10 to 0xF4


def script(tmp_path, text: str):
    path = tmp_path / "keys.script"
    path.write_text(text)
    return path


def com1_text(trace) -> str:
    """What the guest sent on COM1, from the trace's `out` records (stdout mixes devices)."""
    return "".join(rec["text"] + ("" if rec.get("partial") else "\n")
                   for rec in read_trace(str(trace)).records
                   if rec.get("type") == "out" and rec["dev"] == "com1")


def interrupts(trace) -> list[tuple[int, str]]:
    return [(rec["vector"], rec["point"]) for rec in records_without_info(trace)
            if rec["type"] == "irq"]


# ---- goldens (the pytest plugin; both backends against one golden) ----------------------------

def test_tick_real_counts_ticks_echoes_keys_and_shows_the_date(vm, golden, vmm_backend):
    s = vm(TICK_REAL, board="pc")
    s.expect_exact(RTC_LINE, timeout=1)
    s.send(KEYS)
    s.expect_exact("hi there 42", timeout=1)
    s.expect_screen("ticks 300 done", timeout=5)
    s.wait(1)
    assert s.reason == "exit-device" and s.exit_code == EXIT_OK, s
    assert s.lines == COM1
    assert [row for row in s.screen if row] == SCREEN
    assert s == golden


def test_tick_real_without_keys(vm, golden, vmm_backend):
    s = vm(TICK_REAL, board="pc")
    s.wait(4)
    assert s.exit_code == EXIT_OK and s.lines == [RTC_LINE, "done"], s
    assert s.screen[:2] == ["ticks 300 done", RTC_LINE]
    assert s == golden


# ---- record, replay exactly, across backends ---------------------------------------------------

def test_tick_real_records_and_replays_exactly_on_every_backend(vmm, tmp_path, vmm_backend):
    trace = tmp_path / "tick.trace"
    keys = script(tmp_path, 'send "hi there 42\\n"\nwait 4s\n')
    r = vmm("record", TICK_REAL, "--board", "pc", "--script", keys,
            "--screen", "final", "-o", trace)
    assert r.returncode == EXIT_OK, r
    assert r.lines[:3] == COM1 and r.lines[3:6] == SCREEN, r
    assert com1_text(trace) == "\n".join(COM1) + "\n"
    irqs = interrupts(trace)
    # 300 timer ticks, and a make and a break code per key (12 keys), all taken at a HLT
    assert irqs.count((0x20, "hlt")) == 300 and irqs.count((0x21, "hlt")) == 2 * len(KEYS)
    assert len(irqs) == 300 + 2 * len(KEYS)
    types = {rec["type"] for rec in records_without_info(trace)}
    assert {"edge", "irq", "time", "key"} <= types
    for replay_on in BACKENDS:
        rep = vmm("replay", trace, "--backend", replay_on)
        assert rep.returncode == 0 and "identical" in rep.stderr, (replay_on, rep)
        assert rep.lines[:3] == COM1, rep
        assert f"{len(irqs)} interrupts" in rep.stderr, rep


def test_recording_the_same_session_twice_gives_the_same_records(vmm, tmp_path):
    keys = script(tmp_path, 'wait 250ms\nsend "ab"\nwait 1s\nsend "c\\n"\nwait 4s\n')
    first, second = tmp_path / "1.trace", tmp_path / "2.trace"
    for trace in (first, second):
        assert vmm("record", TICK_REAL, "--board", "pc", "--script", keys, "-o", trace) \
            .returncode == EXIT_OK
    assert records_without_info(first) == records_without_info(second)


# ---- tick-pm: protected mode, an IDT; the emulator only on this host ---------------------------

def test_tick_pm_records_and_replays_on_the_emulator(vmm, tmp_path, vmm_backend):
    if vmm_backend != "emu":
        pytest.skip("protected-mode IRET fails on this host's KVM (PVM): the emulator only")
    trace = tmp_path / "pm.trace"
    keys = script(tmp_path, 'send "hi there 42\\n"\nwait 4s\n')
    r = vmm("record", TICK_PM, "--backend", "emu", "--script", keys, "--screen", "final",
            "-o", trace)
    assert r.returncode == EXIT_OK, r
    assert r.lines[:3] == COM1 and r.lines[3:6] == SCREEN, r
    irqs = interrupts(trace)
    assert irqs.count((0x20, "hlt")) == 300 and irqs.count((0x21, "hlt")) == 2 * len(KEYS)
    rep = vmm("replay", trace, "--backend", "emu")
    assert rep.returncode == 0 and rep.lines[:3] == COM1, rep
    if kvm_usable():
        # this host's KVM (PVM) cannot execute IRET in protected mode: a replay there says so
        rep = vmm("replay", trace, "--backend", "kvm")
        assert rep.returncode == 48 and "cannot run" in rep.stderr, rep


def test_tick_pm_on_this_kvm_host_ends_naming_iret(vmm, tmp_path, vmm_backend):
    if vmm_backend != "kvm":
        pytest.skip("about KVM")
    r = vmm("record", TICK_PM, "--backend", "kvm", "--clock", "virtual", "-o",
            tmp_path / "pm.trace")
    if r.returncode == EXIT_OK:
        pytest.skip("this KVM executes IRET in protected mode: tick-pm runs here")
    assert r.returncode == 32 and "iret" in r.stderr and "--backend emu" in r.stderr, r
    # the first tick's handler ran (row 0 shows it on the screen vmm prints at the end); its
    # IRET is where KVM stopped
    assert r.lines[:2] == [RTC_LINE, "ticks 1"], r


# ---- spin-wait: `while (ticks < 50);`, an idle spin -----------------------------------------

SPIN_LINES = ["spin-wait: waiting for 50 ticks in a loop with no hlt and no I/O", "done",
              "ticks 50 done"]


def test_a_spin_wait_gets_its_interrupts_at_the_loops_lowest_instruction(vmm, tmp_path,
                                                                         vmm_backend):
    """The loop has no exit at all; vmm finds it as an idle spin, steps to its lowest
    instruction and injects there: 50 timer interrupts, 10 ms of guest time apart."""
    trace = tmp_path / "spin.trace"
    r = vmm("record", SPIN, "--board", "pc", "--clock", "virtual", "--timeout", "60s",
            "--screen", "final", "-o", trace, timeout=120)
    assert r.returncode == EXIT_OK, r
    assert r.lines[:2] == SPIN_LINES[:2] and "ticks 50 done" in r.stdout, r
    irqs = [rec for rec in records_without_info(trace) if rec["type"] == "irq"]
    assert [(i["vector"], i["point"]) for i in irqs] == [(0x20, "spin")] * 50
    assert [i["at"] for i in irqs] == [10_000_000 * k + i["at"] % 10_000_000
                                       for k, i in enumerate(irqs, start=1)]
    for backend in BACKENDS:
        # (a replay finds each idle spin at its own watchdog tick: on a machine running two
        # test suites at once that can take far longer than the recording did)
        replay = vmm("replay", trace, "--backend", backend, "--timeout", "150s", timeout=200)
        assert replay.returncode == 0 and "50 interrupts" in replay.stderr, replay


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs both /dev/kvm and the emulator")
def test_a_spin_wait_records_the_same_trace_on_both_backends(vmm, tmp_path):
    traces = []
    for backend in ("kvm", "emu"):
        trace = tmp_path / f"spin-{backend}.trace"
        r = vmm("record", SPIN, "--board", "pc", "--clock", "virtual", "--backend", backend,
                "--screen", "none", "-o", trace, timeout=120)
        assert r.returncode == EXIT_OK, r
        traces.append(records_without_info(trace))
    assert traces[0] == traces[1]


# ---- echo-p3: the p3 board's devices through its optional PIC ---------------------------------

ECHO_P3 = IRQ + "echo-p3.bin"
P3_READY = "echo-p3: ready"
P3_TICKS = 50                                   # 100 ms each: 5 s of guest time, then a halt


def p3_lines(*typed: str) -> list[str]:
    """What echo-p3 prints: its banner, each line typed, then the tick and key counts."""
    keys = sum(len(line) + 1 for line in typed)
    return [P3_READY, *typed, f"ticks {P3_TICKS}, keys {keys}"]


def type_two_lines(s) -> None:
    """An echo-p3 kernel's session: two lines typed, each echoed, then its tick count and its
    halt."""
    s.expect_exact(P3_READY, timeout=1)
    s.sendline("hello")
    s.expect_exact("hello", timeout=1)
    s.sendline("p3 irq")
    s.expect_exact("p3 irq", timeout=1)
    s.expect_exact("ticks 50", timeout=10)
    s.wait(1)
    assert s.reason == "halt" and s.exit_code == 0, s
    assert s.lines == p3_lines("hello", "p3 irq")


def test_echo_p3_echoes_keys_from_irq_1_and_counts_ticks_from_irq_0(vm, golden, vmm_backend):
    s = vm(ECHO_P3)
    type_two_lines(s)
    assert s == golden


def test_echo_p3_records_and_replays_exactly_on_every_backend(vmm, tmp_path, vmm_backend):
    trace = tmp_path / "p3.trace"
    keys = script(tmp_path, 'send "hello\\n"\nexpect "hello"\nwait 1s\nsend "p3 irq\\n"\n'
                            'wait 6s\n')
    r = vmm("record", ECHO_P3, "--script", keys, "-o", trace)
    assert r.returncode == 0 and r.lines == p3_lines("hello", "p3 irq"), r
    records = records_without_info(trace)
    assert records[0]["machine"]["board"] == "p3"
    assert records[-1]["reason"] == "halt"
    irqs = interrupts(trace)
    # a tick per 100 ms, a key per byte typed (13), each taken at the idle loop's HLT
    assert irqs.count((0x20, "hlt")) == P3_TICKS and irqs.count((0x21, "hlt")) == 13
    assert len(irqs) == P3_TICKS + 13
    timers = [rec for rec in records if rec["type"] == "timer"]
    keyed = [rec for rec in records if rec["type"] == "key"]
    # the guest never reads the timer's status nor the keyboard's: every firing and every key
    # was taken by the device's poll at an interrupt point, and carries it
    assert len(timers) == P3_TICKS and all(rec["point"] == "idle" for rec in timers)
    assert [rec["at"] for rec in timers] == [100_000_000 * i for i in range(1, P3_TICKS + 1)]
    assert len(keyed) == 13 and all(rec["point"] in ("in", "hlt", "idle") for rec in keyed)
    assert not [rec for rec in records if rec["type"] == "edge"]
    for replay_on in BACKENDS:
        rep = vmm("replay", trace, "--backend", replay_on)
        assert rep.returncode == 0 and "identical" in rep.stderr, (replay_on, rep)
        assert rep.lines == r.lines and f"{len(irqs)} interrupts" in rep.stderr, rep


def test_echo_p3_gives_the_same_records_twice_and_on_either_backend(vmm, tmp_path):
    keys = script(tmp_path, 'wait 250ms\nsend "ab"\nwait 1s\nsend "c\\n"\nwait 6s\n')
    traces = []
    for i, backend in enumerate(BACKENDS + BACKENDS[:1]):
        trace = tmp_path / f"{i}-{backend}.trace"
        r = vmm("record", ECHO_P3, "--backend", backend, "--script", keys, "-o", trace)
        assert r.returncode == 0 and r.lines == p3_lines("abc"), (backend, r)
        traces.append(trace)
    first = records_without_info(traces[0])
    for other in traces[1:]:
        assert records_without_info(other) == first, other


def test_echo_p3_under_the_real_clock_replays_exactly(vmm, tmp_path, vmm_backend):
    trace = tmp_path / "real.trace"
    r = vmm("record", ECHO_P3, "--clock", "real", "--timeout", "30s", "-o", trace,
            input=b"one\ntwo\n")
    assert r.returncode == 0 and r.lines == p3_lines("one", "two"), r
    irqs = interrupts(trace)
    assert irqs.count((0x20, "hlt")) == P3_TICKS and irqs.count((0x21, "hlt")) == 8
    rep = vmm("replay", trace)
    assert rep.returncode == 0 and "identical" in rep.stderr and rep.lines == r.lines, rep


P3_TYPED = "abcxyz 42\n"


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 600), st.sampled_from(P3_TYPED)), max_size=6))
def test_random_key_timings_into_echo_p3_record_and_replay_identically(vmm, tmp_path_factory,
                                                                        presses):
    tmp = tmp_path_factory.mktemp("p3keys")
    lines = []
    for delay_ms, key in presses:                  # at most 3.6 s: all before the 50th tick
        lines += [f"wait {delay_ms}ms", 'send "%s"' % ("\\n" if key == "\n" else key)]
    keys = script(tmp, "\n".join(lines + ["wait 6s"]) + "\n")
    trace = tmp / "keys.trace"
    r = vmm("record", ECHO_P3, "--script", keys, "-o", trace)
    assert r.returncode == 0, r
    typed = "".join(key for _, key in presses)
    assert r.lines == [P3_READY, *typed.split("\n")[:-1], f"ticks {P3_TICKS}, keys {len(typed)}"]
    irqs = interrupts(trace)
    assert irqs.count((0x21, "hlt")) == len(presses) and irqs.count((0x20, "hlt")) == P3_TICKS
    for replay_on in BACKENDS:
        rep = vmm("replay", trace, "--backend", replay_on)
        assert rep.returncode == 0 and rep.stdout == r.stdout, (replay_on, rep)
        assert f"{len(irqs)} interrupts" in rep.stderr, rep



# ---- echo-p3-pm: echo-p3 in protected mode, an IDT; the emulator only on this host ------------

ECHO_P3_PM, ECHO_P3_PM_TRAP = IRQ + "echo-p3-pm.bin", IRQ + "echo-p3-pm-trap.bin"
PM_EMU_ONLY = "protected-mode IRET fails on this host's KVM (PVM): the emulator only"
P3_TRAP = [P3_READY, "echo-p3-pm: exception 6"]     # ud2: #UD, vector 6


def same_run(trace) -> list[dict]:
    """A trace's records without its header and without what its end owes to the code (the
    halt's rip, the registers, memory): what two guests that behave alike record the same."""
    records = records_without_info(trace)[1:]
    end = {k: v for k, v in records[-1].items() if k not in ("message", "regs", "mem")}
    return records[:-1] + [end]


def test_echo_p3_pm_echoes_keys_from_irq_1_and_counts_ticks_from_irq_0(vm, golden, vmm_backend):
    if vmm_backend != "emu":
        pytest.skip(PM_EMU_ONLY)
    s = vm(ECHO_P3_PM)
    type_two_lines(s)
    assert s == golden


def test_echo_p3_pm_records_what_echo_p3_records_and_replays_on_the_emulator(vmm, tmp_path,
                                                                              vmm_backend):
    if vmm_backend != "emu":
        pytest.skip(PM_EMU_ONLY)
    keys = script(tmp_path, 'send "hello\\n"\nexpect "hello"\nwait 1s\nsend "p3 irq\\n"\n'
                            'wait 6s\n')
    real, trace = tmp_path / "p3.trace", tmp_path / "pm.trace"
    assert vmm("record", ECHO_P3, "--backend", "emu", "--script", keys, "-o", real) \
        .returncode == 0
    r = vmm("record", ECHO_P3_PM, "--backend", "emu", "--script", keys, "-o", trace)
    assert r.returncode == 0 and r.lines == p3_lines("hello", "p3 irq"), r
    records = records_without_info(trace)
    assert records[0]["machine"]["board"] == "p3" and records[-1]["reason"] == "halt"
    irqs = interrupts(trace)
    assert irqs.count((0x20, "hlt")) == P3_TICKS and irqs.count((0x21, "hlt")) == 13
    assert len(irqs) == P3_TICKS + 13
    # the same keys, firings and interrupts at the same points and guest times, the same output:
    # only the code differs
    assert same_run(trace) == same_run(real)
    rep = vmm("replay", trace, "--backend", "emu")
    assert rep.returncode == 0 and "identical" in rep.stderr, rep
    assert rep.lines == r.lines and f"{len(irqs)} interrupts" in rep.stderr, rep
    if kvm_usable():
        # this host's KVM (PVM) cannot execute IRET in protected mode: a replay there says so,
        # at the first handler's iretd
        rep = vmm("replay", trace, "--backend", "kvm")
        assert rep.returncode == 48 and "cannot run" in rep.stderr, rep
        assert "iretd" in rep.stderr and "--backend emu" in rep.stderr, rep


def test_echo_p3_pm_on_this_kvm_host_ends_naming_iret(vmm, tmp_path, vmm_backend):
    if vmm_backend != "kvm":
        pytest.skip("about KVM")
    trace = tmp_path / "pm.trace"
    r = vmm("record", ECHO_P3_PM, "--backend", "kvm", "--clock", "virtual", "-o", trace)
    if r.returncode == 0:
        pytest.skip("this KVM executes IRET in protected mode: echo-p3-pm runs here")
    assert r.returncode == 32 and "iretd" in r.stderr and "--backend emu" in r.stderr, r
    # the banner, then the first tick's interrupt (100 ms): its handler's IRET is where KVM
    # stopped, and the trace ends there
    assert r.lines == [P3_READY], r
    assert interrupts(trace) == [(0x20, "hlt")]
    assert records_without_info(trace)[-1]["reason"] == "kvm-error"


def test_echo_p3_pm_trap_halts_in_its_exception_stub_on_every_backend(vmm, tmp_path,
                                                                       vmm_backend):
    """No IRET: the exception stub prints the vector and halts, on KVM too."""
    trace = tmp_path / "trap.trace"
    r = vmm("record", ECHO_P3_PM_TRAP, "--clock", "virtual", "-o", trace)
    assert r.returncode == 0 and r.lines == P3_TRAP, r
    records = records_without_info(trace)
    assert records[-1]["reason"] == "halt" and not interrupts(trace)
    for replay_on in BACKENDS:
        rep = vmm("replay", trace, "--backend", replay_on)
        assert rep.returncode == 0 and "identical" in rep.stderr, (replay_on, rep)
        assert rep.lines == P3_TRAP, rep


def test_echo_p3_pm_trap_gives_the_same_records_on_either_backend(vmm, tmp_path):
    traces = []
    for backend in BACKENDS:
        trace = tmp_path / f"{backend}.trace"
        r = vmm("record", ECHO_P3_PM_TRAP, "--backend", backend, "--clock", "virtual",
                "-o", trace)
        assert r.returncode == 0 and r.lines == P3_TRAP, (backend, r)
        traces.append(records_without_info(trace))
    assert all(other == traces[0] for other in traces[1:])

# ---- Hypothesis: random key timings ------------------------------------------------------------

ECHOED = "abcdefghijklmnopqrstuvwxyz0123456789 \n"   # the keys tick-real's table translates


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 400), st.sampled_from(ECHOED)), max_size=6))
def test_random_key_timings_record_and_replay_identically(vmm, tmp_path_factory, presses):
    tmp = tmp_path_factory.mktemp("keys")
    lines = []
    for delay_ms, key in presses:                  # at most 2.4 s: all before the 300th tick
        lines += [f"wait {delay_ms}ms", 'send "%s"' % ("\\n" if key == "\n" else key)]
    keys = script(tmp, "\n".join(lines + ["wait 4s"]) + "\n")
    trace = tmp / "keys.trace"
    r = vmm("record", TICK_REAL, "--board", "pc", "--script", keys, "-o", trace)
    assert r.returncode == EXIT_OK, r
    typed = "".join(key for _, key in presses)
    assert com1_text(trace) == f"{RTC_LINE}\n{typed}done\n"
    irqs = interrupts(trace)
    assert irqs.count((0x21, "hlt")) == 2 * len(presses) and irqs.count((0x20, "hlt")) == 300
    rep = vmm("replay", trace)
    assert rep.returncode == 0 and rep.stdout == r.stdout, rep
    assert f"{len(irqs)} interrupts" in rep.stderr, rep


# ---- QEMU as the reference ----------------------------------------------------------------------

def _qemu_rtc_line(line: str) -> bool:
    # QEMU's clock runs from -rtc base= while SeaBIOS boots: a second or two may have passed
    return re.fullmatch(r"RTC 2000-01-01 00:00:0[0-3]", line) is not None


@pytest.mark.parametrize("kernel,qemu_kernel,backends", [
    ("tick-real.bin", "tick-real-mb.bin", ("kvm", "emu")),
    ("tick-pm.elf", "tick-pm.elf", ("emu",)),   # PVM's KVM fails on protected-mode IRET
])
def test_the_irq_kernels_show_what_qemu_shows(tmp_path, kernel, qemu_kernel, backends,
                                              vmm_backend):
    from qemu_reference import qemu_unusable, run_qemu, run_vmm
    why = qemu_unusable()
    if why:
        pytest.skip(why)
    if vmm_backend not in backends:
        pytest.skip(f"{kernel} does not run on {vmm_backend} here")
    backends = [vmm_backend]
    # No keys under QEMU (the reference harness types nothing): ticks, date, done
    # QEMU's clocks from instruction counts (icount, TCG), and its RTC from that clock: the
    # two boots of the reference (with and without the exit device) read the same date, however
    # loaded the machine (with the host's clock they differed by a second under load).
    ref = run_qemu(GUESTS / "irq" / qemu_kernel, timeout=60,
                   extra_args=("-rtc", "base=2000-01-01T00:00:00,clock=vm",
                               "-icount", "shift=0,sleep=off"))
    assert ref.exit_status == EXIT_OK, ref
    assert len(ref.serial_lines) == 2 and _qemu_rtc_line(ref.serial_lines[0]), ref
    assert ref.serial_lines[1] == "done"
    assert ref.screen_rows[0] == "ticks 300 done" and _qemu_rtc_line(ref.screen_rows[1])
    for backend in backends:
        mine = run_vmm(GUESTS / "irq" / kernel, backend, workdir=tmp_path / backend,
                       extra_args=("--clock", "virtual"))
        assert mine.exit_status == EXIT_OK, mine
        assert mine.serial_lines == [RTC_LINE, "done"], mine
        assert mine.screen_rows[0] == ref.screen_rows[0]
        assert mine.screen_rows[1] == RTC_LINE
        assert len(mine.screen_rows) == len(ref.screen_rows) == 2


# ---- preempt: two busy-loop tasks switched by IRQ 0 (for instruction-count interrupts) ---------

PREEMPT = IRQ + "preempt.bin"
PREEMPT_TICKS, PREEMPT_SHIFT = 20, 12          # preempt.s's defaults: TICKS, SHIFT
PREEMPT_LINE = re.compile(r"([AB]) (\d+)")
PREEMPT_SUMMARY = re.compile(r"ticks (\d+), A=(\d+) B=(\d+)")


def preempt_task_lines(lines: list[str]) -> dict[str, list[int]]:
    """Each task's progress numbers in order, after checking every line is `A n` or `B n`."""
    progress: dict[str, list[int]] = {"A": [], "B": []}
    for line in lines:
        m = PREEMPT_LINE.fullmatch(line)
        assert m, f"not a task line: {line!r}"
        progress[m.group(1)].append(int(m.group(2)))
    return progress


def once_not_per_backend(vmm_backend):
    """For the tests that run no vmm, in this module of tests run once per backend."""
    if vmm_backend not in (None, BACKENDS[0]):
        pytest.skip("runs no vmm: once, not once per vmm backend")


def test_preempt_has_no_io_reads_and_halts_only_at_the_end(vmm_backend):
    """The tasks' premise: nothing but the timer can take the CPU from them. No IN anywhere
    (COM1 is written blind), no RDTSC, no software interrupt, and HLT only after the exit."""
    import shutil
    import subprocess
    once_not_per_backend(vmm_backend)
    if shutil.which("objdump") is None:
        pytest.skip("objdump is not installed (binutils)")
    image = str(GUESTS / "irq" / "preempt.img")
    symbols = {fields[2]: int(fields[0], 16) for fields in (
               line.split() for line in subprocess.run(["nm", image], capture_output=True,
                                                       text=True, check=True).stdout.splitlines())
               if len(fields) == 3}
    # the code: from the start to the strings after it (objdump would decode them too)
    out = subprocess.run(["objdump", "-d", "-m", "i8086", f"--stop-address={symbols['msg_ticks']}",
                          image], capture_output=True, text=True, check=True).stdout
    mnemonics = [fields[2].split()[0] for fields in (line.split("\t") for line in
                 out.splitlines()) if len(fields) >= 3 and fields[2].strip()]
    assert len(mnemonics) > 100, out
    assert not {"in", "insb", "insw", "rdtsc", "int", "int3"} & set(mnemonics), out
    assert mnemonics.count("hlt") == 1 and mnemonics[-2:] == ["hlt", "jmp"], mnemonics[-4:]


PREEMPT_ICOUNT = 10          # ns per instruction: a 1 ms tick is 100k instructions, ~8 lines


def preempt_structure(lines: list[str], ticks: int = PREEMPT_TICKS) -> list[tuple[str, int]]:
    """Check preempt's output: every line a task's `A n` or `B n`, each task counting 1, 2,
    3, ... across its slices, the summary's iterations at or just past its last line's
    multiple of 2^SHIFT, the slices alternating A, B, ... once per tick, and "done" last;
    returns the runs of lines (task, count)."""
    assert len(lines) > 2 and lines[-1] == "done", lines[-5:]
    summary = PREEMPT_SUMMARY.fullmatch(lines[-2])
    assert summary and int(summary.group(1)) == ticks, lines[-2]
    progress = preempt_task_lines(lines[:-2])
    for task, count in (("A", int(summary.group(2))), ("B", int(summary.group(3)))):
        numbers = progress[task]
        assert numbers == list(range(1, len(numbers) + 1)), (task, numbers)
        assert len(numbers) <= count >> PREEMPT_SHIFT <= len(numbers) + 1, (task, count)
    runs = [(task, len(list(group))) for task, group in itertools.groupby(
            line[0] for line in lines[:-2])]
    assert [task for task, _ in runs] == ["A", "B"] * (ticks // 2), runs
    return runs


def test_preempt_under_qemu_switches_between_both_busy_tasks(tmp_path, vmm_backend):
    """QEMU as the reference for preempt-mb.bin's structure (not its exact interleaving, which
    depends on where each tick lands): the tasks' lines come in alternating runs, one per time
    slice, each task counting 1, 2, 3, ... across its runs, then the summary and "done"."""
    from qemu_reference import qemu_unusable, run_qemu
    why = qemu_unusable()
    if why:
        pytest.skip(why)
    once_not_per_backend(vmm_backend)
    # icount: the PIT's 1 ms is 1M instructions (about 80 lines a task), and both boots of the
    # reference print the same
    ref = run_qemu(GUESTS / "irq" / "preempt-mb.bin", timeout=60,
                   extra_args=("-icount", "shift=0,sleep=off"))
    assert ref.exit_status == EXIT_OK, ref
    runs = preempt_structure(ref.serial_lines)
    # A from the start, then B at the first tick, ...: every slice of 1M instructions prints
    assert all(n > 1 for _, n in runs), runs


def test_preempt_under_icount_is_sliced_at_every_tick_and_replays_exactly(vmm, tmp_path,
                                                                          vmm_backend):
    """The emulator's instruction-count mode: the timer preempts each task's loop at the
    instruction count where its deadline falls, so both tasks run in alternating slices, as
    under QEMU's -icount, and the recording replays exactly (docs/emulator.md)."""
    once_not_per_backend(vmm_backend)
    trace = tmp_path / "preempt.trace"
    r = vmm("record", PREEMPT, "--board", "pc", "--icount", str(PREEMPT_ICOUNT), "--screen",
            "none", "--backend", "emu", "-o", trace, timeout=120)
    assert r.returncode == EXIT_OK, r
    runs = preempt_structure(r.lines)
    assert all(n >= 6 for _, n in runs), runs        # 100k instructions: about 8 lines each
    assert interrupts(trace) == [(0x20, "icount")] * PREEMPT_TICKS
    rep = vmm("replay", trace, "--backend", "emu", timeout=120)
    assert rep.returncode == 0 and "replay identical" in rep.stderr, rep
    again = tmp_path / "again.trace"
    assert vmm("record", PREEMPT, "--board", "pc", "--icount", str(PREEMPT_ICOUNT), "--screen",
               "none", "--backend", "emu", "-o", again, timeout=120).returncode == EXIT_OK
    assert records_without_info(trace) == records_without_info(again)


def test_preempt_under_icount_matches_its_golden(vm, golden, vmm_backend):
    once_not_per_backend(vmm_backend)
    s = vm(PREEMPT, board="pc", icount=PREEMPT_ICOUNT, backend="emu")
    s.expect_exact("done", timeout=1)
    s.wait(1)
    assert s.reason == "exit-device" and s.exit_code == EXIT_OK, s
    preempt_structure(s.lines)
    assert s == golden


def test_preempt_starts_task_a_under_vmm(vmm, vmm_backend):
    """Without --icount the tasks' loops have no point vmm can inject at (no I/O read, no HLT,
    never the same state twice; docs/devices.md), so A runs alone until a budget or the
    timeout. Only the start is checked: A's first lines, every line a task's."""
    r = vmm("run", PREEMPT, "--board", "pc", "--clock", "virtual", "--screen", "none",
            "--max-output", "200", "--timeout", "60s", timeout=120)
    assert r.returncode == 30 and "--max-output" in r.stderr, r        # the output budget
    assert r.stdout.startswith("A 1\nA 2\nA 3\n"), r
    complete = r.stdout.split("\n")[:-1]                # the budget may cut the last line
    assert preempt_task_lines(complete)["A"][:3] == [1, 2, 3]
