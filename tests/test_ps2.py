"""The 8042 PS/2 controller and keyboard (vmm.devices.ps2) and port 0x92 (vmm.devices.port92),
against the 8042/MF2 documentation (OSDev's "8042 PS/2 Controller" and "PS/2 Keyboard"), without
KVM.

Input comes from a real input source: vmm.inputs.LiveInput reading a pipe the test wrote (and
closed), under the real clock (every byte written is available at once, as from a terminal) or
the virtual clock (one byte released per idle point, as a pipe under --clock virtual).
"""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmm.devices import PortAlias, PortBus, PS2Controller, SystemControlA
from vmm.devices import ps2
from vmm.errors import EXIT_CODES
from vmm.inputs import FdFeed, LiveInput, RealClock, VirtualClock
from vmm.outcome import StopRun

DATA, STATUS = ps2.DATA, ps2.STATUS
OBF, SYS, CMD, UNLOCKED, AUX, TIMEOUT = 0x01, 0x04, 0x08, 0x10, 0x20, 0x40


@pytest.fixture
def source():
    """source(data, virtual=False) -> a LiveInput whose feed is a pipe holding `data`."""
    fds = []

    def make(data: bytes = b"", virtual: bool = False) -> LiveInput:
        r, w = os.pipe()
        fds.append(r)
        os.write(w, data)
        os.close(w)
        return LiveInput(FdFeed(r), VirtualClock() if virtual else RealClock())
    yield make
    for fd in fds:
        os.close(fd)


@pytest.fixture
def kbc(source):
    def make(data: bytes = b"", virtual: bool = False) -> PS2Controller:
        return PS2Controller(source(data, virtual))
    return make


def command(dev, value):
    dev.write(STATUS, 1, value)


def send(dev, value):
    dev.write(DATA, 1, value)


def status(dev):
    return dev.read(STATUS, 1)


def drain(dev, limit=64) -> list[int]:
    """What a polling driver reads: data while the status says a byte waits."""
    out = []
    while status(dev) & OBF:
        out.append(dev.read(DATA, 1))
        assert len(out) <= limit
    return out


def answer(dev, *writes) -> list[int]:
    """Write each (port, value) and return everything the controller then has to say."""
    for port, value in writes:
        dev.write(port, 1, value)
    return drain(dev)


# --- the controller ---------------------------------------------------------------------------
def test_status_after_power_on_as_a_bios_leaves_it(kbc):
    dev = kbc()
    assert status(dev) == SYS | UNLOCKED
    assert dev.command_byte == 0x65                   # translation, port 2 off, SYS, IRQ 1 on


def test_status_command_data_bit_follows_the_last_write(kbc):
    dev = kbc()
    command(dev, 0xA7)
    assert status(dev) & CMD
    command(dev, 0xD1)
    send(dev, 0xDF)
    assert not status(dev) & CMD


def test_status_input_buffer_full_is_never_set(kbc):
    dev = kbc(b"abc")
    for _ in range(10):
        assert not status(dev) & 0x02
        dev.read(DATA, 1)


