"""The input source (DESIGN §2): the only way outside input reaches the devices.

Devices ask it these things, always during a guest read (an IN), so that every answer can be
stamped with the observation counter (DESIGN §3) by a recording and served again by a replay:

    key(device)              the next input byte for the keyboard or COM1, or None
    wait_key(device)         the same, for a read that waits (COM1's receive register)
    timer_fired(deadline, period)
                             how many timer periods have ended by now (0 if none)
    idle()                   the read found nothing new: an idle point (DESIGN §4)
    now()                    the clock time (ns since the run began), to arm a timer from
    fetch(device)            the text of a fresh web-data fetch (vmm.devices.web), one line of
                             printable ASCII; waits while it is fetched

The run loop calls `observe()` once per IN instruction: that is the observation counter.

`LiveInput` answers from the host — a terminal, a pipe, or a script — and a clock (`RealClock`:
the host's monotonic clock; `VirtualClock`: time jumps at idle points and passes by a quantum
per other observation, QUANTUM_NS). With a `record`
callback it reports every answer it gives as a trace event. `ReplayInput` answers only from a
trace's events and never touches a terminal, a clock or the network. Web data is fetched by
the `fetcher` LiveInput is given (vmm.web.Fetcher, the only code that uses the network), or
served in order from `fetch_answers` (a re-drive replays a trace's fetches that way).
"""

from __future__ import annotations

import os
import select
import time
from collections import deque

from .outcome import StopRun

QUIT_KEY = 0x1D          # Ctrl-]: ends a run on a terminal (as in telnet)
INTERRUPT_KEY = 0x03     # Ctrl-C on a raw terminal: ends the run as interrupted
REAL_IDLE_NAP_NS = 10_000_000   # longest nap at an idle point under the real clock
BLOCKING_POLL_S = 0.05          # how often a blocking wait for input checks for a stop
# Virtual clock: guest time that passes with every observation (DESIGN §10, docs/scripts.md
# "The two clocks"): a deterministic "time passes with work" rule, so that every run that does
# I/O reaches --max-time. It never carries time past a scheduled event (a timer deadline, a
# scripted step): time stops at the event, which a later read sees at its exact time. The read
# right after an idle point that moved the clock is not charged (it happens at that moment).
QUANTUM_NS = 10_000
MAX_QUANTUM_NS = 1_000_000_000  # the largest quantum a trace may ask for
# Virtual clock: an idle end ("the guest waits for input and nothing more is scheduled") needs
# this many idle points in a row, with no other read and no output between them.
IDLE_CONFIRM = 64


# --- host feeds: where live input bytes come from ---------------------------------------------
class NullFeed:
    """No input at all (stdin closed, /dev/null, or a script run)."""
    eof = True

    def read(self, block: bool = False) -> bytes:
        return b""

    def wait(self, timeout: float) -> None:
        if timeout > 0:
            time.sleep(timeout)


class FdFeed:
    """Bytes from a file descriptor: a pipe, a file, or a terminal in raw mode."""

    def __init__(self, fd: int, terminal: bool = False):
        self.fd = fd
        self.terminal = terminal
        self.eof = False

    def read(self, block: bool = False) -> bytes:
        """What is available now; with block=True, wait (up to BLOCKING_POLL_S) for something."""
        if self.eof or not select.select([self.fd], [], [], BLOCKING_POLL_S if block else 0)[0]:
            return b""
        try:
            data = os.read(self.fd, 4096)
        except OSError:
            data = b""
        if not data:
            self.eof = True
        elif self.terminal:
            if QUIT_KEY in data:
                raise StopRun("quit", "quit key (Ctrl-]) pressed")
            if INTERRUPT_KEY in data:
                raise StopRun("interrupted", "interrupted (Ctrl-C)")
        return data

    def wait(self, timeout: float) -> None:
        if self.eof:
            time.sleep(timeout)
        else:
            select.select([self.fd], [], [], timeout)


# --- clocks -------------------------------------------------------------------------------------
class RealClock:
    """Timer deadlines follow the host's monotonic clock. For interactive runs."""
    name = "real"

    def __init__(self):
        self._start = time.monotonic_ns()

    def now(self) -> int:
        return time.monotonic_ns() - self._start


class VirtualClock:
    """Time stands still while the guest computes and jumps forward only at idle points."""
    name = "virtual"

    def __init__(self):
        self._now = 0

    def now(self) -> int:
        return self._now

    def advance_to(self, t: int) -> None:
        if t > self._now:
            self._now = t


