"""The dual 8259A (vmm.devices.pic) against its datasheet (Intel 231468) and the init sequences
real kernels use (Linux, xv6, the OSDev wiki). No /dev/kvm: the chips sit on a real PortBus and
the tests play the CPU's part (INT and INTA)."""

from __future__ import annotations

import pytest

from vmm.devices import PortBus
from vmm.devices.pic import PicPair

MASTER, SLAVE = 0x20, 0xA0


class Board:
    """A PIC pair on a port bus, with the port I/O a kernel would do."""

    def __init__(self, pair: PicPair | None = None):
        self.pic = pair or PicPair()
        self.bus = PortBus()
        self.bus.register(self.pic.master, MASTER, 2)
        self.bus.register(self.pic.slave, SLAVE, 2)

    def outb(self, port: int, value: int) -> None:
        device, offset = self.bus.lookup(port)
        device.write(offset, 1, value)

    def inb(self, port: int) -> int:
        device, offset = self.bus.lookup(port)
        return device.read(offset, 1)

    def linux_init(self, auto_eoi: bool = False) -> None:
        """Linux's init_8259A (arch/x86/kernel/i8259.c), as sent to the ports."""
        icw4 = 0x03 if auto_eoi else 0x01
        self.outb(0x21, 0xFF)                  # mask all of 8259A-1
        self.outb(0xA1, 0xFF)                  # mask all of 8259A-2
        self.outb(0x20, 0x11)                  # ICW1: edge, cascade, ICW4
        self.outb(0x21, 0x20)                  # ICW2: IR0-7 at 0x20
        self.outb(0x21, 0x04)                  # ICW3: slave on IR2
        self.outb(0x21, icw4)
        self.outb(0xA0, 0x11)
        self.outb(0xA1, 0x28)                  # IR8-15 at 0x28
        self.outb(0xA1, 0x02)                  # slave id 2
        self.outb(0xA1, 0x01)                  # slave: always normal EOI
        self.outb(0x21, 0x00)
        self.outb(0xA1, 0x00)

    def isr(self, port: int) -> int:
        self.outb(port, 0x0B)
        return self.inb(port)

    def irr(self, port: int) -> int:
        self.outb(port, 0x0A)
        return self.inb(port)

    def eoi(self, irq: int) -> None:
        if irq >= 8:
            self.outb(0xA0, 0x20)
        self.outb(0x20, 0x20)

    def fire(self, irq: int) -> None:
        """An edge: the line rises and falls again after the CPU took it (a pulse)."""
        self.pic.pulse(irq)

    def take(self) -> int:
        assert self.pic.has_interrupt()
        return self.pic.acknowledge()


@pytest.fixture
def pc():
    board = Board()
    board.linux_init()
    return board


def test_power_on_state_reads_irr_and_a_clear_mask():
    board = Board()
    pic = board.pic
    assert (pic.master.name, pic.slave.name) == ("pic-master", "pic-slave")
    assert board.inb(0x20) == 0 and board.inb(0x21) == 0          # IRR, IMR: all clear
    assert board.inb(0xA0) == 0 and board.inb(0xA1) == 0
    assert not pic.has_interrupt()
    # Before any ICW the vector base is 0 and IRQ 0 is unmasked: vector 0 (as QEMU).
    pic.pulse(0)
    assert board.inb(0x20) == 0x01
    assert pic.acknowledge() == 0x00


def test_linux_remap_delivers_vectors_0x20_and_0x28(pc):
    assert pc.inb(0x21) == 0 and pc.inb(0xA1) == 0
    for irq in (0, 1, 3, 4, 5, 6, 7):
        pc.fire(irq)
        assert pc.take() == 0x20 + irq
        assert pc.isr(0x20) == 1 << irq
        pc.eoi(irq)
        assert pc.isr(0x20) == 0
    for irq in range(8, 16):
        pc.fire(irq)
        assert pc.take() == 0x28 + irq - 8
        assert pc.isr(0xA0) == 1 << (irq - 8) and pc.isr(0x20) == 0x04
        pc.eoi(irq)
        assert pc.isr(0xA0) == 0 and pc.isr(0x20) == 0
    assert not pc.pic.has_interrupt()


def test_masks_read_back_and_hold_requests_in_irr(pc):
    pc.outb(0x21, 0xFB)                        # everything but the cascade
    pc.outb(0xA1, 0xEF)                        # only IRQ 12
    assert pc.inb(0x21) == 0xFB and pc.inb(0xA1) == 0xEF
    pc.fire(1)
    assert not pc.pic.has_interrupt()
    assert pc.irr(0x20) == 0x02                # requested, masked
    pc.fire(12)
    assert pc.take() == 0x2C
    pc.eoi(12)
    pc.outb(0x21, 0xF9)                        # unmask IRQ 1: the latched request is taken
    assert pc.take() == 0x21


