"""A 16550A UART (COM1 at 0x3f8-0x3ff, COM2 at 0x2f8-0x2ff), as a state machine.

Registers by offset (DLAB = LCR bit 7):

    0  RBR (read) / THR (write); with DLAB set: DLL, the divisor latch's low byte
    1  IER (4 bits);             with DLAB set: DLM, the divisor latch's high byte
    2  IIR (read) / FCR (write)
    3  LCR    4 MCR (5 bits)    5 LSR    6 MSR    7 SCR

What vmm models, and where it departs from a wire (all of it deterministic, no clock):

- Transmit never blocks: a byte written to THR goes at once to a line-buffered output (like
  the console; '\\r' is dropped). So the TX FIFO is always empty, LSR.THRE and LSR.TEMT always
  read 1, and FCR's "clear TX FIFO" has nothing to clear.
- Receive: bytes come only from the input source (`inputs.key(name)`), one at a time and only
  when the receiver is empty, at a read of LSR (with none waiting, that read is an *idle
  point*), or at `poll_rx()` (no idle point; for the interrupt controller of the next board
  revision). The input source holds bytes back until the UART has room, so input never
  overruns; an overrun (LSR.OE) happens only in loopback.
- The RX FIFO (16 bytes) is active when FCR bit 0 is set; without it the receiver holds one
  byte (16450 mode). On overrun the FIFO keeps its bytes and drops the new one; the 16450
  holding register is overwritten.
- RBR with nothing received: with `waiting_rbr=True` (the p3 board; the default) the read
  *waits* for a key (`inputs.wait_key(name)`): simple monitors read 0x3f8 with a 16-bit IN and
  expect the key in AL and IER in AH. With `waiting_rbr=False` (the pc board) it returns what a
  16550 returns: the last byte received (0 before any), with LSR.DR clear.
- MCR bit 4 (LOOP): THR bytes come back on RBR instead of the output, the receiver is cut off
  from the input source, and MSR's lines follow MCR: CTS = RTS, DSR = DTR, RI = OUT1,
  DCD = OUT2. Outside loopback a terminal is attached: CTS, DSR and DCD are on (MSR 0xb0).
  MSR's delta bits record changes of those lines and clear when MSR is read.
- Interrupts, in the 16550's priority order, as IIR reports them (bits 6-7 = 0xc0 with FIFOs):
  line status (0x06: OE, if IER bit 2; cleared by reading LSR) > received data (0x04: the RX
  FIFO reached the FCR trigger level, or DR in 16450 mode; 0x0c "character timeout": fewer
  bytes than the trigger level - the timeout is taken as already elapsed, there is no clock)
  if IER bit 0 > THR empty (0x02, if IER bit 1: set when THR empties, i.e. at once after each
  THR write and when IER bit 1 is enabled; cleared by reading IIR while it is the source, or
  by writing THR) > modem status (0x00: a delta bit, if IER bit 3; cleared by reading MSR).
  `irq_pending()` is the level of the IRQ line a PC sees: an interrupt is pending and MCR.OUT2
  is set (the PC gates the UART's interrupt with OUT2; in loopback the OUT2 pin is inactive).
- The divisor latch, LCR and SCR are stored only (no baud rate exists).
"""

from __future__ import annotations

from .bus import Device
from .console import LineOutput

RBR_THR, IER, IIR_FCR, LCR, MCR, LSR, MSR, SCR = range(8)
FIFO_SIZE = 16

LCR_DLAB = 0x80
IER_RDA, IER_THRE, IER_RLS, IER_MS = 0x01, 0x02, 0x04, 0x08
IER_MASK = 0x0F
IIR_NO_INTERRUPT = 0x01
IIR_RLS, IIR_RDA, IIR_TIMEOUT, IIR_THRE, IIR_MS = 0x06, 0x04, 0x0C, 0x02, 0x00
IIR_FIFO_ENABLED = 0xC0
FCR_ENABLE, FCR_CLEAR_RX, FCR_CLEAR_TX, FCR_DMA = 0x01, 0x02, 0x04, 0x08
FCR_TRIGGER = {0: 1, 1: 4, 2: 8, 3: 14}           # FCR bits 6-7 -> RX trigger level
MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 0x01, 0x02, 0x04, 0x08, 0x10
MCR_MASK = 0x1F
LSR_DR, LSR_OE, LSR_THRE, LSR_TEMT = 0x01, 0x02, 0x20, 0x40
MSR_DCTS, MSR_DDSR, MSR_TERI, MSR_DDCD = 0x01, 0x02, 0x04, 0x08
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80
MSR_TERMINAL = MSR_CTS | MSR_DSR | MSR_DCD      # the lines of the attached terminal: 0xb0

RESET_LCR = 0x03          # 8N1
RESET_DIVISOR = 12        # 9600 baud


