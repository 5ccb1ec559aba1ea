"""The port-I/O devices (vmm.devices) and the live input source (vmm.inputs), without KVM.

Devices get their outside world injected: output goes to a sink, input and time come from an
input source. `FakeInput` below is a small deterministic input source implementing the protocol
documented in vmm/inputs.py (key, wait_key, timer_fired, idle, now, obs, deadline_sources) with a
clock the test sets by hand; it records every call so the tests can check *when* a device asks.
"""

from __future__ import annotations

import os
import select

import pytest

from vmm.devices import (ExitDevice, IntervalTimer, Keyboard, LineOutput, PortBus, PortConflict,
                         Serial16550)
from vmm.devices.bus import Device
from vmm.devices.exitdev import ExitRequested
from vmm.inputs import FdFeed, LiveInput, NullFeed, QUIT_KEY, INTERRUPT_KEY
from vmm.outcome import StopRun
from vmm.terminal import raw_input_mode

MS = 1_000_000


class FakeInput:
    """A deterministic input source: queued key bytes, a hand-set clock, and a call log.

    `on_idle(self)`, if set, runs at each idle point: the place where a real source would wait
    for the host, so a test can deliver a key or advance the clock there.
    """

    def __init__(self, keys: bytes = b"", now: int = 0, on_idle=None):
        self.keys = bytearray(keys)
        self.clock = now
        self.obs = 0
        self.deadline_sources = []
        self.on_idle = on_idle
        self.calls: list[tuple] = []

    def key(self, device: str):
        self.calls.append(("key", device))
        if not self.keys:
            return None
        byte = self.keys[0]
        del self.keys[0]
        return byte

    def wait_key(self, device: str) -> int:
        """A read that waits: idle points until a byte arrives (as vmm/inputs.py documents)."""
        self.calls.append(("wait_key", device))
        for _ in range(1000):
            byte = self.key(device)
            if byte is not None:
                return byte
            self.idle()
        raise AssertionError("wait_key: no key arrived after 1000 idle points")

    def timer_fired(self, deadline: int, period: int) -> int:
        self.calls.append(("timer_fired", deadline, period))
        if self.clock < deadline:
            return 0
        return (self.clock - deadline) // period + 1

    def idle(self) -> None:
        self.calls.append(("idle",))
        if self.on_idle is not None:
            self.on_idle(self)

    def now(self) -> int:
        return self.clock

    def count(self, name: str) -> int:
        return sum(1 for call in self.calls if call[0] == name)


class Sink:
    def __init__(self):
        self.lines: list[tuple[str, str, bool]] = []

    def __call__(self, device: str, text: str, partial: bool) -> None:
        self.lines.append((device, text, partial))

    @property
    def texts(self) -> list[str]:
        return [text for _, text, _ in self.lines]


def write_bytes(device, data: bytes, offset: int = 0) -> None:
    for byte in data:
        device.write(offset, 1, byte)


# --- the port bus -------------------------------------------------------------------------------
class Named(Device):
    def __init__(self, name):
        self.name = name


def test_bus_maps_each_port_to_device_and_offset():
    bus, dev = PortBus(), Named("com1")
    bus.register(dev, 0x3F8, 8)
    assert bus.lookup(0x3F8) == (dev, 0)
    assert bus.lookup(0x3FD) == (dev, 5)
    assert bus.lookup(0x3FF) == (dev, 7)


def test_bus_lookup_of_unregistered_port_is_none():
    bus = PortBus()
    bus.register(Named("a"), 0x42)
    assert bus.lookup(0x43) is None
    assert bus.lookup(0x41) is None


def test_bus_rejects_overlapping_ranges():
    bus = PortBus()
    bus.register(Named("timer"), 0x46, 2)
    with pytest.raises(PortConflict) as info:
        bus.register(Named("other"), 0x45, 2)
    assert "other" in str(info.value) and "timer" in str(info.value)


def test_bus_overlap_rejection_registers_nothing():
    bus, first = PortBus(), Named("first")
    bus.register(first, 0x47)
    with pytest.raises(PortConflict):
        bus.register(Named("second"), 0x44, 4)         # 0x44-0x47: only the last port clashes
    assert bus.lookup(0x44) is None
    assert bus.lookup(0x47) == (first, 0)
    assert [d.name for _, _, d in bus.devices] == ["first"]


