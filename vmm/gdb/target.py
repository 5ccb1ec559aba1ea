"""The debug target: a vmm machine (a live run or a replay) under gdb's control.

The machine's run loop is unchanged: it runs in a greenlet of its own and talks to a proxy of
the CPU backend (`_Proxy`), which passes every exit on and, at every debug stop (a step done, a
breakpoint's instruction next, a watched location changed), switches back to the debugger. So a
run without a debugger pays nothing, and a debugged run executes exactly as an undebugged one.

Positions. The backend counts completed instructions exactly (vmm.cpu.backend.DebugState); a
position is that count, shown as (observations, instructions since the last observation), as
DESIGN §11 asks. On a replay every instruction is counted, so any position can be found again:
going back to a position restores the latest snapshot before it (vmm.gdb.snapshot) or starts
afresh, and re-executes silently to that count (the replay is
deterministic, so it arrives in the same state: registers, memory and devices). That is
reverse execution: `reverse-stepi` goes to count - 1, `reverse-continue` re-executes from the
last snapshot to the current count noting every breakpoint and watchpoint hit on the way, then
goes to the last one (or, finding none, searches the stretch before that snapshot).

Writes from gdb on a replay (registers, memory) make the replay leave its trace: the run's end
is then reported as "diverged by the debugger". Going back re-executes the recorded run, which
forgets the writes.
"""

from __future__ import annotations

import bisect
import signal
from dataclasses import dataclass

from greenlet import GreenletExit, getcurrent, greenlet

from ..cpu.backend import DebugStop, Interrupted, IoIn
from . import paging, snapshot
from .arch import arch_for
from .stub import SIGINT, SIGTRAP, Stop

INTERRUPT_POLL_S = 0.05        # while the guest runs, look for gdb's Ctrl-C this often
MONITOR_EVENTS = 10            # `monitor trace`: this many upcoming input events
SCREEN_LINES = 25              # `monitor screen` without a screen device: the last output lines
SNAPSHOT_EVERY = 20_000        # instructions between snapshots (taken at the next read)
MAX_SNAPSHOTS = 512            # more: every other one is dropped (the interval doubles)
MAX_POINTS = 1024              # breakpoints and watchpoints at once (gdb's input is untrusted)
STOP_SNAPSHOT_FRACTION = 16    # where gdb stops, a snapshot if none is within SNAPSHOT_EVERY/16


@dataclass
class RunSpec:
    """How to build the machine, again and again for re-execution."""
    build: object                  # build(sink) -> Machine (with the real backend)
    replay: bool                   # a replay: positions are counted and reverse works
    exec_path: str | None = None   # the guest's ELF file, for gdb's symbols
    finish: object = None          # finish(machine, end, diverged_by_debugger) -> list[str]


class _Sink:
    """Output of the debugged run: shown once, however often the run is re-executed."""

    def __init__(self, stream):
        self.stream = stream
        self.lines: list[tuple[str, str, bool]] = []    # of the furthest execution
        self.shown = 0

    def for_execution(self):
        return _ExecutionSink(self)


class _ExecutionSink:
    def __init__(self, shared: _Sink):
        self.shared = shared
        self.count = 0
        self.lines: list[tuple[str, str, bool]] = []

    def __call__(self, device: str, text: str, partial: bool) -> None:
        self.lines.append((device, text, partial))
        self.count += 1
        shared = self.shared
        if self.count > shared.shown:
            shared.shown = self.count
            shared.lines = self.lines
            if shared.stream is not None:
                shared.stream(device, text, partial)

    def show_unfinished(self, device: str, text: str) -> None:
        pass


