"""Every run ends; the virtual clock never stalls; host-stopped recordings replay identically
(issue 12; DESIGN §4 and §10; docs/scripts.md "The two clocks").

The input source's rules are tested directly (no guest needed); the guests of guests/agree/ show
them end to end, on every usable backend.
"""

from __future__ import annotations

import json

import pytest

from conftest import test_backends
from vmm.inputs import IDLE_CONFIRM, QUANTUM_NS, LiveInput, NullFeed, VirtualClock
from vmm.outcome import StopRun
from vmm.trace import read_trace

BACKENDS = test_backends() or ["none"]
MS = 1_000_000


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "none":
        pytest.skip("no CPU backend is usable here")
    return request.param


# --- the quantum per observation ----------------------------------------------------------------
def virtual_input(max_time_ns=None, deadline=None, quantum_ns=QUANTUM_NS):
    inputs = LiveInput(NullFeed(), VirtualClock(), max_time_ns=max_time_ns, quantum_ns=quantum_ns)
    if deadline is not None:
        inputs.deadline_sources.append(lambda now: deadline if deadline > now else None)
    return inputs


def test_every_observation_adds_the_quantum():
    inputs = virtual_input()
    for _ in range(3):
        inputs.observe()
    assert inputs.obs == 3 and inputs.now() == 3 * QUANTUM_NS == 30_000


def test_the_quantum_never_carries_time_past_a_scheduled_event():
    inputs = virtual_input(deadline=25_000)
    times = []
    for _ in range(4):
        inputs.observe()
        times.append(inputs.now())
    assert times == [10_000, 20_000, 25_000, 35_000]    # stops at the deadline, then goes on


def test_a_rearmed_timer_is_seen_by_the_next_observation():
    deadline = [None]
    inputs = LiveInput(NullFeed(), VirtualClock())
    inputs.deadline_sources.append(lambda now: deadline[0] if deadline[0] and deadline[0] > now
                                   else None)
    inputs.observe()                                     # horizon: nothing scheduled
    deadline[0] = inputs.now() + 5_000                   # what IntervalTimer._arm does
    inputs.observe()
    assert inputs.now() == 15_000


def test_the_read_after_an_idle_jump_happens_at_that_moment():
    inputs = virtual_input(deadline=5 * MS)
    inputs.observe()
    inputs.idle()                                        # nothing pending: jump to 5 ms
    assert inputs.now() == 5 * MS
    inputs.observe()                                     # the read right after: same moment
    assert inputs.now() == 5 * MS
    inputs.observe()                                     # then work costs time again
    assert inputs.now() == 5 * MS + QUANTUM_NS


def test_max_time_ends_a_run_without_idle_points():
    inputs = virtual_input(max_time_ns=100_000)
    with pytest.raises(StopRun) as stop:
        for _ in range(100):
            inputs.observe()
    assert stop.value.reason == "max-time"
    assert inputs.obs == 11 and inputs.now() == 100_000  # the 11th read would pass it


def test_no_quantum_is_the_old_clock():
    inputs = virtual_input(quantum_ns=0)
    for _ in range(1000):
        inputs.observe()
    assert inputs.now() == 0


def test_the_session_input_source_keeps_its_own_observe():
    """harness.session's input source counts observations itself (its budget moves time)."""
    from harness.session import _SessionInput
    assert _SessionInput.observe is not LiveInput.observe


# --- idle only where the guest truly waits -----------------------------------------------------
def test_idle_ends_after_consecutive_idle_reads_with_nothing_scheduled():
    inputs = virtual_input()
    for i in range(IDLE_CONFIRM - 1):
        inputs.observe()
        inputs.idle()                                   # not yet: the guest may be busy
    inputs.observe()
    with pytest.raises(StopRun) as stop:
        inputs.idle()
    assert stop.value.reason == "idle"


def test_output_between_idle_reads_means_busy_not_waiting():
    inputs = virtual_input()
    written = [0]
    inputs.output_progress = lambda: written[0]
    for i in range(5 * IDLE_CONFIRM):
        inputs.observe()
        inputs.idle()
        if i % 10 == 0:
            written[0] += 1                             # the guest printed between polls


def test_another_read_between_idle_reads_means_busy_not_waiting():
    inputs = virtual_input()
    for _ in range(5 * IDLE_CONFIRM):
        inputs.observe()
        inputs.idle()
        inputs.observe()                                # a read that is not an idle point


# --- end to end, on each backend ---------------------------------------------------------------
def stats(result) -> dict:
    """The -v statistics line: 'vmm: N exits, M observations, B output bytes, ...'."""
    line = next(l for l in result.stderr.splitlines() if " observations, " in l)
    words = line.split()
    return {"observations": int(words[3]), "output_bytes": int(words[5])}


@pytest.mark.parametrize("guest", ["poll-data", "ins-flood"])
def test_a_guest_without_idle_points_ends_at_max_time(vmm, guests, backend, guest):
    r = vmm("run", "-v", "--backend", backend, "--clock", "virtual", "--max-time", "100ms",
            guests / "agree" / f"{guest}.bin")
    assert r.returncode == 28, r
    assert "guest time reached --max-time (0.1s)" in r.stderr
    assert stats(r)["observations"] == 100 * MS // QUANTUM_NS + 1


def test_a_flood_of_dropped_bytes_ends_at_max_output(vmm, guests, backend, tmp_path):
    trace = tmp_path / "drop.trace"
    r = vmm("record", "-v", "--backend", backend, "--max-output", "20K",
            guests / "agree" / "drop-flood.bin", "-o", trace)
    assert r.returncode == 30, r
    assert "--max-output (20480 bytes)" in r.stderr
    assert r.lines == ["dropping"]
    assert stats(r)["output_bytes"] == 20481          # 9 of "dropping\n", then dropped bytes
    replay = vmm("replay", "--backend", backend, trace)
    assert replay.returncode == 0 and "ended by output-flood" in replay.stderr, replay


