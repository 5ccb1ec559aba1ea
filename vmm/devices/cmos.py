"""The CMOS RAM and real-time clock (an MC146818A, as in every PC) at 0x70 (index, offset 0) and
0x71 (data, offset 1). docs/devices.md, "CMOS and RTC", describes it register by register.

- 0x70: bits 0-6 select one of 128 bytes; bit 7 set masks NMI (stored and reported: vmm has no
  NMI source). 0x70 reads return 0xff (it is write-only).
- Date and time are `epoch` (a Unix timestamp: a fixed, documented one for the virtual clock, or
  the recording's start) plus `now()` (guest time in ns), in UTC, with integer arithmetic only.
  The clock registers follow register B's formats (BCD or binary, 24 h or 12 h with the PM bit).
- Update-in-progress (register A bit 7) is a function of guest time: set during the last
  UIP_NS (244 us) before each second boundary, where the registers change. Polling loops end.
- Register B's SET freezes the clock registers for writing; clearing it starts the clock from what
  was written (the second starts then). A write to a clock register without SET moves the clock
  there at once (QEMU's behaviour). Either way the clock's offset from the run's time changes.
- Register C's flags (PF periodic, AF alarm, UF update-ended; IRQF bit 7 when an enabled one is
  set) are cleared when C is read. IRQ 8 is IRQF: `irq_pending()`.
- `next_event_after(now)` gives the next time something the guest waits for happens: the next
  periodic interrupt (PIE), the next update (UIE or AIE), or the next UIP/flag change a polling
  loop is waiting for. Register it with the input source's deadline sources.

Idle points (`idle`, the input source's idle()): a read of register A that returns the same as
the previous CMOS access (a read of A), or a read of C that finds no flag after one that found
none, is a polling loop finding nothing new.
vmm then makes it an idle point, with the next change of that register as a scheduled event, so
the virtual clock jumps there instead of the guest spinning through a second of quanta.
"""

from __future__ import annotations

from .bus import Device

INDEX, DATA = 0, 1
NMI_DISABLE = 0x80
CMOS_SIZE = 128

# --- the clock registers --------------------------------------------------------------------
R_SECONDS, R_SECONDS_ALARM, R_MINUTES, R_MINUTES_ALARM = 0x00, 0x01, 0x02, 0x03
R_HOURS, R_HOURS_ALARM, R_WEEKDAY, R_DAY, R_MONTH, R_YEAR = 0x04, 0x05, 0x06, 0x07, 0x08, 0x09
R_A, R_B, R_C, R_D = 0x0A, 0x0B, 0x0C, 0x0D
R_CENTURY = 0x32                       # the IBM PC/AT century byte (ACPI FADT's default)
ALARM_DONT_CARE = 0xC0                 # an alarm byte of 0xc0-0xff matches every value

A_UIP = 0x80                           # update in progress (read-only)
A_DIVIDER = 0x70                       # DV2-0: 010 is the 32.768 kHz time base (stored only)
A_RATE = 0x0F                          # RS3-0: the periodic rate
B_SET, B_PIE, B_AIE, B_UIE = 0x80, 0x40, 0x20, 0x10
B_SQWE, B_BINARY, B_24H, B_DSE = 0x08, 0x04, 0x02, 0x01
C_IRQF, C_PF, C_AF, C_UF = 0x80, 0x40, 0x20, 0x10
D_VRT = 0x80                           # valid RAM and time: the battery is fine
HOUR_PM = 0x80
DEFAULT_A = 0x26                       # 32.768 kHz time base, rate 6 (1024 Hz)
DEFAULT_B = B_24H                      # BCD, 24 h, no interrupts

NS = 1_000_000_000
UIP_NS = 244_000                       # UIP is set this long before each update
BASE_HZ = 32768
# the periodic interrupt's period, in 1/32768 s, by rate 1-15 (rates 1 and 2 are the datasheet's
# exceptions: 256 Hz and 128 Hz; from 3 on, 32768 >> (rate - 1) Hz)
PERIOD_UNITS = {1: 128, 2: 256, **{rate: 1 << (rate - 1) for rate in range(3, 16)}}

# --- the configuration bytes (as QEMU's pc_cmos_init and SeaBIOS fill them) -----------------
R_SHUTDOWN, R_FLOPPY, R_DISK, R_EQUIPMENT = 0x0F, 0x10, 0x12, 0x14
R_BASE_LO, R_BASE_HI, R_EXT_LO, R_EXT_HI = 0x15, 0x16, 0x17, 0x18
R_EXT2_LO, R_EXT2_HI, R_HIGH_LO, R_HIGH_HI = 0x30, 0x31, 0x34, 0x35
R_ABOVE4G = 0x5B                       # 0x5b-0x5d: RAM above 4 GiB in 64 KiB units (none here)
R_CHECKSUM_HI, R_CHECKSUM_LO = 0x2E, 0x2F   # the sum of bytes 0x10-0x2d
EQUIPMENT = 0x02                       # a maths coprocessor, EGA/VGA display, no floppy, no mouse
BASE_MEMORY_KIB = 640
KiB, MiB = 1 << 10, 1 << 20