class InstructionClock(VirtualClock):
    """The virtual clock in instruction-count mode (--icount, the emulator): time passes by
    `ns` per instruction the guest executes (`counter()`: the backend's count) and, as under
    the virtual clock, jumps forward at idle points. Never goes backward."""

    def __init__(self, counter, ns: int, start: int = 0):
        self._counter = counter
        self.ns = ns
        self._base = start                 # the time at instruction count _base_count
        self._base_count = counter()

    @property
    def _now(self) -> int:
        return self._base + (self._counter() - self._base_count) * self.ns

    @_now.setter
    def _now(self, t: int) -> None:
        count = self._counter()
        now = self._base + (count - self._base_count) * self.ns
        self._base, self._base_count = max(t, now), count


class InputSource:
    """What every input source has: the observation counter and the hooks the machine sets."""

    def __init__(self):
        self.obs = 0                 # the observation counter: one per IN instruction
        self.deadline_sources = []   # callables: next_event_after(now) -> ns | None
        self.stop_check = lambda: None
        self.unfinished = lambda: ""  # the output devices' unfinished lines, joined
        self.on_idle = lambda: None  # the machine shows unfinished lines when the guest waits
        self.output_progress = lambda: 0   # bytes the guest has written to output devices
        self.idle_points = 0
        self.reschedule = False      # icount mode: the next deadline may have changed

    replaying = False                # answers from a trace (ReplayInput)

    def observe(self) -> None:
        self.obs += 1

    def device_time(self) -> int:
        """Guest time as a device shows it to the guest (the PIT's counts, the RTC's date):
        recorded whenever it changed since it was last told, so a replay tells the same."""
        raise NotImplementedError

    point: str | None = None      # the interrupt point being serviced (vmm.machine), or None

    def irq_edges(self, line: int, device, point: str) -> int:
        """At an interrupt point ("in", "hlt", "idle"): the rising edges of an edge-triggered
        source (the PIT's `take_edges(now)`) since the last time, recorded as an `edge` event,
        with its point, when there are any."""
        raise NotImplementedError

    def use_instructions(self, counter, ns: int) -> None:
        """Instruction-count mode (vmm.machine): time passes by `ns` per instruction counted
        by `counter()`."""

    def next_icount(self, count: int) -> int | None:
        """Instruction-count mode: the instruction count of the next instruction point after
        `count` (the backend's count now), or None."""
        return None

    def icount_point(self, count: int) -> None:
        """Instruction-count mode: the guest reached the instruction point at `count` (the
        start of a translated block). Raises StopRun where the run ends there."""
        raise NotImplementedError

    def idle_until_interrupt(self) -> None:
        """HLT with interrupts enabled: an idle point where time may move on to the next
        deadline; raises StopRun when the run ends there (idle, max-time, a stop)."""
        self.idle()

    def wait_key(self, device: str) -> int:
        """A read that waits for input (COM1's RBR): idle points until a byte arrives."""
        while True:
            byte = self.key(device)
            if byte is not None:
                return byte
            self.idle()

    def start(self) -> None:
        """Called once before the guest's first instruction."""

    def on_output(self, device: str, text: str, partial: bool) -> None:
        """Every output line the guest produces (scripts wait for text here)."""

    def on_screen(self) -> None:
        """The text screen changed (scripts may wait for screen text)."""

    def poll_host(self) -> None:
        """Called at watchdog kicks: read whatever the host has for us."""

    def next_event_after(self, now: int) -> int | None:
        times = [t for t in (source(now) for source in self.deadline_sources) if t is not None]
        return min(times) if times else None