def test_bus_adjacent_ranges_do_not_conflict():
    bus = PortBus()
    bus.register(Named("kbd"), 0x44, 2)
    bus.register(Named("timer"), 0x46, 2)
    assert bus.lookup(0x45)[0].name == "kbd"
    assert bus.lookup(0x46)[0].name == "timer"


def test_port_conflict_is_a_value_error():
    assert issubclass(PortConflict, ValueError)


@pytest.mark.parametrize("base, length", [(-1, 1), (0xFFFF, 2), (0x10000, 1), (0x40, 0)])
def test_bus_rejects_ranges_outside_port_space(base, length):
    with pytest.raises(ValueError):
        PortBus().register(Named("x"), base, length)


def test_bus_describe_is_sorted_by_port():
    bus = PortBus()
    bus.register(Named("com1"), 0x3F8, 8)
    bus.register(Named("console"), 0x42)
    assert bus.describe() == [{"name": "console", "port": 0x42, "length": 1},
                              {"name": "com1", "port": 0x3F8, "length": 8}]


# --- LineOutput ---------------------------------------------------------------------------------
def test_line_output_emits_on_newline():
    sink = Sink()
    out = LineOutput("console", sink)
    write_bytes(out, b"hello\n")
    assert sink.lines == [("console", "hello", False)]


def test_line_output_buffers_until_newline():
    sink = Sink()
    out = LineOutput("console", sink)
    write_bytes(out, b"hel")
    assert sink.lines == []


def test_line_output_keeps_tabs():
    sink = Sink()
    out = LineOutput("console", sink)
    write_bytes(out, b"a\tb\n")
    assert sink.texts == ["a\tb"]


def test_line_output_empty_line():
    sink = Sink()
    write_bytes(LineOutput("console", sink), b"\n\n")
    assert sink.texts == ["", ""]


def test_line_output_drops_and_counts_nonprintable():
    sink = Sink()
    out = LineOutput("console", sink)
    write_bytes(out, b"a\x00b\x1b\x7f\xffc\r\n")
    assert sink.texts == ["abc"]
    assert out.dropped == 5
    assert out.stats() == {"bytes": 9, "dropped": 5}


def test_line_output_dot_mode_shows_dots():
    sink = Sink()
    out = LineOutput("serial", sink, nonprintable="dot")
    write_bytes(out, b"a\x00b\xff\r\n")
    assert sink.texts == ["a.b.."]
    assert out.dropped == 0


def test_line_output_drop_cr():
    sink = Sink()
    out = LineOutput("com1", sink, drop_cr=True)
    write_bytes(out, b"hi\r\n")
    assert sink.texts == ["hi"]
    assert out.dropped == 0


def test_line_output_drop_cr_in_dot_mode_drops_only_cr():
    sink = Sink()
    write_bytes(LineOutput("x", sink, nonprintable="dot", drop_cr=True), b"a\r\x01\n")
    assert sink.texts == ["a."]


def test_line_output_max_line_flushes_whole_not_partial():
    sink = Sink()
    out = LineOutput("console", sink, max_line=4)
    write_bytes(out, b"abcdefghij\n")
    assert sink.lines == [("console", "abcd", False), ("console", "efgh", False),
                          ("console", "ij", False)]


# Regression: dots used to bypass the max_line check, growing the buffer without bound.
def test_line_output_max_line_also_bounds_dots():
    sink = Sink()
    out = LineOutput("serial", sink, nonprintable="dot", max_line=4)
    write_bytes(out, b"\x01" * 10)
    assert sink.texts[:2] == ["....", "...."]


def test_line_output_finish_emits_partial_line():
    sink = Sink()
    out = LineOutput("console", sink)
    write_bytes(out, b"done\nprompt> ")
    out.finish()
    assert sink.lines == [("console", "done", False), ("console", "prompt> ", True)]


def test_line_output_finish_with_nothing_buffered_emits_nothing():
    sink = Sink()
    out = LineOutput("console", sink)
    write_bytes(out, b"done\n")
    out.finish()
    assert sink.lines == [("console", "done", False)]


@pytest.mark.parametrize("size, value", [(2, 0x4141), (4, 0x12345641), (2, 0x0141)])
def test_line_output_wide_write_uses_low_byte(size, value):
    sink = Sink()
    out = LineOutput("console", sink)
    out.write(0, size, value)
    out.write(0, 1, 0x0A)
    assert sink.texts == ["A"]


# --- Keyboard -----------------------------------------------------------------------------------
DATA, STATUS = 0, 1


