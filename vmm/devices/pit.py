"""The 8254 programmable interval timer at 0x40-0x43, and port 0x61 (system control port B).

Time. The PIT never reads a clock: its constructor takes `now`, a callable returning guest time
in nanoseconds (the machine wires it to the input source, so replay sees the same times). The
input clock is 1 193 182 Hz, and guest time maps to input-clock ticks exactly, in integers:

    tick(ns) = ns * 1193182 // 10**9                       (tick_of)
    ns(tick) = ceil(tick * 10**9 / 1193182)                (ns_of_tick: the first ns of a tick)

A counter written during tick T is loaded into its counting element by the next clock pulse,
T + 1 (the datasheet's "N + 1 pulses after the write" in mode 0), and then counts one per tick.

The counters, after the Intel 8254 datasheet (order number 231164):

- Control word at 0x43: bits 7-6 the counter (3 = read-back), bits 5-4 access (0 = counter
  latch command, 1 LSB, 2 MSB, 3 LSB then MSB), bits 3-1 the mode (6, 7 alias 2, 3), bit 0 BCD.
  Writing it resets the counter's logic (pending latches and half-written counts) and sets OUT
  to the mode's initial level: low in mode 0, high in the others.
- Count writes per access mode; an initial count of 0 means 65536 (10000 in BCD).
- Mode 0, interrupt on terminal count: OUT low, high when the count reaches 0, N + 1 ticks
  after the write; counting goes on wrapping. Gate low suspends counting. In LSB/MSB access,
  the first byte of a new count stops counting (and OUT goes low); the second loads it.
- Mode 1, retriggerable one-shot: a gate rising edge loads the count; OUT is low from the next
  tick until the count reaches 0. Only channel 2 has a gate that can move (port 0x61 bit 0).
- Mode 2, rate generator: OUT high, low for one tick when the count reaches 1, then the count
  reloads: rising edges every N ticks, the first N ticks after the load. A new count written
  while counting is loaded at the end of the current period. Gate low forces OUT high and stops
  counting; gate high reloads.
- Mode 3, square wave: OUT high for ceil(N/2) ticks and low for floor(N/2); the count
  decrements by two (N, N-2, ... 2 for even N; N-1, N-3, ... 0 then N-1, ... 2 for odd N). A new
  count is loaded at the end of the current half cycle. Gate as in mode 2.
- Modes 4 (software strobe) and 5 (hardware strobe, gate-triggered): OUT low for one tick when
  the count reaches 0, N + 1 ticks after the load.
- The counter-latch command and the read-back command (latch count and/or status for any set
  of counters; status = OUT, null count, access, mode, BCD; a latched status reads first).
  Null count is 1 from a control word or a count write until that count is in the counting
  element. A second latch before the first is read is ignored.
- Counts of 1 in modes 2 and 3 are illegal on the chip; here they give a constant OUT (low in
  mode 2, high in mode 3) and no edges.

Interrupts. Channel 0's OUT drives IRQ 0 (edge). The PIT does not call the interrupt
controller: `take_edges(now_ns)` answers how many rising edges channel 0's OUT made since the
last call, and `next_event_after(now_ns)` when the next one will be, for the virtual clock.

Power-on state (QEMU's, standing in for the BIOS): every channel in mode 3, LSB-then-MSB
access, count 65536 loaded at creation; gates 0 and 1 high, gate 2 low. Channel 0 therefore
ticks at 18.2 Hz until the guest reprograms it.
"""

from __future__ import annotations

from collections.abc import Callable   # not typing: ~3 ms of `vmm run` start-up

from .bus import Device

PIT_HZ = 1_193_182
NS_PER_S = 1_000_000_000
CHANNELS = 3
CONTROL = 3                         # offset of the control word register (port 0x43)
READ_BACK = 3                       # counter select 3 in a control word
ACCESS_LATCH, ACCESS_LSB, ACCESS_MSB, ACCESS_LOHI = 0, 1, 2, 3
RB_NO_COUNT, RB_NO_STATUS = 0x20, 0x10
ST_OUT, ST_NULL = 0x80, 0x40

# port 0x61, system control port B
P61_GATE2, P61_SPEAKER, P61_PARITY_OFF, P61_IOCHK_OFF = 0x01, 0x02, 0x04, 0x08
P61_REFRESH, P61_OUT2 = 0x10, 0x20
P61_WRITABLE = 0x0F
REFRESH_NS = 15_085                 # bit 4 toggles every 15.085 us of guest time (the DRAM
                                    # refresh request of the AT): bit 4 = (now // 15085) & 1