def test_busy_printing_between_polls_is_not_idle(vmm, guests, backend):
    r = vmm("run", "-v", "--backend", backend, "--clock", "virtual",
            guests / "agree" / "busy-print.bin")
    assert r.returncode == 0, r
    assert len(r.lines) == 100 and r.lines[-1] == "line 9"
    assert "the guest waits for input and nothing more is scheduled" in r.stderr
    assert stats(r)["observations"] == 100 + IDLE_CONFIRM - 1


def test_the_quantum_is_in_the_trace_and_timer_periods_stay_exact(vmm, guests, backend,
                                                                   tmp_path):
    trace = tmp_path / "echo.trace"
    r = vmm("record", "--backend", backend, "--clock", "virtual", "--max-time", "3s",
            guests / "echo.bin", "-o", trace, input=b"hi\n")
    assert r.returncode == 28 and r.lines == ["hi"] * 6, r
    t = read_trace(str(trace))
    assert t.header["machine"]["quantum_ns"] == QUANTUM_NS
    firings = [e["at"] for e in t.inputs() if e["type"] == "timer"]
    assert firings == [500 * MS * i for i in range(1, 7)]    # at their exact deadlines
    redrive = vmm("replay", "--backend", backend, trace, "--guest", guests / "echo.bin")
    assert redrive.returncode == 0, redrive


def test_a_trace_without_a_quantum_replays_and_re_drives_as_recorded(vmm, guests, backend):
    """Older traces (the goldens in traces/) have no quantum_ns: 0, time moves at idle points
    only, as when they were recorded; exact replay and re-drive are unchanged."""
    from conftest import ROOT
    from vmm.replay import recorded_quantum
    golden = ROOT / "traces" / "test_goldens" / "test_echo_backspace.trace"
    trace = read_trace(str(golden))
    assert "quantum_ns" not in trace.header["machine"] and recorded_quantum(trace) == 0
    assert vmm("replay", "--backend", backend, golden).returncode == 0
    redrive = vmm("replay", "--backend", backend, golden, "--guest", guests / "echo.bin")
    assert redrive.returncode == 0, redrive


@pytest.mark.parametrize("value", ["10", -1, 10 ** 12, 1.5, None])
def test_a_bad_quantum_is_a_bad_trace(vmm, guests, tmp_path, value):
    trace = tmp_path / "run.trace"
    vmm("record", "--backend", "emu" if "emu" in BACKENDS else BACKENDS[0], "--clock",
        "virtual", guests / "agree" / "smc.bin", "-o", trace)
    lines = trace.read_text().splitlines()
    header = json.loads(lines[0])
    header["machine"]["quantum_ns"] = value
    trace.write_text("\n".join([json.dumps(header)] + lines[1:]) + "\n")
    r = vmm("replay", trace, "--guest", guests / "agree" / "smc.bin")
    assert r.returncode == 14, r
    assert "quantum_ns" in r.stderr


# --- false divergence: a recording the host stopped --------------------------------------------
def test_a_host_stopped_recording_of_a_guest_that_never_reads_replays_identically(
        vmm, guests, backend, tmp_path):
    trace = tmp_path / "flood.trace"
    rec = vmm("record", "--backend", backend, "--timeout", "500ms",
              guests / "faults" / "flood.bin", "-o", trace)
    assert rec.returncode == 28, rec
    t = read_trace(str(trace))
    assert t.end["at_read"] is False
    rep = vmm("replay", "--backend", backend, trace)
    assert rep.returncode == 0, rep
    assert "replay identical" in rep.stderr and "ended by timeout" in rep.stderr
    if not rec.stdout.endswith("\n"):                 # the cut line: finished by the replay
        assert t.outputs()[-1].get("partial")
        assert rep.stdout.startswith(rec.stdout) and rep.stdout.endswith("\n")


def test_a_host_stopped_replay_that_prints_something_else_still_diverges(guests, tmp_path,
                                                                        backend):
    """The cut line is matched by its beginning only: a different line is a divergence."""
    from vmm.runner import replay_trace
    import subprocess
    import sys
    trace = tmp_path / "flood.trace"
    subprocess.run([sys.executable, "-m", "vmm", "record", "--backend", backend, "--timeout",
                    "300ms", str(guests / "faults" / "flood.bin"), "-o", str(trace)],
                   capture_output=True)
    lines = trace.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    last_out = max(i for i, r in enumerate(records) if r["type"] == "out")
    records[last_out]["text"] = "flood flood XX"
    records[last_out]["partial"] = True
    trace.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = replay_trace(str(trace), backend=backend)
    assert result.exit_code == 40, result.report


# --- the backends agree on the cases of guests/agree/ (each backend on its own) ----------------
def test_loading_a_selector_sets_its_descriptors_accessed_bit(vmm, guests, backend):
    """The CPU sets the accessed bit of a descriptor it loads (KVM does); so must the emulator,
    for CS too, which QEMU's TCG leaves clear on a far jump."""
    r = vmm("run", "--backend", backend, guests / "agree" / "accessed.bin")
    assert r.returncode == 0, r
    assert r.lines == ["protected", "access 9b 93 9b"]


def test_self_modified_io_code_is_decoded_afresh(vmm, guests, backend):
    """INSB rewritten into REP INSB at the same RIP: 2 observations (one INSB, one chunk)."""
    r = vmm("run", "-v", "--backend", backend, "--clock", "virtual", guests / "agree" / "smc.bin")
    assert r.returncode == 0 and r.lines == ["smc done"], r
    assert stats(r)["observations"] == 2
