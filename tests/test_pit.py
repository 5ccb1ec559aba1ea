"""The 8254 PIT and port 0x61 (vmm.devices.pit) against the 8254 datasheet (Intel 231164), with
a hand-set guest clock. No /dev/kvm: the PIT sits on a real PortBus and the tests do a kernel's
port I/O at exact ticks of the 1.193182 MHz input clock."""

from __future__ import annotations

import random

import pytest

from vmm.devices import PortBus
from vmm.devices.pic import PicPair
from vmm.devices.pit import PIT_HZ, REFRESH_NS, Pit8254, Port61, ns_of_tick, tick_of

CH0, CH1, CH2, CTRL, P61 = 0x40, 0x41, 0x42, 0x43, 0x61


class Clock:
    def __init__(self):
        self.ns = 0

    def __call__(self) -> int:
        return self.ns

    def at_tick(self, tick: int) -> None:
        self.ns = ns_of_tick(tick)


class Board:
    def __init__(self, clock: Clock | None = None):
        self.clock = clock or Clock()
        self.pit = Pit8254(self.clock)
        self.port61 = Port61(self.pit)
        self.bus = PortBus()
        self.bus.register(self.pit, 0x40, 4)
        self.bus.register(self.port61, 0x61, 1)

    def outb(self, port: int, value: int) -> None:
        device, offset = self.bus.lookup(port)
        device.write(offset, 1, value)

    def inb(self, port: int) -> int:
        device, offset = self.bus.lookup(port)
        return device.read(offset, 1)

    def at(self, tick: int) -> "Board":
        self.clock.at_tick(tick)
        return self

    def program(self, channel: int, mode: int, count: int, access: int = 3) -> None:
        self.outb(CTRL, channel << 6 | access << 4 | mode << 1)
        if access & 1:
            self.outb(CH0 + channel, count & 0xFF)
        if access & 2:
            self.outb(CH0 + channel, count >> 8 & 0xFF)

    def latched(self, channel: int) -> int:
        self.outb(CTRL, channel << 6)              # counter latch command
        lo = self.inb(CH0 + channel)
        return lo | self.inb(CH0 + channel) << 8

    def status(self, channel: int) -> int:
        self.outb(CTRL, 0xE0 | 2 << channel)       # read-back: status only
        return self.inb(CH0 + channel)

    def out(self, channel: int) -> bool:
        return bool(self.status(channel) & 0x80)


@pytest.fixture
def pc():
    return Board()


def test_tick_conversion_is_exact_integer_arithmetic():
    assert PIT_HZ == 1_193_182
    assert tick_of(10**9) == PIT_HZ
    assert tick_of(60 * 10**9) == 60 * PIT_HZ
    assert ns_of_tick(1) == 839                    # 838.0965... rounded up
    assert ns_of_tick(PIT_HZ) == 10**9
    for k in (0, 1, 2, 3, 11932, 65536, 1193181, 10**7 + 3, 2**40 + 5):
        assert tick_of(ns_of_tick(k)) == k
        if k:
            assert tick_of(ns_of_tick(k) - 1) == k - 1


def test_mode0_out_rises_n_plus_1_ticks_after_the_write(pc):
    pc.at(100).program(0, 0, 1000)
    assert not pc.out(0)
    assert pc.at(100).status(0) == 0x70            # OUT low, null count, lohi, mode 0
    assert pc.at(101).status(0) == 0x30            # loaded: null count clear
    assert pc.at(101).latched(0) == 1000
    assert pc.at(351).latched(0) == 750
    assert pc.at(1100).latched(0) == 1 and not pc.out(0)
    assert pc.at(1101).latched(0) == 0 and pc.out(0)
    assert pc.at(1102).latched(0) == 0xFFFF and pc.out(0)   # counting goes on, OUT stays
    assert pc.pit.take_edges(pc.clock.ns) == 1
    assert pc.pit.next_event_after(pc.clock.ns) is None


def test_mode0_first_byte_of_a_new_count_stops_counting(pc):
    pc.at(0).program(0, 0, 500)
    pc.at(100)
    pc.outb(CH0, 0x10)                             # LSB of a new count
    assert pc.at(300).latched(0) == 401            # frozen at the tick of the first byte
    pc.outb(CH0, 0x00)                             # MSB: 16, loaded at the next tick
    assert pc.at(301).latched(0) == 16
    assert not pc.at(316).out(0) and pc.at(317).out(0)