def test_the_init_sequence_osdev_and_linux_run(kbc):
    """OSDev "Initialising the PS/2 Controller", as Linux's i8042 also does it."""
    dev = kbc(b"x")
    command(dev, 0xAD)                               # disable port 1
    command(dev, 0xA7)                               # disable port 2
    assert drain(dev) == []                          # flush: nothing (port 1 is disabled)
    assert dev.keys == 0                             # the typed key waits in the input source
    assert answer(dev, (STATUS, 0x20)) == [0x75]     # both ports disabled now
    cb = 0x75 & ~(0x01 | 0x02 | 0x40)                # no IRQs, no translation
    command(dev, 0x60)
    send(dev, cb)
    assert answer(dev, (STATUS, 0x20)) == [cb]
    assert answer(dev, (STATUS, 0xAA)) == [0x55]     # controller self-test
    command(dev, 0x60)
    send(dev, cb)                                    # some controllers reset: restore it
    command(dev, 0xA8)                               # dual channel? bit 5 clears: yes
    assert answer(dev, (STATUS, 0x20))[0] & 0x20 == 0
    command(dev, 0xA7)
    assert answer(dev, (STATUS, 0xAB)) == [0x00]     # port 1 interface test
    assert answer(dev, (STATUS, 0xA9)) == [0x00]     # port 2 interface test
    command(dev, 0xAE)                               # enable port 1
    command(dev, 0x20)
    cb = dev.read(DATA, 1)
    assert cb & 0x10 == 0
    command(dev, 0x60)
    send(dev, cb | 0x01 | 0x40)                      # IRQ 1, translation
    # reset the keyboard: ack, self-test passed; then the key that waited arrives: x
    assert answer(dev, (DATA, 0xFF)) == [0xFA, 0xAA, 0x2D, 0xAD]


def test_self_test_sets_the_system_flag(kbc):
    dev = kbc()
    command(dev, 0x60)
    send(dev, 0x00)
    assert not status(dev) & SYS
    assert answer(dev, (STATUS, 0xAA)) == [0x55]
    assert status(dev) & SYS


def test_controller_ram_bytes_read_and_write(kbc):
    dev = kbc()
    assert answer(dev, (STATUS, 0x7F), (DATA, 0x5A), (STATUS, 0x3F)) == [0x5A]
    assert answer(dev, (STATUS, 0x21)) == [0x00]


def test_disable_and_enable_port_2_set_and_clear_command_byte_bit_5(kbc):
    dev = kbc()
    command(dev, 0xA8)
    assert not dev.command_byte & 0x20
    command(dev, 0xA7)
    assert dev.command_byte & 0x20


def test_disable_and_enable_port_1_hold_and_release_keys(kbc):
    dev = kbc(b"q")
    command(dev, 0xAD)
    assert dev.command_byte & 0x10
    assert drain(dev) == [] and dev.keys == 0
    command(dev, 0xAE)
    assert drain(dev) == [0x10, 0x90]


def test_a_keyboard_answer_waits_while_port_1_is_disabled(kbc):
    dev = kbc()
    command(dev, 0xAD)
    send(dev, 0xEE)                                  # echo: the keyboard answers ...
    assert drain(dev) == []                          # ... but its clock is held
    command(dev, 0xAE)
    assert drain(dev) == [0xEE]


def test_read_output_port_and_a20_through_d1(kbc):
    dev = kbc()
    assert answer(dev, (STATUS, 0xD0)) == [0xCF]      # reset high, A20 on
    assert dev.a20
    command(dev, 0xD1)
    send(dev, 0xDD)                                   # A20 off, reset line high
    assert not dev.a20
    assert answer(dev, (STATUS, 0xD0)) == [0xCD]      # bit 4 reads "a port-1 byte waits"
    command(dev, 0xD1)
    send(dev, 0xDF)
    assert dev.a20


def test_read_output_port_shows_a_waiting_keyboard_byte(kbc):
    dev = kbc()
    send(dev, 0xEE)                                   # the echo waits in the buffer
    command(dev, 0xD0)
    assert dev.read(DATA, 1) == 0xEE
    assert drain(dev) == [0xCF | 0x10]


def test_a20_commands_dd_and_df(kbc):
    dev = kbc()
    command(dev, 0xDD)
    assert not dev.a20
    command(dev, 0xDF)
    assert dev.a20


@pytest.mark.parametrize("value", [0xFE, 0xFC, 0xF0, 0xF6])
def test_pulsing_output_line_0_resets(kbc, value):
    dev = kbc()
    with pytest.raises(StopRun) as stop:
        command(dev, value)
    assert stop.value.reason == "reset" and stop.value.exit_code == EXIT_CODES["reset"] == 52
    assert f"8042 command {value:#04x}" in stop.value.message