def test_keyboard_status_read_latches_next_byte():
    kbd = Keyboard(FakeInput(b"x"))
    assert kbd.read(STATUS, 1) == 1
    assert kbd.read(DATA, 1) == ord("x")


def test_keyboard_status_reads_zero_without_input():
    assert Keyboard(FakeInput()).read(STATUS, 1) == 0


def test_keyboard_ack_then_read_data_order_works():
    inputs = FakeInput(b"ab")
    kbd = Keyboard(inputs)
    got = []
    for _ in range(2):
        assert kbd.read(STATUS, 1) == 1
        kbd.write(STATUS, 1, 0)                 # ack first ...
        got.append(kbd.read(DATA, 1))           # ... then read the data port
    assert bytes(got) == b"ab"


def test_keyboard_read_then_ack_order_works():
    kbd = Keyboard(FakeInput(b"ab"))
    got = []
    for _ in range(2):
        assert kbd.read(STATUS, 1) == 1
        got.append(kbd.read(DATA, 1))
        kbd.write(STATUS, 1, 0)
    assert bytes(got) == b"ab"


def test_keyboard_ack_does_not_latch_a_new_byte():
    inputs = FakeInput(b"ab")
    kbd = Keyboard(inputs)
    kbd.read(STATUS, 1)
    calls_before = inputs.count("key")
    kbd.write(STATUS, 1, 0)
    assert inputs.count("key") == calls_before      # the ack asked the source for nothing
    assert kbd.read(DATA, 1) == ord("a")           # and the data port still holds the old byte


def test_keyboard_status_read_while_latched_takes_no_new_byte():
    inputs = FakeInput(b"ab")
    kbd = Keyboard(inputs)
    kbd.read(STATUS, 1)
    kbd.read(STATUS, 1)
    kbd.read(STATUS, 1)
    assert inputs.count("key") == 1
    assert kbd.read(DATA, 1) == ord("a")


def test_keyboard_data_read_does_not_clear_status():
    kbd = Keyboard(FakeInput(b"a"))
    kbd.read(STATUS, 1)
    assert kbd.read(DATA, 1) == ord("a")
    assert kbd.read(DATA, 1) == ord("a")
    assert kbd.read(STATUS, 1) == 1


def test_keyboard_data_read_asks_the_source_nothing():
    inputs = FakeInput(b"a")
    Keyboard(inputs).read(DATA, 1)
    assert inputs.calls == []


def test_keyboard_writing_1_to_status_is_not_an_ack():
    kbd = Keyboard(FakeInput(b"ab"))
    kbd.read(STATUS, 1)
    kbd.write(STATUS, 1, 1)
    kbd.read(STATUS, 1)
    assert kbd.read(DATA, 1) == ord("a")


def test_keyboard_idle_point_when_nothing_to_latch():
    inputs = FakeInput()
    Keyboard(inputs).read(STATUS, 1)
    assert inputs.calls == [("key", "keyboard"), ("idle",), ("key", "keyboard")]


def test_keyboard_no_idle_point_when_a_byte_is_waiting():
    inputs = FakeInput(b"a")
    Keyboard(inputs).read(STATUS, 1)
    assert inputs.count("idle") == 0


def test_keyboard_no_idle_point_while_latched():
    inputs = FakeInput(b"a")
    kbd = Keyboard(inputs)
    kbd.read(STATUS, 1)
    kbd.read(STATUS, 1)
    assert inputs.count("idle") == 0


def test_keyboard_key_arriving_during_idle_is_latched_at_that_read():
    inputs = FakeInput(on_idle=lambda src: src.keys.extend(b"z"))
    kbd = Keyboard(inputs)
    assert kbd.read(STATUS, 1) == 1
    assert kbd.read(DATA, 1) == ord("z")


def test_keyboard_counts_keys():
    kbd = Keyboard(FakeInput(b"abc"))
    for _ in range(3):
        kbd.read(STATUS, 1)
        kbd.write(STATUS, 1, 0)
    assert kbd.stats() == {"keys": 3, "acks": 3}
    kbd.write(STATUS, 1, 0)                      # an ack with nothing latched counts for nothing
    assert kbd.stats() == {"keys": 3, "acks": 3}


# --- IntervalTimer ------------------------------------------------------------------------------
PERIOD, CONTROL = 0, 1
ENABLE, FIRED = 1, 2