def test_latch_holds_until_read_and_a_second_latch_is_ignored(pc):
    pc.at(0).program(0, 2, 40000)
    pc.at(11)
    pc.outb(CTRL, 0x00)                            # latch: 40000 - 10
    pc.at(5000)
    pc.outb(CTRL, 0x00)                            # ignored: the first is not read yet
    assert pc.inb(CH0) == 39990 & 0xFF
    pc.at(6000)
    assert pc.inb(CH0) == 39990 >> 8               # MSB of the same latch
    # released: reads are live now, LSB then MSB
    pc.at(20001)
    live = 40000 - 20000
    assert pc.inb(CH0) == live & 0xFF
    assert pc.inb(CH0) == live >> 8
    assert pc.inb(CH0) == live & 0xFF              # the flip-flop goes on


def test_lsb_only_and_msb_only_access(pc):
    pc.at(0).program(0, 2, 0x30, access=1)         # LSB only: count 0x30
    assert pc.pit.ch0.cr == 0x30
    assert pc.at(1 + 0x10).latched(0) & 0xFF == 0x20
    pc.outb(CTRL, 0x00)
    assert pc.inb(CH0) == 0x20 and pc.inb(CH0) == 0x20   # one read releases the latch
    pc.at(100).program(1, 2, 0x0300, access=2)     # MSB only: count 0x300
    assert pc.pit.ch1.cr == 0x300
    pc.at(101 + 0x100)
    assert pc.inb(CH1) == 0x02                     # 0x200: the MSB
    pc.outb(CTRL, 0x40)
    assert pc.inb(CH1) == 0x02


def test_mode2_rate_generator_low_for_one_tick_at_count_1(pc):
    pc.at(0).program(0, 2, 5)                      # loaded at tick 1
    counts = [pc.at(t).latched(0) for t in range(1, 12)]
    outs = [pc.at(t).out(0) for t in range(1, 12)]
    assert counts == [5, 4, 3, 2, 1, 5, 4, 3, 2, 1, 5]
    assert outs == [True, True, True, True, False, True, True, True, True, False, True]
    assert pc.pit.next_event_after(ns_of_tick(1)) == ns_of_tick(6)
    assert pc.pit.next_event_after(ns_of_tick(6) - 1) == ns_of_tick(6)
    assert pc.pit.next_event_after(ns_of_tick(6)) == ns_of_tick(11)
    assert pc.pit.next_change_after(0, ns_of_tick(6)) == ns_of_tick(10)
    assert pc.pit.take_edges(ns_of_tick(16)) == 3  # ticks 6, 11, 16


def test_mode3_square_wave_even_and_odd(pc):
    pc.at(0).program(0, 3, 6)
    assert [pc.at(t).latched(0) for t in range(1, 13)] == [6, 4, 2] * 4
    assert [pc.at(t).out(0) for t in range(1, 13)] == ([True] * 3 + [False] * 3) * 2
    pc.at(100).program(2, 3, 5)
    pc.outb(P61, 0x01)                             # gate 2 high: loads at tick 101
    assert [pc.at(t).latched(2) for t in range(101, 111)] == [4, 2, 0, 4, 2] * 2
    assert [pc.at(t).out(2) for t in range(101, 111)] == ([True] * 3 + [False] * 2) * 2
    assert pc.pit.next_change_after(2, ns_of_tick(101)) == ns_of_tick(104)
    assert pc.pit.next_change_after(2, ns_of_tick(104)) == ns_of_tick(106)


def test_count_zero_means_65536(pc):
    pc.at(0).program(0, 2, 0)
    assert pc.at(1).latched(0) == 0                # 65536 reads as 0
    assert pc.at(2).latched(0) == 0xFFFF
    assert pc.pit.next_event_after(0) == ns_of_tick(1 + 65536)
    pc.at(0).program(0, 0, 0)
    assert not pc.at(65536).out(0) and pc.at(65537).out(0)


