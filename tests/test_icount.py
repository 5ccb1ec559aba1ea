"""The emulator's instruction-count mode (--icount NS, docs/emulator.md): guest time passes by
NS ns per instruction, and a timer interrupt preempts a loop that makes no exit at the first
translated block at or past its deadline's instruction count. The recording stamps each such
point with the count (`icount` records, point "icount"); a replay stops at the same count.

The guests: spin-wait.bin (`while (ticks < 50);` on the pc board: without icount only the
idle-spin check reaches it), echo-p3.bin (interrupts at reads and halts: unchanged by icount),
and the CLI's and the trace reader's refusals."""

from __future__ import annotations

import gzip
import json

import pytest

from conftest import records_without_info
from vmm.errors import EXIT_CODES, TraceError, UsageError
from vmm.inputs import InstructionClock
from vmm.trace import read_trace

pytestmark = pytest.mark.kvm

IRQ = "guests/build/irq/"
SPIN = IRQ + "spin-wait.bin"
SPIN_LINES = ["spin-wait: waiting for 50 ticks in a loop with no hlt and no I/O", "done"]
EXIT_OK = 33
NS = 1000                      # 1 us per instruction: 10k instructions per 100 Hz tick
USAGE, TRACE = UsageError.exit_code, TraceError.exit_code


def record_spin(vmm, trace, *extra: str):
    return vmm("record", SPIN, "--board", "pc", "--icount", str(NS), "--screen", "none",
               "-o", trace, *extra)


def icount_records(trace) -> list[dict]:
    return [r for r in read_trace(str(trace)).records if r["type"] == "icount"]


# ---- the clock -------------------------------------------------------------------------------

def test_the_instruction_clock_passes_ns_per_instruction_and_jumps_but_never_goes_back():
    count = [0]
    clock = InstructionClock(lambda: count[0], 10, start=500)
    assert clock.now() == 500
    count[0] = 7
    assert clock.now() == 570
    clock.advance_to(1000)                   # an idle point: time jumps
    assert clock.now() == 1000
    count[0] = 9
    assert clock.now() == 1020
    clock.advance_to(900)                    # never backward
    assert clock.now() == 1020
    clock._now = 5                           # (the quantum rule's assignment) neither
    assert clock.now() == 1020


# ---- a loop with no exit, preempted ----------------------------------------------------------

def test_a_loop_without_exits_is_preempted_at_instruction_counts_and_replays_exactly(vmm,
                                                                                   tmp_path):
    trace = tmp_path / "spin.trace"
    r = record_spin(vmm, trace)
    assert r.returncode == EXIT_OK and r.lines == SPIN_LINES, r
    recorded = read_trace(str(trace))
    assert recorded.header["version"] == 5
    assert recorded.header["machine"]["icount_ns"] == NS
    assert recorded.header["machine"]["quantum_ns"] == 0      # time is the count's
    points = icount_records(trace)
    irqs = [rec for rec in recorded.records if rec["type"] == "irq"]
    assert len(irqs) == 50 and {rec["point"] for rec in irqs} == {"icount"}
    assert len(points) == 50
    counts = [p["count"] for p in points]
    assert counts == sorted(counts) and len(set(counts)) == 50
    # time at each point is its count's, and the points are a period apart, each at or just
    # past its deadline (the first block at or past it: a few instructions late at most)
    assert all(p["at"] == p["count"] * NS for p in points)
    gaps = [b["at"] - a["at"] for a, b in zip(points, points[1:])]
    assert all(abs(gap - 10_000_000) < 50 * NS for gap in gaps), gaps
    rep = vmm("replay", trace)
    assert rep.returncode == 0 and "replay identical" in rep.stderr, rep
    assert "50 interrupts" in rep.stderr


def test_two_recordings_of_an_icount_run_are_the_same(vmm, tmp_path):
    first, second = tmp_path / "a.trace", tmp_path / "b.trace"
    assert record_spin(vmm, first).returncode == EXIT_OK
    assert record_spin(vmm, second).returncode == EXIT_OK
    assert records_without_info(first) == records_without_info(second)