@pytest.mark.parametrize("value", [0xFF, 0xFD, 0xF1])
def test_pulses_that_leave_line_0_alone_do_nothing(kbc, value):
    command(kbc(), value)


def test_writing_the_output_port_with_bit_0_clear_resets(kbc):
    dev = kbc()
    command(dev, 0xD1)
    with pytest.raises(StopRun) as stop:
        send(dev, 0xFE)
    assert stop.value.reason == "reset"
    assert "output port written 0xfe" in stop.value.message


def test_d2_places_a_byte_as_if_from_the_keyboard(kbc):
    dev = kbc()
    command(dev, 0xD2)
    send(dev, 0x42)
    assert status(dev) & (OBF | AUX) == OBF
    assert dev.irq_pending()
    assert drain(dev) == [0x42]


def test_d3_places_a_byte_as_if_from_port_2(kbc):
    dev = kbc()
    command(dev, 0xD3)
    send(dev, 0x5A)
    assert status(dev) & (OBF | AUX | TIMEOUT) == OBF | AUX
    assert not dev.irq_pending() and not dev.aux_irq_pending()   # IRQ 12 is off
    assert dev.read(DATA, 1) == 0x5A


def test_d4_to_an_absent_mouse_times_out_with_fe(kbc):
    dev = kbc()
    command(dev, 0x60)
    send(dev, 0x47)                                   # IRQ 12 on, port 2 on
    command(dev, 0xD4)
    send(dev, 0xFF)                                   # reset the mouse: nobody there
    assert status(dev) & (OBF | AUX | TIMEOUT) == OBF | AUX | TIMEOUT
    assert dev.aux_irq_pending() and not dev.irq_pending()
    assert dev.read(DATA, 1) == 0xFE
    assert not status(dev) & (TIMEOUT | AUX)
    assert dev.aux_writes == 1


def test_unknown_controller_commands_are_ignored_and_counted(kbc):
    dev = kbc()
    command(dev, 0xC8)
    assert drain(dev) == [] and dev.unknown_commands == 1


def test_data_read_with_nothing_waiting_returns_the_last_byte(kbc):
    dev = kbc()
    assert answer(dev, (STATUS, 0xAA)) == [0x55]
    assert dev.read(DATA, 1) == 0x55
    assert dev.read(DATA, 1) == 0x55


def test_port_alias_maps_0x64_onto_the_controller_leaving_0x61_free():
    dev = PS2Controller(None)
    bus = PortBus()
    bus.register(dev, 0x60)
    bus.register(PortAlias(dev, ps2.STATUS), 0x64)
    assert bus.lookup(0x61) is None
    alias, offset = bus.lookup(0x64)
    alias.write(offset, 1, 0xAA)
    assert alias.read(offset, 1) & OBF
    assert bus.lookup(0x60)[0].read(0, 1) == 0x55
    assert alias.state() == {}                        # the controller's state is kept once


# --- keyboard commands ------------------------------------------------------------------------
def test_keyboard_reset_acks_then_passes_its_self_test(kbc):
    assert answer(kbc(), (DATA, 0xFF)) == [0xFA, 0xAA]


def test_set_leds_acks_the_command_and_its_data(kbc):
    dev = kbc()
    assert answer(dev, (DATA, 0xED)) == [0xFA]
    assert answer(dev, (DATA, 0x07)) == [0xFA]
    assert dev.leds == 7


def test_get_scancode_set_through_translation(kbc):
    dev = kbc()
    assert answer(dev, (DATA, 0xF0), (DATA, 0x00)) == [0xFA, 0xFA, 0x41]   # set 2, translated


