"""Guest-work budgets: --max-observations, --max-exits, --max-instructions (issue 16).

A budget ends a run at a point that depends on the guest and its inputs only: the same on every
run, machine and backend, recorded in the trace's machine configuration and met again by its
replay. Tested end to end through the CLI with the guests of guests/faults/ (busy.s computes
forever, outloop.s writes a port forever, neither ever reads), on every usable backend, and in
the grader, which reports the limit that ended a scenario and the work it took.
"""

from __future__ import annotations

import json

import pytest

from conftest import emu_usable, kvm_usable, test_backends
from vmm.cpu.backend import InstructionLimit
from vmm.errors import EXIT_CODES
from vmm.trace import read_trace
from vmm.units import parse_count

BACKENDS = test_backends()
needs_emu = pytest.mark.skipif(not emu_usable(), reason="the emulator (unicorn) is not installed")
needs_both = pytest.mark.skipif(not (emu_usable() and kvm_usable()),
                                reason="needs both /dev/kvm and the emulator")


@pytest.fixture(params=BACKENDS or ["none"])
def backend(request):
    if request.param == "none":
        pytest.skip("no CPU backend is usable here")
    return request.param


def end_of(path) -> dict:
    return read_trace(str(path)).end


# --- the counts' syntax -------------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [("5000", 5000), ("100k", 100_000), ("20M", 20_000_000),
                                         ("1_000_000", 1_000_000), ("2G", 2_000_000_000)])