class _Proxy:
    """The backend as the machine sees it under a debugger."""

    def __init__(self, inner, execution):
        self.__dict__["_inner"] = inner
        self.__dict__["_ex"] = execution

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __setattr__(self, name, value):
        setattr(self._inner, name, value)

    def run(self):
        inner, ex = self._inner, self._ex
        while True:
            exit_ = inner.run()
            kind = type(exit_)
            if kind is DebugStop:
                if ex.snap_target is not None and inner.debug.steps >= ex.snap_target:
                    ex.snapshot_here()
                    user = ex.user_target
                    if inner.debug.reason[0] == "step" and (user is None
                                                            or inner.debug.steps < user):
                        continue            # a snapshot point only: the user's run goes on
                ex.pause(inner.debug.reason)
                continue
            if kind is IoIn:
                ex.note_read()
            elif kind is Interrupted and ex.interrupt_requested():
                ex.pause(("interrupt",))
                continue
            return exit_


class _Execution:
    """One execution of the run, from its first instruction, in its own greenlet."""

    def __init__(self, spec: RunSpec, sink: _Sink, store=None, start=None):
        self.sink = sink.for_execution()
        self.machine = spec.build(self.sink)
        self.backend = self.machine.backend
        self.debug = self.backend.debug_begin()
        self.debug.count = spec.replay
        self.machine.backend = _Proxy(self.backend, self)
        self.reads = [0]                # reads[n]: the step count when read n had completed
        self.seek_read: int | None = None
        self.user_target: int | None = None     # where the debugger wants to stop
        self.snap_target: int | None = None     # where the next snapshot is due
        self.store = store if spec.replay and snapshot.can_snapshot(self.backend) else None
        if start is not None:
            snapshot.restore(self, start)
        self.end = None
        self.poll = None                # poll() -> bool: gdb asked to interrupt
        self.controller = getcurrent()
        self.glet = greenlet(self._main, parent=self.controller)

    def _main(self):
        return ("end", self.machine.run())

    # called in the execution's greenlet
    def pause(self, reason: tuple) -> None:
        self.controller.switch(("stop", reason))

    def set_target(self, steps: int | None) -> None:
        self.user_target = steps
        self._retarget()

    def _retarget(self) -> None:
        targets = [t for t in (self.user_target, self.snap_target) if t is not None]
        self.debug.target = min(targets) if targets else None

    def note_read(self) -> None:
        steps = self.debug.steps + 1                # the IN completes with the next step
        self.reads.append(steps)
        if self.seek_read is not None and len(self.reads) - 1 == self.seek_read:
            self.set_target(steps)
        if self.store is not None and self.snap_target is None \
                and self.store.due(steps):
            self.snap_target = steps
            self._retarget()

    def snapshot_here(self) -> None:
        self.snap_target = None
        self._retarget()
        if self.store is not None:
            self.store.add(self)

    def interrupt_requested(self) -> bool:
        return self.poll is not None and self.poll()

    # called by the controller
    def run(self):
        """Run until the next stop; returns ("stop", reason) or ("end", RunEnd)."""
        if self.end is not None:
            return ("end", self.end)
        result = self.glet.switch()
        if result[0] == "end":
            self.end = result[1]
        return result

    @property
    def position(self) -> tuple[int, int]:
        steps = self.debug.steps
        n = self.machine.inputs.obs
        while n > 0 and (n >= len(self.reads) or self.reads[n] > steps):
            n -= 1
        return n, steps - self.reads[n]

    def close(self) -> None:
        if not self.glet.dead and self.glet:
            try:
                self.glet.throw(GreenletExit)
            except GreenletExit:
                pass
        self.backend.close()