def _loop_lines(mcr: int) -> int:
    """MSR's line bits in loopback: CTS = RTS, DSR = DTR, RI = OUT1, DCD = OUT2."""
    return ((MSR_CTS if mcr & MCR_RTS else 0) | (MSR_DSR if mcr & MCR_DTR else 0)
            | (MSR_RI if mcr & MCR_OUT1 else 0) | (MSR_DCD if mcr & MCR_OUT2 else 0))


class Serial16550(Device):
    name = "com1"

    def __init__(self, inputs, sink, *, name: str = "com1", waiting_rbr: bool = True,
                 receives: bool = True):
        """`name` names the output lines and the input source's device ("com1", "com2");
        `waiting_rbr`: an RBR read with nothing received waits for a key (p3) or returns the
        last byte (pc); `receives=False`: no input reaches this port (the input source is never
        asked for a key; LSR polling is still an idle point)."""
        self.name = name
        self._inputs = inputs
        self._waiting_rbr = waiting_rbr
        self.sent_since_lsr = False     # pc mode: a byte went out since the last LSR read
        self._receives = receives
        self.tx = LineOutput(name, sink, nonprintable="drop", drop_cr=True)
        self.rx_fifo: list[int] = []
        self.last_rx = 0                  # what RBR returns with nothing received (pc mode)
        self.ier = 0
        self.lcr = RESET_LCR
        self.mcr = 0
        self.scr = 0
        self.fcr = 0                      # the FIFO control bits kept: enable, DMA, trigger
        self.divisor = RESET_DIVISOR      # only stored, never used
        self.overrun = False              # LSR.OE, until LSR is read
        self.thr_empty_pending = False    # the THR-empty interrupt condition
        self.msr_lines = MSR_TERMINAL
        self.msr_deltas = 0
        self.received = 0
        self.overruns = 0
        self.looped = 0

    # --- receive side -----------------------------------------------------------------------
    @property
    def loopback(self) -> bool:
        return bool(self.mcr & MCR_LOOP)

    @property
    def fifo_enabled(self) -> bool:
        return bool(self.fcr & FCR_ENABLE)

    def _room(self) -> bool:
        return len(self.rx_fifo) < (FIFO_SIZE if self.fifo_enabled else 1)

    def _receive(self, byte: int) -> None:
        """A byte completed in the receive shift register."""
        if self._room():
            self.rx_fifo.append(byte)
            return
        self.overrun = True
        self.overruns += 1
        if not self.fifo_enabled:
            self.rx_fifo[0] = byte        # 16450: the holding register is overwritten

    def poll_rx(self) -> bool:
        """Take one byte from the input source if the receiver is empty and connected (not in
        loopback). No idle point. True if a byte arrived."""
        if self.rx_fifo or self.loopback or not self._receives:
            return False
        byte = self._inputs.key(self.name)
        if byte is None:
            return False
        self._receive(byte)
        return True

    def poll_line(self) -> bool:
        """At an interrupt injection point: take a byte (poll_rx) only if the guest enabled
        the received-data interrupt (IER bit 0), the one way such a byte changes the line. A
        byte that could not raise it stays in the input stream, which COM1 shares with the
        keyboard: a kernel that echoes PS/2 keys from IRQ 1 gets every key."""
        return bool(self.ier & IER_RDA) and self.poll_rx()

    def _lsr_poll(self) -> None:
        """LSR's view: with nothing received, ask once, an idle point, and one more look.

        On the pc board (a non-waiting RBR) the read right after the guest sent a byte is no
        idle point: that read is the wait for THRE before the next byte (always set here: the
        byte left at once), not a wait for input. Otherwise every byte a kernel prints would
        let the virtual clock jump to its next deadline."""
        sent, self.sent_since_lsr = self.sent_since_lsr, False
        if self.rx_fifo:
            return
        if sent and not self._waiting_rbr:
            if not self.loopback and self._receives:
                self.poll_rx()
            return
        if self.loopback or not self._receives:
            self._inputs.idle()
            return
        if not self.poll_rx():
            self._inputs.idle()
            self.poll_rx()

    def _read_rbr(self) -> int:
        if self.rx_fifo:
            byte = self.rx_fifo.pop(0)
        elif self._waiting_rbr and not self.loopback and self._receives:
            byte = self._inputs.wait_key(self.name)
        else:
            return self.last_rx           # nothing received: the last byte, DR stays clear
        self.last_rx = byte
        self.received += 1
        return byte

    # --- status ------------------------------------------------------------------------------
    def lsr(self) -> int:
        """LSR without side effects."""
        return (LSR_DR if self.rx_fifo else 0) | (LSR_OE if self.overrun else 0) \
            | LSR_THRE | LSR_TEMT

    def msr(self) -> int:
        """MSR without side effects."""
        return self.msr_lines | self.msr_deltas

    def _set_lines(self, lines: int) -> None:
        changed = lines ^ self.msr_lines
        if changed & MSR_CTS:
            self.msr_deltas |= MSR_DCTS
        if changed & MSR_DSR:
            self.msr_deltas |= MSR_DDSR
        if changed & MSR_DCD:
            self.msr_deltas |= MSR_DDCD
        if self.msr_lines & MSR_RI and not lines & MSR_RI:
            self.msr_deltas |= MSR_TERI   # trailing edge of RI only
        self.msr_lines = lines

    def interrupt_id(self) -> int:
        """IIR bits 0-3 (without the FIFO bits), highest-priority source first."""
        if self.ier & IER_RLS and self.overrun:
            return IIR_RLS
        if self.ier & IER_RDA and self.rx_fifo:
            if not self.fifo_enabled:
                return IIR_RDA
            trigger = FCR_TRIGGER[self.fcr >> 6]
            return IIR_RDA if len(self.rx_fifo) >= trigger else IIR_TIMEOUT
        if self.ier & IER_THRE and self.thr_empty_pending:
            return IIR_THRE
        if self.ier & IER_MS and self.msr_deltas:
            return IIR_MS
        return IIR_NO_INTERRUPT

    def iir(self) -> int:
        """IIR without side effects."""
        return self.interrupt_id() | (IIR_FIFO_ENABLED if self.fifo_enabled else 0)

    def irq_pending(self) -> bool:
        """The level of the UART's IRQ line on a PC: an interrupt pending, gated by MCR.OUT2
        (whose pin is inactive in loopback)."""
        return (self.interrupt_id() != IIR_NO_INTERRUPT and bool(self.mcr & MCR_OUT2)
                and not self.loopback)

    # --- the port interface ------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if offset == RBR_THR:
            if dlab:
                return self.divisor & 0xFF
            byte = self._read_rbr()
            return byte | (self.ier << 8 if size > 1 else 0)
        if offset == IER:
            return (self.divisor >> 8) & 0xFF if dlab else self.ier
        if offset == IIR_FCR:
            value = self.iir()
            if value & 0x0F == IIR_THRE:
                self.thr_empty_pending = False    # reading IIR clears a THR-empty interrupt
            return value
        if offset == LCR:
            return self.lcr
        if offset == MCR:
            return self.mcr
        if offset == LSR:
            self._lsr_poll()
            value = self.lsr()
            self.overrun = False                  # reading LSR clears the error bits
            return value
        if offset == MSR:
            value = self.msr()
            self.msr_deltas = 0
            return value
        return self.scr

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        dlab = self.lcr & LCR_DLAB
        if offset == RBR_THR:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
            else:
                self._transmit(value)
        elif offset == IER:
            if dlab:
                self.divisor = (self.divisor & 0x00FF) | (value << 8)
            else:
                if value & IER_THRE and not self.ier & IER_THRE:
                    self.thr_empty_pending = True  # enabling it with THR empty raises it
                self.ier = value & IER_MASK
        elif offset == IIR_FCR:
            self._write_fcr(value)
        elif offset == LCR:
            self.lcr = value
        elif offset == MCR:
            self.mcr = value & MCR_MASK
            self._set_lines(_loop_lines(self.mcr) if self.loopback else MSR_TERMINAL)
        elif offset == SCR:
            self.scr = value
        # LSR and MSR writes (factory test) are ignored

    def _write_fcr(self, value: int) -> None:
        if (value ^ self.fcr) & FCR_ENABLE:
            self.rx_fifo.clear()                  # switching FIFO mode empties both FIFOs
        if not value & FCR_ENABLE:
            self.fcr = 0                          # the other bits only count with bit 0
            return
        if value & FCR_CLEAR_RX:
            self.rx_fifo.clear()
        self.fcr = value & (FCR_ENABLE | FCR_DMA | 0xC0)

    def _transmit(self, byte: int) -> None:
        self.thr_empty_pending = False            # writing THR clears THR-empty ...
        if self.loopback:
            self.looped += 1
            self._receive(byte)
        else:
            self.tx.put(byte)
            self.sent_since_lsr = True
        self.thr_empty_pending = True             # ... and the byte leaves at once

    def write_bytes(self, offset: int, data: bytes) -> None:
        if offset == RBR_THR and not self.lcr & LCR_DLAB and not self.loopback and data:
            self.tx.put_bytes(data)               # transmit: the common case, in bulk
            self.thr_empty_pending = True
            self.sent_since_lsr = True
        else:
            super().write_bytes(offset, data)

    def finish(self) -> None:
        self.tx.finish()

    def stats(self) -> dict:
        out = {"received": self.received, **self.tx.stats()}
        if self.overruns or self.looped:
            out.update(overruns=self.overruns, looped=self.looped)
        return out
