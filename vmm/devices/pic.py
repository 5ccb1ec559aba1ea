"""The dual 8259A programmable interrupt controller of a PC: a master at 0x20-0x21 and a slave
at 0xA0-0xA1 cascaded on the master's IR2, as on every PC/AT.

`PicPair` owns both chips and is what the run loop talks to:

- `set_irq(line, level)` drives input line 0-15 (8-15 are the slave's IR0-IR7);
  `pulse(line)` is a rising edge whose fall comes too late to withdraw the request (the edge
  sources: PIT channel 0's rising edges).
- `has_interrupt()` is the INT output to the CPU.
- `acknowledge()` is the INTA cycle: it returns the vector and moves the request from IRR to
  ISR (or not, in auto-EOI), cascading to the slave for IR2.

`pair.master` and `pair.slave` are the two chips, each a port device of two ports (offset 0:
command / IRR / ISR / poll, offset 1: data / IMR). Their registers are plain fields, so the
generic `Device.state()` / `from_state()` of each captures that chip completely.

Semantics follow the Intel 8259A datasheet (order number 231468):

- Writing offset 0 with bit 4 set is ICW1: it starts initialization, clears IMR and ISR,
  gives IR0 the highest priority, selects IRR for reads, leaves special mask mode and poll mode,
  and resets the edge sense latches (a line that is already high must fall and rise again).
  ICW2 (vector base, bits 7-3) follows at offset 1, then ICW3 unless ICW1 said single (SNGL),
  then ICW4 if ICW1 bit 0 (IC4) asked for it. ICW1 bit 3 (LTIM) makes the chip level triggered.
  ICW4: bit 0 8086 mode (stored; vectors are always 8086 style), bit 1 AEOI, bit 4 SFNM.
- Offset 1 outside initialization is OCW1, the mask (read back at offset 1).
- Offset 0 with bits 4-3 = 00 is OCW2 (EOI, specific EOI, rotations, set priority), = 01 is
  OCW3 (bit 1-0 read IRR/ISR select, bit 2 poll, bits 6-5 special mask mode).
- Edge mode: a rising edge latches the request, which the line must hold until INTA; if it
  falls first the request is withdrawn. Level mode: the request follows the line.
- Spurious interrupts: if INTA finds no request (it went away after INT was raised), the
  vector is base + 7 and ISR is left alone; if the master grants IR2 but the slave then has
  no request, the vector is the slave's base + 7, and the master's ISR bit 2 is set (the handler
  must EOI the master only). The master latches the slave's INT on its rising edge and keeps
  the request until INTA even if the slave's request goes away meanwhile (masked, or its line
  fell): that is the spurious IRQ 15 case.

Not implemented: the 8080/8085 CALL sequence (ICW4 bit 0 = 0 still yields 8086 vectors), the
buffered-mode bits of ICW4 (stored only), the PIIX ELCR at 0x4d0/0x4d1, and cascade wiring other
than the slave on master IR2 (ICW3 is stored; the slave is always on IR2 unless the master is in
single mode).
"""

from __future__ import annotations

from .bus import Device

# The IRs from highest to lowest priority when IR `lowest` has the lowest (rotation).
_ORDERS = tuple(tuple((lowest + 1 + i) & 7 for i in range(8)) for lowest in range(8))

CASCADE_IR = 2                     # the slave's INT drives the master's IR2
SPURIOUS_IR = 7                    # INTA with no request: vector base + 7, no ISR bit

ICW1_IC4, ICW1_SNGL, ICW1_LTIM, ICW1_INIT = 0x01, 0x02, 0x08, 0x10
ICW4_8086, ICW4_AEOI, ICW4_SFNM = 0x01, 0x02, 0x10
OCW3_SELECT = 0x08                 # bits 4-3 = 01: OCW3; 00: OCW2
OCW3_RIS, OCW3_RR, OCW3_POLL, OCW3_SMM, OCW3_ESMM = 0x01, 0x02, 0x04, 0x20, 0x40
POLL_INT = 0x80                    # poll word bit 7: an interrupt was pending

# OCW2 bits 7-5 (R, SL, EOI)
OCW2_ROTATE_AEOI_CLEAR = 0
OCW2_EOI = 1
OCW2_NOP = 2
OCW2_SPECIFIC_EOI = 3
OCW2_ROTATE_AEOI_SET = 4
OCW2_ROTATE_EOI = 5
OCW2_SET_PRIORITY = 6
OCW2_ROTATE_SPECIFIC_EOI = 7

# init_step: which initialization word offset 1 expects next
READY, WANT_ICW2, WANT_ICW3, WANT_ICW4 = 0, 2, 3, 4