def test_get_and_set_scancode_set_without_translation(kbc):
    dev = kbc()
    command(dev, 0x60)
    send(dev, 0x25)
    assert answer(dev, (DATA, 0xF0), (DATA, 0x00)) == [0xFA, 0xFA, 0x02]
    assert answer(dev, (DATA, 0xF0), (DATA, 0x01)) == [0xFA, 0xFA]
    assert answer(dev, (DATA, 0xF0), (DATA, 0x00)) == [0xFA, 0xFA, 0x01]
    assert answer(dev, (DATA, 0xF0), (DATA, 0x03)) == [0xFA, 0xFA]
    assert dev.scancode_set == 3


def test_set_scancode_set_refuses_a_set_that_does_not_exist(kbc):
    dev = kbc()
    assert answer(dev, (DATA, 0xF0), (DATA, 0x04)) == [0xFA, 0xFE]
    assert dev.scancode_set == 2


def test_typematic_rate_acks_both_bytes(kbc):
    dev = kbc()
    assert answer(dev, (DATA, 0xF3), (DATA, 0x20)) == [0xFA, 0xFA]
    assert dev.typematic == 0x20


@pytest.mark.parametrize("cb, ident", [(0x65, [0xFA, 0xAB, 0x41]), (0x25, [0xFA, 0xAB, 0x83])])
def test_identify_an_mf2_keyboard(kbc, cb, ident):
    dev = kbc()
    command(dev, 0x60)
    send(dev, cb)
    assert answer(dev, (DATA, 0xF2)) == ident


def test_echo(kbc):
    assert answer(kbc(), (DATA, 0xEE)) == [0xEE]


def test_disable_scanning_leaves_keys_in_the_input_source(kbc):
    dev = kbc(b"ab")
    assert answer(dev, (DATA, 0xF5)) == [0xFA]
    assert drain(dev) == [] and dev.keys == 0
    assert answer(dev, (DATA, 0xF4)) == [0xFA, 0x1E, 0x9E, 0x30, 0xB0]


def test_set_defaults_restores_set_2_and_keeps_scanning(kbc):
    dev = kbc()
    answer(dev, (DATA, 0xF0), (DATA, 0x01), (DATA, 0xED), (DATA, 0x02))
    assert answer(dev, (DATA, 0xF6)) == [0xFA]
    assert dev.scancode_set == 2 and dev.leds == 0 and dev.scanning


def test_reset_restores_defaults(kbc):
    dev = kbc()
    answer(dev, (DATA, 0xF5), (DATA, 0xF0), (DATA, 0x01), (DATA, 0xF3), (DATA, 0x00))
    assert answer(dev, (DATA, 0xFF)) == [0xFA, 0xAA]
    assert dev.scancode_set == 2 and dev.scanning and dev.typematic == 0x2B


@pytest.mark.parametrize("value", [0x00, 0x42, 0xEF, 0xFB, 0xFD])
def test_unknown_keyboard_commands_ask_for_a_resend(kbc, value):
    assert answer(kbc(), (DATA, value)) == [0xFE]


def test_resend_repeats_the_last_byte(kbc):
    dev = kbc()
    assert answer(dev, (DATA, 0xEE)) == [0xEE]
    assert answer(dev, (DATA, 0xFE)) == [0xEE]


def test_set3_key_type_commands_are_acknowledged(kbc):
    assert answer(kbc(), (DATA, 0xF8)) == [0xFA]


# --- input bytes become scancodes -------------------------------------------------------------
LSHIFT, LSHIFT_UP, LCTRL, LCTRL_UP = 0x2A, 0xAA, 0x1D, 0x9D