def make_timer(period_ms: int = 10, now: int = 0, enable: bool = True):
    inputs = FakeInput(now=now)
    timer = IntervalTimer(inputs)
    timer.write(PERIOD, 1, period_ms)
    if enable:
        timer.write(CONTROL, 1, ENABLE)
    return inputs, timer


def test_timer_enable_arms_at_now_plus_period():
    inputs, timer = make_timer(10, now=5 * MS)
    assert timer.deadline == 15 * MS
    assert timer.next_event_after(5 * MS) == 15 * MS


def test_timer_disabled_has_no_next_event():
    _, timer = make_timer(10, enable=False)
    assert timer.next_event_after(0) is None


def test_timer_next_event_after_a_due_firing_is_the_following_period():
    _, timer = make_timer(10)                       # deadline 10 ms
    assert timer.next_event_after(10 * MS) == 20 * MS
    assert timer.next_event_after(35 * MS) == 40 * MS


def test_timer_not_fired_before_deadline():
    inputs, timer = make_timer(10)
    inputs.clock = 10 * MS - 1
    assert timer.read(CONTROL, 1) == ENABLE


def test_timer_firing_sets_bit_1():
    inputs, timer = make_timer(10)
    inputs.clock = 10 * MS
    assert timer.read(CONTROL, 1) == ENABLE | FIRED
    assert timer.firings == 1


def test_timer_asks_the_source_with_deadline_and_period_in_ns():
    inputs, timer = make_timer(10, now=3 * MS)
    timer.read(CONTROL, 1)
    assert ("timer_fired", 13 * MS, 10 * MS) in inputs.calls


def test_timer_fired_bit_stays_until_acked():
    inputs, timer = make_timer(10)
    inputs.clock = 10 * MS
    timer.read(CONTROL, 1)
    assert timer.read(CONTROL, 1) == ENABLE | FIRED


def test_timer_ack_with_1_clears_fired_and_keeps_enabled():
    inputs, timer = make_timer(10)
    inputs.clock = 10 * MS
    timer.read(CONTROL, 1)
    timer.write(CONTROL, 1, ENABLE)
    assert timer.read(CONTROL, 1) == ENABLE
    assert timer.enabled


def test_timer_writing_back_read_value_with_bit_1_cleared_acks():
    inputs, timer = make_timer(10)
    inputs.clock = 10 * MS
    status = timer.read(CONTROL, 1)
    timer.write(CONTROL, 1, status & ~FIRED)
    assert timer.read(CONTROL, 1) == ENABLE


def test_timer_writing_back_read_value_unchanged_does_not_ack():
    inputs, timer = make_timer(10)
    inputs.clock = 10 * MS
    status = timer.read(CONTROL, 1)
    timer.write(CONTROL, 1, status)
    assert timer.read(CONTROL, 1) == ENABLE | FIRED


def test_timer_ack_keeps_the_period_schedule():
    inputs, timer = make_timer(10)
    inputs.clock = 12 * MS
    timer.read(CONTROL, 1)
    timer.write(CONTROL, 1, ENABLE)
    assert timer.deadline == 20 * MS                 # not re-armed from the ack


def test_timer_fires_again_next_period_after_ack():
    inputs, timer = make_timer(10)
    inputs.clock = 10 * MS
    timer.read(CONTROL, 1)
    timer.write(CONTROL, 1, ENABLE)
    inputs.clock = 20 * MS
    assert timer.read(CONTROL, 1) == ENABLE | FIRED
    assert (timer.firings, timer.lost) == (2, 0)


def test_timer_disable_clears_fired_and_deadline():
    inputs, timer = make_timer(10)
    inputs.clock = 10 * MS
    timer.read(CONTROL, 1)
    timer.write(CONTROL, 1, 0)
    assert timer.read(CONTROL, 1) == 0
    assert timer.next_event_after(10 * MS) is None


def test_timer_disabled_never_fires():
    inputs, timer = make_timer(10)
    timer.write(CONTROL, 1, 0)
    inputs.clock = 1000 * MS
    assert timer.read(CONTROL, 1) == 0
    assert timer.firings == 0


def test_timer_re_enable_arms_from_now():
    inputs, timer = make_timer(10)
    timer.write(CONTROL, 1, 0)
    inputs.clock = 100 * MS
    timer.write(CONTROL, 1, ENABLE)
    assert timer.deadline == 110 * MS


