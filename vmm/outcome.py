"""How a run ends: `StopRun` is raised from anywhere in the run (a device, the input source, a
signal check) and becomes the `RunEnd` that `Machine.run()` returns."""

from __future__ import annotations

from .record_type import Record, factory

from .cpu.backend import CpuState
from .errors import EXIT_CODES


class StopRun(Exception):
    """End the run now, with `reason` (a key of EXIT_CODES) and a one-line message."""

    def __init__(self, reason: str, message: str = "", exit_code: int | None = None):
        super().__init__(message or reason)
        self.reason = reason
        self.message = message or reason
        self.exit_code = EXIT_CODES[reason] if exit_code is None else exit_code


class RunEnd(Record):
    reason: str
    message: str
    exit_code: int
    cpu: CpuState | None = None
    stats: dict = factory(dict)
    observation: int = 0         # the observation counter when the run ended
    at_read: bool = False        # ended during read number `observation`, before answering it
    icount: int | None = None    # ended at the instruction point with this count (icount mode)
    screen: list[str] | None = None  # the text screen's 25 rows at the end (boards with one)

    @property
    def is_error(self) -> bool:
        return self.reason not in ("halt", "idle", "quit", "exit-device", "script-end",
                                   "session-end", "shutdown")