SET1 = [
    (b"a", [0x1E, 0x9E]),
    (b"z", [0x2C, 0xAC]),
    (b"m", [0x32, 0xB2]),
    (b"1", [0x02, 0x82]),
    (b"0", [0x0B, 0x8B]),
    (b"-", [0x0C, 0x8C]),
    (b";", [0x27, 0xA7]),
    (b"/", [0x35, 0xB5]),
    (b"`", [0x29, 0xA9]),
    (b"\\", [0x2B, 0xAB]),
    (b" ", [0x39, 0xB9]),
    (b"A", [LSHIFT, 0x1E, 0x9E, LSHIFT_UP]),
    (b"Q", [LSHIFT, 0x10, 0x90, LSHIFT_UP]),
    (b"!", [LSHIFT, 0x02, 0x82, LSHIFT_UP]),
    (b"@", [LSHIFT, 0x03, 0x83, LSHIFT_UP]),
    (b"?", [LSHIFT, 0x35, 0xB5, LSHIFT_UP]),
    (b"_", [LSHIFT, 0x0C, 0x8C, LSHIFT_UP]),
    (b'"', [LSHIFT, 0x28, 0xA8, LSHIFT_UP]),
    (b"~", [LSHIFT, 0x29, 0xA9, LSHIFT_UP]),
    (b"\n", [0x1C, 0x9C]),
    (b"\r", [0x1C, 0x9C]),
    (b"\x08", [0x0E, 0x8E]),
    (b"\x7f", [0x0E, 0x8E]),
    (b"\t", [0x0F, 0x8F]),
    (b"\x1b", [0x01, 0x81]),
    (b"\x03", [LCTRL, 0x2E, 0xAE, LCTRL_UP]),                 # Ctrl-C
    (b"\x01", [LCTRL, 0x1E, 0x9E, LCTRL_UP]),                 # Ctrl-A
    (b"\x1a", [LCTRL, 0x2C, 0xAC, LCTRL_UP]),                 # Ctrl-Z
    (b"\x00", [LCTRL, LSHIFT, 0x03, 0x83, LSHIFT_UP, LCTRL_UP]),   # Ctrl-@
    (b"\x1b[A", [0xE0, 0x48, 0xE0, 0xC8]),
    (b"\x1b[B", [0xE0, 0x50, 0xE0, 0xD0]),
    (b"\x1b[C", [0xE0, 0x4D, 0xE0, 0xCD]),
    (b"\x1b[D", [0xE0, 0x4B, 0xE0, 0xCB]),
    (b"\x1bOA", [0xE0, 0x48, 0xE0, 0xC8]),
    (b"\x1bOD", [0xE0, 0x4B, 0xE0, 0xCB]),
    (b"\x1b[H", [0xE0, 0x47, 0xE0, 0xC7]),
    (b"\x1b[F", [0xE0, 0x4F, 0xE0, 0xCF]),
    (b"\x1bx", [0x01, 0x81, 0x2D, 0xAD]),                      # not a sequence: ESC, then x
    (b"\x1b[Z", [0x01, 0x81, 0x1A, 0x9A, LSHIFT, 0x2C, 0xAC, LSHIFT_UP]),
    (b"\x1b\x1b[A", [0x01, 0x81, 0xE0, 0x48, 0xE0, 0xC8]),
    (b"\x1b[", [0x01, 0x81, 0x1A, 0x9A]),                      # cut short: ESC, [
    (b"\x1bO\x1b", [0x01, 0x81, LSHIFT, 0x18, 0x98, LSHIFT_UP, 0x01, 0x81]),
    (b"hi\n", [0x23, 0xA3, 0x17, 0x97, 0x1C, 0x9C]),
]


@pytest.mark.parametrize("data, codes", SET1, ids=[repr(d) for d, _ in SET1])
def test_input_bytes_become_set_1_scancodes(kbc, data, codes):
    dev = kbc(data)
    assert drain(dev) == codes
    assert dev.scancodes == len(codes)


def read_until_idle(dev) -> list[int]:
    got = []
    with pytest.raises(StopRun) as stop:             # in the end nothing more comes: idle
        for _ in range(1000):
            if status(dev) & OBF:
                got.append(dev.read(DATA, 1))
    assert stop.value.reason == "idle"
    return got


@pytest.mark.parametrize("data, codes", [c for c in SET1 if b"\x1b" not in c[0]],
                         ids=[repr(d) for d, _ in SET1 if b"\x1b" not in d])