def test_timer_lost_firing_counted_when_not_acked():
    inputs, timer = make_timer(10)
    inputs.clock = 10 * MS
    timer.read(CONTROL, 1)
    inputs.clock = 20 * MS
    timer.read(CONTROL, 1)
    assert (timer.firings, timer.lost) == (2, 1)
    assert timer.stats() == {"firings": 2, "lost": 1, "acks": 0, "periods_ms": [10]}
    timer.write(CONTROL, 1, ENABLE)              # ack: the fired bit clear, still enabled
    timer.write(CONTROL, 1, ENABLE)              # nothing fired since: no second ack
    timer.write(PERIOD, 2, 250)
    timer.write(PERIOD, 2, 0)
    timer.write(PERIOD, 2, 10)
    assert timer.stats() == {"firings": 2, "lost": 1, "acks": 1, "periods_ms": [10, 250]}


def test_timer_several_periods_elapsed_at_once_are_counted():
    inputs, timer = make_timer(10)
    inputs.clock = 35 * MS                        # periods ending at 10, 20, 30
    assert timer.read(CONTROL, 1) == ENABLE | FIRED
    assert (timer.firings, timer.lost) == (3, 2)
    assert timer.deadline == 40 * MS


def test_timer_several_periods_while_fired_all_lost():
    inputs, timer = make_timer(10)
    inputs.clock = 10 * MS
    timer.read(CONTROL, 1)
    inputs.clock = 30 * MS
    timer.read(CONTROL, 1)
    assert (timer.firings, timer.lost) == (3, 2)


def test_timer_period_0_never_fires():
    inputs, timer = make_timer(0)
    inputs.clock = 10_000 * MS
    assert timer.read(CONTROL, 1) == ENABLE
    assert timer.next_event_after(0) is None
    assert inputs.count("timer_fired") == 0


def test_timer_period_0_then_nonzero_fires_again():
    inputs, timer = make_timer(10)
    timer.write(PERIOD, 1, 0)
    inputs.clock = 50 * MS
    assert timer.read(CONTROL, 1) == ENABLE
    timer.write(PERIOD, 1, 5)
    inputs.clock = 55 * MS
    assert timer.read(CONTROL, 1) == ENABLE | FIRED


def test_timer_period_change_while_enabled_rearms_from_now():
    inputs, timer = make_timer(10)
    inputs.clock = 7 * MS
    timer.write(PERIOD, 1, 20)
    assert timer.deadline == 27 * MS
    inputs.clock = 26 * MS
    assert timer.read(CONTROL, 1) == ENABLE
    inputs.clock = 27 * MS
    assert timer.read(CONTROL, 1) == ENABLE | FIRED


def test_timer_period_write_while_disabled_does_not_arm():
    inputs, timer = make_timer(10, enable=False)
    inputs.clock = 5 * MS
    timer.write(PERIOD, 1, 20)
    assert timer.next_event_after(5 * MS) is None
    timer.write(CONTROL, 1, ENABLE)
    assert timer.deadline == 25 * MS


@pytest.mark.parametrize("size, value", [(1, 200), (2, 1000), (2, 0xFFFF), (4, 100_000),
                                         (4, 0x12345678)])
def test_timer_period_write_sizes(size, value):
    inputs, timer = make_timer(enable=False)
    timer.write(PERIOD, size, value)
    assert timer.period_ms == value
    assert timer.read(PERIOD, size) == value


def test_timer_narrow_period_read_returns_low_bits():
    _, timer = make_timer(enable=False)
    timer.write(PERIOD, 4, 0x12345678)
    assert timer.read(PERIOD, 1) == 0x78
    assert timer.read(PERIOD, 2) == 0x5678


def test_timer_idle_point_at_read_that_finds_nothing():
    inputs, timer = make_timer(10)
    timer.read(CONTROL, 1)
    assert inputs.count("idle") == 1


def test_timer_no_idle_point_when_fired():
    inputs, timer = make_timer(10)
    inputs.clock = 10 * MS
    timer.read(CONTROL, 1)
    assert inputs.count("idle") == 0


def test_timer_firing_during_idle_is_seen_by_that_read():
    inputs, timer = make_timer(10)
    inputs.on_idle = lambda src: setattr(src, "clock", 10 * MS)
    assert timer.read(CONTROL, 1) == ENABLE | FIRED


def test_timer_period_read_is_not_an_idle_point():
    inputs, timer = make_timer(10)
    timer.read(PERIOD, 1)
    assert inputs.calls == []


# --- Serial16550 --------------------------------------------------------------------------------
RBR, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)