def test_counts_take_decimal_suffixes(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("flag, value, words", [
    ("--max-exits", "0", "above zero"), ("--max-exits", "-5", "cannot be negative"),
    ("--max-instructions", "1.5M", "whole number"), ("--max-observations", "ten", "whole number")])
def test_a_bad_budget_is_one_line_and_exit_2(vmm, guests, flag, value, words):
    r = vmm("run", guests / "echo.bin", flag, value)
    assert r.returncode == 2 and words in r.stderr
    assert len([line for line in r.stderr.splitlines() if "error" in line]) == 1


# --- max-observations -------------------------------------------------------------------------
def test_max_observations_ends_at_that_read_and_replays_on_every_backend(vmm, guests, tmp_path,
                                                                        backend):
    trace = tmp_path / "obs.trace"
    r = vmm("record", guests / "echo.bin", "--script", "examples/echo.script", "--backend",
            backend, "--max-observations", "12", "-o", trace)
    assert r.returncode == EXIT_CODES["max-observations"] == 28, r
    assert "budget of 12 reads" in r.stderr
    end = end_of(trace)
    assert end["reason"] == "max-observations" and end["n"] == 13
    assert read_trace(str(trace)).header["machine"]["max_observations"] == 12
    for other in BACKENDS:
        replay = vmm("replay", trace, "--backend", other)
        assert replay.returncode == 0 and "ended by max-observations at observation 13" \
            in replay.stderr, replay


# --- max-exits ------------------------------------------------------------------------------------
def test_max_exits_ends_a_guest_that_writes_forever_at_the_same_write(vmm, guests, tmp_path):
    """outloop.s counts in AX and writes AX to a port: at the end AX is the exits made."""
    digests = set()
    for i, backend in enumerate(BACKENDS or pytest.skip("no CPU backend")):
        trace = tmp_path / f"out-{i}.trace"
        r = vmm("record", guests / "faults" / "outloop.bin", "--backend", backend,
                "--clock", "virtual", "--max-exits", "5000", "-o", trace, timeout=120)
        assert r.returncode == 28 and "budget of 5000 exits" in r.stderr, r
        assert "rax=0000000000001389" in r.stderr          # 5001 = the write past the budget
        end = end_of(trace)
        assert end["reason"] == "max-exits"
        digests.add(json.dumps(end.get("regs")))
        for other in BACKENDS:
            assert vmm("replay", trace, "--backend", other).returncode == 0
    assert len(digests) == 1                                 # the same final state everywhere


@needs_both
def test_batched_writes_count_as_exits_alike_on_both_backends(vmm, guests, tmp_path):
    """The flood guest's console writes are batched (KVM's coalesced ring, the emulator's 4 KiB
    batch: the two exit at different writes); the budget counts every write, so both stop at
    the same one, and each replays the other's recording."""
    outputs = {}
    for backend in ("kvm", "emu"):
        trace = tmp_path / f"flood-{backend}.trace"
        r = vmm("record", guests / "faults" / "flood.bin", "--backend", backend, "--clock",
                "virtual", "--max-exits", "30000", "-o", trace, "--screen", "none", timeout=120)
        assert r.returncode == 28 and "budget of 30000 exits" in r.stderr, r
        outputs[backend] = r.stdout
        other = "emu" if backend == "kvm" else "kvm"
        replay = vmm("replay", trace, "--backend", other)
        assert replay.returncode == 0, replay
    assert outputs["kvm"] == outputs["emu"] and outputs["kvm"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_batches_delivered_at_watchdog_ticks_count_toward_the_exit_budget(backend, guests,
                                                                          monkeypatch):
    """A batch of writes the backend delivers at a host-side return (a watchdog tick, the
    emulator's slice) counts toward --max-exits as one delivered at an exit does: with a tick
    every half millisecond, which drains batches before they fill, the flood guest still stops
    at the budget's write and prints what it prints with the usual tick (before this was
    checked, the emulator ran on past 10 million writes)."""
    import vmm.machine
    from vmm.runner import LiveRun, live_run

    def flood():
        result = live_run(LiveRun(guest=str(guests / "faults" / "flood.bin"), clock="virtual",
                                  max_exits=30000, backend=backend))
        return result.end.reason, result.end.stats["guest_exits"], result.output.lines

    usual = flood()
    monkeypatch.setattr(vmm.machine, "WATCHDOG_TICK", 0.0005)
    assert flood() == usual
    assert usual[:2] == ("max-exits", 30001)


# --- max-instructions (the emulator) ---------------------------------------------------------------
@needs_emu
def test_max_instructions_stops_a_computing_guest_at_the_same_instruction(vmm, guests, tmp_path):
    """busy.s is one block of three instructions (add, adc, jmp) that adds one to EAX: a budget
    of 30001 instructions lets exactly 10000 blocks run, on every run."""
    finals = set()
    for i in range(3):
        trace = tmp_path / f"busy-{i}.trace"
        r = vmm("record", guests / "faults" / "busy.bin", "--backend", "emu",
                "--max-instructions", "30001", "-o", trace)
        assert r.returncode == 28 and "budget of 30001 instructions" in r.stderr, r
        assert "rax=0000000000002710" in r.stderr and "rip=0000000000001000" in r.stderr
        finals.add(json.dumps(end_of(trace).get("regs")))
        replay = vmm("replay", trace)                         # auto: the emulator
        assert replay.returncode == 0 and "ended by max-instructions" in replay.stderr, replay
    assert len(finals) == 1


@needs_emu
def test_auto_picks_the_emulator_for_an_instruction_budget(vmm, guests):
    r = vmm("run", guests / "faults" / "busy.bin", "--max-instructions", "3000", "--clock",
            "virtual", env={"VMM_BACKEND": "auto"})
    assert r.returncode == 28 and "budget of 3000 instructions" in r.stderr, r


@pytest.mark.skipif(not kvm_usable(), reason="needs /dev/kvm")
def test_kvm_refuses_an_instruction_budget_in_one_line(vmm, guests, tmp_path):
    trace = tmp_path / "never.trace"
    r = vmm("record", guests / "faults" / "busy.bin", "--backend", "kvm", "--max-instructions",
            "1M", "-o", trace)
    assert r.returncode == 2 and "needs the emulator" in r.stderr and "--max-exits" in r.stderr
    assert not trace.exists()                       # refused before the trace was created


@needs_both
def test_a_trace_the_budget_never_reached_replays_on_kvm_too(vmm, guests, tmp_path):
    trace = tmp_path / "echo.trace"
    r = vmm("record", guests / "echo.bin", "--script", "examples/echo.script",
            "--max-instructions", "10M", "-o", trace)
    assert r.returncode == 0, r
    assert vmm("replay", trace, "--backend", "kvm").returncode == 0
    stopped = tmp_path / "busy.trace"
    vmm("record", guests / "faults" / "busy.bin", "--max-instructions", "900", "-o", stopped)
    refused = vmm("replay", stopped, "--backend", "kvm")
    assert refused.returncode == 2 and "replay it with --backend emu" in refused.stderr


@needs_emu
def test_the_emulator_counts_whole_blocks_at_their_start(guests):
    """The backend itself: the limit is never passed; the CPU is left at the first instruction
    of the block that did not run."""
    from vmm.boot import BootOptions, load_guest
    from vmm.cpu.emu_backend import EmuBackend
    image = load_guest(str(guests / "faults" / "busy.bin"), BootOptions())
    backend = EmuBackend(image.mem_size)
    try:
        for address, data in image.chunks:
            backend.memory[address:address + len(data)] = data
        backend.set_entry_state(image.entry)
        backend.set_instruction_limit(20)
        assert isinstance(backend.run(), InstructionLimit)
        assert backend.instructions == 18                # six blocks of three
        cpu = backend.cpu_state()
        assert cpu.rip == 0x1000 and cpu.regs["rax"] == 6
    finally:
        backend.close()


# --- in the grader --------------------------------------------------------------------------------
BUSY_RUBRIC = """
title = "budgets"
[limits]
max_time = "10s"
{limits}
[[scenario]]
name = "answers"
points = 10
script = '''
sendline "x"
'''
  [[scenario.check]]
  end_reason = "script-end"
"""


def grade(vmm, tmp_path, name, limits, *subs):
    rubric = tmp_path / f"{name}.toml"
    rubric.write_text(BUSY_RUBRIC.format(limits=limits))
    out = tmp_path / name
    r = vmm("grade", "--rubric", rubric, "--out", out, *subs, timeout=300)
    assert r.returncode == 0, r
    return {s["name"]: s["scenarios"][0] for s in
            json.loads((out / "report.json").read_text())["submissions"]}


@needs_emu
def test_grading_ends_computing_guests_by_budget_and_says_which_limit(vmm, guests, tmp_path):
    subs = [guests / "faults" / "busy.bin", guests / "faults" / "outloop.bin", guests / "echo.bin"]
    first = grade(vmm, tmp_path, "one", 'max_instructions = "200k"\nmax_exits = "3000"', *subs)
    busy, loop, echo = first["busy.bin"], first["outloop.bin"], first["echo.bin"]
    assert busy["end_reason"] == "max-instructions" and busy["limit"] == "max_instructions"
    assert "limits.max_instructions" in busy["reason"]
    assert busy["work"]["instructions"] <= 200_000 and busy["work"]["exits"] == 0
    assert loop["end_reason"] == "max-exits" and loop["limit"] == "max_exits"
    assert loop["work"]["exits"] == 3001
    assert echo["end_reason"] == "script-end" and echo["limit"] == "" and echo["score"] == 10
    page = (tmp_path / "one" / "busy.bin" / "index.html").read_text()
    assert "the [limits] max_instructions limit" in page
    second = grade(vmm, tmp_path, "two", 'max_instructions = "200k"\nmax_exits = "3000"', *subs)
    assert [first[n]["work"] for n in first] == [second[n]["work"] for n in second]


def test_rubric_budgets_are_checked_by_key(vmm, guests, tmp_path):
    rubric = tmp_path / "bad.toml"
    rubric.write_text(BUSY_RUBRIC.format(limits='max_exits = "lots"'))
    r = vmm("grade", "--rubric", rubric, "--out", tmp_path / "o", guests / "echo.bin")
    assert r.returncode == 2 and "limits.max_exits" in r.stderr
    rubric.write_text(BUSY_RUBRIC.format(limits="max_exits = 1.5"))
    r = vmm("grade", "--rubric", rubric, "--out", tmp_path / "o", guests / "echo.bin")
    assert r.returncode == 2 and "limits.max_exits" in r.stderr