def test_slave_interrupt_needs_eoi_to_both_chips(pc):
    pc.fire(12)
    pc.fire(9)
    assert pc.take() == 0x29                   # IRQ 9 outranks IRQ 12 on the slave
    pc.outb(0xA0, 0x20)                        # slave EOI only
    assert pc.isr(0x20) == 0x04                # master still has IR2 in service
    assert not pc.pic.has_interrupt()          # so IRQ 12 waits
    pc.outb(0x20, 0x20)
    assert pc.take() == 0x2C
    pc.eoi(12)
    assert not pc.pic.has_interrupt()


def test_priorities_and_nesting(pc):
    pc.fire(5)
    pc.fire(3)
    assert pc.take() == 0x23                   # the lower number wins
    pc.fire(1)                                 # higher than 3 in service: nests
    assert pc.take() == 0x21
    assert pc.isr(0x20) == 0x0A
    pc.fire(4)                                 # lower than 1 and 3: waits
    pc.outb(0x20, 0x20)                        # non-specific EOI: the highest, IR1
    assert pc.isr(0x20) == 0x08
    assert not pc.pic.has_interrupt()          # 4 and 5 are below 3 still in service
    pc.outb(0x20, 0x20)
    assert pc.take() == 0x24
    pc.eoi(4)
    assert pc.take() == 0x25
    pc.eoi(5)
    assert not pc.pic.has_interrupt()
    # a slave IRQ ranks at IR2: above 3-7, below 0 and 1
    pc.fire(3)
    pc.take()
    pc.fire(14)
    assert pc.take() == 0x2E
    pc.fire(0)
    assert pc.take() == 0x20


def test_the_same_level_does_not_nest(pc):
    pc.fire(1)
    assert pc.take() == 0x21
    pc.fire(1)
    assert not pc.pic.has_interrupt()          # IR1 in service blocks IR1
    assert pc.irr(0x20) == 0x02
    pc.eoi(1)
    assert pc.take() == 0x21


def test_edge_line_held_high_interrupts_once(pc):
    pic = pc.pic
    pic.set_irq(4, True)
    assert pc.take() == 0x24
    pc.eoi(4)
    assert not pic.has_interrupt()             # still high: no new edge
    pic.set_irq(4, True)
    assert not pic.has_interrupt()
    pic.set_irq(4, False)
    pic.set_irq(4, True)
    assert pc.take() == 0x24
    pc.eoi(4)
    pic.pulse(4)                               # a line held high gives no edge
    assert not pic.has_interrupt()


def test_request_withdrawn_before_inta_is_spurious_irq7(pc):
    pic = pc.pic
    pic.set_irq(4, True)
    assert pic.has_interrupt()                 # the CPU saw INT ...
    pic.set_irq(4, False)                      # ... but the line fell before INTA
    assert pic.acknowledge() == 0x27           # the default IR7
    assert pc.isr(0x20) == 0                   # no ISR bit: the handler must not EOI
    assert pic.stats()["spurious_master"] == 1
    # a real IRQ 7 does set ISR
    pc.fire(7)
    assert pc.take() == 0x27 and pc.isr(0x20) == 0x80
    assert pic.stats()["acks"][7] == 1


def test_slave_spurious_irq15_sets_master_isr2(pc):
    pic = pc.pic
    pic.set_irq(11, True)
    assert pic.has_interrupt()
    pic.set_irq(11, False)                     # the slave's request goes away; the master
    assert pic.has_interrupt()                 # holds the edge it saw on IR2
    assert pic.acknowledge() == 0x2F
    assert pc.isr(0xA0) == 0                   # the slave knows it is spurious
    assert pc.isr(0x20) == 0x04                # the master does not: EOI it only
    assert pic.stats()["spurious_slave"] == 1
    pc.outb(0x20, 0x20)
    assert pc.isr(0x20) == 0
    # masking on the slave after INT did the same
    pc.fire(13)
    pc.outb(0xA1, 0x20)
    assert pic.acknowledge() == 0x2F