def test_a_run_ended_by_max_time_between_reads_replays_to_the_same_instruction(vmm, tmp_path):
    trace = tmp_path / "max.trace"
    r = record_spin(vmm, trace, "--max-time", "55ms")
    assert r.returncode == EXIT_CODES["max-time"], r
    end = read_trace(str(trace)).end
    assert end["reason"] == "max-time" and end["at_read"] is False
    assert 55_000_000 // NS <= end["icount"] < 55_000_000 // NS + 50 and end["regs"] is not None
    rep = vmm("replay", trace)
    assert rep.returncode == 0 and "replay identical" in rep.stderr, rep
    assert "5 interrupts" in rep.stderr and "ended by max-time" in rep.stderr


def test_a_changed_count_in_the_trace_is_a_divergence(vmm, tmp_path):
    trace, bad = tmp_path / "spin.trace", tmp_path / "bad.trace"
    assert record_spin(vmm, trace).returncode == EXIT_OK
    lines = trace.read_bytes().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith(b'{"type":"icount"'):
            record = json.loads(line)
            record["count"] += 3
            lines[i] = json.dumps(record, separators=(",", ":")).encode() + b"\n"
            break
    bad.write_bytes(b"".join(lines))
    rep = vmm("replay", bad)
    assert rep.returncode == EXIT_CODES["diverged"], rep
    assert "instruction" in rep.stderr and "Traceback" not in rep.stderr


def test_guests_interrupted_at_reads_and_halts_record_the_same_with_icount(vmm, tmp_path):
    """echo-p3 takes its interrupts at HLT and after INs: icount changes its time (the count's)
    but not what it prints, and it replays exactly."""
    keys = tmp_path / "keys.script"
    keys.write_text('send "hello\\n"\nexpect "hello"\nwait 1s\nsend "p3 irq\\n"\nwait 6s\n')
    trace = tmp_path / "p3.trace"
    r = vmm("record", IRQ + "echo-p3.bin", "--script", keys, "--icount", "100", "-o", trace)
    assert r.returncode == 0 and r.lines == ["echo-p3: ready", "hello", "p3 irq",
                                             "ticks 50, keys 13"], r
    rep = vmm("replay", trace)
    assert rep.returncode == 0 and "replay identical" in rep.stderr, rep


def test_a_guest_that_reads_and_prints_between_points_replays_exactly(vmm, tmp_path):
    """echo-p3-poll.bin reads a port, prints and computes between its ticks, so its trace has
    output records between a read and the instruction point after it; a replay's look ahead,
    bounded at the next read, must not take them for the end of its inputs (found in review:
    the replay ran past the first point)."""
    trace = tmp_path / "poll.trace"
    r = vmm("record", IRQ + "echo-p3-poll.bin", "--icount", "1000", "-o", trace)
    assert r.returncode == 0 and r.lines[0] == "echo-p3: ready", r
    assert r.lines[-1] == "ticks 5, keys 0" and r.lines.count("x") > 10, r.lines[-3:]
    assert {p for _, p in irqs(trace)} <= {"icount", "in"} and len(irqs(trace)) == 5
    assert icount_records(trace)
    rep = vmm("replay", trace)
    assert rep.returncode == 0 and "replay identical" in rep.stderr, rep


def irqs(trace) -> list[tuple[int, str]]:
    return [(r["vector"], r["point"]) for r in read_trace(str(trace)).records
            if r["type"] == "irq"]


def test_a_session_in_icount_mode_drives_a_computing_guest_in_guest_time():
    from harness.session import GuestSession
    s = GuestSession(SPIN, board="pc", icount=NS)
    s.expect_exact("waiting for 50 ticks", timeout=1)
    s.expect_exact("done", timeout=1)           # 0.5 s of guest time: within the timeout
    s.wait(1)
    assert s.reason == "exit-device" and s.exit_code == EXIT_OK, s
    assert s.machine.interrupts_injected == 50


# ---- refusals --------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "-5", "abc", "2000000", "1.5"])
def test_a_bad_icount_value_is_refused_in_one_line(vmm, value):
    r = vmm("run", SPIN, "--board", "pc", f"--icount={value}")
    assert r.returncode == USAGE, r
    assert "--icount" in r.stderr.strip().splitlines()[-1]


