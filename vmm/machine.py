"""The machine: a CPU backend, guest RAM laid out by vmm.boot, the device bus, and the run loop.

The run loop turns exits into device accesses and ends the run on HLT, a triple fault, an access
outside RAM, an unknown port, output past --max-output, the exit device, a watchdog timeout, or
a signal. Every IN exit moves the observation counter once (`inputs.observe()`), before the
device answers; OUTs and host-side returns (signals, watchdog kicks) never move it (DESIGN §3).

So output may be batched: once a guest has printed `coalesce_after` bytes, OUTs to the
board's output-only ports (vmm.boards: slots marked `batch`) are registered as coalesced PIO where the backend can. The
backend hands the batched writes back, in order, before it returns the next exit — and so before
an IN exit is observed — and they reach the devices through the same `write` an OUT exit uses:
output, the stamps of output records and traces are the same with and without batching; only
the number of exits differs.
"""

from __future__ import annotations

import contextlib
import signal
import time
from .record_type import Record

from . import boot
from .cpu.backend import (CpuBackend, DebugStop, FailEntry, Halt, InstructionDeadline,
                          InstructionLimit,
                          InternalError, Interrupted, IoIn, IoOut, Mmio, Shutdown, UnknownExit)
from .boards import BoardContext, get_board
from .devices import LineOutput, PortBus
from .devices.cmos import VIRTUAL_EPOCH
from .errors import UsageError
from .devices.exitdev import ExitRequested
from .outcome import RunEnd, StopRun

# Batching starts after this many bytes of output: registering a port costs the VM's teardown
# one SRCU grace period (~15 ms on the benchmark machine) unless the run goes on that long, so
# a guest that prints a screenful and halts is faster unbatched; a chatty one soon gains.
COALESCE_AFTER = 1024
# Within this many bytes of --max-output, OUTs exit one by one again, so that the run stops at
# the very OUT it would stop at unbatched, with the same registers: the writes still batched
# when that happens can add no more than themselves and the line buffers (4 KiB per output
# device) to the output count. A backend's batch must stay well below it (KVM's ring holds 169
# writes; the emulator's batch, 4 KiB).
COALESCE_MARGIN = 32 << 10
# Likewise --max-exits: batching stops this many exits before the budget, more than a batch
# holds on any backend (the emulator's 4 KiB of one-byte writes; KVM's ring, 169 writes).
EXIT_MARGIN = 8192

WATCHDOG_TICK = 0.05          # seconds between watchdog kicks while one is armed
RFLAGS_IF = 1 << 9
SPIN_CPU_S = 0.02             # CPU time the guest must have had between two spin samples
SPIN_CYCLE_MAX = 4096         # instructions single-stepped to see an idle spin come round
SPIN_HOT_TICK = 0.002         # the watchdog's tick right after an idle spin, while they go on
SPIN_VERIFY_STEPS = 64        # a quiet tick first steps this far to see a short loop come round
SPIN_TRIES = 3                # ... at most this many quiet ticks in a row
# Instruction-count mode: a recording looks for a loop that can never end at instruction counts
# this far apart (deterministic points, unlike the watchdog's ticks), keeping this many looks
SPIN_CHECK_INSNS = 1 << 18
SPIN_CHECK_HISTORY = 8
NO_BUDGET = 1 << 62           # counting instructions without a budget (icount mode alone)
UNKNOWN_PORT_LOG_LIMIT = 10   # --ignore-unknown-ports: log this many, then only count
STOP_GRACE_S = 0.25           # a host-side stop waits this long for the next read boundary
NO_CHECKPOINT = -1
KVM_INTERNAL_ERROR_EMULATION = 1   # an internal error's suberror: KVM could not emulate
_SIZE_MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}   # an IN's value, cut to its size


class RunConfig(Record):
    timeout_ns: int | None = None        # wall-clock bound on the whole run
    max_output: int | None = 10 << 20    # bytes of guest output before the run is stopped
    ignore_unknown_ports: bool = False
    kick_for_input: bool = False         # kick KVM_RUN periodically to read the terminal
    checkpoint_every: int = 0            # observations between register checkpoints (0: none)
    coalesce_after: int | None = COALESCE_AFTER  # output bytes before OUTs to batched ports
                                                  # are batched (0: at once; None: never)
    # Guest-work budgets (deterministic: the same guest and inputs end at the same point on
    # every machine and backend; None: none). Reads (the observation counter); exits, i.e. the
    # guest's I/O operations (batched writes included) and halts; instructions (the emulator).
    max_observations: int | None = None
    max_exits: int | None = None
    max_instructions: int | None = None
    # Instruction-count mode (the emulator, docs/emulator.md): guest time passes by this many
    # ns per instruction, and interrupts are placed at instruction counts (None: off).
    icount_ns: int | None = None
    rtc_epoch: int = VIRTUAL_EPOCH       # the CMOS clock at guest time 0 (Unix seconds): the
                                         # virtual clock's fixed 2000-01-01, or the start of a
                                         # real-clock run (kept in its trace)


class Observer:
    """Sees what a run does, for recording or verifying it. All stamps are observation counts."""

    def on_output(self, n: int, device: str, text: str, partial: bool) -> None:
        pass

    def on_checkpoint(self, n: int, backend) -> None:
        """Every RunConfig.checkpoint_every observations: the CPU backend, whose
        register_digest() (or, rarely, cpu_state()) the observer asks for."""

    def on_screen(self, n: int, rows: list) -> None:
        """The text screen changed by observation n: [(row, text, attributes)] (vmm.screenlog)."""

    def on_interrupt(self, n: int, at: int, vector: int, point: str) -> None:
        """External interrupt `vector` was injected at `point` ("in" or "hlt") after
        observation n, at guest time `at`."""

    wants_ticks = False

    def tick(self) -> None:
        """Called at every watchdog tick (when wants_ticks is set): flush what is buffered."""