def make_serial(keys: bytes = b"", on_idle=None):
    inputs, sink = FakeInput(keys, on_idle=on_idle), Sink()
    return inputs, sink, Serial16550(inputs, sink)


def test_serial_thr_output_is_line_buffered():
    _, sink, com = make_serial()
    write_bytes(com, b"hi")
    assert sink.lines == []
    write_bytes(com, b"\n")
    assert sink.lines == [("com1", "hi", False)]


def test_serial_thr_drops_carriage_return():
    _, sink, com = make_serial()
    write_bytes(com, b"ok\r\n")
    assert sink.texts == ["ok"]


def test_serial_finish_flushes_partial_line():
    _, sink, com = make_serial()
    write_bytes(com, b"> ")
    com.finish()
    assert sink.lines == [("com1", "> ", True)]


def test_serial_rbr_returns_next_key():
    _, _, com = make_serial(b"ab")
    assert com.read(RBR, 1) == ord("a")
    assert com.read(RBR, 1) == ord("b")


def test_serial_rbr_16_bit_read_has_key_in_al_and_zero_in_ah():
    _, _, com = make_serial(b"k")
    assert com.read(RBR, 2) == ord("k")


def test_serial_rbr_16_bit_read_has_ier_in_ah():
    _, _, com = make_serial(b"k")
    com.write(IER, 1, 0x05)
    assert com.read(RBR, 2) == (0x05 << 8) | ord("k")


def test_serial_rbr_with_no_key_is_a_waiting_read():
    inputs, _, com = make_serial(on_idle=lambda src: src.keys.extend(b"q"))
    assert com.read(RBR, 1) == ord("q")
    assert ("wait_key", "com1") in inputs.calls


def test_serial_rbr_after_lsr_saw_data_does_not_wait():
    inputs, _, com = make_serial(b"x")
    com.read(LSR, 1)
    assert com.read(RBR, 1) == ord("x")
    assert inputs.count("wait_key") == 0


def test_serial_rbr_waits_at_idle_points_for_a_key():
    idles = []

    def deliver_on_third(src):
        idles.append(1)
        if len(idles) == 3:
            src.keys.extend(b"q")
    inputs, _, com = make_serial(on_idle=deliver_on_third)
    assert com.read(RBR, 1) == ord("q")
    assert inputs.count("idle") == 3


def test_serial_lsr_data_ready_when_key_waiting():
    _, _, com = make_serial(b"x")
    assert com.read(LSR, 1) == 0x61            # DR | THRE | TEMT


def test_serial_lsr_no_data_has_transmitter_empty_bits():
    _, _, com = make_serial()
    assert com.read(LSR, 1) == 0x60


def test_serial_lsr_read_does_not_consume_the_key():
    _, _, com = make_serial(b"xy")
    com.read(LSR, 1)
    com.read(LSR, 1)
    assert com.read(RBR, 1) == ord("x")
    assert com.read(LSR, 1) & 1
    assert com.read(RBR, 1) == ord("y")


def test_serial_lsr_clear_after_last_key_read():
    _, _, com = make_serial(b"x")
    com.read(LSR, 1)
    com.read(RBR, 1)
    assert com.read(LSR, 1) & 1 == 0


def test_serial_lsr_with_no_data_is_one_idle_point():
    inputs, _, com = make_serial()
    com.read(LSR, 1)
    assert inputs.calls == [("key", "com1"), ("idle",), ("key", "com1")]


def test_serial_lsr_with_data_is_not_an_idle_point():
    inputs, _, com = make_serial(b"x")
    com.read(LSR, 1)
    assert inputs.count("idle") == 0


def test_serial_dlab_exposes_divisor_latch():
    _, sink, com = make_serial(b"k")
    com.write(LCR, 1, 0x83)
    com.write(RBR, 1, 0x01)                    # DLL
    com.write(IER, 1, 0x00)                    # DLM
    assert (com.read(RBR, 1), com.read(IER, 1)) == (0x01, 0x00)
    assert com.divisor == 1
    assert sink.lines == []                    # the DLL write was not output
    com.write(LCR, 1, 0x03)
    assert com.read(RBR, 1) == ord("k")        # DLAB clear: offset 0 is RBR again
    assert com.read(IER, 1) == 0               # and offset 1 is IER, untouched by the DLM write


def test_serial_divisor_high_byte():
    _, _, com = make_serial()
    com.write(LCR, 1, 0x80)
    com.write(IER, 1, 0x12)
    com.write(RBR, 1, 0x34)
    assert com.divisor == 0x1234