class PicChip(Device):
    """One 8259A. Its fields are its registers; the pair it belongs to is not state."""

    @property
    def pair(self) -> "PicPair":
        """The pair this chip belongs to: the interrupt controller the run loop talks to."""
        return self._pair

    def __init__(self, pair: "PicPair", name: str, master: bool):
        self._pair = pair
        self.name = name
        self.is_master = master
        # registers (QEMU's power-on state: everything zero, reads select IRR)
        self.irr = 0                 # interrupt requests latched
        self.isr = 0                 # in service
        self.imr = 0                 # OCW1
        self.lines = 0               # the current level of each IR input
        self.vector_base = 0         # ICW2 & 0xf8
        self.icw1 = 0
        self.icw3 = 0
        self.icw4 = 0
        self.init_step = READY
        self.level_triggered = False  # ICW1 LTIM
        self.single = False          # ICW1 SNGL
        self.auto_eoi = False        # ICW4 AEOI
        self.rotate_on_aeoi = False  # OCW2 rotate in AEOI mode
        self.sfnm = False            # ICW4 special fully nested mode
        self.lowest = 7              # the IR of lowest priority (7 after ICW1: IR0 highest)
        self.read_isr = False        # OCW3 RR/RIS
        self.poll = False            # OCW3 P: the next read at offset 0 is a poll
        self.special_mask = False    # OCW3 SMM
        # stats
        self.acks = [0] * 8          # INTA/poll acknowledgements per IR
        self.spurious = 0
        self.eois = 0

    # --- priority -------------------------------------------------------------------------
    def _order(self):
        """The IRs from highest to lowest priority."""
        return _ORDERS[self.lowest]

    def _highest(self, bits: int) -> int | None:
        if not bits:
            return None
        for ir in self._order():
            if bits >> ir & 1:
                return ir
        return None

    def pending(self) -> int | None:
        """The IR that INT is raised for, or None: the highest-priority unmasked request that
        outranks everything in service (in special mask mode, masked in-service levels do not
        count; in special fully nested mode the master ignores its own IR2 in service)."""
        request = self._highest(self.irr & ~self.imr)
        if request is None:
            return None
        blocking = self.isr
        if self.special_mask:
            blocking &= ~self.imr
        if self.sfnm and self.is_master:
            blocking &= ~(1 << CASCADE_IR)
        for ir in self._order():
            if blocking >> ir & 1:           # in service at this level or above: wait
                return None
            if ir == request:
                return ir
        return None

    def _grant(self, ir: int) -> None:
        """The INTA (or poll) that takes request `ir`: IRR to ISR, or auto-EOI."""
        self.acks[ir] += 1
        if not self.level_triggered:
            self.irr &= ~(1 << ir)
        if self.auto_eoi:
            if self.rotate_on_aeoi:
                self.lowest = ir
        else:
            self.isr |= 1 << ir

    # --- lines ----------------------------------------------------------------------------
    def set_line(self, ir: int, level: bool) -> None:
        bit = 1 << ir
        was = self.lines & bit
        if level:
            self.lines |= bit
            if self.level_triggered or not was:
                self.irr |= bit
        else:
            self.lines &= ~bit
            self.irr &= ~bit                 # withdrawn (edge: before INTA; level: always)

    def pulse(self, ir: int) -> None:
        bit = 1 << ir
        if not self.lines & bit:
            self.irr |= bit

    # --- ports ----------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset & 1:
            return self.imr
        if self.poll:
            self.poll = False
            value = self._pair._poll(self)
            return value
        return self.isr if self.read_isr else self.irr

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset & 1:
            self._write_data(value)
        elif value & ICW1_INIT:
            self._icw1(value)
        elif value & OCW3_SELECT:
            self._ocw3(value)
        else:
            self._ocw2(value)
        self._pair._update()

    def _icw1(self, value: int) -> None:
        self.icw1 = value
        self.level_triggered = bool(value & ICW1_LTIM)
        self.single = bool(value & ICW1_SNGL)
        self.imr = self.isr = 0
        self.irr = self.lines if self.level_triggered else 0   # edge latches reset
        self.lowest = 7
        self.read_isr = self.poll = self.special_mask = False
        self.auto_eoi = self.rotate_on_aeoi = self.sfnm = False
        self.icw4 = 0
        self.init_step = WANT_ICW2

    def _write_data(self, value: int) -> None:
        step = self.init_step
        if step == READY:
            self.imr = value
        elif step == WANT_ICW2:
            self.vector_base = value & 0xF8
            self.init_step = (WANT_ICW3 if not self.single
                              else WANT_ICW4 if self.icw1 & ICW1_IC4 else READY)
        elif step == WANT_ICW3:
            self.icw3 = value
            self.init_step = WANT_ICW4 if self.icw1 & ICW1_IC4 else READY
        else:
            self.icw4 = value
            self.auto_eoi = bool(value & ICW4_AEOI)
            self.sfnm = bool(value & ICW4_SFNM)
            self.init_step = READY

    def _ocw2(self, value: int) -> None:
        command, level = value >> 5, value & 7
        if command in (OCW2_EOI, OCW2_ROTATE_EOI):
            ir = self._highest(self.isr)
            if ir is not None:
                self.isr &= ~(1 << ir)
                self.eois += 1
                if command == OCW2_ROTATE_EOI:
                    self.lowest = ir
        elif command in (OCW2_SPECIFIC_EOI, OCW2_ROTATE_SPECIFIC_EOI):
            if self.isr >> level & 1:
                self.eois += 1
            self.isr &= ~(1 << level)
            if command == OCW2_ROTATE_SPECIFIC_EOI:
                self.lowest = level
        elif command == OCW2_SET_PRIORITY:
            self.lowest = level
        elif command == OCW2_ROTATE_AEOI_SET:
            self.rotate_on_aeoi = True
        elif command == OCW2_ROTATE_AEOI_CLEAR:
            self.rotate_on_aeoi = False

    def _ocw3(self, value: int) -> None:
        if value & OCW3_ESMM:
            self.special_mask = bool(value & OCW3_SMM)
        if value & OCW3_RR:
            self.read_isr = bool(value & OCW3_RIS)
        self.poll = bool(value & OCW3_POLL)

    def stats(self) -> dict:
        return {"acks": list(self.acks), "spurious": self.spurious, "eois": self.eois}