# --- the live input source ----------------------------------------------------------------------
class LiveInput(InputSource):
    def __init__(self, feed, clock, *, script: list[dict] | None = None,
                 max_time_ns: int | None = None, record=None, fetcher=None,
                 fetch_answers: dict[str, list[str]] | None = None,
                 quantum_ns: int = QUANTUM_NS):
        super().__init__()
        self.fetcher = fetcher                # vmm.web.Fetcher, or None: no web data
        self.fetch_answers = ({dev: deque(texts) for dev, texts in fetch_answers.items()}
                              if fetch_answers is not None else None)
        self.feed = feed
        self.clock = clock
        self.virtual = clock.name == "virtual"
        self.max_time_ns = max_time_ns
        self.record = record                  # a TraceRecorder (key/timer) or None
        # Where a key taken at a read goes: a TraceRecorder's held records, appended to here
        # (the hot path of typed input: vmm.record.TraceRecorder); else record.key() is called.
        self._held_keys = getattr(record, "held", None)
        self.pending = deque()                # (byte, arrival time): ready for a device
        self._input_events = 0                # bytes queued or taken (see input_moving)
        self._events_at_idle = 0
        self._host = bytearray()              # virtual clock: read from the host, not released
        self.script = None
        if script is not None:
            from .script import ScriptRunner     # here: a run without a script never loads it
            self.script = ScriptRunner(script, self._queue)
        self.timer_firings = 0                # every firing of the guest's timer (wait N ticks)
        self._time_told = 0                   # the guest time devices last told the guest
        self._real_idle_progress = 0          # output progress at the last real-clock idle
        self.quantum_ns = quantum_ns          # guest time per observation (virtual clock)
        self._horizon = -1                    # virtual clock: no event before this (-1: ask)
        self._idle_streak = 0                 # idle points in a row with nothing scheduled
        self._idle_mark = None                # (observation, output progress) at the last one
        self._idle_obs = -1                   # the last idle point that moved the clock
        if self.virtual and quantum_ns > 0 and type(self).observe is InputSource.observe:
            self.observe = self._observe_virtual

    def _observe_virtual(self) -> None:
        """An observation under the virtual clock: the quantum of guest time passes for the
        work since the previous one, up to the next scheduled event at most — unless the
        previous one was an idle point that moved the clock on to the next event."""
        after_idle = self._idle_obs == self.obs
        self.obs += 1
        if after_idle:
            return
        clock = self.clock
        t = clock._now + self.quantum_ns
        if t >= self._horizon:
            horizon = self._next_horizon(clock._now)
            if t >= horizon:
                t = horizon
                self._horizon = -1            # at the event: look again from there
            else:
                self._horizon = horizon
        if self.max_time_ns is not None and t > self.max_time_ns:
            raise StopRun("max-time", f"guest time reached --max-time "
                                      f"({self.max_time_ns / 1e9:g}s)")
        clock._now = t

    def use_instructions(self, counter, ns: int) -> None:
        # Time is the instruction count's: no quantum per observation (each IN is an
        # instruction of its own), and it is recorded so (machine.quantum_ns 0)
        self.clock = InstructionClock(counter, ns, self.clock._now)
        self.quantum_ns = 0
        self.__dict__.pop("observe", None)

    def next_icount(self, count: int) -> int | None:
        """The count at which guest time reaches the next scheduled event (a timer deadline, a
        script step, --max-time), rounded up to a whole instruction."""
        now = self.clock._now
        t = self._next_horizon(now)
        if t >= 1 << 62:
            return None
        return count + max(1, -(-(t - now) // self.clock.ns))

    def nothing_scheduled(self) -> bool:
        """No timer deadline or script step to come (only --max-time, if that)."""
        return self.next_event_after(self.clock._now) is None and (
            self.script is None or self.script.next_time() is None)

    def icount_point(self, count: int) -> None:
        """Recorded as an `icount` record before anything taken there (edges, keys), so that
        a replay stops at the same count and takes them there."""
        self.reschedule = True
        now = self.clock._now
        if self.max_time_ns is not None and now >= self.max_time_ns:
            raise StopRun("max-time", f"guest time reached --max-time "
                                      f"({self.max_time_ns / 1e9:g}s)")
        self.stop_check()
        if self.record is not None:
            self.record.icount(self.obs, now, count)
        if self.script is not None:
            self._advance_script(idle=False)

    def _next_horizon(self, now: int) -> int:
        """The earliest of the next scheduled event after `now` and --max-time."""
        times = [t for t in (self.next_event_after(now),
                             self.script.next_time() if self.script is not None else None,
                             self.max_time_ns) if t is not None and t > now]
        return min(times) if times else 1 << 62

    def now(self) -> int:
        # A device asks the time only to schedule an event from it (the timer, when armed): the
        # next observation looks at the schedule afresh.
        self._horizon = -1
        self.reschedule = True
        return self.clock.now()

    def device_time(self) -> int:
        now = self.now()
        if now != self._time_told:
            self._time_told = now
            if self.record is not None:
                self.record.time(self.obs, now)
        return now

    def irq_edges(self, line: int, device, point: str) -> int:
        now = self.clock.now()
        count = device.take_edges(now)
        if count and self.record is not None:
            self.record.edge(self.obs, now, line, count, point)
        return count

    def _queue(self, data: bytes, now: int) -> None:
        self.pending.extend((b, now) for b in data)
        self._input_events += 1

    def input_moving(self) -> bool:
        """At an idle point: is there pending input the guest is still taking? True if input
        is pending and some was queued or taken since the previous idle point. Then guest
        time waits for the guest to take it; a guest that stopped taking it (it never acks
        its keyboard, say) does not hold the clock still forever."""
        moving = bool(self.pending) and self._input_events != self._events_at_idle
        self._events_at_idle = self._input_events
        return moving

    def start(self) -> None:
        if self.script is not None:
            self.script.unfinished = self.unfinished
            self.script.input_pending = lambda: bool(self.pending)
            self.script.timer_firings = lambda: self.timer_firings
            self._advance_script(idle=False)

    def on_output(self, device: str, text: str, partial: bool) -> None:
        if self.script is not None:
            self.script.on_output(device, text, partial)
            self._advance_script(idle=False)

    def on_screen(self) -> None:
        if self.script is not None:
            self._advance_script(idle=False)

    def _advance_script(self, idle: bool) -> None:
        self._horizon = -1                    # a step done may schedule the next one
        self.reschedule = True
        failure = self.script.advance(self.clock.now(), idle=idle)
        if failure is not None:
            raise StopRun("expect-failed", failure)

    def poll_host(self) -> None:
        if self.virtual:
            return                            # bytes are released only at idle points
        data = self.feed.read()
        if data:
            self._queue(data, self.clock.now())

    # --- what devices ask ---------------------------------------------------------------------
    def key(self, device: str) -> int | None:
        if not self.pending:
            self.poll_host()
            if not self.pending:
                return None
        byte, arrival = self.pending.popleft()
        self._input_events += 1
        if self.record is not None:
            if self.point is not None:     # taken by a device's poll at an interrupt point
                self.record.key_at(self.obs, arrival, device, byte, self.point)
            elif self._held_keys is not None:
                self._held_keys.append((self.obs, arrival, device, byte))
            else:
                self.record.key(self.obs, arrival, device, byte)
        return byte

    def timer_fired(self, deadline: int, period: int) -> int:
        now = self.clock.now()
        if now < deadline:
            return 0
        count = (now - deadline) // period + 1
        self.timer_firings += count
        if self.record is not None:
            if self.point is None:
                self.record.timer(self.obs, now, count)
            else:                          # found by the timer's poll at an interrupt point
                self.record.timer_at(self.obs, now, count, self.point)
        return count

    def fetch(self, device: str) -> str:
        """A web-data fetch. Under the virtual clock it takes no guest time."""
        from .devices.web import clean_text, unavailable
        if self.fetch_answers is not None:
            answers = self.fetch_answers.get(device)
            text = answers.popleft() if answers else unavailable(device, "not in the recording")
        elif self.fetcher is None:
            text = unavailable(device, "no feeds configured")
        else:
            text = self.fetcher.fetch(device, poll=self.stop_check)
        text = clean_text(text)               # what a trace may hold, whatever the fetcher said
        if self.record is not None:
            self.record.fetch(self.obs, self.clock.now(), device, text)
        return text

    def idle(self) -> None:
        self.idle_points += 1
        self.on_idle()
        if self.virtual:
            self._virtual_idle()
        else:
            self._real_idle()

    def _real_idle(self) -> None:
        """Nap until input arrives or the next deadline, at most 10 ms: don't burn a CPU. Not
        while the guest prints: a UART's status read before every byte (for THRE) finds no
        input too, and a nap there would print 100 bytes a second. Only an idle point with no
        output since the previous one naps."""
        progress = self.output_progress()
        printing, self._real_idle_progress = progress != self._real_idle_progress, progress
        if printing:
            self.stop_check()
            return
        if not self.pending:
            now = self.clock.now()
            nap = REAL_IDLE_NAP_NS
            t = self.next_event_after(now)
            if t is not None:
                nap = min(nap, t - now)
            if nap > 0:
                self.feed.wait(nap / 1e9)
        self.stop_check()

    def _virtual_idle(self) -> None:
        self.stop_check()
        if self.script is not None:
            if self.script.finished and not self.pending:
                raise StopRun("script-end", "the script's last step is done and the guest is idle")
            self._advance_script(idle=True)
        if self.input_moving():
            return
        if not self.pending and self._release_host_byte():
            return
        now = self.clock.now()
        times = [t for t in (self.next_event_after(now),
                             self.script.next_time() if self.script else None) if t is not None]
        if not times:
            if self._truly_waits():
                raise StopRun("idle", "the guest waits for input and nothing more is scheduled")
            return                            # time passes by the quantum meanwhile
        self._idle_mark = None
        t = min(times)
        if self.max_time_ns is not None and t > self.max_time_ns:
            self.clock.advance_to(self.max_time_ns)
            raise StopRun("max-time", f"guest time reached --max-time "
                                      f"({self.max_time_ns / 1e9:g}s)")
        self.clock.advance_to(t)
        self.reschedule = True
        self._idle_obs = self.obs             # the next read happens at this moment
        if self.script is not None:
            self._advance_script(idle=False)

    def _truly_waits(self) -> bool:
        """Whether the guest truly waits: IDLE_CONFIRM idle points in a row with nothing
        scheduled, with no read other than them and no output in between (a guest printing
        between polls, or reading another device, is busy)."""
        mark = (self.obs, self.output_progress())
        last = self._idle_mark
        if last is not None and mark[1] == last[1] and mark[0] - last[0] in (0, 1):
            self._idle_streak += 1
        else:
            self._idle_streak = 1
        self._idle_mark = mark
        return self._idle_streak >= IDLE_CONFIRM

    def _release_host_byte(self) -> bool:
        """Virtual clock: piped or typed input is released one byte per idle point. Waiting for
        the host here (rather than peeking) makes the result independent of how fast the bytes
        are produced."""
        while not self._host and not self.feed.eof:
            self._host += self.feed.read(block=True)
            self.stop_check()
        if not self._host:
            return False
        self.pending.append((self._host[0], self.clock.now()))
        del self._host[0]
        return True


# --- the replay input source --------------------------------------------------------------------
class ReplayInput(InputSource):
    """Answers only from recorded events, each at the observation it is stamped with. The
    events come from a vmm.trace.ReplayStream (read as the replay goes, never all held), or
    from a list."""

    def __init__(self, events, stop_at: int | None, stop_reason: StopRun | None,
                 last_stamp: int | None = None):
        super().__init__()
        from .trace import INPUT, ReplayStream, Trace
        if not isinstance(events, ReplayStream):
            events = ReplayStream(Trace(header={}, records=list(events)), groups=(INPUT,))
        self.stream = events
        self._queue = events.queues[INPUT]   # the input records read ahead (usually 0 or 1)
        self._INPUT = INPUT
        self.index = 0                     # input records taken
        self._now = 0
        self._stop_at = stop_at            # stop at this observation (an end recorded at a read)
        self._stop_reason = stop_reason
        self._last_stamp = last_stamp      # truncated trace: stop past the last recorded stamp
        self._time_told = 0

    def now(self) -> int:
        return self._now

    def device_time(self) -> int:
        e = self._take("time")
        if e is not None:
            self._time_told = e["at"]
        return self._time_told

    def _next_input(self) -> dict | None:
        queue = self._queue
        return queue[0] if queue else self.stream.peek(self._INPUT, self.obs + 1)

    def irq_edges(self, line: int, device, point: str) -> int:
        # Several points share an observation (the IN's, then every HLT until the next IN): an
        # edge is taken at a point of the kind it was recorded at, so an edge that came at a
        # HLT is not taken at the IN before it, where it would merge with the previous one
        # (older traces have no point: taken at the first point of their observation)
        e = self._next_input()
        if e is None or e["n"] != self.obs or e["type"] != "edge" or e["line"] != line or \
                e.get("point", point) != point:
            return 0
        self.stream.pop(self._INPUT)
        self.index += 1
        self._now = e["at"]
        self.reschedule = True
        device.take_edges(e["at"])        # the device's own count, kept in step
        return e["count"]

    final_stop: StopRun | None = None     # how the recording ended (replay_inputs_for)
    end_icount: int | None = None         # ... at this instruction point (icount mode),
    end_n: int | None = None              # ... after this observation
    replaying = True

    def next_icount(self, count: int) -> int | None:
        """The count of the recording's next instruction point before the next read: the next
        input record stamped with this observation, if it is an `icount` one (records are in
        the order they were made: a point after that record would come after it); or the
        point the recording ended at, after this observation. None: none before the next read
        (which looks again: observe() asks for it)."""
        e = self._next_input()
        if e is not None:
            return e["count"] if e["type"] == "icount" and e["n"] == self.obs else None
        return self.end_icount if self.end_n == self.obs else None

    def icount_point(self, count: int) -> None:
        e = self._next_input()
        if e is not None and e["type"] == "icount":
            if (e["n"], e["count"]) != (self.obs, count):
                raise StopRun("diverged", f"the recording reached its instruction point "
                                          f"{e['count']} after observation {e['n']}, the replay "
                                          f"one at {count} after observation {self.obs}")
            self.stream.pop(self._INPUT)
            self.index += 1
            self._now = e["at"]
            self.reschedule = True
            return
        if e is None and count == self.end_icount and self.end_n == self.obs:
            self.stop_check()
            raise self.final_stop or StopRun("diverged", "the recording ended here")
        raise StopRun("diverged", f"the replay reached instruction {count} after observation "
                                  f"{self.obs}, where the recording has no instruction point")

    def idle_until_interrupt(self) -> None:
        """Replay: the recording went on here only if it has more events at this observation
        (an edge, a key); otherwise this is where it ended."""
        self.idle()
        e = self._next_input()
        if e is not None and e["n"] == self.obs:
            return
        raise self.final_stop or StopRun("diverged", f"the replayed guest waits for an "
                                                     f"interrupt at observation {self.obs}, "
                                                     "where the recording went on")

    def observe(self) -> None:
        self.obs += 1
        self.reschedule = True             # icount mode: the next point may be after this read
        queue = self._queue
        if queue:
            e = queue[0]
        elif self.stream.frontier < self.obs:
            e = self.stream.peek(self._INPUT, self.obs)
        else:
            e = None                       # every input left is stamped obs or later
        if e is not None and e["n"] < self.obs:
            what = (f"key {_byte_repr(e['byte'])} for {e['dev']}" if e["type"] == "key"
                    else f"the {e['dev']} fetch {e['text']!r}" if e["type"] == "fetch"
                    else f"the time {e['at']} ns" if e["type"] == "time"
                    else f"an edge on IRQ {e['line']}" if e["type"] == "edge"
                    else f"an instruction point (count {e['count']})" if e["type"] == "icount"
                    else "a timer firing")
            raise StopRun("diverged", f"the recording gave the guest {what} at observation "
                                      f"{e['n']}, but the replayed guest did not ask for it there")
        if self.obs == self._stop_at:
            raise self._stop_reason
        if self._last_stamp is not None and self.obs > self._last_stamp and e is None:
            raise StopRun("truncated-end", f"replayed the truncated trace's prefix up to "
                                           f"observation {self._last_stamp}")

    def _take(self, kind: str, device: str | None = None) -> dict | None:
        e = self._next_input()
        if e is None or e["n"] != self.obs or e["type"] != kind or (
                device is not None and e["dev"] != device):
            return None
        self.stream.pop(self._INPUT)
        self.index += 1
        self._now = e["at"]
        self.reschedule = True
        return e

    def upcoming(self, count: int) -> list[dict]:
        """The next `count` input records (for a debugger), leaving the replay where it is."""
        state = self.stream.save()
        found = []
        try:
            while len(found) < count and self.stream.peek(self._INPUT) is not None:
                found.append(self.stream.pop(self._INPUT))
        except StopRun:
            pass
        finally:
            self.stream.restore(state)
        return found

    def key(self, device: str) -> int | None:
        # A key the recording gave at an interrupt point (a device's poll there: `point`) is
        # given at a point of that kind only, not at a read or an earlier point of the same
        # observation, where the guest would see it sooner
        e = self._next_input()
        if e is not None and e["type"] == "key" and e.get("point", self.point) != self.point:
            return None
        e = self._take("key", device)
        return None if e is None else e["byte"]

    def timer_fired(self, deadline: int, period: int) -> int:
        # As for keys: firings found at an interrupt point are found again at one of its kind
        e = self._next_input()
        if e is not None and e["type"] == "timer" and e.get("point", self.point) != self.point:
            return 0
        e = self._take("timer")
        return 0 if e is None else e["count"]

    def idle(self) -> None:
        self.idle_points += 1
        self.on_idle()
        self.stop_check()

    def fetch(self, device: str) -> str:
        """The recorded text of this fetch; never the network."""
        e = self._take("fetch", device)
        if e is None:
            raise StopRun("diverged", f"the replayed guest starts a {device} fetch at "
                                      f"observation {self.obs}, where the recording has none")
        return e["text"]

    def wait_key(self, device: str) -> int:
        byte = self.key(device)
        if byte is None:
            raise StopRun("diverged", f"the replayed guest waits for input on {device} at "
                                      f"observation {self.obs}, where the recording gave none")
        return byte


def _byte_repr(b: int) -> str:
    return repr(chr(b)) if 0x20 <= b < 0x7F else f"0x{b:02x}"