def test_serial_dlab_read_of_offset_0_takes_no_key():
    inputs, _, com = make_serial(b"k")
    com.write(LCR, 1, 0x80)
    com.read(RBR, 1)
    assert inputs.count("key") == 0


def test_serial_iir_reads_no_interrupt_pending():
    _, _, com = make_serial()
    assert com.read(IIR, 1) == 0x01


def test_serial_scratch_register_round_trips():
    _, _, com = make_serial()
    com.write(SCR, 1, 0x5A)
    assert com.read(SCR, 1) == 0x5A


def test_serial_lcr_round_trips():
    _, _, com = make_serial()
    com.write(LCR, 1, 0x1B)
    assert com.read(LCR, 1) == 0x1B


def test_serial_ier_keeps_only_low_four_bits():
    _, _, com = make_serial()
    com.write(IER, 1, 0xFF)
    assert com.read(IER, 1) == 0x0F


def test_serial_stats_count_received_and_written():
    _, _, com = make_serial(b"ab")
    com.read(RBR, 1)
    write_bytes(com, b"x\n")
    assert com.stats() == {"received": 1, "bytes": 2, "dropped": 0}


# --- ExitDevice ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, 1, 0x31])
def test_exit_device_raises_exit_requested_with_the_value(value):
    with pytest.raises(ExitRequested) as info:
        ExitDevice().write(0, 1, value)
    assert info.value.value == value


# --- LiveInput ----------------------------------------------------------------------------------
class FakeClock:
    """A host-time clock (name 'real') that the test sets by hand."""
    name = "real"

    def __init__(self, now: int = 0):
        self.t = now

    def now(self) -> int:
        return self.t


@pytest.fixture
def pipe():
    r, w = os.pipe()
    fds = {"r": r, "w": w}
    yield fds
    for fd in fds.values():
        if fd is not None:
            os.close(fd)


def close_writer(pipe):
    os.close(pipe["w"])
    pipe["w"] = None


def test_live_input_gives_pipe_bytes_one_per_key_call(pipe):
    inputs = LiveInput(FdFeed(pipe["r"]), FakeClock())
    os.write(pipe["w"], b"abc")
    assert [inputs.key("keyboard") for _ in range(4)] == [ord("a"), ord("b"), ord("c"), None]


def test_live_input_key_is_none_with_nothing_written(pipe):
    inputs = LiveInput(FdFeed(pipe["r"]), FakeClock())
    assert inputs.key("keyboard") is None
    assert not inputs.feed.eof


def test_live_input_handles_eof(pipe):
    feed = FdFeed(pipe["r"])
    inputs = LiveInput(feed, FakeClock())
    os.write(pipe["w"], b"z")
    close_writer(pipe)
    assert inputs.key("com1") == ord("z")
    assert inputs.key("com1") is None
    assert feed.eof
    assert inputs.key("com1") is None


def test_live_input_pipe_passes_quit_key_through_as_a_byte(pipe):
    inputs = LiveInput(FdFeed(pipe["r"], terminal=False), FakeClock())
    os.write(pipe["w"], bytes([QUIT_KEY, INTERRUPT_KEY]))
    assert inputs.key("keyboard") == QUIT_KEY
    assert inputs.key("keyboard") == INTERRUPT_KEY


def test_live_input_now_is_the_clock():
    assert LiveInput(NullFeed(), FakeClock(1234)).now() == 1234


@pytest.mark.parametrize("now, fired", [(99, 0), (100, 1), (109, 1), (110, 2), (135, 4)])
def test_live_input_timer_fired_arithmetic(now, fired):
    inputs = LiveInput(NullFeed(), FakeClock(now))
    assert inputs.timer_fired(deadline=100, period=10) == fired


def test_live_input_observe_counts():
    inputs = LiveInput(NullFeed(), FakeClock())
    inputs.observe()
    inputs.observe()
    assert inputs.obs == 2


class RecordingFeed:
    """A host feed that never has data and records how long it was asked to wait."""
    eof = False

    def __init__(self):
        self.waits = []

    def read(self, block: bool = False) -> bytes:
        return b""

    def wait(self, timeout: float) -> None:
        self.waits.append(timeout)


def test_live_input_idle_naps_at_most_10ms():
    feed = RecordingFeed()
    LiveInput(feed, FakeClock()).idle()
    assert feed.waits == [0.01]