def tick_of(ns: int) -> int:
    """The PIT input-clock tick that guest time `ns` falls in."""
    return ns * PIT_HZ // NS_PER_S


def ns_of_tick(tick: int) -> int:
    """The first guest nanosecond of `tick` (the least ns with tick_of(ns) >= tick)."""
    return -(-tick * NS_PER_S // PIT_HZ)


def _from_bcd(value: int) -> int:
    return ((value >> 12) & 0xF) * 1000 + ((value >> 8) & 0xF) * 100 + ((value >> 4) & 0xF) * 10 \
        + (value & 0xF)


def _to_bcd(value: int) -> int:
    return (value // 1000 % 10) << 12 | (value // 100 % 10) << 8 | (value // 10 % 10) << 4 \
        | value % 10


# --- one counting program: (mode, n, load tick), pure functions of the elapsed ticks --------

def _out(mode: int, n: int, e: int) -> bool:
    if mode in (0, 1):
        return e >= n
    if mode == 2:
        return n >= 2 and e % n != n - 1
    if mode == 3:
        return e % n < (n + 1) // 2
    return e != n                                   # 4, 5


def _count(mode: int, n: int, e: int) -> int:
    """The counting element's value (not reduced to the modulus) e ticks after the load."""
    if mode == 2:
        return n - e % n
    if mode == 3:
        phase, high = e % n, (n + 1) // 2
        if phase >= high:
            phase -= high
        return n - (n & 1) - 2 * phase
    return n - e                                     # 0, 1, 4, 5: wraps


def _edge_ticks_upto(mode: int, n: int, load: int, x: int) -> int:
    """How many rising edges of OUT fall on ticks in (load, x]."""
    if x <= load:
        return 0
    if mode in (2, 3):
        return (x - load) // n if n >= 2 else 0
    at = load + n if mode in (0, 1) else load + n + 1
    return 1 if at <= x else 0


def _next_rising(mode: int, n: int, load: int, t: int) -> int | None:
    """The first tick after t at which OUT rises."""
    if mode in (2, 3):
        if n < 2:
            return None
        return load + n * max(1, (t - load) // n + 1)
    at = load + n if mode in (0, 1) else load + n + 1
    return at if at > t else None


def _next_change(mode: int, n: int, load: int, t: int) -> int | None:
    """The first tick after t at which OUT changes level."""
    if mode in (0, 1, 4, 5):
        points = {0: (load + n,), 1: (load, load + n), 4: (load + n, load + n + 1),
                  5: (load + n, load + n + 1)}[mode]
        later = [p for p in points if p > t]
        return min(later) if later else None
    if n < 2:
        return None
    rise = load + n * max(1, (t - load) // n + 1)
    if mode == 2:
        fall_k = max(1, (t - load + 1) // n + 1)
        return min(rise, load + fall_k * n - 1)
    high = (n + 1) // 2
    fall = load + high + n * max(0, (t - load - high) // n + 1)
    return min(rise, fall)


class PitChannel(Device):
    """One counter. Every field is plain, so the PIT's generic state() nests it whole."""

    def __init__(self, index: int, gate: bool):
        self.name = f"pit-ch{index}"
        self.index = index
        self.gate = gate
        self.mode = 3
        self.mode_bits = 3                 # bits 3-1 of the control word, as written
        self.access = ACCESS_LOHI
        self.bcd = False
        self.cr = 0                        # the count register: the last count written
        self.n = 0x10000                   # the count the counting element runs with
        self.load: int | None = None       # tick at which the element was loaded with n
        self.paused: int | None = None     # modes 0/4: tick since which gate low froze counting
        self.pend_n: int | None = None     # modes 2/3: a new count waiting for the cycle end
        self.pend_load: int | None = None
        self.pend_at: int | None = None
        self.written = True                # a count was written since the control word
        self.nc_clear: int | None = None   # tick at which null count clears (None: not planned)
        self.hold = 0                      # the count shown while not counting
        self.write_lsb: int | None = None  # LSB of a half-written LSB-then-MSB count
        self.read_msb_next = False         # the read flip-flop of LSB-then-MSB live reads
        self.latch: int | None = None      # counter-latch output latch
        self.latch_msb_next = False
        self.status: int | None = None     # a read-back status waiting to be read

    # --- evaluation at tick t -----------------------------------------------------------
    def _modulus(self) -> int:
        return 10000 if self.bcd else 0x10000

    def _settle(self, t: int) -> None:
        if self.pend_at is not None and t >= self.pend_at:
            self.n, self.load = self.pend_n, self.pend_load
            self.pend_n = self.pend_load = self.pend_at = None

    def _elapsed(self, t: int) -> int | None:
        """Ticks counted since the load, or None when the element is not counting yet."""
        self._settle(t)
        if self.load is None or t < self.load:
            return None
        if self.paused is not None:
            t = min(t, max(self.paused, self.load))
        return t - self.load

    def out(self, t: int) -> bool:
        e = self._elapsed(t)
        if e is None:
            return self.mode != 0
        return _out(self.mode, self.n, e)

    def raw_count(self, t: int) -> int:
        """The counting element's value, in binary even in BCD mode."""
        e = self._elapsed(t)
        return self.hold if e is None else _count(self.mode, self.n, e) % self._modulus()

    def count(self, t: int) -> int:
        """The counting element as the guest reads it (BCD-encoded in BCD mode)."""
        value = self.raw_count(t)
        return _to_bcd(value) if self.bcd else value

    def null_count(self, t: int) -> bool:
        return self.nc_clear is None or t < self.nc_clear

    def edges_upto(self, x: int) -> int:
        """Rising edges of OUT on ticks in (load, x] of the current (and pending) program."""
        if self.load is None:
            return 0
        if self.paused is not None:
            x = min(x, max(self.paused, self.load))
        if self.pend_at is not None and x > self.pend_at:
            return (_edge_ticks_upto(self.mode, self.n, self.load, self.pend_at)
                    + _edge_ticks_upto(self.mode, self.pend_n, self.pend_load, x)
                    - _edge_ticks_upto(self.mode, self.pend_n, self.pend_load, self.pend_at))
        return _edge_ticks_upto(self.mode, self.n, self.load, x)

    def next_rising(self, t: int) -> int | None:
        self._settle(t)
        if self.load is None or self.paused is not None:
            return None
        if self.pend_at is not None:
            first = _next_rising(self.mode, self.n, self.load, t)
            if first is not None and first <= self.pend_at:
                return first
            return _next_rising(self.mode, self.pend_n, self.pend_load, max(t, self.pend_at))
        return _next_rising(self.mode, self.n, self.load, t)

    def next_change(self, t: int) -> int | None:
        self._settle(t)
        if self.load is None or self.paused is not None:
            return None
        # a pending count takes over at a change of OUT of the current program, so the
        # current program's next change is never later than the boundary
        return _next_change(self.mode, self.n, self.load, t)

    # --- programming ----------------------------------------------------------------------
    def _initial(self) -> int:
        return (_from_bcd(self.cr) or 10000) if self.bcd else (self.cr or 0x10000)

    def program(self, value: int) -> None:
        """A control word for this counter (not a latch or read-back command)."""
        self.access = (value >> 4) & 3
        self.mode_bits = (value >> 1) & 7
        self.mode = self.mode_bits - 4 if self.mode_bits >= 6 else self.mode_bits
        self.bcd = bool(value & 1)
        self.load = self.paused = None
        self.pend_n = self.pend_load = self.pend_at = None
        self.nc_clear = None
        self.written = False
        self.write_lsb = None
        self.read_msb_next = self.latch_msb_next = False
        self.latch = self.status = None

    def write_count(self, t: int, value: int) -> None:
        value &= 0xFF
        if self.access == ACCESS_LSB:
            self.cr = value
        elif self.access == ACCESS_MSB:
            self.cr = value << 8
        elif self.write_lsb is None:
            self.write_lsb = value
            if self.mode == 0:                     # the first byte stops counting, OUT low
                self.hold = self.raw_count(t)
                self.load = self.paused = None
            return
        else:
            self.cr = self.write_lsb | value << 8
            self.write_lsb = None
        self._commit(t)

    def _commit(self, t: int) -> None:
        n = self._initial()
        self._settle(t)
        self.written = True
        if self.mode in (1, 5):                    # loaded by the next gate trigger
            self.nc_clear = None
            return
        if self.mode in (2, 3):
            if not self.gate:
                self.nc_clear = None               # loaded when the gate rises
                return
            if self.load is not None and t >= self.load:
                boundary = _next_change(self.mode, self.n, self.load, t) if self.mode == 3 \
                    else _next_rising(self.mode, self.n, self.load, t)
                if boundary is not None:
                    low_half = self.mode == 3 and not _out(self.mode, self.n,
                                                           boundary - self.load)
                    self.pend_n, self.pend_at = n, boundary
                    self.pend_load = boundary - (n + 1) // 2 if low_half else boundary
                    self.nc_clear = boundary
                    return
        self.n, self.load = n, t + 1
        self.hold = n % self._modulus()
        self.pend_n = self.pend_load = self.pend_at = None
        self.nc_clear = t + 1
        self.paused = t + 1 if self.mode in (0, 4) and not self.gate else None

    def set_gate(self, t: int, level: bool) -> None:
        if level == self.gate:
            return
        self.gate = level
        self._settle(t)
        if self.mode in (0, 4):
            if self.load is None:
                return
            if not level:
                self.paused = max(t, self.load)
            elif self.paused is not None:
                self.load += max(0, t - self.paused)
                self.paused = None
        elif self.mode in (2, 3):
            if not level:
                if self.load is not None:
                    self.hold = self.raw_count(t)
                self.load = None
                self.pend_n = self.pend_load = self.pend_at = None
            else:
                self._reload(t)
        elif level:                                # modes 1, 5: a rising edge triggers
            self._reload(t)

    def _reload(self, t: int) -> None:
        """A gate trigger: the count register goes into the element at the next tick."""
        if not self.written:
            return
        self.n, self.load = self._initial(), t + 1
        self.nc_clear = t + 1
        self.paused = None

    # --- the guest's reads ----------------------------------------------------------------
    def latch_count(self, t: int) -> None:
        if self.latch is None:
            self.latch = self.count(t)
            self.latch_msb_next = False

    def latch_status(self, t: int) -> None:
        if self.status is None:
            self.status = ((ST_OUT if self.out(t) else 0) | (ST_NULL if self.null_count(t) else 0)
                           | self.access << 4 | self.mode_bits << 1 | int(self.bcd))

    def read_port(self, t: int) -> int:
        if self.status is not None:
            value, self.status = self.status, None
            return value
        if self.latch is not None:
            value = self.latch
            if self.access == ACCESS_LOHI and not self.latch_msb_next:
                self.latch_msb_next = True
                return value & 0xFF
            self.latch, self.latch_msb_next = None, False
            return value >> 8 if self.access != ACCESS_LSB else value & 0xFF
        value = self.count(t)
        if self.access == ACCESS_LSB:
            return value & 0xFF
        if self.access == ACCESS_MSB:
            return value >> 8
        msb, self.read_msb_next = self.read_msb_next, not self.read_msb_next
        return value >> 8 if msb else value & 0xFF


class Pit8254(Device):
    """Ports 0x40-0x42 (counters 0-2) and 0x43 (control word), one port range of four."""

    name = "pit"

    def __init__(self, now: Callable[[], int]):
        self._now = now
        t = tick_of(now())
        self.ch0 = PitChannel(0, gate=True)
        self.ch1 = PitChannel(1, gate=True)
        self.ch2 = PitChannel(2, gate=False)
        for ch in (self.ch0, self.ch1):
            ch.n, ch.load, ch.nc_clear = 0x10000, t, t
        self.ch2.nc_clear = t                  # count 65536 in CR, waiting for the gate
        self.edge_tick = t                     # channel 0 edges are counted up to this tick
        self.edges_pending = 0                 # edges folded in by reprogramming, not yet taken
        self.edges_total = 0
        self.control_words = 0
        self.read_backs = 0

    def _channels(self):
        return (self.ch0, self.ch1, self.ch2)

    # --- channel 0's output, for the interrupt controller and the clock -------------------
    def _fold(self, t: int) -> None:
        """Count channel 0's edges up to tick t under its current program, before a change."""
        if t > self.edge_tick:
            ch = self.ch0
            self.edges_pending += ch.edges_upto(t) - ch.edges_upto(self.edge_tick)
            self.edge_tick = t

    def _tick(self) -> int:
        """The current tick, with channel 0's edges counted up to it first (so that no later
        evaluation can replace a program whose edges were not counted yet)."""
        t = tick_of(self._now())
        self._fold(t)
        return t

    def take_edges(self, now_ns: int) -> int:
        """The number of rising edges of channel 0's OUT (IRQ 0) since the previous call, up to
        guest time now_ns. The caller raises IRQ 0 (a PIC pulse) when it is not 0; several
        edges between two calls make one interrupt request, as on the chip."""
        self._fold(tick_of(now_ns))
        count, self.edges_pending = self.edges_pending, 0
        self.edges_total += count
        return count

    def next_event_after(self, now_ns: int) -> int | None:
        """The guest time (ns) of channel 0's first rising edge after now_ns, or None if its
        OUT will not rise again under the current programming (a deadline source for the
        virtual clock)."""
        t = tick_of(now_ns)
        self._fold(t)
        tick = self.ch0.next_rising(t)
        return None if tick is None else ns_of_tick(tick)

    def next_change_after(self, channel: int, now_ns: int) -> int | None:
        """The guest time (ns) at which the channel's OUT next changes level, or None."""
        t = tick_of(now_ns)
        self._fold(t)
        tick = self._channels()[channel].next_change(t)
        return None if tick is None else ns_of_tick(tick)

    def out(self, channel: int) -> bool:
        """The channel's OUT now."""
        return self._channels()[channel].out(self._tick())

    def set_gate(self, channel: int, level: bool) -> None:
        t = self._tick()
        self._channels()[channel].set_gate(t, bool(level))

    # --- ports ----------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset >= CONTROL:
            return 0xFF                        # the control word register is write-only
        return self._channels()[offset].read_port(self._tick())

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        t = self._tick()
        if offset < CONTROL:
            self._channels()[offset].write_count(t, value)
            return
        select = value >> 6
        if select == READ_BACK:
            self.read_backs += 1
            for i, ch in enumerate(self._channels()):
                if value & (2 << i):
                    if not value & RB_NO_COUNT:
                        ch.latch_count(t)
                    if not value & RB_NO_STATUS:
                        ch.latch_status(t)
            return
        ch = self._channels()[select]
        if (value >> 4) & 3 == ACCESS_LATCH:
            ch.latch_count(t)
            return
        self.control_words += 1
        if select == 0:
            was_high = ch.out(t)
            ch.program(value)
            if ch.out(t) and not was_high:     # a mode other than 0 sets OUT high at once
                self.edges_pending += 1
        else:
            ch.program(value)

    def stats(self) -> dict:
        return {"irq0_edges": self.edges_total + self.edges_pending,
                "control_words": self.control_words, "read_backs": self.read_backs,
                "modes": [ch.mode for ch in self._channels()],
                "counts": [ch.cr for ch in self._channels()]}


class Port61(Device):
    """System control port B (0x61): bit 0 gate of PIT channel 2, bit 1 speaker data enable,
    bits 2-3 parity/IOCHK check disables (stored), bit 4 the refresh toggle (derived from guest
    time: (now // 15085 ns) & 1), bit 5 channel 2's OUT. Bits 6-7 (parity, IOCHK errors) read 0.
    It shares the PIT it is given; its own state is the bits written."""

    name = "port61"

    def __init__(self, pit: Pit8254):
        self._pit = pit
        self.value = 0                       # bits 0-3 as last written

    def read(self, offset: int, size: int) -> int:
        now = self._pit._now()                 # one reading of the clock for both bits
        t = tick_of(now)
        self._pit._fold(t)
        refresh = P61_REFRESH if (now // REFRESH_NS) & 1 else 0
        out2 = P61_OUT2 if self._pit.ch2.out(t) else 0
        return self.value | refresh | out2

    def write(self, offset: int, size: int, value: int) -> None:
        self.value = value & P61_WRITABLE
        self._pit.set_gate(2, bool(value & P61_GATE2))

    def next_change_after(self, now_ns: int) -> int | None:
        """When a read of the port would next differ: the refresh toggle or channel 2's OUT."""
        toggle = (now_ns // REFRESH_NS + 1) * REFRESH_NS
        out2 = self._pit.next_change_after(2, now_ns)
        return toggle if out2 is None else min(toggle, out2)

    def state(self) -> dict:
        return {"value": self.value}         # the PIT's state is the PIT device's own

    def stats(self) -> dict:
        return {"speaker": bool(self.value & P61_SPEAKER)}