class PicPair:
    """The master and slave 8259A of a PC/AT, and the CPU's view of them (INT and INTA)."""

    def __init__(self):
        self.master = PicChip(self, "pic-master", master=True)
        self.slave = PicChip(self, "pic-slave", master=False)

    def _chip(self, line: int) -> tuple[PicChip, int]:
        if not 0 <= line < 16:
            raise ValueError(f"IRQ line {line} is not 0-15")
        if line == CASCADE_IR and self._cascaded():
            raise ValueError("IRQ 2 is the slave's cascade input; use IRQ 9 (the slave's IR1)")
        return (self.master, line) if line < 8 else (self.slave, line - 8)

    def _cascaded(self) -> bool:
        return not self.master.single

    def _update(self) -> None:
        """Carry the slave's INT output to the master's IR2. An edge-triggered master holds
        the request from the slave's rising INT until INTA even if INT falls again (the slave
        withdrew its request): that is how a spurious IRQ 15 comes about."""
        if not self._cascaded():
            return
        master, bit = self.master, 1 << CASCADE_IR
        if self.slave.pending() is not None:
            if master.level_triggered or not master.lines & bit:
                master.irr |= bit
            master.lines |= bit
        else:
            master.lines &= ~bit
            if master.level_triggered:
                master.irr &= ~bit

    def set_irq(self, line: int, level: bool) -> None:
        """Drive input line 0-15 to `level`."""
        chip, ir = self._chip(line)
        bit = 1 << ir
        # The run loop drives every line at every interrupt point, and most keep their level:
        # then nothing changes (a line already high in edge mode makes no new edge; one already
        # low with no request has nothing to withdraw), and the cascade is as it was
        if level:
            if chip.lines & bit and not chip.level_triggered:
                return
        elif not (chip.lines | chip.irr) & bit:
            return
        chip.set_line(ir, bool(level))
        self._update()

    def pulse(self, line: int) -> None:
        """A rising edge on a line that is low, latched until INTA (an edge source whose
        output returns low by itself). A line held high by set_irq gives no edge."""
        chip, ir = self._chip(line)
        chip.pulse(ir)
        self._update()

    def has_interrupt(self) -> bool:
        """The master's INT output: an interrupt the CPU should take when it can."""
        return self.master.pending() is not None

    def acknowledge(self) -> int:
        """The INTA cycle: returns the vector and moves the request into service."""
        master, slave = self.master, self.slave
        ir = master.pending()
        if ir is None:
            master.spurious += 1
            return (master.vector_base + SPURIOUS_IR) & 0xFF
        master._grant(ir)
        if ir == CASCADE_IR and self._cascaded():
            sir = slave.pending()
            if sir is None:
                slave.spurious += 1
                vector = slave.vector_base + SPURIOUS_IR
            else:
                slave._grant(sir)
                vector = slave.vector_base + sir
        else:
            vector = master.vector_base + ir
        self._update()
        return vector & 0xFF

    def _poll(self, chip: PicChip) -> int:
        """OCW3 poll read: 0x80 | the highest request's level, which it acknowledges; 0 when
        nothing is pending."""
        ir = chip.pending()
        if ir is None:
            return 0
        chip._grant(ir)
        self._update()
        return POLL_INT | ir

    def stats(self) -> dict:
        """Acknowledgements per IRQ line 0-15 and spurious counts (master: IRQ 7, slave:
        IRQ 15)."""
        return {"acks": self.master.acks + self.slave.acks,
                "spurious_master": self.master.spurious, "spurious_slave": self.slave.spurious}