def test_level_triggered_mode_follows_the_line():
    board = Board()
    board.outb(0x20, 0x19)                     # ICW1 with LTIM
    board.outb(0x21, 0x20)
    board.outb(0x21, 0x04)
    board.outb(0x21, 0x01)
    pic = board.pic
    pic.set_irq(3, True)
    assert board.take() == 0x23
    assert not pic.has_interrupt()             # in service
    board.outb(0x20, 0x20)
    assert board.take() == 0x23                # still high: requested again
    board.outb(0x20, 0x20)
    pic.set_irq(3, False)
    assert not pic.has_interrupt() and board.irr(0x20) == 0


def test_auto_eoi_needs_no_eoi():
    board = Board()
    board.linux_init(auto_eoi=True)
    for _ in range(3):
        board.fire(0)
        assert board.take() == 0x20
        assert board.isr(0x20) == 0
    assert board.pic.stats()["acks"][0] == 3


def test_rotate_on_non_specific_eoi(pc):
    pc.fire(0)
    assert pc.take() == 0x20
    pc.outb(0x20, 0xA0)                        # rotate on non-specific EOI: IR0 lowest
    assert pc.isr(0x20) == 0
    pc.fire(0)
    pc.fire(5)
    assert pc.take() == 0x25                   # order is now 1..7, 0
    pc.outb(0x20, 0xA0)                        # IR5 lowest: 6, 7, 0, 1, ...
    pc.fire(1)
    assert pc.take() == 0x20


def test_set_priority_and_rotate_on_specific_eoi(pc):
    pc.outb(0x20, 0xC4)                        # set priority: IR4 lowest, IR5 highest
    pc.fire(3)
    pc.fire(6)
    assert pc.take() == 0x26
    pc.fire(5)
    assert pc.take() == 0x25                   # 5 outranks 6 in service: nests
    pc.outb(0x20, 0x65)                        # specific EOI of 5
    assert pc.isr(0x20) == 0x40
    pc.outb(0x20, 0xE6)                        # rotate on specific EOI of 6: IR6 lowest
    assert pc.isr(0x20) == 0
    pc.fire(7)
    assert pc.take() == 0x27                   # 7 now highest, before 3
    pc.outb(0x20, 0x67)
    assert pc.take() == 0x23


def test_specific_eoi_clears_only_its_level(pc):
    pc.fire(3)
    pc.take()
    pc.fire(1)
    pc.take()
    pc.outb(0x20, 0x63)                        # EOI 3, while 1 is still in service
    assert pc.isr(0x20) == 0x02
    pc.outb(0x20, 0x40)                        # OCW2 no-op
    assert pc.isr(0x20) == 0x02


def test_rotate_in_auto_eoi_mode():
    board = Board()
    board.linux_init(auto_eoi=True)
    board.outb(0x20, 0x80)                     # rotate in AEOI: set
    board.fire(1)
    board.fire(2 + 1)                          # IRQ 3
    assert board.take() == 0x21                # then IR1 becomes lowest
    board.fire(1)
    assert board.take() == 0x23
    assert board.take() == 0x21
    board.outb(0x20, 0x00)                     # rotate in AEOI: clear
    board.outb(0x20, 0xC7)                     # back to IR0 highest
    board.fire(3)
    board.fire(1)
    assert board.take() == 0x21
    board.fire(1)
    assert board.take() == 0x21                # no rotation: 1 still beats 3
    assert board.take() == 0x23


def test_poll_mode(pc):
    pc.outb(0x21, 0xFF)                        # polled, with everything masked at INT...
    pc.outb(0x21, 0x00)
    pc.fire(6)
    pc.fire(4)
    pc.outb(0x20, 0x0C)                        # OCW3 poll
    assert pc.inb(0x20) == 0x84                # bit 7: an interrupt, level 4, acknowledged
    assert pc.isr(0x20) == 0x10
    assert pc.inb(0x20) == 0x10                # poll is one read only: this one reads ISR
    pc.outb(0x20, 0x0A)
    assert pc.inb(0x20) == 0x40                # IRR: 6 still requested
    pc.outb(0x20, 0x0C)
    assert pc.inb(0x20) == 0x00                # 6 is below 4 in service: nothing to poll
    pc.outb(0x20, 0x20)
    pc.outb(0x20, 0x0C)
    assert pc.inb(0x20) == 0x86
    pc.outb(0x20, 0x20)
    pc.fire(10)                                # the slave polls on its own
    pc.outb(0xA0, 0x0C)
    assert pc.inb(0xA0) == 0x82
    assert pc.isr(0xA0) == 0x04
    assert pc.pic.stats()["acks"][10] == 1