def test_icount_on_kvm_or_the_real_clock_is_refused_before_any_trace_is_made(vmm, tmp_path):
    trace = tmp_path / "no.trace"
    r = vmm("record", SPIN, "--board", "pc", "--icount", "10", "--backend", "kvm", "-o", trace)
    assert r.returncode == USAGE and "emulator" in r.stderr, r
    r = vmm("record", SPIN, "--board", "pc", "--icount", "10", "--clock", "real", "-o", trace)
    assert r.returncode == USAGE and "--clock real" in r.stderr, r
    assert not trace.exists()


def test_an_icount_trace_replays_on_the_emulator_only(vmm, tmp_path):
    trace = tmp_path / "spin.trace"
    assert record_spin(vmm, trace, "--max-time", "25ms").returncode == EXIT_CODES["max-time"]
    r = vmm("replay", trace, "--backend", "kvm")
    assert r.returncode == USAGE and "--backend emu" in r.stderr, r


def _rewrite(trace, out, edit) -> None:
    with gzip.open(trace) if trace.read_bytes()[:2] == b"\x1f\x8b" else open(trace, "rb") as f:
        lines = f.read().splitlines()
    header = json.loads(lines[0])
    records = [json.loads(line) for line in lines[1:]]
    edit(header, records)
    out.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n"
                           for r in [header, *records]))


def test_instruction_points_need_version_5_and_a_sane_rate(vmm, tmp_path):
    trace = tmp_path / "spin.trace"
    assert record_spin(vmm, trace, "--max-time", "25ms").returncode == EXIT_CODES["max-time"]
    old = tmp_path / "v4.trace"
    _rewrite(trace, old, lambda h, rs: h.update(version=4))
    r = vmm("replay", old)
    assert r.returncode == TRACE and "version 5" in r.stderr, r
    bad_end = tmp_path / "end.trace"
    _rewrite(trace, bad_end, lambda h, rs: rs[-1].update(icount=True))
    r = vmm("replay", bad_end)
    assert r.returncode == TRACE and "'icount'" in r.stderr, r
    for rate in (0, 10 ** 7, "10", True):
        fast = tmp_path / "rate.trace"
        _rewrite(trace, fast, lambda h, rs: h["machine"].update(icount_ns=rate))
        r = vmm("replay", fast)
        assert r.returncode == TRACE and "icount_ns" in r.stderr, (rate, r)


# ---- grading a preemptive kernel: [boot] icount ---------------------------------------------

PREEMPT_RUBRIC = '''title = "preemptive tasks"
[boot]
board = "pc"
mode = "real"
load = 0x1000
icount = 10
[limits]
max_time = "1s"
max_instructions = "10M"
[[scenario]]
name = "both tasks run"
points = 10
script = \'\'\'
expect "done" within 1s
\'\'\'
  [[scenario.check]]
  regex_lines = ["B 1"]
  [[scenario.check]]
  end_reason = "exit-device"
  [[scenario.check]]
  exit_code = 33
'''


def test_a_rubric_with_icount_grades_a_preemptive_kernel_the_same_every_time(tmp_path, vmm):
    """Both tasks of preempt.bin print only if the timer preempts A's loop: under the rubric's
    icount that happens at the same instructions on every run, so the grade and its trace are
    the same every time, and the student's trace replays exactly."""
    from harness.grader import grade
    (tmp_path / "r.toml").write_text(PREEMPT_RUBRIC)
    reports = [grade([IRQ + "preempt.bin"], str(tmp_path / "r.toml"), str(tmp_path / f"out{i}"))
               for i in (1, 2)]
    subs = [report["submissions"][0] for report in reports]
    assert [s["score"] for s in subs] == [10, 10], subs
    traces = sorted((tmp_path / "out1").rglob("*.trace"))
    assert traces, list((tmp_path / "out1").rglob("*"))
    twin = tmp_path / "out2" / traces[0].relative_to(tmp_path / "out1")
    assert records_without_info(traces[0]) == records_without_info(twin)
    rep = vmm("replay", traces[0])
    assert rep.returncode == 0 and "replay identical" in rep.stderr, rep


def test_a_rubric_icount_out_of_range_is_refused(tmp_path):
    from harness.rubric import load_rubric
    (tmp_path / "r.toml").write_text(PREEMPT_RUBRIC.replace("icount = 10", "icount = 0"))
    with pytest.raises(UsageError, match="boot.icount"):
        load_rubric(str(tmp_path / "r.toml"))


