"""harness.GuestSession: pexpect's API over the VM console, in guest time."""

import os
import re

import pexpect
import pytest

from conftest import GUESTS
from harness import GuestSession
from vmm.runner import replay_trace
from vmm.trace import read_trace

pytestmark = pytest.mark.kvm
ECHO = str(GUESTS / "echo.bin")


@pytest.fixture
def echo(tmp_path):
    with GuestSession(ECHO, trace=str(tmp_path / "s.trace")) as s:
        yield s


def test_expect_string_sets_before_after_and_guest_time(echo):
    echo.sendline("hello")
    assert echo.expect("hello") == 0
    assert (echo.before, echo.after, echo.now) == ("", "hello", 0.5)


def test_expect_list_with_regex_and_match_groups(echo):
    echo.sendline("abc123")
    assert echo.expect(["zzz", r"abc(\d+)"]) == 1
    assert echo.match.group(1) == "123"
    assert echo.expect([re.compile("c1"), "never"]) == 0


def test_timeout_is_guest_time(echo):
    assert echo.expect(["never", pexpect.TIMEOUT], timeout=100) == 1
    assert echo.now == 100.0                      # a hundred seconds of guest time, exactly
    with pytest.raises(pexpect.TIMEOUT):
        echo.expect("never", timeout="250ms")
    assert echo.now == 100.25


def test_expect_exact_and_eof(tmp_path):
    with GuestSession(str(GUESTS / "longmode.elf"), trace=str(tmp_path / "l.trace")) as s:
        s.expect_exact("Hello from long mode!")
        s.sendline("halt")
        assert s.expect_exact(["never", pexpect.EOF]) == 1
        assert (s.reason, s.exit_code, s.exitstatus) == ("halt", 0, 0)
        assert not s.isalive()
        with pytest.raises(pexpect.EOF):
            s.send("x")


def test_wait_lets_guest_time_pass_and_keeps_output_for_expect(echo):
    echo.sendline("tick")
    assert echo.wait(1.2) == "tick\ntick\n"
    assert echo.now == 1.2
    assert echo.expect("tick") == 0 and echo.now == 1.2     # already in the buffer
    echo.wait("300ms")
    assert echo.lines == ["tick", "tick", "tick"]
    assert echo.output == "tick\ntick\ntick\n"


def test_prompts_without_a_newline_can_be_expected(tmp_path):
    with GuestSession(str(GUESTS / "monitor.bin"), trace=str(tmp_path / "m.trace")) as s:
        s.expect("Choice: ")
        s.send("1")
        s.expect(r"Stepping: (\d+)")
        assert s.match.group(1) == "9"


def test_the_session_trace_replays_exactly_and_deterministically(tmp_path):
    traces = []
    for name in ("a.trace", "b.trace"):
        with GuestSession(ECHO, trace=str(tmp_path / name)) as s:
            s.sendline("one")
            s.expect("one")
            s.wait(0.7)
            s.sendline("two")
            s.expect("two")
        assert s.reason == "session-end"
        result = replay_trace(str(tmp_path / name))
        assert result.exit_code == 0, result.report
        trace = read_trace(str(tmp_path / name))
        traces.append([r for r in trace.records] + [{k: v for k, v in trace.end.items()
                                                     if k != "info"}])
    assert traces[0] == traces[1]


def test_a_guest_that_never_gives_control_back_is_stopped(tmp_path):
    with GuestSession(str(GUESTS / "faults" / "busy.bin"), trace=str(tmp_path / "busy.trace"),
                      wall_timeout=0.3) as s:
        with pytest.raises(pexpect.EOF):
            s.expect("anything")
    assert s.reason == "timeout"


def test_max_time_ends_the_run(tmp_path):
    with GuestSession(ECHO, trace=str(tmp_path / "t.trace"), max_time=2) as s:
        s.sendline("x")
        assert s.expect([pexpect.EOF, "never"], timeout=None) == 0
    assert s.reason == "max-time" and s.now == 2.0


def test_a_crashing_guest_ends_with_its_reason(tmp_path):
    with GuestSession(str(GUESTS / "faults" / "garbage.bin"), trace=str(tmp_path / "g.trace")) as s:
        s.expect(pexpect.EOF)
    assert s.reason == "guest-exception" and s.exit_code == 22
    assert s.lines == ["jumping into garbage"]


def test_bad_guest_is_a_clear_error():
    from vmm.errors import GuestImageError
    with pytest.raises(GuestImageError, match="guest file not found"):
        GuestSession("no/such/guest.bin")


def test_a_session_without_trace_leaves_no_file_behind():
    import gc
    s = GuestSession(ECHO)
    s.sendline("kept while the session lives")
    s.expect("kept")
    s.close()
    path = s.trace_path
    assert os.path.exists(path) and replay_trace(path).exit_code == 0
    del s
    gc.collect()
    assert not os.path.exists(path)


def test_a_session_that_cannot_start_leaves_no_file_behind(tmp_path, monkeypatch):
    import tempfile
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(Exception, match="empty"):
        GuestSession(str(tmp_path / "empty.bin"))
    with pytest.raises(Exception):
        GuestSession(ECHO, mem="1")                       # out of range, after the guest loads
    assert os.listdir(tmp_path / "tmp") == []


def test_a_named_trace_is_kept(tmp_path):
    import gc
    path = tmp_path / "mine.trace"
    s = GuestSession(ECHO, trace=str(path))
    s.close()
    del s
    gc.collect()
    assert path.exists()


def test_a_session_whose_guest_spins_ends_as_a_spin(tmp_path):
    with GuestSession(str(GUESTS / "faults" / "spin.bin"), trace=str(tmp_path / "spin.trace"),
                      wall_timeout=30) as s:
        with pytest.raises(pexpect.EOF):
            s.expect("anything")
    assert s.reason == "spin"


@pytest.mark.parametrize("thread", [False, True], ids=["main-thread", "other-thread"])
def test_what_the_guest_read_is_in_the_trace_file_when_control_returns_to_the_test(tmp_path,
                                                                                   thread):
    """The recorder holds records until a hand-over; a session hands them over whenever it
    gives control back to the test, so a test that stops there (or reads the file) has them,
    even off the main thread, where the session has no watchdog ticks."""
    import json
    import threading
    path = tmp_path / "open.trace"
    found = {}

    def session():
        with GuestSession(ECHO, trace=str(path)) as s:
            s.sendline("hello")
            s.expect("hello")
            records = [json.loads(line) for line in path.read_bytes().splitlines()]
            found["keys"] = bytes(r["byte"] for r in records if r["type"] == "key")
            found["ended"] = any(r["type"] == "end" for r in records)

    if thread:
        worker = threading.Thread(target=session)
        worker.start()
        worker.join(60)
    else:
        session()
    assert found == {"keys": b"hello\n", "ended": False}
