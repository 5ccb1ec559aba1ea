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
the host's monotonic clock; `VirtualClock`: time moves only at idle points). With a `record`
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
from .script import ScriptRunner

QUIT_KEY = 0x1D          # Ctrl-]: ends a run on a terminal (as in telnet)
INTERRUPT_KEY = 0x03     # Ctrl-C on a raw terminal: ends the run as interrupted
REAL_IDLE_NAP_NS = 10_000_000   # longest nap at an idle point under the real clock
BLOCKING_POLL_S = 0.05          # how often a blocking wait for input checks for a stop


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


class InputSource:
    """What every input source has: the observation counter and the hooks the machine sets."""

    def __init__(self):
        self.obs = 0                 # the observation counter: one per IN instruction
        self.deadline_sources = []   # callables: next_event_after(now) -> ns | None
        self.stop_check = lambda: None
        self.unfinished = lambda: ""  # the output devices' unfinished lines, joined
        self.on_idle = lambda: None  # the machine shows unfinished lines when the guest waits
        self.idle_points = 0

    def observe(self) -> None:
        self.obs += 1

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
                 fetch_answers: dict[str, list[str]] | None = None):
        super().__init__()
        self.fetcher = fetcher                # vmm.web.Fetcher, or None: no web data
        self.fetch_answers = ({dev: deque(texts) for dev, texts in fetch_answers.items()}
                              if fetch_answers is not None else None)
        self.feed = feed
        self.clock = clock
        self.virtual = clock.name == "virtual"
        self.max_time_ns = max_time_ns
        self.record = record                  # a TraceRecorder (key/timer) or None
        self.pending = deque()                # (byte, arrival time): ready for a device
        self._input_events = 0                # bytes queued or taken (see input_moving)
        self._events_at_idle = 0
        self._host = bytearray()              # virtual clock: read from the host, not released
        self.script = ScriptRunner(script, self._queue) if script is not None else None
        self.timer_firings = 0                # every firing of the guest's timer (wait N ticks)

    def now(self) -> int:
        return self.clock.now()

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
            self.record.key(self.obs, arrival, device, byte)
        return byte

    def timer_fired(self, deadline: int, period: int) -> int:
        now = self.clock.now()
        if now < deadline:
            return 0
        count = (now - deadline) // period + 1
        self.timer_firings += count
        if self.record is not None:
            self.record.timer(self.obs, now, count)
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
        """Nap until input arrives or the next deadline, at most 10 ms: don't burn a CPU."""
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
            raise StopRun("idle", "the guest waits for input and nothing more is scheduled")
        t = min(times)
        if self.max_time_ns is not None and t > self.max_time_ns:
            self.clock.advance_to(self.max_time_ns)
            raise StopRun("max-time", f"guest time reached --max-time "
                                      f"({self.max_time_ns / 1e9:g}s)")
        self.clock.advance_to(t)
        if self.script is not None:
            self._advance_script(idle=False)

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
    """Answers only from recorded events, each at the observation it is stamped with."""

    def __init__(self, events: list[dict], stop_at: int | None, stop_reason: StopRun | None,
                 last_stamp: int | None = None):
        super().__init__()
        self.events = events
        self.index = 0
        self._now = 0
        self._stop_at = stop_at            # stop at this observation (an end recorded at a read)
        self._stop_reason = stop_reason
        self._last_stamp = last_stamp      # truncated trace: stop past the last recorded stamp

    def now(self) -> int:
        return self._now

    def observe(self) -> None:
        self.obs += 1
        if self.index < len(self.events) and self.events[self.index]["n"] < self.obs:
            e = self.events[self.index]
            what = (f"key {_byte_repr(e['byte'])} for {e['dev']}" if e["type"] == "key"
                    else f"the {e['dev']} fetch {e['text']!r}" if e["type"] == "fetch"
                    else "a timer firing")
            raise StopRun("diverged", f"the recording gave the guest {what} at observation "
                                      f"{e['n']}, but the replayed guest did not ask for it there")
        if self.obs == self._stop_at:
            raise self._stop_reason
        if self._last_stamp is not None and self.obs > self._last_stamp and \
                self.index >= len(self.events):
            raise StopRun("truncated-end", f"replayed the truncated trace's prefix up to "
                                           f"observation {self._last_stamp}")

    def _take(self, kind: str, device: str | None = None) -> dict | None:
        if self.index >= len(self.events):
            return None
        e = self.events[self.index]
        if e["n"] != self.obs or e["type"] != kind or (device is not None and e["dev"] != device):
            return None
        self.index += 1
        self._now = e["at"]
        return e

    def key(self, device: str) -> int | None:
        e = self._take("key", device)
        return None if e is None else e["byte"]

    def timer_fired(self, deadline: int, period: int) -> int:
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