def test_a_host_stop_while_the_guest_computes_ends_at_an_instruction_point(vmm, tmp_path):
    """--timeout (like a signal) ends an icount run at the next translated block's start: the
    end record has the count and the final registers and memory, and a replay ends at the same
    instruction in the same state (without icount such an end is where the host happened to
    look, and its final state is not compared)."""
    trace = tmp_path / "stopped.trace"
    r = vmm("record", IRQ + "preempt.bin", "--board", "pc", "--icount", "1", "--timeout",
            "1s", "--screen", "none", "-o", trace)
    assert r.returncode == EXIT_CODES["timeout"], r
    end = read_trace(str(trace)).end
    assert end["reason"] == "timeout" and end["at_read"] is False
    assert end["icount"] > 0 and end["regs"] is not None and end["mem"] is not None
    rep = vmm("replay", trace)
    assert rep.returncode == 0 and "replay identical" in rep.stderr, rep
    assert "not compared" not in rep.stderr


def test_inspect_names_the_mode_and_its_points(vmm, tmp_path):
    trace = tmp_path / "spin.trace"
    assert record_spin(vmm, trace, "--max-time", "25ms").returncode == EXIT_CODES["max-time"]
    r = vmm("inspect", trace, "--limit", "0")
    assert r.returncode == 0, r
    assert f"instruction count: {NS} ns per instruction (--icount)" in r.stdout
    assert "2 interrupts, 2 instruction points" in r.stdout
    assert "instruction point at instruction" in r.stdout and "interrupt vector 0x20 (icount)" \
        in r.stdout


def test_the_debugger_refuses_icount_runs_and_traces_in_one_line(vmm, tmp_path):
    """gdb's snapshots (reverse execution, --stop-at) do not keep the instruction count yet:
    refused in one line rather than a replay that diverges at its first point."""
    trace = tmp_path / "spin.trace"
    assert record_spin(vmm, trace, "--max-time", "25ms").returncode == EXIT_CODES["max-time"]
    for flags in (("--stop-at", "3"), ("--gdb", "0")):
        r = vmm("replay", trace, *flags)
        assert r.returncode == USAGE and "instruction-count mode" in r.stderr, r
        assert len(r.stderr.strip().splitlines()) == 1
    r = vmm("run", SPIN, "--board", "pc", "--icount", "10", "--gdb", "0")
    assert r.returncode == USAGE and "--icount" in r.stderr, r


# ---- loops without end, found at instruction counts -------------------------------------------

def test_a_loop_nothing_can_interrupt_ends_as_a_spin_at_an_instruction_point(vmm, guests,
                                                                            tmp_path):
    """reset-spin.bin (`jmp .`, interrupts off): under icount the recording looks at the
    guest's state at instruction counts (not at watchdog ticks), finds it come round, and ends
    the run there; the replay ends at the same count (found in review: it ran to --max-time)."""
    path = tmp_path / "spin.trace"
    r = vmm("record", guests / "reset-spin.bin", "--entry", "reset", "--icount", "10",
            "--screen", "none", "-o", path)
    assert r.returncode == EXIT_CODES["spin"] and "spins forever" in r.stderr, r
    end = read_trace(str(path)).end
    assert end["reason"] == "spin" and end["icount"] > 0 and end["regs"] is not None
    rep = vmm("replay", path)
    assert rep.returncode == 0 and "replay identical" in rep.stderr, rep


def test_a_loop_waiting_for_an_interrupt_that_never_comes_ends_idle(vmm, tmp_path):
    # p3 board: the PIC initialised (nothing unmasked), sti, jmp . : nothing is scheduled
    guest = tmp_path / "sti-spin.bin"
    guest.write_bytes(bytes.fromhex("b011e620b020e621b004e621b001e621fbebfe"))
    trace = tmp_path / "idle.trace"
    r = vmm("record", guest, "--icount", "10", "-o", trace)
    end = read_trace(str(trace)).end
    assert r.returncode == EXIT_CODES["idle"] and end["reason"] == "idle", r
    assert "nothing more is scheduled" in end["message"] and end["icount"] > 0
    rep = vmm("replay", trace)
    assert rep.returncode == 0 and "replay identical" in rep.stderr, rep