def test_one_byte_per_idle_point_gives_the_same_scancodes(kbc, data, codes):
    """Under the virtual clock a pipe releases one byte per idle point: the same keys."""
    assert read_until_idle(kbc(data, virtual=True)) == codes


def test_an_escape_sequence_released_byte_by_byte_is_plain_keys(kbc):
    """Read-ahead never waits for input that is not there: a pipe under the virtual clock gives
    an arrow's bytes one per idle point, so they are the keys ESC, [ and A; a trailing ESC is
    delivered, not held back."""
    assert read_until_idle(kbc(b"\x1b[A\x1b", virtual=True)) == [
        0x01, 0x81, 0x1A, 0x9A, LSHIFT, 0x1E, 0x9E, LSHIFT_UP, 0x01, 0x81]


SET2 = [
    (b"a", [0x1C, 0xF0, 0x1C]),
    (b"A", [0x12, 0x1C, 0xF0, 0x1C, 0xF0, 0x12]),
    (b"\n", [0x5A, 0xF0, 0x5A]),
    (b"\x7f", [0x66, 0xF0, 0x66]),
    (b"\x1b", [0x76, 0xF0, 0x76]),
    (b"\x03", [0x14, 0x21, 0xF0, 0x21, 0xF0, 0x14]),
    (b"\x1b[A", [0xE0, 0x75, 0xE0, 0xF0, 0x75]),
    (b"\x1b[D", [0xE0, 0x6B, 0xE0, 0xF0, 0x6B]),
]


@pytest.mark.parametrize("data, codes", SET2, ids=[repr(d) for d, _ in SET2])
def test_without_translation_set_2_is_sent(kbc, data, codes):
    dev = kbc(data)
    command(dev, 0xAD)                               # hold keys while reprogramming
    command(dev, 0x60)
    send(dev, 0x05)                                  # translation off
    command(dev, 0xAE)
    assert drain(dev) == codes


def test_set_1_without_translation_is_set_1(kbc):
    dev = kbc(b"a")
    command(dev, 0xAD)
    command(dev, 0x60)
    send(dev, 0x15)                                  # translation off, port 1 still off
    send(dev, 0xF0)
    send(dev, 0x01)
    command(dev, 0xAE)
    assert drain(dev) == [0xFA, 0xFA, 0x1E, 0x9E]


def test_set1_table_agrees_with_the_8042_translation_of_set2():
    """Every key's set-1 code is what the 8042 translates its set-2 code to (a few entries of
    the IBM translation table, spot-checked across the keyboard)."""
    translation = {0x76: 0x01, 0x16: 0x02, 0x45: 0x0B, 0x66: 0x0E, 0x0D: 0x0F, 0x15: 0x10,
                   0x5A: 0x1C, 0x14: 0x1D, 0x1C: 0x1E, 0x0E: 0x29, 0x12: 0x2A, 0x5D: 0x2B,
                   0x1A: 0x2C, 0x4A: 0x35, 0x29: 0x39, 0x75: 0x48, 0x6B: 0x4B, 0x74: 0x4D,
                   0x72: 0x50, 0x6C: 0x47, 0x69: 0x4F}
    for s1, s2, _ in ps2.KEYS.values():
        if s2 in translation:
            assert translation[s2] == s1
    assert len({s1 for s1, _, _ in ps2.KEYS.values()}) == len(ps2.KEYS)
    assert len({(s2, e) for _, s2, e in ps2.KEYS.values()}) == len(ps2.KEYS)


def test_every_ascii_byte_has_a_key_and_high_bytes_are_dropped(kbc):
    assert set(ps2.BYTE_KEYS) == set(range(0x80))
    dev = kbc(b"\x80\xffa")
    assert drain(dev) == [0x1E, 0x9E]
    assert dev.unmapped == 2 and dev.keys == 3


