"""The exit device at port 0xf4 (QEMU's isa-debug-exit convention): an OUT of value v ends the
run, and `vmm run` exits with status (v << 1) | 1, exactly as QEMU does."""

from __future__ import annotations

from .bus import Device


class ExitRequested(Exception):
    def __init__(self, value: int):
        super().__init__(value)
        self.value = value


class ExitDevice(Device):
    name = "exit"

    def write(self, offset: int, size: int, value: int) -> None:
        raise ExitRequested(value)
