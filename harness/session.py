"""Scripted guest sessions with pexpect's API, in guest time. Importable without pytest.

    from harness import GuestSession
    with GuestSession("guests/build/echo.bin") as s:
        s.sendline("hello")
        s.expect("hello", timeout=1)      # one second of *guest* time
        s.wait(2)                         # two more seconds of guest time
        print(s.lines, s.reason)

`GuestSession` subclasses `pexpect.spawnbase.SpawnBase`, so `expect` (strings, regexes, lists,
`pexpect.EOF`, `pexpect.TIMEOUT`), `expect_exact`, `before`, `after` and `match` are pexpect's
own. The transport is the VM console, with no pty: the guest runs under the virtual clock in a
greenlet, and comes back to the test whenever it prints something or the guest-time budget of
the current call runs out. Every timeout is guest time, so a slow or loaded machine cannot
change a result. Each session records a trace (vmm-trace format) that `vmm replay` reproduces.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
import weakref

import pexpect
from greenlet import greenlet, getcurrent
from pexpect.expect import Expecter, searcher_re, searcher_string
from pexpect.spawnbase import SpawnBase

from vmm.boot import BootOptions, load_guest
from vmm.cpu.cpuid import cpuid_table
from vmm.feeds import load_feeds
from vmm.inputs import LiveInput, NullFeed, VirtualClock
from vmm.machine import Machine, RunConfig
from vmm.outcome import RunEnd, StopRun
from vmm.record import TraceRecorder
from vmm.runner import DEFAULT_CHECKPOINT_EVERY, OutputCollector, budget_backend, create_backend
from vmm.units import parse_duration, parse_size
from vmm.web import Fetcher

NS = 1_000_000_000
DEFAULT_TIMEOUT = 10.0          # seconds of guest time for expect()
DEFAULT_MAX_TIME = 600.0        # seconds of guest time a session may last
DEFAULT_WALL_TIMEOUT = 60.0     # host seconds the guest may run without giving control back
WATCHDOG_TICK = 0.05


def _seconds_ns(value) -> int:
    """Guest time from a number of seconds, or a duration string such as '500ms'."""
    if isinstance(value, str):
        return parse_duration(value)
    return int(round(float(value) * NS))


def _pattern_text(pattern) -> str:
    return repr(pattern) if isinstance(pattern, str) else f"/{pattern.pattern}/"


def _remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class _Outbox:
    """The console stream of a session: output the expect engine has not read yet."""

    def __init__(self, session: "GuestSession"):
        self._session = session
        self.chunks: list[str] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data.decode("ascii", "replace"))
        self._session._yield_to_test()

    def flush(self) -> None:
        pass

    def take(self, size: int) -> str:
        text = "".join(self.chunks)
        self.chunks = [text[size:]] if len(text) > size else []
        return text[:size]


class _SessionOutput(OutputCollector):
    """The session's output lines; a screen change hands control back to a test that waits for
    screen text (expect_screen)."""

    def __init__(self, stream, session: "GuestSession"):
        super().__init__(stream)
        self._session = session

    def show_screen(self, screen) -> None:
        if self._session._screen_wanted:
            self._session._yield_to_test()


class _SessionInput(LiveInput):
    """The virtual-clock input source of a session: keys come from send(); at an idle point the
    clock moves on only up to the budget of the current test call, then control returns."""

    def __init__(self, session: "GuestSession", max_time_ns: int, recorder, fetcher):
        # No quantum per observation: a session's guest time moves by the test's budget at
        # idle points (and the trace says so: machine.quantum_ns is 0).
        super().__init__(NullFeed(), VirtualClock(), max_time_ns=max_time_ns, record=recorder,
                         fetcher=fetcher, quantum_ns=0)
        self._session = session

    def observe(self) -> None:
        self.obs += 1
        if self._session._closing:
            raise StopRun("session-end", "the session was closed")

    def _virtual_idle(self) -> None:
        session = self._session
        while not self.input_moving():
            if session._closing:
                raise StopRun("session-end", "the session was closed")
            now = self.clock.now()
            event = self.next_event_after(now)
            budget = min(session._budget, self.max_time_ns)
            if event is not None and event <= budget:
                self.clock.advance_to(event)        # the next timer firing, within budget
                return
            self.clock.advance_to(budget)           # the guest waits: let the time pass
            if budget >= self.max_time_ns:
                raise StopRun("max-time", f"guest time reached the session's max_time "
                                          f"({self.max_time_ns / NS:g}s)")
            session._yield_to_test()                # the budget is spent: back to the test

    # Instruction-count mode (icount=): a guest computing without I/O passes guest time too,
    # so the test's budget is an instruction point of its own, where control returns.
    def _next_horizon(self, now: int) -> int:
        horizon = super()._next_horizon(now)
        budget = self._session._budget
        return min(horizon, budget) if budget > now else horizon

    def icount_point(self, count: int) -> None:
        if self._session._closing:
            raise StopRun("session-end", "the session was closed")
        super().icount_point(count)
        while self.clock.now() >= self._session._budget and not self._session._closing:
            self._session._yield_to_test()


class _GuestTimeExpecter(Expecter):
    """pexpect's Expecter, with the timeout counted in guest time instead of time.time()."""

    def expect_loop(self, timeout=-1):
        spawn = self.spawn
        end = None if timeout is None else spawn.clock_ns + _seconds_ns(timeout)
        try:
            idx = self.existing_data()
            if idx is not None:
                return idx
            while True:
                remaining = None if end is None else end - spawn.clock_ns
                if remaining is not None and remaining < 0:
                    return self.timeout()
                incoming = spawn.read_nonblocking(spawn.maxread, remaining / NS
                                                  if remaining is not None else None)
                idx = self.new_data(incoming)
                if idx is not None:
                    return idx
        except pexpect.EOF as e:
            return self.eof(e)
        except pexpect.TIMEOUT as e:
            return self.timeout(e)
        except BaseException:
            self.errored()
            raise


