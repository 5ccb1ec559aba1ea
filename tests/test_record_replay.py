"""Record and replay on real KVM: exact replay, determinism, divergence, signals, re-drive."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, current_backend, records_without_info, vmm_command
from vmm.boot import BootOptions
from vmm.runner import LiveRun, live_run, replay_trace
from vmm.script import parse_script
from vmm.trace import VERSION
from vmm.trace import read_trace

pytestmark = pytest.mark.kvm

ECHO_SCRIPT = 'sendline "hello"\nexpect "hello"\nwait 2s\n'


def record(tmp_path, guest, script_text, name="run.trace", **boot):
    path = tmp_path / name
    result = live_run(LiveRun(guest=str(guest), boot=BootOptions(**boot),
                              script=parse_script(script_text), trace_path=str(path)))
    return path, result


# --- exact replay ---------------------------------------------------------------------------
def test_scripted_echo_record_then_replay_is_identical(tmp_path, guests):
    path, rec = record(tmp_path, guests / "echo.bin", ECHO_SCRIPT)
    assert rec.end.reason == "script-end"
    assert rec.output.text == "hello\n" * 5       # at 0.5 s, then the 2 s wait: 1.0 ... 2.5 s
    rep = replay_trace(str(path))
    assert rep.exit_code == 0, rep.report
    assert rep.output.lines == rec.output.lines
    assert rep.report[0].startswith("vmm: replay identical: 5 output lines")


def test_replay_command_prints_output_and_verdict(tmp_path, guests, vmm):
    path, _ = record(tmp_path, guests / "echo.bin", ECHO_SCRIPT, name="run.trace.gz")
    with gzip.open(path) as f:                    # .gz names are really gzip-compressed
        assert json.loads(f.readline())["format"] == "vmm-trace"
    r = vmm("replay", path)
    assert r.returncode == 0, r
    assert r.lines == ["hello"] * 5
    assert "replay identical" in r.stderr
    quiet = vmm("replay", "--quiet", path)
    assert quiet.returncode == 0 and quiet.stdout == ""


def test_same_scripted_session_recorded_twice_gives_the_same_records(tmp_path, guests):
    a, _ = record(tmp_path, guests / "echo.bin", ECHO_SCRIPT, name="a.trace")
    b, _ = record(tmp_path, guests / "echo.bin", ECHO_SCRIPT, name="b.trace")
    assert records_without_info(a) == records_without_info(b)
    assert read_trace(str(a)).header["info"]["created"]       # informational fields exist


def test_monitor_recording_holds_the_cpuid_table_and_replays(tmp_path, guests):
    path, rec = record(tmp_path, guests / "monitor.bin", 'send "1"\nexpect "Stepping"\nsend "h"\n')
    assert rec.end.reason == "halt"
    header = read_trace(str(path)).header
    vendor = next(e for e in header["machine"]["cpuid"] if e["function"] == 0)
    assert vendor["ebx"].to_bytes(4, "little") == b"Genu"
    assert replay_trace(str(path)).exit_code == 0


def test_piped_stdin_under_the_virtual_clock_is_deterministic(tmp_path, guests, vmm):
    traces = []
    for name in ("p1.trace", "p2.trace"):
        r = vmm("record", guests / "echo.bin", "--clock", "virtual", "--max-time", "2s",
                "-o", tmp_path / name, input=b"hi\nthere\n")
        assert r.returncode == 28, r             # ended by --max-time (guest time)
        assert r.lines == ["there"] * 4, r       # both lines at t=0: the second one wins
        traces.append(records_without_info(tmp_path / name))
    assert traces[0] == traces[1]
    assert vmm("replay", "-q", tmp_path / "p1.trace").returncode == 0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(
    st.tuples(st.just("line"), st.text(alphabet="abcxyz 01", max_size=12)),
    st.tuples(st.just("key"), st.sampled_from(["q", "\x7f", "\x08", "Z"])),
    st.tuples(st.just("wait"), st.integers(min_value=1, max_value=1500))), max_size=6))
def test_random_input_scripts_replay_exactly_and_record_deterministically(tmp_path_factory,
                                                                         guests, steps):
    lines = []
    for kind, value in steps:
        if kind == "line":
            lines.append(f'sendline "{value}"')
        elif kind == "key":
            lines.append('send "\\x%02x"' % ord(value))
        else:
            lines.append(f"wait {value}ms")
    lines.append("wait 1s")
    script = "\n".join(lines)
    tmp = tmp_path_factory.mktemp("prop")
    a, rec = record(tmp, guests / "echo.bin", script, name="a.trace")
    b, _ = record(tmp, guests / "echo.bin", script, name="b.trace")
    assert records_without_info(a) == records_without_info(b)
    rep = replay_trace(str(a))
    assert rep.exit_code == 0, rep.report
    assert rep.output.lines == rec.output.lines


# --- what replay detects ----------------------------------------------------------------------
def test_rdtsc_in_registers_is_caught_at_the_first_checkpoint_after_it(tmp_path, guests, vmm):
    if current_backend() == "emu":
        pytest.skip("the emulator's TSC is deterministic: "
                    "test_rdtsc_replays_exactly_on_the_emulator")
    trace = tmp_path / "tsc.trace"
    r = vmm("record", guests / "faults" / "rdtsc-silent.bin", "-o", trace,
            "--checkpoint-every", "64")
    assert r.returncode == 0 and r.lines == ["reading the TSC", "done"], r
    rep = vmm("replay", trace)
    assert rep.returncode == 40, rep
    assert "registers differ at the checkpoint at observation 64" in rep.stderr
    assert "RDTSC" in rep.stderr


def test_rdtsc_in_output_is_caught_at_the_output_line(tmp_path, guests, vmm):
    if current_backend() == "emu":
        pytest.skip("the emulator's TSC is deterministic: "
                    "test_rdtsc_replays_exactly_on_the_emulator")
    trace = tmp_path / "tsc.trace"
    assert vmm("record", guests / "faults" / "rdtsc.bin", "-o", trace).returncode == 0
    rep = vmm("replay", trace)
    assert rep.returncode == 40, rep
    assert "output differs: the recording printed 'console: tsc low bits:" in rep.stderr


@pytest.mark.parametrize("guest", ["rdtsc-silent.bin", "rdtsc.bin"])
def test_rdtsc_replays_exactly_on_the_emulator(tmp_path, guests, vmm, guest):
    """Under the emulator RDTSC counts guest events (docs/emulator.md): the same run reads the
    same TSC values, so a guest that reads the TSC records deterministically and replays."""
    if current_backend() != "emu":
        pytest.skip("KVM's TSC is the host's (test_rdtsc_in_output_is_caught_at_the_output_line)")
    traces = []
    for name in ("a.trace", "b.trace"):
        r = vmm("record", guests / "faults" / guest, "-o", tmp_path / name, "--clock", "virtual",
                "--checkpoint-every", "64")
        assert r.returncode == 0, r
        traces.append(records_without_info(tmp_path / name))
    assert traces[0] == traces[1]
    rep = vmm("replay", tmp_path / "a.trace")
    assert rep.returncode == 0 and "replay identical" in rep.stderr, rep


def test_an_edited_input_is_reported_as_the_first_divergence(tmp_path, guests):
    path, _ = record(tmp_path, guests / "echo.bin", ECHO_SCRIPT)
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        rec = json.loads(line)
        if rec.get("type") == "key" and rec["byte"] == ord("e"):
            rec["byte"] = ord("a")
            lines[i] = json.dumps(rec)
            break
    path.write_text("\n".join(lines) + "\n")
    rep = replay_trace(str(path))
    assert rep.exit_code == 40
    assert "the recording printed 'console: hello'" in rep.report[0]
    assert "the replay printed 'console: hallo'" in rep.report[0]


# --- replay touches nothing outside the trace -------------------------------------------------
def test_replay_reads_no_terminal_clock_or_network(tmp_path, guests, monkeypatch):
    path, _ = record(tmp_path, guests / "echo.bin", ECHO_SCRIPT)
    import socket

    import vmm.inputs as inputs

    def forbidden(*args, **kwargs):
        raise AssertionError("replay used a live input")
    for cls in (inputs.LiveInput, inputs.FdFeed, inputs.NullFeed, inputs.RealClock,
                inputs.VirtualClock):
        monkeypatch.setattr(cls, "__init__", forbidden)
    monkeypatch.setattr(socket.socket, "__init__", forbidden)
    monkeypatch.setattr("builtins.input", forbidden)
    rep = replay_trace(str(path))
    assert rep.exit_code == 0, rep.report


def test_replay_with_stdin_closed(tmp_path, guests):
    path, _ = record(tmp_path, guests / "echo.bin", ECHO_SCRIPT)
    proc = subprocess.run(vmm_command("replay", str(path)), cwd=ROOT, capture_output=True,
                          preexec_fn=lambda: os.close(0), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines() == ["hello"] * 5


# --- cut short ---------------------------------------------------------------------------------
def _wait_for_header(path, proc) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and b"\n" in path.read_bytes()[:1 << 20]:
            return
        time.sleep(0.02)
    raise AssertionError("the recording did not write its header")


@pytest.mark.parametrize("sig, expected_replay", [
    (signal.SIGINT, 0), (signal.SIGTERM, 0), (signal.SIGKILL, 42)])
@pytest.mark.parametrize("name", ["cut.trace", "cut.trace.gz"])
def test_signal_at_a_random_moment_leaves_a_replayable_trace(tmp_path, guests, vmm, sig,
                                                             expected_replay, name):
    path = tmp_path / name
    proc = subprocess.Popen(vmm_command("record", str(guests / "echo.bin"), "-o", str(path)),
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdin.write(b"hello\n")
    proc.stdin.flush()
    _wait_for_header(path, proc)
    time.sleep(random.uniform(0.05, 1.2))
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert b"Traceback" not in err
    rep = vmm("replay", "-q", path)
    assert rep.returncode == expected_replay, (rep, err)
    if sig == signal.SIGKILL:
        assert "truncated" in rep.stderr
    else:
        trace = read_trace(str(path))
        assert trace.end["reason"] == ("interrupted" if sig == signal.SIGINT else "terminated")
        assert trace.end["at_read"] is True       # stopped at a read: final state compared


def test_timeout_of_a_guest_that_never_reads_replays_without_final_state(tmp_path, guests, vmm):
    path = tmp_path / "busy.trace"
    r = vmm("record", guests / "faults" / "busy.bin", "--timeout", "300ms", "-o", path)
    assert r.returncode == 28
    assert read_trace(str(path)).end["at_read"] is False
    rep = vmm("replay", "--timeout", "1s", path)
    assert rep.returncode == 0, rep
    assert "final state is not compared" in rep.stderr


# --- malformed traces -------------------------------------------------------------------------
@pytest.fixture
def good_trace(tmp_path, guests):
    path, _ = record(tmp_path, guests / "echo.bin", ECHO_SCRIPT)
    return path


def _rewrite(path, edit) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


@pytest.mark.parametrize("edit, message", [
    (lambda ls: ls[:3] + ["{not json"] + ls[3:], "line 4 is not valid JSON"),
    (lambda ls: ls[1:], "is not a vmm trace"),
    (lambda ls: [ls[0].replace(f'"version":{VERSION}', '"version":99')] + ls[1:],
     "version 99; this vmm reads versions 1, 2, 3, 4 and 5 only (upgrade vmm)"),
    (lambda ls: [ls[0].replace('"sha256":"', '"sha256":"00')] + ls[1:],
     "does not match its recorded size and sha256"),
    (lambda ls: ls[:2] + ['{"type":"key","n":"x"}'] + ls[2:], "lacks a valid 'n'"),
    (lambda ls: ls[:2] + ['{"type":"warp","n":1}'] + ls[2:], "unknown record type 'warp'"),
    (lambda ls: ls + ['{"type":"out","n":1,"dev":"console","text":"x"}'], "after the end record"),
])
def test_malformed_trace_gives_a_clear_error(good_trace, vmm, edit, message):
    _rewrite(good_trace, edit)
    r = vmm("replay", good_trace)
    assert r.returncode == 14, r
    assert message in r.stderr
    assert len(r.stderr.splitlines()) == 1


def test_missing_and_empty_traces(tmp_path, vmm):
    r = vmm("replay", tmp_path / "none.trace")
    assert r.returncode == 14 and "trace file not found" in r.stderr
    (tmp_path / "empty.trace").write_bytes(b"")
    r = vmm("replay", tmp_path / "empty.trace")
    assert r.returncode == 14 and "is empty" in r.stderr
    (tmp_path / "junk.trace.gz").write_bytes(b"\x1f\x8b" + b"junk" * 10)
    r = vmm("replay", tmp_path / "junk.trace.gz")
    assert r.returncode == 14 and "not a readable gzip file" in r.stderr


def test_truncated_gzip_replays_its_prefix(tmp_path, guests, vmm):
    path, _ = record(tmp_path, guests / "echo.bin", ECHO_SCRIPT, name="t.trace.gz")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 40])
    r = vmm("replay", "-q", path)
    assert r.returncode == 42, r
    assert "truncated" in r.stderr and "replayed identically" in r.stderr


def test_a_last_line_cut_mid_write_is_a_truncated_trace(good_trace, vmm):
    data = good_trace.read_bytes()
    good_trace.write_bytes(data[:data.rindex(b'{"type":"out"') + 20])
    r = vmm("replay", "-q", good_trace)
    assert r.returncode == 42, r


# --- re-drive ---------------------------------------------------------------------------------
@pytest.mark.parametrize("recorded, other", [("echo.bin", "echo.elf"), ("echo.elf", "echo.bin")])
def test_the_two_echo_builds_replay_each_others_traces(tmp_path, guests, vmm, recorded, other):
    path, rec = record(tmp_path, guests / recorded, ECHO_SCRIPT)
    r = vmm("replay", path, "--guest", guests / other)
    assert r.returncode == 0, r
    assert r.lines == ["hello"] * 5
    assert "re-drive identical" in r.stderr


def test_redrive_of_an_unscripted_recording_sends_keys_at_their_times(tmp_path, guests, vmm):
    path = tmp_path / "keys.trace"
    r = vmm("record", guests / "echo.bin", "--clock", "virtual", "--max-time", "1600ms",
            "-o", path, input=b"abc\n")
    assert r.returncode == 28 and r.lines == ["abc"] * 3, r
    r = vmm("replay", path, "--guest", guests / "echo.elf")
    assert r.returncode == 0, r


def test_redrive_against_a_different_guest_shows_a_diff(tmp_path, guests, vmm):
    path, _ = record(tmp_path, guests / "echo.bin", ECHO_SCRIPT)
    r = vmm("replay", path, "--guest", guests / "longmode.elf")
    assert r.returncode == 41, r
    assert "re-drive differs" in r.stderr
    assert "--- recorded (echo.bin)" in r.stderr and "+++ re-driven (longmode.elf)" in r.stderr
    assert "-console: hello" in r.stderr


# --- inspect ----------------------------------------------------------------------------------
def test_inspect_summarises_a_trace(good_trace, vmm):
    r = vmm("inspect", good_trace)
    assert r.returncode == 0, r
    assert "echo.bin" in r.stdout and "6 keys" in r.stdout and "script-end" in r.stdout
    assert "key 'h' -> keyboard" in r.stdout
    j = vmm("inspect", "--json", good_trace)
    summary = json.loads(j.stdout)
    assert summary["counts"]["keys"] == 6 and summary["end"]["reason"] == "script-end"
    assert summary["clock"] == "virtual"


def test_inspect_of_a_bad_trace(tmp_path, vmm):
    (tmp_path / "x.trace").write_text("hello\n")
    r = vmm("inspect", tmp_path / "x.trace")
    assert r.returncode == 14 and "is not a vmm trace" in r.stderr


def test_record_needs_an_output_file(guests, vmm):
    r = vmm("record", guests / "echo.bin")
    assert r.returncode == 2 and "-o/--output" in r.stderr


def test_script_errors_are_one_line(tmp_path, guests, vmm):
    (tmp_path / "bad.script").write_text('send "unterminated\n')
    r = vmm("record", guests / "echo.bin", "--script", tmp_path / "bad.script", "-o",
            tmp_path / "t.trace")
    assert r.returncode == 2 and "bad.script:1: unterminated string" in r.stderr, r


def test_expect_failure_ends_the_run_with_its_own_status(tmp_path, guests, vmm):
    (tmp_path / "s.script").write_text('sendline "hello"\nexpect "goodbye" within 2s\n')
    r = vmm("run", guests / "echo.bin", "--script", tmp_path / "s.script")
    assert r.returncode == 34, r
    assert "expected 'goodbye' within 2s of guest time" in r.stderr


def test_redriving_an_elf_recorded_in_real_mode_keeps_the_mode(vmm, guests, tmp_path):
    """An ELF32 with a 16-bit entry runs only with --mode real: re-driven against its trace
    (vmm replay --guest, pytest traces/), it boots in the mode it was recorded in."""
    trace = tmp_path / "real16.trace"
    guest = guests / "pc" / "real16.elf"
    r = vmm("record", guest, "--mode", "real", "--board", "pc", "--clock", "virtual",
            "--screen", "none", "-o", trace)
    assert r.returncode == 33, r                       # its exit through 0xf4
    redrive = vmm("replay", trace, "--guest", guest)
    assert redrive.returncode == 0, redrive