class Machine:
    def __init__(self, image: boot.BootImage, backend: CpuBackend, inputs, sink, log,
                 config: RunConfig, cpuid: list[dict] | None = None,
                 observer: Observer | None = None):
        """`sink(device, text, partial)` receives output lines; `log(text)` diagnostics."""
        self.image, self.backend, self.inputs, self.config = image, backend, inputs, config
        self._sink, self._log = sink, log
        self.observer = observer
        self.output_bytes = 0
        self.exits = 0
        self.unknown_ports = 0
        self._stop: StopRun | None = None
        self._stopping_since: float | None = None
        self._in_read = False
        every = config.checkpoint_every
        self._checkpoint_every = every
        self._next_checkpoint = every if every > 0 else NO_CHECKPOINT
        self.board = get_board(image.board)
        self.bus = PortBus()
        self.devices: dict[str, object] = {}       # by name, for stats and tests
        context = BoardContext(inputs, self._output, mem_size=image.mem_size,
                               rtc_epoch=config.rtc_epoch)
        irq_sources = []
        for slot, device in self.board.build(context):
            self.bus.register(device, slot.port, slot.count)
            self.devices[device.name] = device
            if slot.irq is not None:
                irq_sources.append((slot.irq, device))
            next_event = getattr(device, "next_event_after", None)
            if next_event is not None:               # a device with a schedule (timers)
                inputs.deadline_sources.append(next_event)
        # Interrupts (DESIGN §10): the board's controller, and the devices wired to its lines:
        # edge sources (the PIT: take_edges) report through the input source, so a replay sees
        # the same edges at the same points; level sources (UARTs: irq_pending) follow their
        # registers, which only the guest's accesses and recorded input change.
        self.interrupts = (self.devices[self.board.controller].pair
                           if self.board.controller is not None else None)
        # A board whose controller takes part only once the guest has initialised it (p3): its
        # master chip, whose ICW1 (device state, so a snapshot restores it too) arms it. Until
        # then no line is polled and nothing injected, after an IN or at a HLT.
        self._armed_by = (self.interrupts.master
                          if self.interrupts is not None and self.board.controller_on_init
                          else None)
        self._edge_sources = [(line, d) for line, d in irq_sources if hasattr(d, "take_edges")]
        # each level source: its line, its level, and the poll by which it takes input by
        # itself at an interrupt point (a byte arriving), if it has one
        self._level_sources = [(line, d.irq_pending, getattr(d, "poll_line", None)
                                or getattr(d, "poll_rx", None) or getattr(d, "poll", None))
                               for line, d in irq_sources if hasattr(d, "irq_pending")]
        self.interrupts_injected = 0
        inputs.stop_check = self._check_stop
        self._line_devices = [d if isinstance(d, LineOutput) else d.tx
                              for _, _, d in self.bus.devices
                              if isinstance(d, LineOutput) or isinstance(getattr(d, "tx", None),
                                                                         LineOutput)]
        inputs.unfinished = lambda: "".join(d.partial for d in self._line_devices)
        if hasattr(sink, "show_unfinished"):
            inputs.on_idle = self._show_unfinished
        for address, data in image.chunks:
            backend.memory[address:address + len(data)] = data
        self.screen: ScreenLog | None = None       # the board's text screen, if it has one
        if self.board.screen is not None and sum(self.board.screen) <= image.mem_size:
            from .screenlog import ScreenLog       # here: boards without a screen never load it
            vga = self.devices.get("vga")
            self.screen = ScreenLog(backend.memory, *self.board.screen,
                                    on_change=self._screen_changed,
                                    base_of=(lambda: vga.screen_address) if vga else None)
            script = getattr(inputs, "script", None)
            if script is not None:
                script.screen = lambda: self.screen.rows
        if cpuid is not None:
            backend.set_cpuid(cpuid)
        backend.set_entry_state(image.entry)
        self.coalesced_writes = 0
        self._elements = 0                         # string I/O elements beyond one per exit
        self.coalesced_ports: list[int] = []      # the ports being batched now
        self.ticks = 0                             # host-side returns (Interrupted exits)
        self._unfinished_progress = 0              # output at the last idle point
        self._guest_exits_at_tick = -1             # exits - ticks at the last tick
        self._spin_sample = None                   # the state at the last quiet tick
        self._spin_cpu_mark = 0.0                  # this thread's CPU time after that sample
        self._spin_hot = False                     # the last quiet tick found an idle spin
        self._spin_tries = 0                       # quick spin checks since the last exit
        self._deferred_exit = None                 # an exit single-stepping ran into
        self._set_tick = lambda interval: None     # the watchdog's: its tick (None: usual)
        self._coalesce_at = config.coalesce_after  # output bytes at which batching starts
        self.icount = config.icount_ns is not None
        if config.max_instructions is not None or self.icount:
            if not backend.counts_instructions:
                what = "--icount" if self.icount else "--max-instructions"
                raise UsageError(f"{what} needs a backend that counts instructions: the "
                                 f"{backend.name} backend cannot (KVM has no instruction "
                                 "counter here); use --backend emu"
                                 + ("" if self.icount else ", or --max-exits"))
            backend.set_instruction_limit(config.max_instructions
                                          if config.max_instructions is not None else NO_BUDGET)
        # Instruction-count mode: time is the instruction count's, interrupts come at
        # instruction points (the start of a translated block) as well; a recording places
        # them, a replay finds them again from its `icount` records (DESIGN §10).
        self._placing = False                     # a recording in icount mode: it places the
                                                  # instruction points (a replay reads them)
        self._window_watched = False              # the backend watches for IF to open
        self._event_at: int | None = None         # the count of the next scheduled event
        self._next_check: int | None = None       # the next look for a loop without end
        self._spin_looks: list[tuple] = []        # the latest looks (SPIN_CHECK_HISTORY)
        if self.icount:
            inputs.use_instructions(lambda: backend.instructions, config.icount_ns)
            self._placing = not inputs.replaying
        if self._coalesce_at == 0:
            self._start_coalescing()

    # --- output --------------------------------------------------------------------------------
    def _output(self, device: str, text: str, partial: bool) -> None:
        self.output_bytes += len(text) + (0 if partial else 1)
        self._sink(device, text, partial)
        if self.observer is not None:
            self.observer.on_output(self.inputs.obs, device, text, partial)
        self.inputs.on_output(device, text, partial)
        if self._coalesce_at is not None and self.output_bytes >= self._coalesce_at:
            self._start_coalescing()
        self._check_output_bound()

    def _dropped(self, device: str) -> None:
        """A byte an output device dropped (not printable): it counts toward --max-output, so
        that a flood of them ends like any other."""
        self.output_bytes += 1
        self._check_output_bound()

    def _check_output_bound(self) -> None:
        limit = self.config.max_output
        if limit is not None and self.output_bytes > limit - COALESCE_MARGIN:
            if self.coalesced_ports:
                self._stop_coalescing()
            if self.output_bytes > limit and self._stop is None:
                raise StopRun("output-flood", f"guest output passed --max-output ({limit} bytes)")

    def _coalesced_out(self, port: int, size: int, data: bytes) -> None:
        """OUTs the backend batched, delivered exactly as OUT exits would be."""
        self.coalesced_writes += len(data) // size
        device, offset = self.bus.lookup(port)       # only ports with a device are batched
        self._write(device, offset, size, data)

    @staticmethod
    def _write(device, offset: int, size: int, data: bytes) -> None:
        """Several elements of `size` bytes written to a device: a string OUT or a batch."""
        if size == 1:
            device.write_bytes(offset, data)
        else:
            for i in range(0, len(data), size):
                device.write(offset, size, int.from_bytes(data[i:i + size], "little"))

    def _start_coalescing(self) -> None:
        self._coalesce_at = None
        limit = self.config.max_output
        exits = self.config.max_exits
        if exits is not None and self.guest_exits() > exits - EXIT_MARGIN:
            return                     # near the exit budget: every OUT exits (_check_exits)
        if limit is None or self.output_bytes <= limit - COALESCE_MARGIN:
            self.backend.coalesced_sink = self._coalesced_out
            self.coalesced_ports = [port for port in self.board.batched_ports
                                    if self.backend.register_coalesced_pio(port)]

    def _stop_coalescing(self) -> None:
        for port in self.coalesced_ports:
            self.backend.unregister_coalesced_pio(port)
        self.coalesced_ports = []

    def _screen_changed(self, n: int, rows: list) -> None:
        if self.observer is not None:
            self.observer.on_screen(n, rows)
        self.inputs.on_screen()
        show = getattr(self._sink, "show_screen", None)
        if show is not None:
            show(self.screen)

    def _show_unfinished(self) -> None:
        """The guest waits: let the user see a prompt that has no newline yet. Under the real
        clock, not at an idle point right after the guest printed: a UART's status poll before
        each byte is one too, and two devices printing the same text would show a character of
        each in turn; the guest that waits reaches its next idle point at once."""
        if not getattr(self.inputs, "virtual", True):
            progress = self.output_bytes + sum(len(d.line_buffer) for d in self._line_devices)
            printing, self._unfinished_progress = progress != self._unfinished_progress, progress
            if printing:
                return
        for device in self._line_devices:
            if device.line_buffer:
                self._sink.show_unfinished(device.name, device.partial)

    # --- stop requests from signal handlers ------------------------------------------------------
    def request_stop(self, stop: StopRun) -> None:
        """Async-signal safe: remember why, and make KVM_RUN return."""
        if self._stop is None:
            self._stop = stop
        self.backend.kick()

    def _check_stop(self) -> None:
        if self._stop is not None:
            raise self._stop

    # --- the run loop ----------------------------------------------------------------------------
    def run(self, signals: bool = True) -> RunEnd:
        """Run until the guest or the host ends the run. With signals=False, no signal handlers
        or interval timer are installed (an embedding caller such as harness.session runs its
        own watchdog)."""
        for device in self._line_devices:
            device.on_drop = self._dropped
        self.inputs.output_progress = self._output_progress
        with _Watchdog(self) if signals else contextlib.nullcontext():
            try:
                self.inputs.start()
                self._loop()
            except StopRun as stop:
                end = self._end(stop)
            except ExitRequested as e:
                code = ((e.value << 1) | 1) & 0xFF
                end = self._end(StopRun("exit-device", f"guest wrote {e.value:#x} to the exit "
                                                       f"device (port 0xf4): exit status {code}",
                                        exit_code=code))
        return end

    def _output_progress(self) -> int:
        """Bytes written to the output devices so far, dropped ones included."""
        return sum(device.bytes_written for device in self._line_devices)

    def _end(self, stop: StopRun) -> RunEnd:
        at_read, self._in_read = self._in_read, False
        self._coalesce_at = None            # a partial line flushed now starts nothing
        try:
            self.backend.drain_coalesced()   # normally empty: every return from run() drains
        except StopRun:
            pass
        for _, _, device in self.bus.devices:
            try:
                device.finish()
            except StopRun:
                pass        # the partial line pushed output past the limit: already ending
        if self.screen is not None:
            try:
                self.screen.sample(self.inputs.obs)      # the screen as the run leaves it
            except StopRun:
                pass
        try:
            cpu = self.backend.cpu_state()
        except OSError:
            cpu = None
        message = stop.message
        if stop.reason == "timeout" and cpu is not None and self._can_be_interrupted(cpu) \
                and self._spin_tries:
            # Interrupts on, quiet ticks since the guest's last exit, and no idle spin found:
            # a loop that never comes round to the same state, where none can be placed.
            message += ("; the guest was computing with interrupts on, without I/O, in a loop "
                        "that never comes round to the same state: vmm has no point there to "
                        "inject an interrupt at that a replay finds again (a hlt in the loop "
                        "waits for it; or run on the emulator in instruction-count mode, "
                        "--backend emu --icount 100, which places it at an instruction count; "
                        "docs/devices.md, Interrupts)")
        return RunEnd(stop.reason, message, stop.exit_code, cpu, self.stats(),
                      observation=self.inputs.obs, at_read=at_read,
                      icount=getattr(stop, "icount", None),
                      screen=self.screen.rows if self.screen is not None else None)

    def stats(self) -> dict:
        return {"exits": self.exits, "coalesced_writes": self.coalesced_writes,
                "observations": self.inputs.obs, "guest_exits": self.guest_exits(),
                **({"instructions": self.backend.instructions}
                   if self.config.max_instructions is not None or self.icount else {}),
                "output_bytes": self.output_bytes, "unknown_ports": self.unknown_ports,
                **({"interrupts": self.interrupts_injected} if self._controller_active()
                   else {}),
                "devices": {d.name: d.stats() for _, _, d in self.bus.devices
                            if d.stats() and not self._dormant(d)}}

    def _dormant(self, device) -> bool:
        """A chip of a controller that has not taken part (p3 before ICW1): not reported, so
        that a polled guest's report is what it was on a board without one."""
        return (self._armed_by is not None and not self._armed_by.icw1
                and getattr(device, "pair", None) is self.interrupts)

    def _loop(self) -> None:
        run, lookup, inputs = self.backend.run, self.bus.lookup, self.inputs
        complete_in = self.backend.complete_in
        screen = self.screen
        interrupts = self.interrupts
        obs_limit, exit_limit = self.config.max_observations, self.config.max_exits
        pending = None              # an exit the spin check's single-stepping ran into
        armed_by = self._armed_by            # None: the controller always takes part
        icount = self.icount
        if icount:
            self._arm_deadline()
        while True:
            if pending is None:
                exit_ = run()
            else:
                exit_, pending = pending, None
            self.exits += 1
            kind = type(exit_)
            if kind is IoOut:
                data = exit_.data
                if exit_limit is not None:
                    self._check_exits()
                hit = lookup(exit_.port)
                if hit is None:
                    self._unknown_port(exit_.port, exit_.size, "out", data)
                    continue
                device, offset = hit
                if len(data) == 1:
                    device.write(offset, 1, data[0])
                else:
                    self._elements += len(data) // exit_.size - 1    # a string OUT's others
                    self._write(device, offset, exit_.size, data)
                if icount:
                    self._after_out(device)
            elif kind is IoIn:
                self._in_read = True
                inputs.observe()
                if obs_limit is not None and inputs.obs > obs_limit:
                    raise StopRun("max-observations", f"the guest used up its budget of "
                                                      f"{obs_limit} reads (--max-observations)")
                if exit_limit is not None:
                    self._check_exits()
                if inputs.obs == self._next_checkpoint:
                    self._checkpoint()
                if screen is not None:
                    screen.sample(inputs.obs)
                if self._stopping_since is not None:
                    raise self._stop            # a host-side stop, at a read boundary
                port, size, count = exit_.port, exit_.size, exit_.count
                hit = lookup(port)
                if hit is None:
                    self._unknown_port(port, size, "in", None)
                    self.backend.complete_in(b"\xff" * (size * count))
                    continue
                device, offset = hit
                mask = _SIZE_MASK[size]
                if count == 1:
                    complete_in((device.read(offset, size) & mask).to_bytes(size, "little"))
                else:
                    self._elements += count - 1
                    complete_in(b"".join((device.read(offset, size) & mask).to_bytes(size, "little")
                                         for _ in range(count)))
                self._in_read = False
                if interrupts is not None and (armed_by is None or armed_by.icw1):
                    self._service_interrupts("in")
                if icount and inputs.reschedule:
                    self._arm_deadline()
            elif kind is Interrupted:
                if self._stop is not None:
                    self._stopping()
                elif self.config.kick_for_input:
                    inputs.poll_host()
                if self.observer is not None:
                    self.observer.tick()
                self._spin_tick()
                if exit_limit is not None and self.coalesced_ports:
                    self._near_exit_budget()    # writes drained at this return count too
                pending, self._deferred_exit = self._deferred_exit, None
            elif kind is Halt:
                if exit_limit is not None:
                    self._check_exits()
                self._halted()
                if icount:
                    self._arm_deadline()
            elif kind is InstructionDeadline:
                self.exits -= 1                     # an instruction point: no exit of the guest's
                if exit_limit is not None and self.coalesced_ports:
                    self._near_exit_budget()
                self._icount_point()
            elif kind is InstructionLimit:
                self.exits -= 1                     # the budget's stop: no exit of the guest's
                raise StopRun("max-instructions", f"the guest used up its budget of "
                                                  f"{self.config.max_instructions} instructions "
                                                  "(--max-instructions)")
            else:
                if exit_limit is not None:
                    self._check_exits()
                self._fault(exit_)

    def guest_exits(self) -> int:
        """The guest's exits so far: its I/O operations (each element of a string IN or OUT,
        however a backend splits the string into exits; OUTs the backend batched included) and
        halts; not the host's own returns (Interrupted)."""
        return self.exits - self.ticks + self.coalesced_writes + self._elements

    def _check_exits(self) -> None:
        """At every exit, with --max-exits. Which writes a backend batches and where its batch
        exits differ (KVM's ring, the emulator's 4 KiB), so batching stops EXIT_MARGIN exits
        before the budget: from there on every OUT exits, on every backend, and the budget
        ends the run at the same write everywhere."""
        limit = self.config.max_exits
        n = self.guest_exits()
        if n > limit - EXIT_MARGIN and self.coalesced_ports:
            self._stop_coalescing()
        if n > limit:
            raise StopRun("max-exits", f"the guest used up its budget of {limit} exits "
                                       "(--max-exits: I/O operations and halts)")

    def _near_exit_budget(self) -> None:
        """At a return that is no exit of the guest's (a watchdog tick, the emulator's slice, an
        instruction point), with --max-exits: the batch the backend delivered there counts
        toward the budget too, so batching stops once within EXIT_MARGIN of it, as at an exit.
        (One batch is smaller than the margin, so the budget itself is met only at an exit.)"""
        if self.guest_exits() > self.config.max_exits - EXIT_MARGIN:
            self._stop_coalescing()

    # --- a guest that spins forever -----------------------------------------------------------
    def _spin_tick(self) -> None:
        """At a host-side return (a watchdog tick) with no exit of the guest's since the
        previous one: find out whether the guest is in a loop without I/O that comes round
        exactly (_comes_round), in one of two ways:
        - quickly, by single-stepping it round at once (at most SPIN_VERIFY_STEPS
          instructions, SPIN_TRIES times after an exit; after an idle spin, SPIN_CYCLE_MAX,
          at every SPIN_HOT_TICK, as the guest most likely waits in the same loop again);
        - for longer loops, by two samples of its state (registers, output, memory) at least
          SPIN_CPU_S of its CPU time apart, then stepping it round.
        Such a loop with interrupts on is an idle spin, an interrupt point (_idle_spin);
        with nothing that can interrupt it, a loop that can never end (the machine is
        deterministic and nothing outside reached it): the run ends at once (reason "spin")
        instead of at --timeout. Not in instruction-count mode, whose recording looks at
        instruction counts instead, points a replay finds again (_look_for_spin)."""
        self.ticks += 1
        if self.icount:
            return      # (_look_for_spin: at instruction counts, not at the host's ticks)
        guest_exits = self.exits - self.ticks
        if guest_exits != self._guest_exits_at_tick or self.backend.debug is not None:
            self._guest_exits_at_tick = guest_exits
            self._spin_sample = None
            self._spin_tries = 0
            return
        # The guest must really have run since the last sample: CPU time of this thread, which
        # KVM_RUN and the emulator both spend, not wall time (a process the host did not
        # schedule, or a second kick at once, returns with the guest where it was).
        if self._spin_hot and self._stop is None:
            # Just after an idle spin: the guest is most likely back in its loop, with the
            # next interrupt to wait for. Single-stepping proves it (or not) at once.
            cpu = self.backend.cpu_state()
            if not self._may_step(cpu):
                return              # the interrupt injected last is not taken yet: later
            if self._can_be_interrupted(cpu):
                cycle = self._comes_round(cpu, cpu.digest(legacy=True), SPIN_CYCLE_MAX)
                if cycle and self._idle_spin(cycle):
                    self._guest_exits_at_tick = -1
                    return
                if self._deferred_exit is not None:
                    return
            self._spin_hot = False
            self._set_tick(None)
            self.backend.prompt_kicks(False)
        if self._stop is not None:
            return
        if self._spin_sample is None and self._spin_tries < SPIN_TRIES:
            # The first quiet tick: a short loop (the usual `jmp .`, `while (!flag);`) is
            # found at once by stepping it round, which also proves it loops, with no need
            # for a second sample a tick later. A guest that is computing costs
            # SPIN_VERIFY_STEPS steps here, a few times in a row at most.
            cpu = self.backend.cpu_state()
            if not self._may_step(cpu):
                return              # the interrupt injected last is not taken yet: later
            self._spin_tries += 1
            cycle = self._comes_round(cpu, cpu.digest(legacy=True), SPIN_VERIFY_STEPS)
            if cycle:
                self._spun(self.backend.cpu_state(), cycle)
                return
            if self._deferred_exit is not None:
                return
        if time.thread_time() - self._spin_cpu_mark < SPIN_CPU_S:
            return
        cpu = self.backend.cpu_state()
        sample = (cpu.digest(legacy=True), cpu.rip, cpu.cs_selector, cpu.cr0, cpu.cr3, cpu.cr4, cpu.efer,
                  self.output_bytes, self.coalesced_writes, self.backend.memory_digest())
        if sample == self._spin_sample:
            self._spin_sample = None
            cycle = self._comes_round(cpu, sample[0], SPIN_CYCLE_MAX)
            if cycle:
                self._spun(self.backend.cpu_state(), cycle)
                return
            if self._deferred_exit is not None:
                return
        self._spin_sample = sample
        self._spin_cpu_mark = time.thread_time()

    def _spun(self, cpu, cycle: list[int]) -> None:
        """The guest is in a loop without I/O that comes round exactly (`cycle`: the linear
        RIPs of one round): with nothing that can interrupt it, a spin without end; with
        interrupts on, an idle spin."""
        if not self._can_be_interrupted(cpu):
            raise StopRun("spin", f"the guest spins forever at rip={cpu.rip:#x}: with no I/O, "
                                  "its registers and memory came round to the same state, and "
                                  "nothing can interrupt it")
        if self._idle_spin(cycle):
            self._guest_exits_at_tick = -1
            self._spin_hot = True                # look again soon: SPIN_HOT_TICK
            self._set_tick(SPIN_HOT_TICK)
            self.backend.prompt_kicks(True)

    def _comes_round(self, cpu, digest: str, limit: int) -> list[int] | None:
        """Single-step the guest until it is back at `cpu`'s instruction with the same
        registers (`digest`), at most `limit` instructions: then, if memory is as it was too,
        the linear RIPs of the round; else None (no round within the limit, memory changed, or
        an exit came: that is kept in _deferred_exit for the run loop). The same registers and
        memory at the same instruction with no exit in between, on a machine where nothing
        else moves, mean the loop goes round forever."""
        backend = self.backend
        if not self._may_step(cpu):
            return None
        start = cpu.linear_rip
        memory = backend.memory_digest()
        wrote = (self.output_bytes, self.coalesced_writes)     # batched OUTs make no exit
        debug = backend.debug_begin()
        try:
            rips = []
            while len(rips) < limit:
                rip = self._step_once(debug)
                if rip is None:
                    return None
                rips.append(rip)
                if rip == start and backend.cpu_state().digest(legacy=True) == digest:
                    same = (backend.memory_digest() == memory
                            and (self.output_bytes, self.coalesced_writes) == wrote)
                    return rips if same else None
            return None
        finally:
            backend.debug_end()

    def _may_step(self, cpu) -> bool:
        """Whether single-stepping cannot take the guest into an interrupt: with interrupts
        on, an interrupt vmm injected and the guest has not taken yet (a host-side stop came
        first) would be delivered during a step, with the stepping's trap flag in the frame
        it pushes, and the guest's IRET would bring it back (a #DB the guest never asked for;
        seen on KVM)."""
        return not cpu.regs["rflags"] & RFLAGS_IF or not self.backend.interrupt_pending()

    def _idle_spin(self, cycle: list[int]) -> bool:
        """A loop with interrupts enabled that comes round exactly (`cycle`): the guest waits
        for an interrupt in it (`while (ticks < n);`), so it is an idle point, as HLT is
        (DESIGN §10), at a place that does not depend on when the host looked: the loop's
        lowest instruction address, stepped to, where the interrupt is injected. Every
        iteration is in the same state, so a replay, which finds the loop at another moment,
        injects at the same instruction in the same state."""
        backend = self.backend
        lowest = min(cycle)
        debug = backend.debug_begin()
        try:
            for _ in range(len(cycle)):
                if backend.cpu_state().linear_rip == lowest:
                    break
                if self._step_once(debug) is None:
                    return False
        finally:
            backend.debug_end()
        self._wait_for_interrupt("spin")
        return True

    def _step_once(self, debug) -> int | None:
        """One instruction under the backend's debug mode; its linear RIP after it, or None if
        the guest made an exit instead (an I/O instruction, a HLT: no loop without I/O, then),
        which the run loop takes next (_deferred_exit), as if run() had returned it."""
        debug.target = debug.steps + 1
        while True:
            exit_ = self.backend.run()
            if type(exit_) is DebugStop:
                return self.backend.cpu_state().linear_rip
            if type(exit_) is not Interrupted:
                self._deferred_exit = exit_
                return None

    def _can_be_interrupted(self, cpu) -> bool:
        """Whether an interrupt could still end the loop (the board has a controller and the
        guest has interrupts on): then it waits for one, and is no spin without end."""
        return self._controller_active() and bool(cpu.regs["rflags"] & RFLAGS_IF)

    def _controller_active(self) -> bool:
        """Whether the board's interrupt controller takes part now: always where it has one,
        on p3 once the guest has initialised the master (ICW1)."""
        return self.interrupts is not None and (self._armed_by is None
                                                or bool(self._armed_by.icw1))

    def _stopping(self) -> None:
        """A stop was requested from outside (timeout, signal). Let the guest run on to its next
        read, so the run ends at a point a replay can reach exactly; a guest that does not read
        within STOP_GRACE_S is stopped where it is. In instruction-count mode it ends at the
        next instruction point instead (the next translated block's start, if no read comes
        first), which a replay finds again by its count: its final state is compared too."""
        now = time.monotonic()
        if self.icount:
            if self._stopping_since is None:
                self._stopping_since = now
            self.backend.set_instruction_deadline(self.backend.instructions)
            return
        if self._stopping_since is None:
            self._stopping_since = now
        elif now - self._stopping_since >= STOP_GRACE_S:
            raise self._stop

    def _checkpoint(self) -> None:
        self._next_checkpoint += self._checkpoint_every
        self.observer.on_checkpoint(self.inputs.obs, self.backend)

    # --- interrupts -----------------------------------------------------------------------------
    def _service_interrupts(self, point: str, stamp: str | None = None) -> bool:
        """At a point a replay finds again (after an IN, at a HLT with interrupts enabled):
        bring the controller's lines up to date, and inject its interrupt if the guest can
        take it now. True if one was injected.

        An interrupt that comes while the guest has interrupts off waits for the next such
        point with them on. The interrupt-window exit (after STI, POPF, IRET) would deliver
        it sooner, but this project's KVM host (a PVM nested hypervisor) reports the window
        only at its next exit of any kind, a moment no replay can find again; so vmm does not
        use it (docs/devices.md, "Interrupts")."""
        pic, inputs, backend = self.interrupts, self.inputs, self.backend
        stamp = stamp or point               # what edges and keys taken here are stamped with
        for line, device in self._edge_sources:
            if inputs.irq_edges(line, device, stamp):
                pic.pulse(line)
        inputs.point = stamp
        set_irq = pic.set_irq
        for line, level, poll in self._level_sources:
            if poll is not None:
                # first the level the access left (the read of 0x60 that took a byte lowers
                # IRQ 1), then the byte that arrives raises it again unasked: an edge per byte
                set_irq(line, level())
                poll()
            set_irq(line, level())
        inputs.point = None
        if not pic.has_interrupt() or not backend.interrupt_ready():
            if self._placing:
                # instruction-count mode: where the guest enables interrupts, it takes this one
                self._watch(pic.has_interrupt())
            return False
        if self._placing:
            self._watch(False)
        vector = pic.acknowledge()
        backend.inject_interrupt(vector)
        self.interrupts_injected += 1
        if self.observer is not None:
            self.observer.on_interrupt(inputs.obs, inputs.now(), vector, point)
        return True

    def _icount_point(self) -> None:
        """Instruction-count mode: the backend stopped at the start of a translated block, at
        the deadline's instruction count (guest time reached the next scheduled event) or
        where the guest can take an interrupt that came while it could not. An interrupt
        point, stamped with the instruction count ("icount"), that a replay finds again at
        the same count."""
        count = self.backend.instructions
        if self._stopping_since is not None:          # a host-side stop (_stopping)
            self._stop.icount = count
            raise self._stop
        if self._placing and not self._window_watched and self._next_check is not None \
                and count >= self._next_check and (self._event_at is None
                                                   or count < self._event_at):
            self._next_check = None                   # a look of the recording's own
            if not self._look_for_spin(count):
                self._arm_deadline()
                return
            # an idle spin: time moved on to the next event, taken here, as at a HLT
        try:
            self.inputs.icount_point(count)
        except StopRun as stop:
            stop.icount = count             # where a replay ends it too (the end record's)
            raise
        if self._controller_active():
            self._service_interrupts("icount")
        elif self._placing:
            self._watch(False)
        self._arm_deadline()

    def _after_out(self, device) -> None:
        """Instruction-count mode, after an OUT: a timer the guest (re)programmed moves the
        next deadline; a write to the interrupt controller (an EOI that lets a waiting request
        through, an unmask) may leave an interrupt for the guest to take as soon as it can,
        where the recording then stops (the window), as a CPU would take it."""
        if self.inputs.reschedule:
            self._arm_deadline()
        pic = self.interrupts
        if self._placing and pic is not None and getattr(device, "pair", None) is pic:
            self._watch(pic.has_interrupt())

    def _arm_deadline(self) -> None:
        """Instruction-count mode: the backend's next stop, at the next instruction point (a
        recording also stops every SPIN_CHECK_INSNS to look for a loop that can never end)."""
        self.inputs.reschedule = False
        count = self.backend.instructions
        if self._stopping_since is not None:
            self.backend.set_instruction_deadline(count)
            return
        deadline = self._event_at = self.inputs.next_icount(count)
        if self._placing:
            if self._next_check is None or self._next_check <= count:
                self._next_check = count + SPIN_CHECK_INSNS
            if deadline is None or self._next_check < deadline:
                deadline = self._next_check
        self.backend.set_instruction_deadline(deadline)

    def _watch(self, on: bool) -> None:
        self._window_watched = on
        self.backend.watch_interrupt_window(on)

    def _look_for_spin(self, count: int) -> bool:
        """Instruction-count mode, recording: at instruction counts SPIN_CHECK_INSNS apart, the
        guest's state; the same state (registers, memory, output) as at an earlier look with
        no exit in between is a loop that goes round forever (the machine is deterministic).
        If nothing can interrupt it, the run ends there (reason "spin"); if an interrupt could
        but none is scheduled, it waits for one that never comes (reason "idle"); otherwise it
        is an idle point, as a HLT: time moves on to the next deadline, and True says that this
        is an interrupt point now, where it is taken. The ends are at an instruction point,
        where a replay ends too (the end record's icount); the time a replay takes from the
        records."""
        cpu = self.backend.cpu_state()
        work = (self.guest_exits(), self.output_bytes, self.coalesced_writes)
        looks = self._spin_looks
        if looks and looks[-1][1] != work:
            looks.clear()                             # the guest did I/O since: no loop
        key = (cpu.linear_rip, cpu.digest(legacy=True))
        memory = None               # RAM's digest only where the registers came round
        seen = [look for look in looks if look[0] == key]
        if seen:
            memory = self.backend.memory_digest()
        if any(look[2] == memory for look in seen):
            looks.clear()
            try:
                if not self._can_be_interrupted(cpu):
                    raise StopRun("spin", f"the guest spins forever at rip={cpu.rip:#x}: with "
                                          "no I/O, its registers and memory came round to the "
                                          "same state, and nothing can interrupt it")
                if self.inputs.nothing_scheduled():
                    raise StopRun("idle", "the guest waits for an interrupt in a loop without "
                                          "I/O, and nothing more is scheduled")
                self.inputs.idle()          # an idle spin: time moves on to the next event
            except StopRun as stop:
                stop.icount = count
                raise
            return True
        looks.append((key, work, memory))
        del looks[:-SPIN_CHECK_HISTORY]
        return False

    def _wait_for_interrupt(self, point: str = "hlt") -> None:
        """HLT with interrupts enabled, on a board with an interrupt controller, or an idle
        spin (point "spin"): an idle point. Time moves on (virtual clock: to the next deadline)
        until an interrupt comes; a run with nothing more to come ends there as any idle run
        does (DESIGN §10)."""
        # Edges and keys that come once time has moved on are stamped "idle", not "hlt": a
        # replay must not take them at the HLT's first look, where an interrupt that came
        # before it (at the IN) is still pending and would swallow the new edge
        stamp = point
        while not self._service_interrupts(point, stamp):
            self.inputs.idle_until_interrupt()
            stamp = "idle"

    def _halted(self) -> None:
        linear_rip, rflags = self.backend.halt_view()      # (an idle kernel's every tick)
        vector = boot.stub_vector(linear_rip, self.image.stub_base)
        if vector is None and self._controller_active() and rflags & RFLAGS_IF:
            self._wait_for_interrupt()
            return
        cpu = self.backend.cpu_state()
        if vector is None:
            raise StopRun("halt", f"guest halted at rip={cpu.rip:#x}")
        real = self.image.entry.mode == "real"
        where, origin = self._interrupted_at(cpu, vector, software=real and vector >= 0x10)
        if real and vector >= 0x10:
            raise StopRun("guest-exception", f"guest called BIOS interrupt int {vector:#x} at "
                                             f"{where}{origin}, but vmm has no BIOS: use the "
                                             "port-I/O devices (docs/devices.md)")
        if vector in boot.EXCEPTION_NAMES and (vector < 8 or not real):
            what = f"exception {boot.EXCEPTION_NAMES[vector]} (vector {vector})"
        else:
            what = f"interrupt vector {vector:#x}"
        extra = f" (faulting address cr2={cpu.cr2:#x})" if vector == 14 and not real else ""
        raise StopRun("guest-exception", f"guest raised {what} at {where}{extra} and has no "
                                         f"handler for it{origin}")

    def _interrupted_at(self, cpu, vector: int, software: bool = False) -> tuple[str, str]:
        """Read the interrupted CS:IP from the exception frame vmm's stub was entered with
        (for a software `int imm8`, the frame holds the next instruction: step back over it)."""
        mode = self.image.entry.mode
        sp = cpu.regs["rsp"]
        mem = self.backend.memory
        try:
            if mode == "real":
                base = cpu.extra.get("ss_base", 0) + (sp & 0xFFFF)
                ip, cs = int.from_bytes(mem[base:base + 2], "little"), int.from_bytes(
                    mem[base + 2:base + 4], "little")
                return f"{cs:04x}:{(ip - 2 if software else ip) & 0xFFFF:04x}", ""
            width = 8 if mode == "long" else 4
            base = sp + (width if vector in boot.ERROR_CODE_VECTORS else 0)
            ip = int.from_bytes(mem[base:base + width], "little")
            return f"rip={ip:#x}", ""
        except (ValueError, IndexError):
            return f"rip={cpu.rip:#x}", " (its stack is outside RAM)"

    def _fault(self, exit_) -> None:
        if isinstance(exit_, Shutdown):
            raise StopRun("triple-fault", "guest triple-faulted (an exception while handling an "
                                          "exception; the CPU shut down)")
        if isinstance(exit_, Mmio):
            verb = "wrote" if exit_.is_write else "read"
            raise StopRun("memory-outside-ram",
                          f"guest {verb} {exit_.length} bytes at physical address "
                          f"{exit_.address:#x}, outside its {boot._size(self.image.mem_size)} of RAM")
        if isinstance(exit_, FailEntry):
            raise StopRun("kvm-error", f"KVM could not enter the guest (hardware entry failure "
                                       f"reason {exit_.reason:#x}): invalid CPU state")
        if isinstance(exit_, InternalError):
            if getattr(exit_, "message", None):      # the emulator says what it was
                raise StopRun("kvm-error", exit_.message)
            if exit_.suberror == KVM_INTERNAL_ERROR_EMULATION:
                self._cannot_emulate(exit_)
            raise StopRun("kvm-error", f"KVM internal error (suberror {exit_.suberror}, data "
                                       f"{' '.join(hex(d) for d in exit_.data)}); often a guest "
                                       "instruction KVM cannot emulate")
        if isinstance(exit_, UnknownExit):
            raise StopRun("kvm-error", f"unexpected KVM exit reason {exit_.reason}")
        raise StopRun("kvm-error", f"unexpected exit {type(exit_).__name__}")

    def _cannot_emulate(self, exit_) -> None:
        """KVM stopped at an instruction it could not emulate (a nested software hypervisor
        cannot do SSE or RDRAND in ring 0, say): name it, and the backend that can."""
        from .cpu.insn import describe
        try:
            cpu = self.backend.cpu_state()
            what = describe(self.backend.memory, cpu)
        except OSError:
            return
        if what is None:
            return
        raise StopRun("kvm-error", f"KVM cannot execute the instruction at rip={cpu.rip:#x}: "
                                   f"{what}; this host's KVM does not emulate it (internal error, "
                                   f"suberror {exit_.suberror}): run with --backend emu")

    def _unknown_port(self, port: int, size: int, direction: str, data: bytes | None) -> None:
        self.unknown_ports += 1
        if direction == "out":
            value = int.from_bytes(data[:size], "little")
            what = f"wrote {value:#x} to unknown port {port:#x} ({size}-byte OUT)"
        else:
            what = f"read unknown port {port:#x} ({size}-byte IN)"
        if not self.config.ignore_unknown_ports:
            cpu = self.backend.cpu_state()
            raise StopRun("unknown-port", f"guest {what} at rip={cpu.rip:#x}; run with "
                                          "--ignore-unknown-ports to go on")
        if self.unknown_ports <= UNKNOWN_PORT_LOG_LIMIT:
            self._log(f"vmm: guest {what}; ignored"
                      + (" (further ones are only counted)"
                         if self.unknown_ports == UNKNOWN_PORT_LOG_LIMIT else ""))