# --- the output buffer, its queue and IRQ 1 ---------------------------------------------------
def test_input_is_taken_one_key_at_a_time(kbc, source):
    inputs = source(b"abc")
    dev = PS2Controller(inputs)
    assert status(dev) & OBF
    assert dev.keys == 1                             # "b" and "c" wait in the input source
    assert len(inputs.pending) == 2
    assert dev.read(DATA, 1) == 0x1E
    assert drain(dev) == [0x9E, 0x30, 0xB0, 0x2E, 0xAE]


def test_keyboard_queue_is_bounded_and_overruns_are_counted(kbc):
    dev = kbc()
    for _ in range(20):
        send(dev, 0xEE)                              # answers nobody reads
    assert drain(dev) == [0xEE] * (1 + ps2.KBD_QUEUE_BYTES)   # the buffer, then the queue
    assert dev.overruns == 20 - 1 - ps2.KBD_QUEUE_BYTES


def test_controller_answers_nobody_reads_are_bounded(kbc):
    dev = kbc()
    for _ in range(100):
        command(dev, 0x20)
    assert drain(dev) == [0x65] * (1 + ps2.CTRL_QUEUE_BYTES)
    assert dev.overruns == 100 - 1 - ps2.CTRL_QUEUE_BYTES


def test_a_status_read_with_nothing_is_an_idle_point(source):
    inputs = source(b"")
    dev = PS2Controller(inputs)
    status(dev)
    assert inputs.idle_points == 1
    send(dev, 0xEE)
    status(dev)                                      # a byte waits: no idle point
    assert inputs.idle_points == 1


def test_irq1_needs_a_byte_and_command_byte_bit_0(kbc):
    dev = kbc(b"k")
    assert not dev.irq_pending()
    assert dev.poll() is True                         # an injection point lets the key in
    assert dev.irq_pending()
    command(dev, 0x60)
    send(dev, 0x64)                                   # IRQ 1 off
    assert status(dev) & OBF and not dev.irq_pending()
    command(dev, 0x60)
    send(dev, 0x65)
    assert dev.irq_pending()
    assert dev.read(DATA, 1) == 0x25
    assert not dev.irq_pending()


def test_irq1_falls_after_each_byte_and_rises_when_the_next_is_loaded(kbc):
    """An edge per byte for an edge-triggered PIC: the read that takes a byte never loads the
    next; the next access (or poll at an injection point) does."""
    dev = kbc(b"\x1b[A")
    levels = []
    assert dev.poll()
    for _ in range(4):
        levels.append(dev.irq_pending())
        dev.read(DATA, 1)                             # the handler reads 0x60 only
        levels.append(dev.irq_pending())
        dev.poll()
    assert levels == [True, False] * 4
    assert dev.poll() is False


def test_a_controller_answer_raises_irq1_with_port_1_disabled(kbc):
    """As on an 8042 (and QEMU): the command byte's IRQ 1 bit covers the controller's answers."""
    dev = kbc()
    command(dev, 0xAD)
    command(dev, 0x20)
    assert dev.irq_pending()


def test_state_round_trip_mid_sequence(kbc, source):
    dev = kbc(b"A")
    assert dev.read(DATA, 1) == 0x2A                  # shift made; 1E 9E AA queued
    snapshot = dev.state()
    copy = PS2Controller(source(b""))
    copy.from_state(snapshot)
    assert copy.state() == snapshot
    assert drain(copy) == [0x1E, 0x9E, 0xAA]


def test_stats(kbc):
    dev = kbc(b"ab")
    command(dev, 0x20)
    drain(dev)
    send(dev, 0xEE)
    drain(dev)
    stats = dev.stats()
    assert stats["keys"] == 2 and stats["scancodes"] == 4       # key bytes, not the echo
    assert stats["commands"] == 1 and stats["keyboard_commands"] == 1