class GuestSession(SpawnBase):
    """A guest kernel under test, driven like a pexpect child."""

    def __init__(self, guest: str, *, mode: str | None = None, load: int | None = None,
                 entry=None, mem=None, stack: int | None = None, cpuid: str = "portable",
                 board: str | None = None,
                 timeout=DEFAULT_TIMEOUT, max_time=DEFAULT_MAX_TIME,
                 wall_timeout: float = DEFAULT_WALL_TIMEOUT, max_output="10M",
                 ignore_unknown_ports: bool = False, feeds: str | None = None,
                 offline: bool | None = None, trace: str | None = None,
                 guest_path: str | None = None, maxread: int = 4096,
                 backend: str | None = None, icount: int | None = None):
        self.guest = guest
        self.end: RunEnd | None = None
        super().__init__(timeout=timeout, maxread=maxread, encoding="ascii",
                         codec_errors="replace")
        self.delayafterread = None
        self.wall_timeout = wall_timeout
        self._closing = False
        self._budget = 0
        self._screen_wanted = False
        boot = BootOptions(mode=mode, load=load, entry=entry,
                           mem=parse_size(mem) if isinstance(mem, str) else mem, stack=stack,
                           board=board)
        image = load_guest(guest, boot)
        # Web data (docs/feeds.md): a test never reaches the internet unless it asks to. Without
        # a feeds file the session is offline; with one, its text/file/loopback feeds answer.
        feeds_config = load_feeds(feeds)
        offline = feeds is None if offline is None else offline
        fetcher = Fetcher(feeds_config, offline=offline)
        self._outbox = _Outbox(self)
        self.output_lines = _SessionOutput(self._outbox, self)
        # Without trace=, the trace is a temporary file, removed when the session is garbage
        # collected or Python exits (it stays readable as long as the session object lives):
        # a script that wants to keep it names a file with trace=.
        self._owned_trace = trace is None
        if trace is None:
            fd, trace = tempfile.mkstemp(prefix="vmm-session-", suffix=".trace")
            os.close(fd)
            self._remove_trace = weakref.finalize(self, _remove_file, trace)
        self.trace_path = trace
        self._backend = None
        self._recorder = None
        try:
            self._recorder = TraceRecorder(trace)
            self._backend = create_backend(budget_backend(backend, None, icount),
                                           image.mem_size)
            table = cpuid_table(cpuid, self._backend.supported_cpuid())
            max_time_ns = _seconds_ns(max_time)
            self._input = _SessionInput(self, max_time_ns, self._recorder, fetcher)
            config = RunConfig(max_output=parse_size(max_output) if isinstance(max_output, str)
                               else max_output, ignore_unknown_ports=ignore_unknown_ports,
                               checkpoint_every=DEFAULT_CHECKPOINT_EVERY, icount_ns=icount)
            self.machine = Machine(image, self._backend, self._input, self.output_lines,
                                   lambda text: None, config, table, observer=self._recorder)
            self._recorder.write_header(self.machine, boot_options=boot.to_dict(), cpuid=table,
                                        clock="virtual", script=None, max_time_ns=max_time_ns,
                                        guest_path=guest_path,
                                        feeds=feeds_config.describe(offline))
        except BaseException:
            self._release()
            if self._owned_trace:
                self._remove_trace()
            raise
        self._parent = None
        self._vm = greenlet(self._machine_main)
        self._watchdog = _SessionWatchdog(self)

    # --- the guest side -----------------------------------------------------------------------
    def _machine_main(self) -> RunEnd:
        return self.machine.run(signals=False)

    def _yield_to_test(self) -> None:
        """Called in the guest's greenlet: hand control back to the test (not while the session
        is closing: then the guest runs on to its next read, where the run ends)."""
        if self._parent is not None and not self._closing and getcurrent() is self._vm:
            if self._recorder is not None:
                self._recorder.tick()     # what happened so far reaches the trace file
            self._parent.switch()

    def _resume(self, budget_ns: int) -> None:
        """Run the guest until it prints, its guest-time budget is spent, or the run ends."""
        if self.end is not None:
            return
        self._budget = budget_ns
        self._parent = getcurrent()
        with self._watchdog:
            try:
                result = self._vm.switch()
            except BaseException:
                self._release()
                raise
        if self._vm.dead:
            self._finish(result)

    def _finish(self, end: RunEnd) -> None:
        self.end = end
        self.exitstatus = end.exit_code
        self._recorder.finish(end, self.machine)
        self._release()

    def _release(self) -> None:
        if self._recorder is not None:
            self._recorder.close()
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    # --- what SpawnBase needs -----------------------------------------------------------------
    def read_nonblocking(self, size=1, timeout=None):
        if not self._outbox.chunks and self.end is None:
            budget = (self._input.max_time_ns if timeout is None
                      else self.clock_ns + _seconds_ns(max(0.0, timeout)))
            self._resume(budget)
        if self._outbox.chunks:
            data = self._outbox.take(size)
            self._log(data, "read")
            return data
        if self.end is not None:
            self.flag_eof = True
            raise pexpect.EOF(f"the guest's run ended: {self.end.message}")
        raise pexpect.TIMEOUT(f"guest time {self.clock_ns / NS:g}s: no output within the "
                              "timeout")

    def expect_list(self, pattern_list, timeout=-1, searchwindowsize=-1, async_=False, **kw):
        if timeout == -1:
            timeout = self.timeout
        return _GuestTimeExpecter(self, searcher_re(pattern_list),
                                  searchwindowsize).expect_loop(timeout)

    def expect_exact(self, pattern_list, timeout=-1, searchwindowsize=-1, async_=False, **kw):
        if timeout == -1:
            timeout = self.timeout
        if isinstance(pattern_list, self.allowed_string_types) or pattern_list in (
                pexpect.TIMEOUT, pexpect.EOF):
            pattern_list = [pattern_list]
        patterns = [p if p in (pexpect.TIMEOUT, pexpect.EOF)
                    else self._coerce_expect_string(p) for p in pattern_list]
        return _GuestTimeExpecter(self, searcher_string(patterns),
                                  searchwindowsize).expect_loop(timeout)

    def send(self, s) -> int:
        """Queue bytes for the guest's keyboard (or COM1); it takes them as it reads."""
        data = s.encode("latin-1") if isinstance(s, str) else bytes(s)
        if self.end is not None:
            raise pexpect.EOF(f"cannot send: the guest's run ended: {self.end.message}")
        self._log(data, "send")
        self._input._queue(data, self.clock_ns)
        return len(data)

    def sendline(self, s="") -> int:
        return self.send((s.encode("latin-1") if isinstance(s, str) else bytes(s)) + b"\n")

    def isalive(self) -> bool:
        return self.end is None

    def close(self, force: bool = True) -> None:
        """End the run at the guest's next read (or sooner) and finish the trace."""
        if self.end is None:
            self._closing = True
            # The guest runs on to its next read, where the run ends; one that never reads
            # is stopped by the session watchdog after wall_timeout.
            self._resume(self._input.max_time_ns)
        self.closed = True

    def terminate(self, force: bool = False) -> bool:
        self.close()
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self._release()
        except Exception:
            pass

    # --- guest time and results ----------------------------------------------------------------
    @property
    def clock_ns(self) -> int:
        return self._input.clock.now()

    @property
    def now(self) -> float:
        """Guest time in seconds since the session started."""
        return self.clock_ns / NS

    def wait(self, duration) -> str:
        """Let `duration` of guest time pass (seconds, or a string such as '500ms'). What the
        guest prints meanwhile stays in the buffer for the next expect(); it is also returned."""
        end = self.clock_ns + _seconds_ns(duration)
        got = []
        while self.end is None and self.clock_ns < end:
            self._resume(end)
            if self._outbox.chunks:
                got.append(self._outbox.take(1 << 30))
        if self._outbox.chunks:
            got.append(self._outbox.take(1 << 30))
        text = "".join(got)
        self._buffer.write(text)
        return text

    # --- the text screen (boards with one: pc) --------------------------------------------------
    @property
    def screen(self) -> list[str] | None:
        """The text screen's 25 rows (trailing spaces dropped) as last sampled: at the guest's
        latest read, or at the end of the run. None on a board without a screen (p3)."""
        screen = self.machine.screen
        if self.end is not None and self.end.screen is not None:
            return list(self.end.screen)
        return None if screen is None else screen.rows

    @property
    def screen_text(self) -> str:
        """The screen as `vmm run --screen final` prints it."""
        from vmm.screenlog import screen_text
        return screen_text(self.screen or [])

    def expect_screen(self, pattern, timeout=-1) -> str:
        """Wait, in guest time, until the screen shows `pattern`: a string found within one row,
        or a compiled regex searched in the screen text (rows joined by newlines). Returns the
        matching text. The screen is sampled at the guest's reads (docs/testing.md), so text
        the guest writes and then clears between two reads is never seen. Output printed
        meanwhile stays for the next expect(). Raises pexpect.TIMEOUT or pexpect.EOF (the run
        ended without showing it)."""
        if self.machine.screen is None:
            raise ValueError(f"this session's board ({self.machine.board.name}) has no screen")
        if timeout == -1:
            timeout = self.timeout
        end = None if timeout is None else self.clock_ns + _seconds_ns(timeout)
        while True:
            found = self._find_on_screen(pattern)
            if found is not None:
                return found
            if self.end is not None:
                raise pexpect.EOF(f"the guest's run ended ({self.end.message}) without showing "
                                  f"{_pattern_text(pattern)} on its screen")
            if end is not None and self.clock_ns >= end:
                raise pexpect.TIMEOUT(f"guest time {self.clock_ns / NS:g}s: the screen did not "
                                      f"show {_pattern_text(pattern)} within the timeout")
            self._screen_wanted = True
            try:
                self._resume(self._input.max_time_ns if end is None else end)
            finally:
                self._screen_wanted = False

    def _find_on_screen(self, pattern) -> str | None:
        rows = self.screen or []
        if isinstance(pattern, str):
            return pattern if any(pattern in row for row in rows) else None
        match = pattern.search("\n".join(rows))
        return match.group(0) if match else None

    @property
    def output(self) -> str:
        """Everything the guest printed so far, on every output device."""
        return self.output_lines.text

    @property
    def lines(self) -> list[str]:
        return [text for _, text, _ in self.output_lines.lines]

    @property
    def reason(self) -> str | None:
        return None if self.end is None else self.end.reason

    @property
    def exit_code(self) -> int | None:
        """The exit status `vmm run` would give (also in pexpect's `exitstatus`)."""
        return None if self.end is None else self.end.exit_code

    def __str__(self) -> str:
        if getattr(self, "_input", None) is None:
            return f"<GuestSession {self.guest}>"
        state = "running" if self.end is None else f"ended: {self.end.reason}"
        return f"<GuestSession {self.guest} at guest time {self.now:g}s, {state}>"

    __repr__ = __str__


class _SessionWatchdog:
    """While the guest runs, a wall-clock bound: a guest that spins without exits, or computes
    for longer than wall_timeout before giving control back, is stopped (reason `timeout`)."""

    def __init__(self, session: GuestSession):
        self.session = session
        self.active = threading.current_thread() is threading.main_thread()
        self.deadline = 0.0
        self.saved = None

    def _on_alarm(self, signum, frame) -> None:
        machine = self.session.machine
        if time.monotonic() >= self.deadline:
            machine.request_stop(StopRun("timeout", f"the guest ran for more than "
                                                    f"{self.session.wall_timeout:g}s of host time "
                                                    "without giving control back"))
        else:
            machine.backend.kick()

    def __enter__(self):
        if self.active:
            self.deadline = time.monotonic() + self.session.wall_timeout
            self.saved = signal.signal(signal.SIGALRM, self._on_alarm)
            signal.setitimer(signal.ITIMER_REAL, WATCHDOG_TICK, WATCHDOG_TICK)
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.saved)
