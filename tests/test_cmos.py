"""The CMOS RAM and RTC (vmm.devices.cmos), against the MC146818A datasheet and the CMOS layout
QEMU/SeaBIOS use, without KVM.

Time comes from a real clock object, vmm.inputs.VirtualClock, advanced by the test; the polling
tests run the device against a real LiveInput under the virtual clock, with the CMOS as one of its
deadline sources, as the board wires it.
"""

from __future__ import annotations

import pytest

from vmm.devices import CMOS
from vmm.devices import cmos as rtc
from vmm.inputs import LiveInput, NullFeed, VirtualClock
from vmm.outcome import StopRun

MiB = 1 << 20
S = 1_000_000_000
T_1700M = 1_700_000_000            # 2023-11-14 22:13:20 UTC, a Tuesday


def make(epoch=rtc.VIRTUAL_EPOCH, **kw):
    clock = VirtualClock()
    return CMOS(clock.now, epoch=epoch, **kw), clock


def reg(dev, index):
    dev.write(0, 1, index)
    return dev.read(1, 1)


def put(dev, index, value):
    dev.write(0, 1, index)
    dev.write(1, 1, value)


def clock_regs(dev):
    return [reg(dev, r) for r in (0, 2, 4, 6, 7, 8, 9, 0x32)]


# --- date and time ----------------------------------------------------------------------------
def test_the_virtual_epoch_is_2000_01_01_a_saturday():
    dev, _ = make()
    assert clock_regs(dev) == [0x00, 0x00, 0x00, 7, 0x01, 0x01, 0x00, 0x20]


def test_bcd_date_and_time_from_the_epoch():
    dev, _ = make(T_1700M)
    assert clock_regs(dev) == [0x20, 0x13, 0x22, 3, 0x14, 0x11, 0x23, 0x20]


def test_binary_mode():
    dev, _ = make(T_1700M)
    put(dev, 0x0B, 0x06)                               # binary, 24 h
    assert clock_regs(dev) == [20, 13, 22, 3, 14, 11, 23, 20]