def test_irr_isr_select_persists(pc):
    pc.outb(0x21, 0x02)
    pc.fire(1)
    pc.fire(0)
    pc.take()
    pc.outb(0x20, 0x0A)
    assert [pc.inb(0x20) for _ in range(3)] == [0x02] * 3
    pc.outb(0x20, 0x0B)
    assert [pc.inb(0x20) for _ in range(3)] == [0x01] * 3
    pc.outb(0x20, 0x08)                        # OCW3 without RR: selection unchanged
    assert pc.inb(0x20) == 0x01


def test_special_mask_mode_lets_lower_levels_in(pc):
    pc.fire(3)
    assert pc.take() == 0x23
    pc.fire(5)
    assert not pc.pic.has_interrupt()
    pc.outb(0x21, 0x08)                        # the handler masks its own level ...
    pc.outb(0x20, 0x68)                        # ... and enters special mask mode
    assert pc.take() == 0x25                   # a lower level gets through
    pc.outb(0x20, 0x65)
    pc.outb(0x20, 0x48)                        # leave special mask mode
    pc.outb(0x21, 0x00)
    pc.fire(6)
    assert not pc.pic.has_interrupt()          # 3 is in service and counts again
    pc.outb(0x20, 0x63)
    assert pc.take() == 0x26


def test_icw1_reinitializes(pc):
    pc.outb(0x21, 0x55)
    pc.fire(3)
    pc.take()
    pc.outb(0x20, 0x0B)
    pc.outb(0x20, 0x11)                        # ICW1 again
    assert pc.inb(0x21) == 0x00                # IMR cleared
    assert pc.inb(0x20) == 0x00                # reads IRR again; ISR cleared
    pc.outb(0x21, 0x40)                        # a new base
    pc.outb(0x21, 0x04)
    pc.outb(0x21, 0x01)
    assert pc.isr(0x20) == 0
    pc.fire(3)
    assert pc.take() == 0x43


def test_icw1_resets_the_edge_latch_of_a_high_line(pc):
    pc.pic.set_irq(5, True)
    pc.take()
    pc.outb(0x20, 0x11)
    pc.outb(0x21, 0x20)
    pc.outb(0x21, 0x04)
    pc.outb(0x21, 0x01)
    assert not pc.pic.has_interrupt()          # still high: it must fall and rise again
    pc.pic.set_irq(5, False)
    pc.pic.set_irq(5, True)
    assert pc.take() == 0x25


def test_single_mode_skips_icw3_and_frees_ir2():
    board = Board()
    board.outb(0x20, 0x13)                     # SNGL, IC4
    board.outb(0x21, 0x50)
    board.outb(0x21, 0x01)                     # this is ICW4, there is no ICW3
    assert board.pic.master.init_step == 0
    board.outb(0x21, 0xF0)                     # OCW1
    assert board.inb(0x21) == 0xF0
    board.pic.set_irq(2, True)
    assert board.take() == 0x52


def test_icw4_is_optional():
    board = Board()
    board.outb(0x20, 0x10)                     # no IC4: ICW2 and ICW3 only
    board.outb(0x21, 0x30)
    board.outb(0x21, 0x04)
    board.outb(0x21, 0xFD)                     # already OCW1: only IR1 unmasked
    assert board.inb(0x21) == 0xFD
    board.fire(1)
    assert board.take() == 0x31


def test_special_fully_nested_mode_nests_slave_levels():
    def init(board, master_icw4):
        board.outb(0x20, 0x11)
        board.outb(0x21, 0x20)
        board.outb(0x21, 0x04)
        board.outb(0x21, master_icw4)
        board.outb(0xA0, 0x11)
        board.outb(0xA1, 0x28)
        board.outb(0xA1, 0x02)
        board.outb(0xA1, 0x01)

    for icw4, nests in ((0x01, False), (0x11, True)):
        board = Board()
        init(board, icw4)
        board.fire(12)
        assert board.take() == 0x2C
        board.fire(9)                          # higher than 12 on the slave
        assert board.pic.has_interrupt() is nests
        if nests:
            assert board.take() == 0x29
            assert board.isr(0xA0) == 0x12