# --- port 0x92 --------------------------------------------------------------------------------
def test_port92_stores_fast_a20_and_reads_it_back():
    port = SystemControlA()
    assert port.read(0, 1) == 0 and not port.a20
    port.write(0, 1, 0x02)
    assert port.a20 and port.read(0, 1) == 0x02
    port.write(0, 1, 0x00)
    assert not port.a20


def test_port92_fast_reset_on_a_rising_bit_0():
    port = SystemControlA()
    with pytest.raises(StopRun) as stop:
        port.write(0, 1, 0x03)
    assert stop.value.reason == "reset" and stop.value.exit_code == 52
    assert "port 0x92" in stop.value.message


def test_port92_bit_0_already_set_does_not_reset_again():
    port = SystemControlA()
    port.from_state({"value": 0x01, "writes": 0})
    port.write(0, 1, 0x03)                            # no 0 -> 1 edge
    assert port.read(0, 1) == 0x03


def test_a_data_read_with_nothing_waiting_takes_the_next_key(source):
    """Kernels that read 0x60 in a loop without the status register still get each byte; such
    a read that finds nothing is an idle point."""
    inputs = source(b"a")
    dev = PS2Controller(inputs)
    assert [dev.read(DATA, 1) for _ in range(3)] == [0x1E, 0x9E, 0x9E]
    assert inputs.idle_points == 1


# --- property: a guest's keymap gets the text back --------------------------------------------
SET1_CHARS = {s1: (plain, shifted) for plain, shifted, s1, _ in ps2._CHAR_KEYS}
SET1_SPECIAL = {0x39: " ", 0x1C: "\n", 0x0E: "\b", 0x0F: "\t", 0x01: "\x1b"}
SET1_ARROWS = {0x48: "\x1b[A", 0x50: "\x1b[B", 0x4D: "\x1b[C", 0x4B: "\x1b[D", 0x47: "\x1b[H",
               0x4F: "\x1b[F"}


def decode_set1(codes: list[int]) -> str:
    """What a tutorial kernel's set-1 keyboard handler makes of the codes: shift and ctrl state,
    E0 prefixes, characters on make codes only."""
    shift = ctrl = extended = False
    out = []
    for code in codes:
        if code == 0xE0:
            extended = True
            continue
        make, key = not code & 0x80, code & 0x7F
        if extended:
            extended = False
            if make:
                out.append(SET1_ARROWS[key])
        elif key == 0x2A:
            shift = make
        elif key == 0x1D:
            ctrl = make
        elif make:
            if key in SET1_SPECIAL:
                out.append(SET1_SPECIAL[key])
            else:
                plain, shifted = SET1_CHARS[key]
                char = shifted if shift else plain
                if ctrl:
                    char = chr(ord(char.upper()) & 0x1F) if char.isalpha() else \
                        {"2": "\x00", "6": "\x1e", "-": "\x1f", "\\": "\x1c", "]": "\x1d"}[plain]
                out.append(char)
    assert not (shift or ctrl or extended), "a modifier or prefix was left pending"
    return "".join(out)


def normalised(text: str) -> str:
    """The keys are what a keyboard can say: Enter for \\r, Backspace for DEL, ESC [ for ESC O."""
    return re.sub("\x1bO([ABCDHF])", "\x1b[\\1", text.replace("\r", "\n").replace("\x7f", "\b"))


TOKENS = ["\x1b[A", "\x1b[B", "\x1b[C", "\x1b[D", "\x1bOA", "\x1b", "\x03", "A", "a", "O", "~",
          "\n", "["]


@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=40)
       | st.lists(st.sampled_from(TOKENS), max_size=12).map("".join))
@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_ascii_text_decodes_back_through_a_set1_keymap(kbc, text):
    dev = kbc(text.encode())
    codes = drain(dev, limit=20 * len(text) + 8)
    assert decode_set1(codes) == normalised(text)
    assert dev.keys == len(text)