def test_live_input_idle_naps_until_the_next_deadline():
    feed = RecordingFeed()
    inputs = LiveInput(feed, FakeClock(1_000_000))
    inputs.deadline_sources += [lambda now: None, lambda now: 3_000_000, lambda now: 5_000_000]
    inputs.idle()
    assert feed.waits == [pytest.approx(0.002)]


def test_live_input_idle_does_not_nap_past_a_deadline():
    feed = RecordingFeed()
    inputs = LiveInput(feed, FakeClock(10 * MS))
    inputs.deadline_sources.append(lambda now: 5 * MS)
    inputs.idle()
    assert feed.waits == []


def test_live_input_idle_does_not_nap_with_pending_input(pipe):
    inputs = LiveInput(FdFeed(pipe["r"]), FakeClock())
    os.write(pipe["w"], b"ab")
    inputs.key("keyboard")                      # reads "ab", hands out "a", keeps "b" pending
    inputs.idle()
    assert inputs.idle_points == 1
    assert inputs.key("keyboard") == ord("b")


def test_live_input_idle_runs_stop_check():
    def stop():
        raise StopRun("timeout", "test")
    inputs = LiveInput(RecordingFeed(), FakeClock())
    inputs.stop_check = stop
    with pytest.raises(StopRun) as info:
        inputs.idle()
    assert info.value.reason == "timeout"


def test_live_input_idle_naps_until_the_timer_fires():
    feed, clock = RecordingFeed(), FakeClock()
    inputs = LiveInput(feed, clock)
    timer = IntervalTimer(inputs)
    inputs.deadline_sources.append(timer.next_event_after)
    timer.write(PERIOD, 1, 4)
    timer.write(CONTROL, 1, ENABLE)                 # fires at 4 ms
    clock.t = 1 * MS
    assert timer.read(CONTROL, 1) == ENABLE         # nothing yet: an idle point
    assert feed.waits == [pytest.approx(0.003)]


def test_live_input_wait_key_idles_until_stopped():
    feed = RecordingFeed()
    inputs = LiveInput(feed, FakeClock())

    def stop_on_third_idle():
        if inputs.idle_points == 3:
            raise StopRun("interrupted", "test")
    inputs.stop_check = stop_on_third_idle
    with pytest.raises(StopRun):
        inputs.wait_key("com1")
    assert inputs.idle_points == 3
    assert len(feed.waits) == 3


def test_live_input_wait_key_returns_waiting_byte(pipe):
    inputs = LiveInput(FdFeed(pipe["r"]), FakeClock())
    os.write(pipe["w"], b"k")
    assert inputs.wait_key("com1") == ord("k")
    assert inputs.idle_points == 0


def test_fd_feed_wait_returns_when_data_arrives(pipe):
    feed = FdFeed(pipe["r"])
    os.write(pipe["w"], b"x")
    feed.wait(5.0)                              # returns at once: data is there
    assert feed.read() == b"x"


# --- terminal feed (a real pty) -----------------------------------------------------------------
@pytest.fixture
def pty():
    master, slave = os.openpty()
    with raw_input_mode(slave):
        yield master, slave
    os.close(master)
    os.close(slave)


def type_keys(pty, data: bytes) -> None:
    master, slave = pty
    os.write(master, data)
    assert select.select([slave], [], [], 5.0)[0], "pty delivered nothing"


def test_terminal_feed_passes_ordinary_keys(pty):
    master, slave = pty
    inputs = LiveInput(FdFeed(slave, terminal=True), FakeClock())
    type_keys(pty, b"hi")
    assert inputs.key("keyboard") == ord("h")
    assert inputs.key("keyboard") == ord("i")


def test_terminal_feed_quit_key_stops_the_run(pty):
    master, slave = pty
    inputs = LiveInput(FdFeed(slave, terminal=True), FakeClock())
    type_keys(pty, bytes([QUIT_KEY]))
    with pytest.raises(StopRun) as info:
        inputs.key("keyboard")
    assert info.value.reason == "quit"
    assert info.value.exit_code == 36             # its own status: 0 is the guest's HLT


def test_terminal_feed_ctrl_c_interrupts_the_run(pty):
    master, slave = pty
    inputs = LiveInput(FdFeed(slave, terminal=True), FakeClock())
    type_keys(pty, bytes([INTERRUPT_KEY]))
    with pytest.raises(StopRun) as info:
        inputs.key("keyboard")
    assert info.value.reason == "interrupted"
    assert info.value.exit_code == 130