class SnapshotStore:
    """The snapshots of a replay, by step count, shared by all its executions."""

    def __init__(self, every: int = SNAPSHOT_EVERY, limit: int = MAX_SNAPSHOTS):
        self.every, self.limit = every, limit
        self.steps: list[int] = []
        self.snaps: dict[int, snapshot.Snapshot] = {}
        self.taken = 0
        self.bytes = 0

    def due(self, steps: int, gap: int | None = None) -> bool:
        """Whether a snapshot at `steps` would be at least `gap` (default: the interval)
        from its neighbours."""
        gap = self.every if gap is None else gap
        i = bisect.bisect_right(self.steps, steps)
        before = self.steps[i - 1] if i else 0
        after = self.steps[i] if i < len(self.steps) else None
        return steps - before >= gap and (after is None or after - steps >= gap)

    def add(self, execution) -> None:
        steps = execution.debug.steps
        if steps in self.snaps or steps == 0:
            return
        i = bisect.bisect_left(self.steps, steps)
        previous = self.snaps[self.steps[i - 1]] if i else None
        snap = snapshot.take(execution, previous)
        self.steps.insert(i, steps)
        self.snaps[steps] = snap
        self.taken += 1
        self.bytes += snap.size
        if len(self.steps) > self.limit:
            for dropped in self.steps[1::2]:
                del self.snaps[dropped]
            self.steps = self.steps[0::2]
            self.every *= 2

    def before(self, steps: int) -> snapshot.Snapshot | None:
        """The latest snapshot at or before `steps` (None: start from the beginning)."""
        i = bisect.bisect_right(self.steps, steps)
        return self.snaps[self.steps[i - 1]] if i else None

    def starts_before(self, steps: int) -> list[int]:
        """Segment starts (0 and every snapshot) below `steps`, latest first."""
        return [s for s in reversed([0] + self.steps) if s < steps]


@dataclass
class _Point:
    kind: int                      # Z packet type: 0 sw, 1 hw, 2 write, 3 read, 4 access
    address: int
    length: int


