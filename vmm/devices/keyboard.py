"""The keyboard: data at offset 0 (port 0x44), status at offset 1 (port 0x45).

Protocol: the VMM takes input one byte at a time. When the guest reads the status port and finds
it clear, the next input byte (if any) is latched into the data port and status reads 1. The guest
acks by writing 0 to the status port. A new byte is latched only at a *read* of the status port
that finds it clear, never at the moment of the ack, because real guests ack first and read the
data port afterwards. Reading the data port does not clear anything.

Interrupts (the p3 board's optional PIC): "a key is waiting" is the level of IRQ 1,
`irq_pending()`, the latched bit. At an interrupt point the machine calls `poll()`, which latches
the next input byte, if there is one, into a clear data port without an idle point, so that a key
raises IRQ 1 without a status read. A guest that never initialises the PIC is never polled.
"""

from __future__ import annotations

from .bus import Device

DATA, STATUS = 0, 1


class Keyboard(Device):
    name = "keyboard"

    def __init__(self, inputs):
        self._inputs = inputs
        self.data = 0
        self.latched = False
        self.keys = 0
        self.acks = 0                                # latched bytes the guest acknowledged

    def read(self, offset: int, size: int) -> int:
        if offset == DATA:
            return self.data
        if not self.latched:
            byte = self._inputs.key(self.name)
            if byte is None:
                self._inputs.idle()                  # nothing new: an idle point
                byte = self._inputs.key(self.name)   # the clock may have brought a key
            if byte is not None:
                self.data, self.latched = byte, True
                self.keys += 1
        return 1 if self.latched else 0

    def irq_pending(self) -> bool:
        """IRQ 1: a byte is latched (waiting for the guest's ack)."""
        return self.latched

    def poll(self) -> bool:
        """At an interrupt point: latch the next input byte into a clear data port, as a status
        read would, but without an idle point. Returns irq_pending()."""
        if not self.latched:
            byte = self._inputs.key(self.name)
            if byte is not None:
                self.data, self.latched = byte, True
                self.keys += 1
        return self.latched

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == STATUS and value & 1 == 0:
            if self.latched:
                self.acks += 1
            self.latched = False                     # ack

    def stats(self) -> dict:
        return {"keys": self.keys, "acks": self.acks}
