"""The ports a guest writes to end the run.

- 0xf4, `ExitDevice` (p3 board): QEMU's isa-debug-exit convention. An OUT of value v ends the
  run, and `vmm run` exits with status (v << 1) | 1, exactly as QEMU does (the machine turns
  `ExitRequested` into the "exit-device" end).
- `DebugExitPort` (pc board, 0xf4 and 0x501-0x502): the same device raising StopRun itself.
  0x501 is isa-debug-exit's default I/O base in QEMU (`-device isa-debug-exit`, iosize 2);
  Pintos' shutdown writes 0x31 there, so QEMU exits with 0x63. Any write to either port ends
  the run ("exit-device", status (v << 1) | 1, low 8 bits); reads return 0.
- `AcpiShutdown` (pc board, 0x604-0x605 and 0xb004-0xb005): the PM1a control register of the
  chipset's ACPI power management (QEMU's q35/piix4 with SeaBIOS at 0x604; Bochs and QEMU
  before 2.0 at 0xb004). Writing SLP_EN (bit 13) with SLP_TYP (bits 10-12) = 0, i.e. the usual
  `outw(0x604, 0x2000)`, is a soft power-off: the run ends ("shutdown", exit status 0). Other
  sleep types (S3 suspend) are not modelled: the write is stored like any other. The register
  reads back what was written, without SLP_EN (write-only), as in QEMU.
- `BochsShutdown` (pc board, 0x8900): Bochs' shutdown port. The guest writes the string
  "Shutdown" one byte at a time; when its last byte arrives the run ends ("shutdown", 0). A
  byte that does not continue the string resets the match (an 'S' starts it again).
- `PostCodePort` (pc board, 0x80): the POST diagnostic port, also used as an I/O delay
  (`outb(0x80, al)`). Writes are accepted, counted and the last code kept (stats); reads return
  all ones, as on QEMU (whose port 0x80 ignores writes and reads 0xff).
"""

from __future__ import annotations

from ..outcome import StopRun
from .bus import Device

PORT_EXIT = 0xF4
PORT_DEBUG_EXIT = 0x501          # QEMU isa-debug-exit's default iobase (iosize 2)
DEBUG_EXIT_PORTS = 2
PORT_ACPI_PM1A_CNT = 0x604       # QEMU (SeaBIOS' PM base 0x600)
PORT_ACPI_PM1A_CNT_OLD = 0xB004  # Bochs, QEMU < 2.0 (PM base 0xb000)
ACPI_PORTS = 2
SLP_EN = 0x2000
SLP_TYP_SHIFT, SLP_TYP_MASK = 10, 0x7
SLP_TYP_SOFT_OFF = 0             # QEMU's DSDT: \_S5 = 0
PORT_BOCHS_SHUTDOWN = 0x8900
SHUTDOWN_STRING = b"Shutdown"
PORT_POST = 0x80


class ExitRequested(Exception):
    def __init__(self, value: int):
        super().__init__(value)
        self.value = value


class ExitDevice(Device):
    name = "exit"

    def write(self, offset: int, size: int, value: int) -> None:
        raise ExitRequested(value)


def debug_exit_status(value: int) -> int:
    """The exit status QEMU's isa-debug-exit gives for a written value (as the shell sees it)."""
    return ((value << 1) | 1) & 0xFF


class DebugExitPort(Device):
    """isa-debug-exit at `port` (for messages): any write ends the run with (v << 1) | 1."""

    name = "debug-exit"

    def __init__(self, port: int = PORT_DEBUG_EXIT):
        self.port = port

    def write(self, offset: int, size: int, value: int) -> None:
        code = debug_exit_status(value)
        raise StopRun("exit-device", f"guest wrote {value:#x} to the exit device (port "
                                     f"{self.port + offset:#x}): exit status {code}",
                      exit_code=code)


class AcpiShutdown(Device):
    """An ACPI PM1a control register (16 bits) at `port`: SLP_EN with SLP_TYP 0 powers off."""

    name = "acpi-pm"

    def __init__(self, port: int = PORT_ACPI_PM1A_CNT):
        self.port = port
        self.cnt = 0

    def read(self, offset: int, size: int) -> int:
        return (self.cnt >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        mask = (((1 << (8 * size)) - 1) << (8 * offset)) & 0xFFFF
        value = ((value << (8 * offset)) & mask) | (self.cnt & ~mask)
        self.cnt = value & ~SLP_EN
        if value & SLP_EN and (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK == SLP_TYP_SOFT_OFF:
            raise StopRun("shutdown", f"guest powered off through ACPI (wrote {value:#06x} to "
                                      f"port {self.port:#x})")


class BochsShutdown(Device):
    """Bochs' port 0x8900: the string "Shutdown", written byte by byte, ends the run."""

    name = "bochs-shutdown"

    def __init__(self):
        self.matched = 0             # bytes of SHUTDOWN_STRING seen so far, in order

    def write(self, offset: int, size: int, value: int) -> None:
        byte = value & 0xFF
        if byte == SHUTDOWN_STRING[self.matched]:
            self.matched += 1
        else:
            self.matched = 1 if byte == SHUTDOWN_STRING[0] else 0
        if self.matched == len(SHUTDOWN_STRING):
            self.matched = 0
            raise StopRun("shutdown", f"guest wrote \"Shutdown\" to port "
                                      f"{PORT_BOCHS_SHUTDOWN:#x} (Bochs power-off)")


class PostCodePort(Device):
    """Port 0x80: POST codes and I/O delays. Writes are counted; reads return all ones."""

    name = "post"

    def __init__(self):
        self.last_code: int | None = None
        self.writes = 0

    def read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        self.last_code = value & 0xFF
        self.writes += 1

    def write_bytes(self, offset: int, data: bytes) -> None:
        if data:
            self.last_code = data[-1]
            self.writes += len(data)

    def stats(self) -> dict:
        return {"writes": self.writes, "last_code": self.last_code}