def test_xv6_init_auto_eoi_and_special_mask():
    """xv6's picinit: masks, AEOI on both, then OCW3 0x68 (special mask mode) and 0x0a."""
    board = Board()
    for port, value in ((0x21, 0xFF), (0xA1, 0xFF),
                        (0x20, 0x11), (0x21, 32), (0x21, 1 << 2), (0x21, 0x3),
                        (0xA0, 0x11), (0xA1, 40), (0xA1, 2), (0xA1, 0x3),
                        (0x20, 0x68), (0x20, 0x0A), (0xA0, 0x68), (0xA0, 0x0A),
                        (0x21, 0xFF & ~(1 << 2) & ~1 & ~2), (0xA1, 0xFF)):
        board.outb(port, value)
    assert board.inb(0x21) == 0xF8
    for _ in range(3):                          # the timer, with no EOI ever sent
        board.fire(0)
        assert board.take() == 32
    board.fire(1)
    board.fire(0)
    assert board.take() == 32
    assert board.take() == 33
    board.fire(14)
    assert not board.pic.has_interrupt()       # masked at the slave


def test_osdev_remap_keeps_masks_it_restores():
    """The OSDev wiki's PIC_remap: save the masks, init with ICW4_8086, restore them."""
    board = Board()
    board.outb(0x21, 0xB8)
    board.outb(0xA1, 0x8E)
    a1, a2 = board.inb(0x21), board.inb(0xA1)
    board.outb(0x20, 0x11)
    board.outb(0xA0, 0x11)                     # interleaved, as the wiki does
    board.outb(0x21, 0x20)
    board.outb(0xA1, 0x28)
    board.outb(0x21, 4)
    board.outb(0xA1, 2)
    board.outb(0x21, 0x01)
    board.outb(0xA1, 0x01)
    board.outb(0x21, a1)
    board.outb(0xA1, a2)
    assert (board.inb(0x21), board.inb(0xA1)) == (0xB8, 0x8E)
    board.fire(0)
    assert board.take() == 0x20
    board.fire(12)                             # slave IR4: unmasked in 0x8E
    board.eoi(0)
    assert board.take() == 0x2C


def test_bad_lines_are_refused(pc):
    with pytest.raises(ValueError):
        pc.pic.set_irq(16, True)
    with pytest.raises(ValueError):
        pc.pic.set_irq(-1, True)
    with pytest.raises(ValueError, match="cascade"):
        pc.pic.pulse(2)


def test_state_round_trips_mid_initialization():
    board = Board()
    board.outb(0x20, 0x11)
    board.outb(0x21, 0x20)                     # ICW2 written, ICW3 and ICW4 to come
    board.fire(3)
    saved = (board.pic.master.state(), board.pic.slave.state())
    copy = Board()
    copy.pic.master.from_state(saved[0])
    copy.pic.slave.from_state(saved[1])
    for b in (board, copy):
        b.outb(0x21, 0x04)
        b.outb(0x21, 0x01)
        b.outb(0x21, 0x00)                     # OCW1 now, not ICW
    assert copy.pic.master.state() == board.pic.master.state()
    assert copy.inb(0x21) == 0 and copy.pic.master.vector_base == 0x20
    copy.fire(3)
    assert copy.take() == 0x23


def test_state_round_trips_with_requests_in_service(pc):
    pc.outb(0x20, 0xC3)                        # a rotated priority
    pc.fire(12)
    pc.take()
    pc.fire(9)
    pc.fire(5)
    pc.outb(0xA0, 0x0B)                        # reads select the slave's ISR
    pc.outb(0x20, 0x0C)                        # a poll armed on the master
    state = {"m": pc.pic.master.state(), "s": pc.pic.slave.state()}
    assert all(isinstance(v, (bool, int, list, type(None), str)) for v in state["m"].values())
    copy = Board()
    copy.pic.master.from_state(state["m"])
    copy.pic.slave.from_state(state["s"])
    for b in (pc, copy):
        assert b.inb(0xA0) == 0x10
        assert b.inb(0x20) == 0x85             # the armed poll: IR5, which now outranks IR2
    assert copy.pic.stats() == pc.pic.stats()
    for b in (pc, copy):
        b.outb(0x20, 0x20)                     # non-specific EOI: 5, the highest in service
        assert b.isr(0x20) == 0x04
        b.eoi(12)
    assert copy.take() == pc.take() == 0x29


def test_stats_count_acks_per_line_and_spurious(pc):
    for irq in (0, 0, 1, 12):
        pc.fire(irq)
        pc.take()
        pc.eoi(irq)
    pc.pic.acknowledge()                       # nothing pending: spurious
    stats = pc.pic.stats()
    assert stats["acks"][0] == 2 and stats["acks"][1] == 1 and stats["acks"][12] == 1
    assert stats["acks"][2] == 1               # the master's grant of the cascade
    assert stats["spurious_master"] == 1 and stats["spurious_slave"] == 0
    assert len(stats["acks"]) == 16
