"""A guest's request to reset the machine (the 8042's reset line, port 0x92's fast reset).

vmm cannot reboot a guest: like QEMU with -no-reboot, a reset request ends the run, with reason
"reset" (exit status 52, vmm.errors.EXIT_CODES) and a message naming how the guest asked.
"""

from __future__ import annotations

from ..outcome import StopRun

RESET_REASON = "reset"


def request_reset(how: str) -> None:
    """End the run: the guest asked for a reset (`how` names the port and value)."""
    raise StopRun(RESET_REASON, f"the guest reset the machine ({how})")
