"""COM1 (ports 0x3f8-0x3ff): the subset of a 16550 UART that polled guests use.

Registers by offset (DLAB = LCR bit 7 clear): 0 THR (write: transmit) / RBR (read: receive),
1 IER, 2 IIR (read) / FCR (write), 3 LCR, 4 MCR, 5 LSR, 6 MSR, 7 SCR. With DLAB set, offsets 0
and 1 are the divisor latch. No interrupts are ever raised (IIR reads 0x01, "none pending").

- THR: the byte goes to a line-buffered output (like the console; '\\r' is dropped).
- RBR: returns the next input byte. With no byte waiting, the read *waits* for one: simple
  monitors read 0x3f8 with a 16-bit IN and expect the key in AL and 0 in AH (IER, which reads 0
  unless the guest wrote it, is the byte above RBR).
- LSR: bit 0 data ready, bits 5 and 6 transmitter empty (always: output never blocks).
"""

from __future__ import annotations

from .bus import Device
from .console import LineOutput

RBR_THR, IER, IIR_FCR, LCR, MCR, LSR, MSR, SCR = range(8)
LCR_DLAB = 0x80
LSR_DR, LSR_THRE, LSR_TEMT = 0x01, 0x20, 0x40
IIR_NO_INTERRUPT = 0x01


class Serial16550(Device):
    name = "com1"

    def __init__(self, inputs, sink):
        self._inputs = inputs
        self.tx = LineOutput(self.name, sink, nonprintable="drop", drop_cr=True)
        self._rx: int | None = None
        self.regs = {IER: 0, LCR: 0x03, MCR: 0, SCR: 0}
        self.divisor = 12      # 9600 baud; only stored, never used
        self.received = 0

    def _peek(self) -> int | None:
        """LSR's view: a byte if one is waiting; with none, an idle point and one more look."""
        if self._rx is None:
            self._rx = self._inputs.key(self.name)
            if self._rx is None:
                self._inputs.idle()
                self._rx = self._inputs.key(self.name)
        return self._rx

    def read(self, offset: int, size: int) -> int:
        dlab = self.regs[LCR] & LCR_DLAB
        if offset == RBR_THR:
            if dlab:
                return self.divisor & 0xFF
            byte = self._rx if self._rx is not None else self._inputs.wait_key(self.name)
            self._rx = None
            self.received += 1
            return byte | (self.regs[IER] << 8 if size > 1 else 0)
        if offset == IER:
            return (self.divisor >> 8) & 0xFF if dlab else self.regs[IER]
        if offset == IIR_FCR:
            return IIR_NO_INTERRUPT
        if offset == LSR:
            ready = LSR_DR if self._peek() is not None else 0
            return ready | LSR_THRE | LSR_TEMT
        if offset == MSR:
            return 0xB0     # CTS, DSR, DCD: a terminal is attached
        return self.regs.get(offset, 0)

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        dlab = self.regs[LCR] & LCR_DLAB
        if offset == RBR_THR:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
            else:
                self.tx.put(value)
        elif offset == IER and dlab:
            self.divisor = (self.divisor & 0x00FF) | (value << 8)
        elif offset in self.regs:
            self.regs[offset] = value & 0x0F if offset == IER else value

    def write_bytes(self, offset: int, data: bytes) -> None:
        if offset == RBR_THR and not self.regs[LCR] & LCR_DLAB:
            self.tx.put_bytes(data)          # transmit: the common case, in bulk
        else:
            super().write_bytes(offset, data)

    def finish(self) -> None:
        self.tx.finish()

    def stats(self) -> dict:
        return {"received": self.received, **self.tx.stats()}