VIRTUAL_EPOCH = 946_684_800            # 2000-01-01 00:00:00 UTC: the virtual clock's date
MAX_EPOCH = 253_402_300_799            # 9999-12-31 23:59:59 UTC
_UNIX_ORDINAL = 719_163                # date(1970, 1, 1).toordinal(); datetime is imported
_MIN_SECONDS = (1 - _UNIX_ORDINAL) * 86400   # where used: off `vmm run`'s start-up (p3 board)


def _fields(seconds: int) -> list[int]:
    """[second, minute, hour, weekday (1 = Sunday), day, month, year % 100, century] of a Unix
    time, UTC (clamped to years 1-9999)."""
    from datetime import date
    seconds = min(max(seconds, _MIN_SECONDS), MAX_EPOCH)
    days, sod = divmod(seconds, 86400)
    d = date.fromordinal(_UNIX_ORDINAL + days)
    return [sod % 60, sod // 60 % 60, sod // 3600, d.isoweekday() % 7 + 1, d.day, d.month,
            d.year % 100, d.year // 100]


def _seconds(fields: list[int]) -> int | None:
    """The Unix time of clock fields, or None if they are not a valid date and time."""
    sec, minute, hour, _, day, month, year, century = fields
    if not (0 <= sec < 60 and 0 <= minute < 60 and 0 <= hour < 24 and 0 <= year < 100):
        return None
    from datetime import date
    try:
        d = date(century * 100 + year, month, day)
    except (ValueError, OverflowError):
        return None
    return (d.toordinal() - _UNIX_ORDINAL) * 86400 + hour * 3600 + minute * 60 + sec


# register -> index in the fields list
_CLOCK_FIELDS = {R_SECONDS: 0, R_MINUTES: 1, R_HOURS: 2, R_WEEKDAY: 3, R_DAY: 4, R_MONTH: 5,
                 R_YEAR: 6, R_CENTURY: 7}


def _no_idle() -> None:
    pass


def memory_bytes(mem_size: int) -> dict[int, int]:
    """The CMOS bytes that describe `mem_size` bytes of RAM, as QEMU and SeaBIOS set them."""
    ext_kib = min(max(mem_size // KiB - 1024, 0), 0xFFFF)          # above 1 MiB, in KiB
    high = min(max((mem_size - 16 * MiB) // (64 * KiB), 0), 0xFFFF)  # above 16 MiB, 64 KiB
    return {R_BASE_LO: BASE_MEMORY_KIB & 0xFF, R_BASE_HI: BASE_MEMORY_KIB >> 8,
            R_EXT_LO: ext_kib & 0xFF, R_EXT_HI: ext_kib >> 8,
            R_EXT2_LO: ext_kib & 0xFF, R_EXT2_HI: ext_kib >> 8,
            R_HIGH_LO: high & 0xFF, R_HIGH_HI: high >> 8}


class CMOS(Device):
    """`now()` is guest time in ns (the run's clock); `epoch` the Unix time at now() == 0;
    `mem_size` the RAM size in bytes; `idle` the input source's idle() (None: no idle points)."""

    name = "cmos"

    def __init__(self, now, *, epoch: int = VIRTUAL_EPOCH, mem_size: int = 128 * MiB,
                 idle=None):
        if not isinstance(epoch, int) or not 0 <= epoch <= MAX_EPOCH:
            raise ValueError(f"CMOS epoch {epoch!r} is not a Unix time between 1970 and 9999")
        if not isinstance(mem_size, int) or mem_size < 0:
            raise ValueError(f"CMOS memory size {mem_size!r} is not a byte count")
        self._now = now
        self._idle = idle if idle is not None else _no_idle
        self.epoch = epoch
        self.index = 0
        self.nmi_disabled = False
        self.ram = bytearray(CMOS_SIZE)
        self.ram[R_A] = DEFAULT_A
        self.ram[R_B] = DEFAULT_B
        self.ram[R_D] = D_VRT
        self.ram[R_EQUIPMENT] = EQUIPMENT
        for reg, value in memory_bytes(mem_size).items():
            self.ram[reg] = value
        total = sum(self.ram[0x10:0x2E])
        self.ram[R_CHECKSUM_HI], self.ram[R_CHECKSUM_LO] = total >> 8, total & 0xFF
        self.offset_ns = 0                 # clock time (ns after epoch) = now() + offset_ns
        self.synced_ns = 0                 # clock time the flags were last brought up to
        self.flags = 0                     # register C's PF, AF, UF
        self.frozen: list[int] = []        # SET: the clock fields being written
        self.wait_at: int | None = None    # a polling loop's next change (guest ns), one-shot
        self.poll_reg = -1                 # the last access was a read of this register ...
        self.poll_value = -1               # ... which returned this
        # stats
        self.reads = 0
        self.writes = 0
        self.nmi_mask_writes = 0           # index writes with bit 7 set
        self.periodic = 0                  # periodic-interrupt periods that ended
        self.updates = 0                   # update cycles (seconds) that ended
        self.alarms = 0                    # updates that matched the alarm
        self.time_sets = 0                 # the guest set the clock
        self.bad_time_sets = 0             # ... to something that is no date: ignored

    # --- time -----------------------------------------------------------------------------
    @property
    def set_mode(self) -> bool:
        return bool(self.ram[R_B] & B_SET)

    def _clock_ns(self, now: int) -> int:
        return now + self.offset_ns

    def _rate_units(self) -> int | None:
        return PERIOD_UNITS.get(self.ram[R_A] & A_RATE)

    def _sync(self, now: int) -> None:
        """Bring register C's flags up to `now`: periods and updates that ended since the last
        sync."""
        t = self._clock_ns(now)
        last = self.synced_ns
        if t <= last:
            self.synced_ns = t
            return
        units = self._rate_units()
        if units is not None:
            ticks = t * BASE_HZ // (units * NS) - last * BASE_HZ // (units * NS)
            if ticks > 0:
                self.flags |= C_PF
                self.periodic += ticks
        if not self.set_mode:
            first, end = last // NS + 1, t // NS     # seconds whose update happened
            if end >= first:
                self.flags |= C_UF
                self.updates += end - first + 1
                if not self.flags & C_AF:
                    for second in range(max(first, end - 86399), end + 1):
                        if self._alarm_matches(self.epoch + second):
                            self.flags |= C_AF
                            self.alarms += 1
                            break
        self.synced_ns = t

    def _alarm_matches(self, seconds: int) -> bool:
        sod = seconds % 86400
        current = {R_SECONDS_ALARM: self._encode(R_SECONDS, sod % 60),
                   R_MINUTES_ALARM: self._encode(R_MINUTES, sod // 60 % 60),
                   R_HOURS_ALARM: self._encode(R_HOURS, sod // 3600)}
        return all(self.ram[reg] >= ALARM_DONT_CARE or self.ram[reg] == value
                   for reg, value in current.items())

    def _current_fields(self, now: int) -> list[int]:
        if self.frozen:
            return list(self.frozen)
        return _fields(self.epoch + self._clock_ns(now) // NS)

    def _uip(self, now: int) -> bool:
        return not self.set_mode and self._clock_ns(now) % NS >= NS - UIP_NS

    def _set_clock(self, now: int, fields: list[int], keep_fraction: bool) -> None:
        seconds = _seconds(fields)
        self.time_sets += 1
        if seconds is None:
            self.bad_time_sets += 1
            return
        fraction = self._clock_ns(now) % NS if keep_fraction else 0
        self.offset_ns = (seconds - self.epoch) * NS + fraction - now
        self.synced_ns = self._clock_ns(now)

    # --- encodings --------------------------------------------------------------------------
    def _encode(self, reg: int, value: int) -> int:
        binary = self.ram[R_B] & B_BINARY
        pm = 0
        if reg == R_HOURS and not self.ram[R_B] & B_24H:
            pm = HOUR_PM if value >= 12 else 0
            value = value % 12 or 12
        if not binary:
            value = (value // 10) << 4 | value % 10
        return (value | pm) & 0xFF

    def _decode(self, reg: int, raw: int) -> int:
        pm = False
        if reg == R_HOURS and not self.ram[R_B] & B_24H:
            pm, raw = bool(raw & HOUR_PM), raw & ~HOUR_PM
        value = raw if self.ram[R_B] & B_BINARY else (raw >> 4) * 10 + (raw & 0x0F)
        if reg == R_HOURS and not self.ram[R_B] & B_24H:
            value = value % 12 + (12 if pm else 0)
        return value

    # --- what the board and the PIC ask -----------------------------------------------------
    def _irqf(self) -> bool:
        enabled = (C_PF if self.ram[R_B] & B_PIE else 0) | (C_AF if self.ram[R_B] & B_AIE else 0) \
            | (C_UF if self.ram[R_B] & B_UIE else 0)
        return bool(self.flags & enabled)

    def irq_pending(self) -> bool:
        """IRQ 8: an enabled flag is set in register C (until C is read)."""
        self._sync(self._now())
        return self._irqf()

    def next_event_after(self, now: int) -> int | None:
        """The next guest time after `now` at which IRQ 8 may rise or a polling loop's register
        changes; None if nothing is coming."""
        self._sync(now)
        times = []
        if self.wait_at is not None:
            if self.wait_at > now:
                times.append(self.wait_at)
            else:
                self.wait_at = None
        if not self._irqf():
            b = self.ram[R_B]
            if b & B_PIE and self._rate_units() is not None:
                times.append(self._next_period(now))
            if b & (B_UIE | B_AIE) and not self.set_mode:
                times.append(self._next_update(now))
        return min(times) if times else None

    def _next_period(self, now: int) -> int:
        units = self._rate_units()
        k = self._clock_ns(now) * BASE_HZ // (units * NS) + 1
        return -(-k * units * NS // BASE_HZ) - self.offset_ns     # ceil, back in guest time

    def _next_update(self, now: int) -> int:
        return (self._clock_ns(now) // NS + 1) * NS - self.offset_ns

    def _next_change(self, reg: int, now: int) -> int | None:
        """When register A's UIP or register C's flags next change (for a polling loop)."""
        if reg == R_A:
            if self.set_mode:
                return None
            boundary = self._next_update(now)
            return boundary if self._uip(now) else (
                boundary - UIP_NS if boundary - UIP_NS > now else boundary + NS - UIP_NS)
        times = []
        if self._rate_units() is not None:
            times.append(self._next_period(now))
        if not self.set_mode:
            times.append(self._next_update(now))
        return min(times) if times else None

    # --- port I/O ---------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset != DATA:
            return 0xFF                    # the index port is write-only
        self.reads += 1
        reg = self.index
        value = self._read_register(reg)
        if reg == self.poll_reg and value == self.poll_value and (
                reg == R_A or (reg == R_C and value == 0)):
            self.wait_at = self._next_change(reg, self._now())   # a polling loop found
            self._idle()                                            # nothing new
            value = self._read_register(reg)
        self.poll_reg, self.poll_value = reg, value
        return value

    def _read_register(self, reg: int) -> int:
        now = self._now()
        self._sync(now)
        if reg in _CLOCK_FIELDS:
            return self._encode(reg, self._current_fields(now)[_CLOCK_FIELDS[reg]])
        if reg == R_A:
            return self.ram[R_A] | (A_UIP if self._uip(now) else 0)
        if reg == R_C:
            value = self.flags | (C_IRQF if self._irqf() else 0)
            self.flags = 0
            return value
        if reg == R_D:
            return D_VRT
        return self.ram[reg]

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == INDEX:
            self.index = value & 0x7F
            self.nmi_disabled = bool(value & NMI_DISABLE)
            if self.nmi_disabled:
                self.nmi_mask_writes += 1
            return
        if offset != DATA:
            return
        self.writes += 1
        self.poll_reg = -1
        reg = self.index
        now = self._now()
        self._sync(now)
        if reg in _CLOCK_FIELDS:
            fields = self._current_fields(now)
            fields[_CLOCK_FIELDS[reg]] = self._decode(reg, value)
            if self.frozen:
                self.frozen = fields
            elif reg != R_WEEKDAY:         # the weekday follows from the date
                self._set_clock(now, fields, keep_fraction=True)
        elif reg == R_A:
            self.ram[R_A] = value & ~A_UIP
        elif reg == R_B:
            self._write_b(now, value)
        elif reg in (R_C, R_D):
            pass                           # read-only
        else:
            self.ram[reg] = value

    def _write_b(self, now: int, value: int) -> None:
        was_set = self.set_mode
        if value & B_SET:
            value &= ~B_UIE                # SET clears UIE (the datasheet's rule)
            if not was_set:
                self.frozen = self._current_fields(now)
        self.ram[R_B] = value
        if was_set and not value & B_SET:
            fields, self.frozen = self.frozen, []
            self._set_clock(now, fields, keep_fraction=False)
            self.synced_ns = self._clock_ns(now)

    # --- reports ----------------------------------------------------------------------------
    def time(self) -> int:
        """The clock's Unix time now (whole seconds)."""
        fields = self._current_fields(self._now())
        return _seconds(fields) or 0

    def stats(self) -> dict:
        return {"reads": self.reads, "writes": self.writes, "nmi_disabled": self.nmi_disabled,
                "nmi_mask_writes": self.nmi_mask_writes, "periodic": self.periodic,
                "updates": self.updates, "alarms": self.alarms, "time_sets": self.time_sets,
                "bad_time_sets": self.bad_time_sets}