def test_time_advances_with_the_run_clock_in_whole_seconds():
    dev, clock = make(T_1700M)
    clock.advance_to(3661 * S + S // 2)
    assert clock_regs(dev)[:3] == [0x21, 0x14, 0x23]
    assert dev.time() == T_1700M + 3661


def test_the_century_rolls_over():
    dev, clock = make(946_684_799)                    # 1999-12-31 23:59:59
    assert clock_regs(dev) == [0x59, 0x59, 0x23, 6, 0x31, 0x12, 0x99, 0x19]
    clock.advance_to(S)
    assert clock_regs(dev) == [0x00, 0x00, 0x00, 7, 0x01, 0x01, 0x00, 0x20]


@pytest.mark.parametrize("b, hour_of, expected", [
    (0x00, 22, 0x90), (0x00, 0, 0x12), (0x00, 12, 0x92), (0x00, 1, 0x01),
    (0x04, 22, 0x8A), (0x04, 0, 12), (0x04, 11, 11), (0x02, 22, 0x22), (0x06, 22, 22),
])
def test_12_and_24_hour_modes(b, hour_of, expected):
    dev, _ = make(rtc.VIRTUAL_EPOCH + hour_of * 3600)
    put(dev, 0x0B, b)
    assert reg(dev, 0x04) == expected


def test_set_freezes_the_clock_and_clearing_it_starts_what_was_written():
    dev, clock = make(T_1700M)
    put(dev, 0x0B, 0x82)                               # SET, BCD, 24 h
    clock.advance_to(5 * S)
    assert reg(dev, 0x00) == 0x20                      # frozen
    for index, value in ((0, 0x56), (2, 0x34), (4, 0x12), (7, 0x29), (8, 0x02), (9, 0x24)):
        put(dev, index, value)                         # 2024-02-29 12:34:56
    assert reg(dev, 0x00) == 0x56
    clock.advance_to(5 * S + S // 3)
    put(dev, 0x0B, 0x02)                               # the second starts now
    clock.advance_to(6 * S + S // 3 - 1)
    assert clock_regs(dev) == [0x56, 0x34, 0x12, 5, 0x29, 0x02, 0x24, 0x20]   # a Thursday
    clock.advance_to(6 * S + S // 3)
    assert reg(dev, 0x00) == 0x57
    assert dev.time_sets == 1


def test_set_in_12_hour_binary_mode_reads_back_the_pm_hour():
    dev, _ = make()
    put(dev, 0x0B, 0x84)                               # SET, binary, 12 h
    put(dev, 0x04, 0x81)                               # 1 PM
    put(dev, 0x0B, 0x06)                               # run, binary, 24 h
    assert reg(dev, 0x04) == 13


def test_set_clears_uie_and_holds_uip_clear():
    dev, clock = make()
    put(dev, 0x0B, 0x12)                               # UIE
    clock.advance_to(S - 1000)
    assert reg(dev, 0x0A) & 0x80
    put(dev, 0x0B, 0x92)                               # SET with UIE: UIE is cleared
    assert reg(dev, 0x0B) == 0x82
    assert not reg(dev, 0x0A) & 0x80


def test_writing_a_clock_register_without_set_moves_the_clock_at_once():
    dev, clock = make(T_1700M)
    clock.advance_to(S // 2)
    put(dev, 0x02, 0x45)                               # minutes
    assert clock_regs(dev)[:3] == [0x20, 0x45, 0x22]
    clock.advance_to(S)                                # the fraction was kept
    assert reg(dev, 0x00) == 0x21


def test_an_impossible_date_is_ignored_and_counted():
    dev, clock = make(T_1700M)
    put(dev, 0x0B, 0x82)
    put(dev, 0x08, 0x13)                               # month 13
    clock.advance_to(2 * S)
    put(dev, 0x0B, 0x02)
    assert dev.bad_time_sets == 1
    assert clock_regs(dev)[:6] == [0x22, 0x13, 0x22, 3, 0x14, 0x11]   # ran on underneath


def test_weekday_writes_without_set_change_nothing():
    dev, _ = make(T_1700M)
    put(dev, 0x06, 0x01)
    assert reg(dev, 0x06) == 3


# --- status registers -------------------------------------------------------------------------
@pytest.mark.parametrize("t, uip", [(0, False), (S - 244_001, False), (S - 244_000, True),
                                    (S - 1, True), (S, False), (7 * S - 1000, True)])
def test_uip_is_set_in_the_244us_before_each_update(t, uip):
    dev, clock = make()
    clock.advance_to(t)
    assert bool(reg(dev, 0x0A) & 0x80) == uip
    assert reg(dev, 0x0A) & 0x7F == 0x26


def test_register_a_stores_divider_and_rate_but_not_uip():
    dev, _ = make()
    put(dev, 0x0A, 0xAF)
    assert reg(dev, 0x0A) == 0x2F


def test_register_d_reports_valid_ram_and_is_read_only():
    dev, _ = make()
    put(dev, 0x0D, 0x00)
    assert reg(dev, 0x0D) == 0x80


def test_register_c_flags_are_cleared_on_read():
    dev, clock = make()
    put(dev, 0x0B, 0x42)                               # PIE
    clock.advance_to(S // 1024 + 1)
    assert dev.irq_pending()
    assert reg(dev, 0x0C) == 0xC0                      # IRQF | PF
    assert reg(dev, 0x0C) == 0x00
    assert not dev.irq_pending()
    put(dev, 0x0C, 0xFF)                               # read-only
    assert reg(dev, 0x0C) == 0x00


def test_flags_without_their_enable_bit_set_no_irqf():
    dev, clock = make()
    put(dev, 0x0A, 0x20)                               # no periodic rate
    clock.advance_to(S)
    assert not dev.irq_pending()
    assert reg(dev, 0x0C) == 0x10                      # UF, but UIE is off: no IRQF


def test_update_ended_interrupt():
    dev, clock = make()
    put(dev, 0x0A, 0x20)
    put(dev, 0x0B, 0x12)                               # UIE
    assert dev.next_event_after(0) == S
    clock.advance_to(S)
    assert dev.irq_pending()
    assert reg(dev, 0x0C) == 0x90
    assert dev.updates == 1


@pytest.mark.parametrize("rate, first", [
    (1, 3_906_250), (2, 7_812_500), (3, 122_071), (6, 976_563), (10, 15_625_000),
    (15, 500_000_000)])
def test_periodic_rate_gives_next_event_after(rate, first):
    """32768 >> (rate - 1) Hz from rate 3; rates 1 and 2 are 256 and 128 Hz."""
    dev, clock = make()
    put(dev, 0x0A, 0x20 | rate)
    put(dev, 0x0B, 0x42)
    assert dev.next_event_after(0) == first
    clock.advance_to(first - 1)
    assert not dev.irq_pending()
    clock.advance_to(first)
    assert dev.irq_pending()
    assert dev.next_event_after(first) is None         # IRQF stays up until C is read
    reg(dev, 0x0C)
    second = dev.next_event_after(first)
    assert abs(second - 2 * first) <= 1


def test_periodic_rate_0_and_pie_off_schedule_nothing():
    dev, _ = make()
    assert dev.next_event_after(0) is None             # rate 6 set, but PIE off
    put(dev, 0x0A, 0x20)
    put(dev, 0x0B, 0x42)
    assert dev.next_event_after(0) is None


def test_periodic_periods_are_counted_exactly():
    dev, clock = make()
    clock.advance_to(3 * S)
    reg(dev, 0x0C)
    assert dev.periodic == 3 * 1024


def test_alarm_matches_and_dont_care_bytes():
    dev, clock = make()
    put(dev, 0x0A, 0x20)
    put(dev, 0x0B, 0x22)                               # AIE
    put(dev, 0x01, 0x05)
    put(dev, 0x03, 0x00)
    put(dev, 0x05, 0x00)                               # 00:00:05
    clock.advance_to(4 * S)
    assert reg(dev, 0x0C) == 0x10
    clock.advance_to(5 * S)
    assert reg(dev, 0x0C) == 0xB0                      # IRQF | AF | UF
    put(dev, 0x01, 0xC0)                               # any second
    clock.advance_to(6 * S)
    assert reg(dev, 0x0C) == 0xB0
    assert dev.alarms == 2


def test_an_alarm_passed_during_a_long_jump_is_seen():
    dev, clock = make()
    for index, value in ((1, 0x30), (3, 0x30), (5, 0x05)):
        put(dev, index, value)                         # 05:30:30
    clock.advance_to(6 * 3600 * S)
    assert reg(dev, 0x0C) & 0x20


# --- polling loops become idle points ---------------------------------------------------------
def polled(epoch=rtc.VIRTUAL_EPOCH):
    inputs = LiveInput(NullFeed(), VirtualClock())
    dev = CMOS(inputs.now, epoch=epoch, idle=inputs.idle)
    inputs.deadline_sources.append(dev.next_event_after)
    return dev, inputs


def test_while_uip_ends_at_the_update():
    dev, inputs = polled()
    inputs.clock.advance_to(S - 100_000)
    reads = 0
    while reg(dev, 0x0A) & 0x80:
        reads += 1
        assert reads < 5
    assert inputs.now() == S and reg(dev, 0x00) == 0x01
    assert inputs.idle_points == 1


def test_waiting_for_uip_to_rise_jumps_to_it():
    dev, inputs = polled()
    reads = 0
    while not reg(dev, 0x0A) & 0x80:
        reads += 1
        assert reads < 5
    assert inputs.now() == S - rtc.UIP_NS


def test_one_read_of_a_is_no_idle_point():
    dev, inputs = polled()
    reg(dev, 0x0A)
    reg(dev, 0x00)
    reg(dev, 0x0A)
    assert inputs.idle_points == 0


def test_polling_register_c_for_the_periodic_flag():
    dev, inputs = polled()
    while not reg(dev, 0x0C) & 0x40:
        pass
    assert inputs.now() == 976_563


def test_polling_uip_with_set_held_never_ends_so_the_run_goes_idle():
    dev, inputs = polled()
    put(dev, 0x0B, 0x82)
    from vmm.inputs import IDLE_CONFIRM
    with pytest.raises(StopRun) as stop:
        for _ in range(2 * IDLE_CONFIRM + 10):    # two reads of A make one idle point
            reg(dev, 0x0A)
    assert stop.value.reason == "idle"


def test_a_passed_poll_wait_is_forgotten():
    dev, inputs = polled()
    reg(dev, 0x0A)
    reg(dev, 0x0A)
    assert inputs.now() == S - rtc.UIP_NS
    assert dev.next_event_after(inputs.now()) is None


# --- the index port, NMI and the RAM ----------------------------------------------------------
def test_index_bit_7_masks_nmi_and_is_reported():
    dev, _ = make()
    dev.write(0, 1, 0x8A)
    assert dev.nmi_disabled and dev.index == 0x0A
    assert dev.read(1, 1) & 0x7F == 0x26
    assert dev.stats()["nmi_disabled"] and dev.stats()["nmi_mask_writes"] == 1
    dev.write(0, 1, 0x0A)
    assert not dev.nmi_disabled


def test_the_index_port_reads_all_ones():
    dev, _ = make()
    dev.write(0, 1, 0x10)
    assert dev.read(0, 1) == 0xFF


def test_other_bytes_are_plain_ram():
    dev, _ = make()
    for index in (0x0E, 0x40, 0x7F):
        put(dev, index, 0x5A)
        assert reg(dev, index) == 0x5A


@pytest.mark.parametrize("mem, ext, high", [(16 * MiB, 15 * 1024, 0), (128 * MiB, 0xFFFF, 1792),
                                            (32 * MiB, 31 * 1024, 256), (MiB, 0, 0)])
def test_memory_size_registers(mem, ext, high):
    dev, _ = make(mem_size=mem)
    assert reg(dev, 0x15) | reg(dev, 0x16) << 8 == 640
    assert reg(dev, 0x17) | reg(dev, 0x18) << 8 == ext
    assert reg(dev, 0x30) | reg(dev, 0x31) << 8 == ext
    assert reg(dev, 0x34) | reg(dev, 0x35) << 8 == high
    assert reg(dev, 0x5B) == reg(dev, 0x5C) == reg(dev, 0x5D) == 0


def test_configuration_bytes_and_checksum():
    dev, _ = make(mem_size=16 * MiB)
    assert reg(dev, 0x10) == 0x00                      # no floppy drives
    assert reg(dev, 0x14) == 0x02                      # coprocessor, VGA, no floppy
    total = sum(reg(dev, i) for i in range(0x10, 0x2E))
    assert reg(dev, 0x2E) << 8 | reg(dev, 0x2F) == total


@pytest.mark.parametrize("epoch", [-1, rtc.MAX_EPOCH + 1, 1.5, "0"])
def test_a_bad_epoch_is_refused(epoch):
    with pytest.raises(ValueError, match="CMOS epoch"):
        CMOS(VirtualClock().now, epoch=epoch)


def test_state_round_trip():
    dev, clock = make(T_1700M)
    put(dev, 0x0B, 0x46)
    put(dev, 0x02, 0x59)
    clock.advance_to(S // 2)
    copy = CMOS(clock.now)
    copy.from_state(dev.state())
    assert copy.state() == dev.state()
    clock.advance_to(2 * S)
    assert clock_regs(copy) == clock_regs(dev)
    assert reg(copy, 0x0C) == reg(dev, 0x0C) == 0xD0            # IRQF | PF | UF


def test_stats():
    dev, clock = make()
    reg(dev, 0x00)
    put(dev, 0x40, 1)
    clock.advance_to(S)
    reg(dev, 0x0C)
    stats = dev.stats()
    assert stats["reads"] == 2 and stats["writes"] == 1
    assert stats["updates"] == 1 and stats["periodic"] == 1024


def test_a_halting_guest_gets_every_periodic_interrupt_of_a_second():
    """The board's loop under the virtual clock: the guest halts (an idle point), time jumps to
    the CMOS's next event, IRQ 8 rises, the handler reads C. 1024 Hz gives 1024 interrupts in a
    second of guest time, at the exact period boundaries."""
    dev, inputs = polled()
    put(dev, 0x0B, 0x42)                               # PIE at rate 6
    times = []
    while inputs.now() < S:
        inputs.idle()                                  # HLT
        if dev.irq_pending():
            times.append(inputs.now())
            assert reg(dev, 0x0C) & 0xE0 == 0xC0            # IRQF | PF (UF at the second)
    assert len(times) == 1024
    assert times[0] == 976_563 and times[-1] == S
    assert all(t == -(-k * S // 1024) for k, t in enumerate(times, 1))


def test_the_update_interrupt_arrives_once_a_second():
    dev, inputs = polled()
    put(dev, 0x0A, 0x20)                               # no periodic rate
    put(dev, 0x0B, 0x12)                               # UIE
    seconds = []
    while len(seconds) < 3:
        inputs.idle()
        if dev.irq_pending():
            seconds.append((inputs.now(), reg(dev, 0x00)))
            reg(dev, 0x0C)
    assert seconds == [(S, 0x01), (2 * S, 0x02), (3 * S, 0x03)]