class MachineTarget:
    """The gdb target for a live run or a replay (see the module docstring)."""

    def __init__(self, spec: RunSpec, output=None, log=lambda text: None):
        self.spec = spec
        self.log = log
        self.sink = _Sink(output)
        self.points: list[_Point] = []
        self.diverged = False          # gdb wrote registers or memory into a replay
        self.last_stop = Stop(signal=SIGTRAP)
        self.finished: list[str] | None = None      # the end's report, once the run ended
        self.snapshots = SnapshotStore()
        self.client = None             # the GdbStub serving us (for Ctrl-C during a seek)
        self.ex = _Execution(spec, self.sink, self.snapshots)

    # --- base: registers and memory ----------------------------------------------------------------
    def arch(self):
        regs = self.ex.backend.debug_registers()
        return arch_for(regs["cr0"], regs["efer"])

    def read_registers(self) -> dict[str, int]:
        return self.ex.backend.debug_registers()

    def write_registers(self, values: dict[str, int]) -> bool:
        if self._left_trace("registers"):
            self.ex.backend.set_debug_registers(values)
        return True

    def _control(self):
        r = self.ex.backend.debug_registers()
        return r["cr0"], r["cr3"], r["cr4"], r["efer"]

    def read_memory(self, address: int, length: int) -> bytes:
        memory = self.ex.backend.memory
        return b"".join(bytes(memory[p:p + n])
                        for p, n in paging.pieces(memory, address, length, self._control()))

    def write_memory(self, address: int, data: bytes) -> bool:
        backend = self.ex.backend
        pieces = paging.pieces(backend.memory, address, len(data), self._control())
        if sum(n for _, n in pieces) != len(data):
            return False
        if not self._left_trace("memory"):
            return True
        offset = 0
        for physical, n in pieces:
            backend.debug_write_memory(physical, data[offset:offset + n])
            offset += n
        self._refresh_watches()
        return True

    def _left_trace(self, what: str) -> bool:
        if self.spec.replay and not self.diverged:
            self.diverged = True
            self.log(f"vmm: gdb wrote {what}: the replay has left its trace (its end will be "
                     "reported as diverged by the debugger; going back re-executes the "
                     "recorded run)")
        return True

    def stop_reason(self) -> Stop:
        return self.last_stop

    def stop_requested(self):
        """Why vmm was asked to end the run (SIGINT, SIGTERM) while gdb held it, or None."""
        return getattr(self.ex.machine, "_stop", None)

    # --- execution ---------------------------------------------------------------------------------
    def resume(self, how: str, stub) -> Stop:
        if self.ex.end is not None:
            return self._ended_stop()
        debug = self.ex.debug
        self.ex.set_target(debug.steps + 1 if how == "step" else None)
        self._arm(self.ex)
        self.ex.poll = stub.interrupt_requested
        result = self._run(self.ex, interrupts=how != "step")
        self.last_stop = self._stop_for(result, stub)
        store = self.snapshots
        if result[0] == "stop" and self.ex.store is not None and \
                store.due(self.ex.debug.steps, store.every // STOP_SNAPSHOT_FRACTION):
            store.add(self.ex)              # where the user stopped: a cheap way back
        return self.last_stop

    def _arm(self, ex: _Execution, points=None) -> None:
        points = self.points if points is None else points
        ex.debug.breakpoints = frozenset(p.address for p in points if p.kind < 2)
        self._refresh_watches(ex, points)

    def _refresh_watches(self, ex: _Execution | None = None, points=None) -> None:
        ex = ex or self.ex
        points = self.points if points is None else points
        watches = []
        regs = ex.backend.debug_registers()
        control = (regs["cr0"], regs["cr3"], regs["cr4"], regs["efer"])
        memory = ex.backend.memory
        for p in points:
            if p.kind == 2 or p.kind == 4:
                kind = "watch" if p.kind == 2 else "awatch"
                for physical, n in paging.pieces(memory, p.address, p.length, control):
                    watches.append([physical, n, bytes(memory[physical:physical + n]),
                                    p.address, kind])
        ex.debug.watches = watches

    def _run(self, ex: _Execution, interrupts: bool):
        if not interrupts:
            return ex.run()
        previous = signal.signal(signal.SIGALRM, lambda signum, frame: ex.backend.kick())
        signal.setitimer(signal.ITIMER_REAL, INTERRUPT_POLL_S, INTERRUPT_POLL_S)
        try:
            return ex.run()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def _stop_for(self, result, stub=None) -> Stop:
        if result[0] == "end":
            self._finish(result[1], stub)
            return self._ended_stop()
        reason = result[1]
        if reason[0] == "interrupt":
            return Stop(signal=SIGINT)
        if reason[0] == "break":
            sw = any(p.kind == 0 and p.address == reason[1] for p in self.points)
            return Stop(breakpoint="sw" if sw else "hw")
        if reason[0] == "watch":
            return Stop(watch=(reason[2], reason[1]))
        return Stop()

    def _finish(self, end, stub) -> None:
        if self.finished is not None:
            return
        lines = [f"vmm: the run ended: {end.message}"]
        if "(vector 1)" in end.message and self.ex.backend.name == "kvm":
            lines.append("vmm: note: single-stepping on KVM can hand the guest a debug trap "
                         "(#DB) where an instruction faults (this host's KVM does); debug "
                         "this run with --backend emu")
        if self.spec.finish is not None:
            lines += self.spec.finish(self.ex.machine, end, self.diverged)
        self.finished = lines
        for line in lines:
            self.log(line)
        if stub is not None:
            try:
                stub.console("\n".join(lines) + "\n")
            except Exception:       # noqa: BLE001 - gdb went away; the stop reply will say so
                pass

    def _ended_stop(self) -> Stop:
        if self.spec.replay:
            return Stop(kind="replay-end")
        return Stop(kind="exited", exit_code=self.ex.end.exit_code)

    @property
    def ended(self):
        return self.ex.end

    def run_to_end(self) -> None:
        """gdb has detached: the run goes on to its end without breakpoints."""
        self.points = []
        ex = self.ex
        ex.poll = None
        while ex.end is None:
            ex.set_target(None)
            self._arm(ex)
            result = ex.run()
            if result[0] == "end":
                self._finish(result[1], None)

    # --- extensions --------------------------------------------------------------------------------
    def breakpoints(self):
        return self

    def insert(self, kind: int, address: int, length: int) -> bool | None:
        if kind == 3:
            return None              # read-only watchpoints: not supported (awatch is)
        point = _Point(kind, address, length)
        if point not in self.points:
            if len(self.points) >= MAX_POINTS:
                return False
            self.points.append(point)
        if kind >= 2:
            self._refresh_watches()
        return True

    def remove(self, kind: int, address: int, length: int) -> bool | None:
        if kind == 3:
            return None
        point = _Point(kind, address, length)
        if point in self.points:
            self.points.remove(point)
        return True

    def reverse(self):
        return self if self.spec.replay else None

    def monitor(self):
        return self

    def exec_file(self) -> str | None:
        return self.spec.exec_path

    # --- reverse execution -------------------------------------------------------------------------
    def _fresh(self, start=None) -> _Execution:
        return _Execution(self.spec, self.sink, self.snapshots, start)

    def go_to(self, steps: int) -> _Execution:
        """Re-execute the run to `steps` completed instructions, from the latest snapshot
        before it (or from the start)."""
        ex = self._fresh(self.snapshots.before(steps))
        if steps > ex.debug.steps:
            ex.set_target(steps)
            ex.debug.breakpoints = frozenset()
            result = ex.run()
            while result[0] == "stop" and ex.debug.steps < steps:
                result = ex.run()
        self._replace(ex)
        return ex

    def _replace(self, ex: _Execution) -> None:
        old, self.ex = self.ex, ex
        old.close()
        self.diverged = False
        self.finished = None if ex.end is None else self.finished
        self._refresh_watches()

    def _here(self) -> int:
        """The current position as a step count. At the end of the run the instruction that
        ended it (a HLT, a fault, a read the trace ends at) has not been counted, so this is
        also the position just before it."""
        return self.ex.debug.steps

    def step_back(self) -> Stop:
        here = self._here()
        goal = here if self.ex.end is not None else here - 1
        if goal < 0:
            self.last_stop = Stop(kind="replay-begin")
            return self.last_stop
        self.go_to(goal)
        self.last_stop = Stop()
        return self.last_stop

    def continue_back(self, stub=None) -> Stop:
        here = self._here()
        ended = self.ex.end is not None
        hits: list[tuple[int, tuple]] = []
        end = here
        for start in (self.snapshots.starts_before(here) if self.points else []):
            hits = self._hits_between(start, end, inclusive=end != here or ended)
            if hits:
                break
            end = start
        if not hits:
            self.go_to(0)
            self.last_stop = Stop(kind="replay-begin")
            return self.last_stop
        steps, reason = hits[-1]
        self.go_to(steps)
        self.last_stop = self._stop_for(("stop", reason))
        return self.last_stop

    def _hits_between(self, start: int, end: int, inclusive: bool) -> list[tuple[int, tuple]]:
        """Re-execute from the snapshot at `start` to `end`, noting the positions to stop at
        for every breakpoint hit (the breakpoint's instruction next) and watchpoint hit (the
        writing instruction next)."""
        hits = []
        ex = self._fresh(self.snapshots.snaps.get(start))
        try:
            self._arm(ex)
            ex.set_target(end)
            while ex.debug.steps < end:
                result = ex.run()
                if result[0] == "end":
                    break
                reason, steps = result[1], ex.debug.steps
                if reason[0] == "break" and (steps < end or inclusive and steps == end):
                    hits.append((steps, reason))
                elif reason[0] == "watch" and steps <= end:
                    hits.append((steps - 1, reason))
        finally:
            ex.close()
        return hits

    # --- monitor commands --------------------------------------------------------------------------
    def command(self, text: str) -> str:
        words = text.split()
        if not words or words[0] == "help":
            return _HELP
        name, args = words[0], words[1:]
        handler = {"obs": self._m_obs, "position": self._m_obs, "seek": self._m_seek,
                   "devices": self._m_devices, "trace": self._m_trace,
                   "screen": self._m_screen}.get(name)
        if handler is None:
            return f"vmm: unknown monitor command {name!r}\n" + _HELP
        return handler(args)

    def _m_obs(self, args) -> str:
        n, k = self.ex.position
        now = self.ex.machine.inputs.now()
        end = f"; the run has ended ({self.ex.end.message})" if self.ex.end else ""
        return (f"observation {n} + {k} instructions (step {self.ex.debug.steps}), "
                f"guest time {now} ns{end}\n")

    def _m_seek(self, args) -> str:
        if len(args) != 1 or not args[0].isdigit():
            return "usage: monitor seek N   (go to observation N)\n"
        n = int(args[0])
        ex = self.ex
        if n < len(ex.reads):                    # reached already: go back to it
            if not self.spec.replay:
                return "vmm: a live run cannot go back; seek forwards only\n"
            self.go_to(ex.reads[n])
        else:
            ex.seek_read = n
            ex.set_target(None)
            self._arm(ex, points=[])
            client = self.client
            ex.poll = client.interrupt_requested if client is not None else None
            try:
                result = self._run(ex, interrupts=client is not None)
            finally:
                ex.seek_read = None
            if result[0] == "stop" and result[1][0] == "interrupt":
                return "vmm: seek interrupted\n" + self._m_obs([])
            if result[0] == "end":
                self._finish(result[1], None)
                return (f"vmm: the run ended before observation {n}: {result[1].message}\n" +
                        self._m_obs([]))
        return ("vmm: at observation %d; gdb's cached registers are stale: run "
                "`maint flush register-cache` (or `stepi`)\n" % n) + self._m_obs([])

    def _m_devices(self, args) -> str:
        lines = []
        for base, length, device in sorted(self.ex.machine.bus.devices, key=lambda t: t[0]):
            ports = f"{base:#x}" + (f"-{base + length - 1:#x}" if length > 1 else "")
            state = device.state()
            fields = " ".join(f"{k}={_short(v)}" for k, v in state.items()
                              if not k.startswith("_") and k != "name")
            lines.append(f"{device.name:<10} {ports:<12} {fields}")
        return "\n".join(lines) + "\n"

    def _m_trace(self, args) -> str:
        inputs = self.ex.machine.inputs
        events = getattr(inputs, "events", None)
        if events is None:
            return "vmm: a live run has no trace: its inputs come as they happen\n"
        upcoming = events[inputs.index:inputs.index + MONITOR_EVENTS]
        if not upcoming:
            return "vmm: no more input events in the trace\n"
        return "".join(_event_line(e) + "\n" for e in upcoming)

    def _m_screen(self, args) -> str:
        screen = self.ex.machine.screen
        if screen is not None:
            return screen.current_text() or "(the screen is blank)\n"
        lines = self.ex.sink.lines[-SCREEN_LINES:]
        head = (f"(this board has no screen device; the last {len(lines)} output lines at this "
                "position:)\n")
        return head + "".join(f"{d}: {t}\n" for d, t, _ in lines)


_HELP = """vmm monitor commands:
  monitor obs        the position: observation counter, instructions since it, guest time
  monitor seek N     go to observation N (back too, on a replay)
  monitor devices    every device's state
  monitor trace      the next input events of the replay
  monitor screen     what the guest shows (the last output lines where there is no screen)
"""


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _event_line(e: dict) -> str:
    kind = e.get("type")
    what = {"key": lambda: f"key {e.get('byte')!r} for {e.get('dev')}",
            "timer": lambda: f"timer fires ({e.get('count')})",
            "fetch": lambda: f"{e.get('dev')} fetch {e.get('text')!r}"}.get(kind, lambda: kind)()
    return f"observation {e.get('n')}: {what} (guest time {e.get('at')} ns)"
