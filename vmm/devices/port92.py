"""System control port A at 0x92 (the PS/2 "fast A20 and reset" port).

- bit 1: the fast A20 gate (stored; `a20`). On a PC the A20 line is this OR the 8042 output
  port's bit 1 (vmm.devices.ps2.PS2Controller.a20).
- bit 0: fast reset. A write that takes it from 0 to 1 resets the machine, which ends the run
  (vmm.devices.reset, exit status 52). Writing 1 when it already reads 1 does nothing.
- Reads return the bits last written (bit 0 included: a reset never returns here).
"""

from __future__ import annotations

from .bus import Device
from .reset import request_reset

FAST_RESET = 0x01
FAST_A20 = 0x02


class SystemControlA(Device):
    name = "port92"

    def __init__(self):
        self.value = 0
        self.writes = 0

    @property
    def a20(self) -> bool:
        return bool(self.value & FAST_A20)

    def read(self, offset: int, size: int) -> int:
        return self.value

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        self.writes += 1
        rising = value & FAST_RESET and not self.value & FAST_RESET
        self.value = value
        if rising:
            request_reset(f"port 0x92 written {value:#04x}: fast reset")

    def stats(self) -> dict:
        return {"writes": self.writes, "a20": self.a20}