@pytest.mark.parametrize("hz,latch", [(100, 11932), (1000, 1193)])
@pytest.mark.parametrize("mode", [2, 3])
def test_periodic_interrupt_times(hz, latch, mode):
    board = Board()
    board.program(0, mode, latch)                  # at time 0: loaded at tick 1
    assert latch == (PIT_HZ + hz // 2) // hz       # Linux's LATCH
    t = 0
    for k in range(1, hz + 1):
        t = board.pit.next_event_after(t)
        assert t == ns_of_tick(1 + k * latch)
        assert board.pit.take_edges(t) == 1
        assert board.pit.take_edges(t) == 0
    assert abs(t - 10**9) < 200_000                # one second, to the PIT's rounding
    assert board.pit.next_event_after(10**9) is not None


def test_take_edges_sums_the_same_however_time_is_split():
    rng = random.Random(15)
    totals = set()
    for _ in range(5):
        board = Board()
        board.program(0, 2, 1193)
        cuts = sorted(rng.randrange(10**9) for _ in range(rng.randrange(1, 300)))
        totals.add(sum(board.pit.take_edges(t) for t in cuts + [10**9]))
    assert totals == {(PIT_HZ - 1) // 1193}


def test_mode2_new_count_loads_at_the_end_of_the_period(pc):
    pc.at(0).program(0, 2, 10)                     # loaded at 1: edges at 11, 21, ...
    pc.at(4)
    pc.outb(CH0, 3)
    pc.outb(CH0, 0)                                # new count 3 while counting
    assert pc.at(5).latched(0) == 6                # the old cycle goes on
    assert pc.at(5).status(0) & 0x40               # null count: not loaded yet
    assert pc.pit.next_event_after(ns_of_tick(5)) == ns_of_tick(11)
    assert pc.at(11).latched(0) == 3 and not pc.at(11).status(0) & 0x40
    assert pc.at(12).latched(0) == 2
    assert pc.pit.next_event_after(ns_of_tick(11)) == ns_of_tick(14)
    assert pc.pit.take_edges(ns_of_tick(17)) == 3  # 11, 14, 17


def test_mode3_new_count_loads_at_the_end_of_the_half_cycle(pc):
    pc.at(0).program(0, 3, 10)                     # high 1-5, low 6-10, rises at 11
    pc.at(2)
    pc.outb(CH0, 4)
    pc.outb(CH0, 0)
    assert pc.at(5).out(0) and not pc.at(6).out(0)  # the old half cycle ends at 6
    assert not pc.at(7).out(0) and pc.at(8).out(0)  # then 2 low, 2 high, ...
    assert not pc.at(10).out(0) and pc.at(12).out(0)
    assert pc.pit.take_edges(ns_of_tick(16)) == 3  # 8, 12, 16


def test_a_control_word_raising_out_counts_as_an_edge(pc):
    pc.at(0).program(0, 0, 100)                    # OUT low until tick 101
    pc.at(10)
    pc.outb(CTRL, 0x34)                            # mode 2: OUT high at once
    assert pc.pit.take_edges(pc.clock.ns) == 1
    pc.outb(CTRL, 0x30)                            # mode 0: OUT low, no edge
    pc.outb(CTRL, 0x30)
    assert pc.pit.take_edges(pc.clock.ns) == 0


def test_reprogramming_keeps_the_edges_of_the_old_program(pc):
    pc.at(0).program(0, 2, 100)                    # edges at 101, 201, 301
    pc.at(350).program(0, 2, 1000)                 # edges at 1351, ...
    assert pc.pit.take_edges(ns_of_tick(1351)) == 4
    assert pc.pit.stats()["irq0_edges"] == 4


def test_channel2_gate_and_out_through_port61(pc):
    pc.outb(P61, 0x00)
    pc.at(0).program(2, 0, 50)                     # gate low: loaded, not counting
    assert pc.at(100).latched(2) == 50
    assert not pc.inb(P61) & 0x20
    pc.outb(P61, 0x01)                             # gate high at tick 100
    assert pc.inb(P61) & 0x01
    assert pc.at(101).latched(2) == 49
    pc.at(120)
    assert pc.latched(2) == 30
    pc.outb(P61, 0x00)                             # gate low: suspended
    assert pc.at(200).latched(2) == 30
    pc.outb(P61, 0x01)
    assert pc.at(201).latched(2) == 29
    assert not pc.at(229).inb(P61) & 0x20
    assert pc.at(230).inb(P61) & 0x20              # count 0: OUT high on bit 5
    assert pc.pit.take_edges(pc.clock.ns) == 0     # channel 2 is not IRQ 0


def test_calibration_loop_polling_port61_bit5():
    """Linux's classic pit_calibrate_tsc: gate on, speaker off, channel 2 mode 0 with 50 ms,
    then spin on 0x61 bit 5. Each loop iteration takes the guest 1 us here."""
    board = Board()
    board.clock.ns = 0
    board.outb(P61, (board.inb(P61) & ~0x02) | 0x01)
    latch = PIT_HZ // (1000 // 50)
    board.outb(CTRL, 0xB0)                         # channel 2, lohi, mode 0, binary
    board.outb(CH2, latch & 0xFF)
    board.outb(CH2, latch >> 8)
    loops = 0
    while not board.inb(P61) & 0x20:
        loops += 1
        board.clock.ns += 1000
        assert loops < 10**6
    end = ns_of_tick(latch + 1)                    # N + 1 ticks after the write at tick 0
    assert loops == -(-end // 1000)
    assert 50_000 <= loops <= 50_002
    assert board.inb(P61) & 0x01 and not board.inb(P61) & 0x02


def test_port61_bits_and_the_refresh_toggle(pc):
    pc.outb(P61, 0xFE)                             # bits 4-7 are not writable
    assert pc.port61.value == 0x0E
    pc.clock.ns = 0
    first = pc.inb(P61)
    assert first & 0x0F == 0x0E and not first & 0x10
    assert pc.inb(P61) == first                    # reads at one time agree
    pc.clock.ns = REFRESH_NS - 1
    assert not pc.inb(P61) & 0x10
    pc.clock.ns = REFRESH_NS
    assert pc.inb(P61) & 0x10
    pc.clock.ns = 2 * REFRESH_NS + 5
    assert not pc.inb(P61) & 0x10
    assert pc.port61.next_change_after(2 * REFRESH_NS + 5) == 3 * REFRESH_NS
    assert pc.port61.stats() == {"speaker": True}


def test_read_back_latches_status_then_count_for_several_channels(pc):
    pc.at(0).program(0, 2, 1000)
    pc.at(10)
    pc.outb(CTRL, 0xC6)                            # count and status of channels 0 and 1
    pc.at(500)
    pc.outb(CTRL, 0xE2)                            # a second status latch: ignored
    assert pc.inb(CH0) == 0xB4                     # OUT high, loaded, lohi, mode 2
    assert pc.inb(CH0) | pc.inb(CH0) << 8 == 991   # then the count latched at tick 10
    assert pc.inb(CH1) == 0xB6                     # power-on channel 1: mode 3
    assert pc.inb(CH1) | pc.inb(CH1) << 8 == 65536 - 20
    pc.outb(CTRL, 0xD2)                            # count only (bit 4 set: no status)
    assert pc.inb(CH0) | pc.inb(CH0) << 8 == 1000 - (499 % 1000)
    assert pc.pit.stats()["read_backs"] == 3


def test_mode_6_and_7_alias_2_and_3(pc):
    pc.at(0)
    pc.outb(CTRL, 0x3C)                            # mode bits 110
    pc.outb(CH0, 4)
    pc.outb(CH0, 0)
    assert pc.at(5).status(0) == 0x80 | 0x30 | 0x6 << 1   # the mode bits as written
    assert pc.pit.ch0.mode == 2
    assert pc.pit.next_event_after(0) == ns_of_tick(5)


def test_mode4_software_strobe(pc):
    pc.at(0).program(0, 4, 10)
    assert [pc.at(t).out(0) for t in (1, 10, 11, 12, 30)] == [True, True, False, True, True]
    assert pc.pit.take_edges(ns_of_tick(40)) == 1
    assert pc.pit.next_event_after(ns_of_tick(40)) is None


def test_mode1_and_mode5_are_triggered_by_the_gate(pc):
    pc.at(0).program(2, 1, 20)
    assert pc.at(40).out(2)                        # no trigger yet
    pc.outb(P61, 0x01)                             # rising gate at tick 40
    assert not pc.at(41).out(2)
    assert not pc.at(60).out(2) and pc.at(61).out(2)
    pc.at(70)
    pc.outb(P61, 0x00)
    pc.outb(P61, 0x01)                             # retrigger
    assert not pc.at(71).out(2) and pc.at(91).out(2)
    pc.outb(P61, 0x00)
    pc.at(100).program(2, 5, 5)
    pc.at(110)
    pc.outb(P61, 0x01)
    assert [pc.at(t).out(2) for t in (111, 115, 116, 117)] == [True, True, False, True]


def test_bcd_counting(pc):
    pc.at(0)
    pc.outb(CTRL, 0x31)                            # lohi, mode 0, BCD
    pc.outb(CH0, 0x00)
    pc.outb(CH0, 0x01)                             # 0100 BCD = 100
    assert pc.at(1).latched(0) == 0x0100
    assert pc.at(2).latched(0) == 0x0099
    assert not pc.at(100).out(0) and pc.at(101).out(0)
    assert pc.at(102).latched(0) == 0x9999         # wraps in decimal
    assert pc.status(0) & 1


def test_power_on_state(pc):
    assert pc.pit.take_edges(10**9) == PIT_HZ // 65536        # channel 0 at 18.2 Hz
    assert pc.status(0) == 0xB6 and pc.status(2) == 0xB6
    assert pc.inb(P61) & 0x20 and not pc.inb(P61) & 0x01     # gate 2 low: OUT 2 high
    assert pc.inb(CTRL) == 0xFF


def test_state_round_trips_mid_lohi_write_and_mid_latched_read():
    clock = Clock()
    board = Board(clock)
    clock.at_tick(0)
    board.outb(CTRL, 0x34)
    board.outb(CH0, 11932 & 0xFF)                  # half of a count
    board.outb(P61, 0x03)
    board.outb(CTRL, 0xB0)
    board.outb(CH2, 0x10)
    board.outb(CH2, 0x00)
    clock.at_tick(7)
    board.outb(CTRL, 0x80)
    assert board.inb(CH2) == 16 - 6                # LSB of the latch read, MSB not yet
    pit_state, p61_state = board.pit.state(), board.port61.state()
    assert "_pit" not in p61_state

    copy = Board(clock)
    copy.pit.from_state(pit_state)
    copy.port61.from_state(p61_state)
    assert copy.pit.state() == pit_state
    for b in (board, copy):
        assert b.inb(CH2) == 0                     # the latched MSB
        b.outb(CH0, 11932 >> 8)                    # the second half of the count
    assert copy.pit.next_event_after(clock.ns) == board.pit.next_event_after(clock.ns) \
        == ns_of_tick(8 + 11932)
    assert copy.inb(P61) == board.inb(P61)
    assert copy.pit.state() == board.pit.state()


def test_the_pit_drives_irq0_on_the_pic():
    """The wiring the run loop does: edges since the last look become one PIC pulse."""
    clock = Clock()
    pit = Pit8254(clock)
    pic = PicPair()
    for chip, base in ((pic.master, 0x20), (pic.slave, 0x28)):
        for offset, value in ((0, 0x11), (1, base), (1, 4 if base == 0x20 else 2), (1, 1)):
            chip.write(offset, 1, value)
    pit.write(3, 1, 0x34)
    pit.write(0, 1, 1193 & 0xFF)
    pit.write(0, 1, 1193 >> 8)                     # 1000 Hz
    delivered = 0
    while True:
        clock.ns = pit.next_event_after(clock.ns)
        if clock.ns > 10**9:
            break
        if pit.take_edges(clock.ns):
            pic.pulse(0)
        assert pic.has_interrupt()
        assert pic.acknowledge() == 0x20
        pic.master.write(0, 1, 0x20)
        delivered += 1
    assert delivered == 1000
    clock.ns += 10 * 10**6                         # the edge the loop stopped at and 10 ms
    assert pit.take_edges(clock.ns) == 11          # unattended: 11 edges, one request
    pic.pulse(0)
    assert pic.acknowledge() == 0x20 and not pic.has_interrupt()


def test_mode3_new_count_written_in_the_low_half(pc):
    pc.at(0).program(0, 3, 10)                     # low 6-10, rises at 11
    pc.at(7)
    pc.outb(CH0, 4)
    pc.outb(CH0, 0)
    assert not pc.at(10).out(0)
    assert [pc.at(t).out(0) for t in range(11, 19)] == [True, True, False, False] * 2
    assert pc.at(11).latched(0) == 4
    assert pc.pit.take_edges(ns_of_tick(18)) == 2  # 11, 15


@pytest.mark.parametrize("mode", [2, 3])
def test_gate_low_stops_modes_2_and_3_with_out_high(pc, mode):
    pc.outb(P61, 0x01)
    pc.at(0).program(2, mode, 8)                   # loaded at 1
    pc.at(1 + 5)                                   # mode 2: count 3; mode 3: low half, 6
    pc.outb(P61, 0x00)
    held = pc.latched(2)
    assert pc.out(2)                               # forced high
    assert pc.at(500).latched(2) == held and pc.out(2)
    assert pc.pit.next_change_after(2, pc.clock.ns) is None
    pc.outb(P61, 0x01)                             # rising gate: reload at the next tick
    assert pc.at(501).latched(2) == 8
    assert pc.pit.next_change_after(2, ns_of_tick(501)) == ns_of_tick(508 if mode == 2 else 505)