class _Watchdog:
    """Arms SIGINT/SIGTERM handlers and, when needed, an interval timer whose SIGALRM kicks
    KVM_RUN: to enforce --timeout even for a guest that never exits, and to read the terminal."""

    def __init__(self, machine: Machine):
        self.machine = machine
        config = machine.config
        self.deadline = (time.monotonic() + config.timeout_ns / 1e9
                         if config.timeout_ns is not None else None)
        observer = machine.observer
        # Batched output also wants ticks: a guest that prints and then computes without an
        # exit still shows its output within a tick.
        wanted = (self.deadline is not None or config.kick_for_input
                  or (observer is not None and observer.wants_ticks)
                  or config.coalesce_after is not None)
        self.tick = WATCHDOG_TICK if wanted else None
        self.saved = {}

    def _on_alarm(self, signum, frame) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            timeout = self.machine.config.timeout_ns / 1e9
            self.machine.request_stop(StopRun("timeout", f"the run passed --timeout "
                                                         f"({timeout:g}s of wall-clock time)"))
        else:
            self.machine.backend.kick()

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self.machine.request_stop(StopRun("interrupted", "interrupted (SIGINT)"))
        else:
            self.machine.request_stop(StopRun("terminated", "terminated (SIGTERM)"))

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.saved[sig] = signal.signal(sig, self._on_signal)
        if self.tick is not None:
            self.saved[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_alarm)
            first = self.tick
            if self.deadline is not None:
                first = max(1e-4, min(first, self.deadline - time.monotonic()))
            signal.setitimer(signal.ITIMER_REAL, first, self.tick)
            self.machine._set_tick = self._set_tick
        return self

    def _set_tick(self, interval: float | None) -> None:
        """A shorter tick for a while (vmm.machine.SPIN_HOT_TICK), or None: the usual one."""
        interval = interval or self.tick
        signal.setitimer(signal.ITIMER_REAL, interval, interval)

    def __exit__(self, *exc) -> None:
        if self.tick is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
