"""The pc board's devices against their datasheets, without KVM: the 16550 UART (COM1/COM2), the
VGA text-mode registers, and the exit, shutdown and POST ports.

Input comes from vmm's real input sources: `LiveInput` on a virtual clock with no host feed (so
an idle point with nothing scheduled ends the run as "idle", which is how these tests see that
a read *was* an idle point), and `ReplayInput` for a recorded key at a given observation.
"""

from __future__ import annotations

import pytest

from vmm.devices import PortBus
from vmm.devices.exitdev import (AcpiShutdown, BochsShutdown, DebugExitPort, PostCodePort,
                                 debug_exit_status)
from vmm.devices.serial import Serial16550
from vmm.devices.vga import MONO_BASE, MONO_COUNT, PORT_BASE, PORT_COUNT, VgaText
from vmm.errors import EXIT_CODES
from vmm.inputs import LiveInput, NullFeed, ReplayInput, VirtualClock
from vmm.outcome import RunEnd, StopRun

RBR, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)
THR, DLL, DLM, FCR = 0, 0, 1, 2


class Recorder:
    """What a live input source reports to a recording: here, just the keys it gave out."""

    def __init__(self):
        self.keys: list[tuple[int, str, int]] = []

    def key(self, obs, at, device, byte):
        self.keys.append((obs, device, byte))


class Sink:
    def __init__(self):
        self.lines: list[tuple[str, str, bool]] = []

    def __call__(self, device, text, partial):
        self.lines.append((device, text, partial))


def live(keys: bytes = b""):
    """A live input source with `keys` typed ahead, on a virtual clock with nothing scheduled."""
    rec = Recorder()
    inputs = LiveInput(NullFeed(), VirtualClock(), record=rec)
    inputs.pending.extend((b, 0) for b in keys)
    return inputs, rec


def uart(keys: bytes = b"", **options):
    inputs, rec = live(keys)
    sink = Sink()
    return Serial16550(inputs, sink, **options), inputs, rec, sink


def out(dev, offset, value, size=1):
    dev.write(offset, size, value)


def ends_idle(fn, *args):
    """fn(*args), repeated as a guest that waits repeats it, reaches an idle point with nothing
    to come: the run ends as idle (after IDLE_CONFIRM idle points in a row, vmm.inputs)."""
    from vmm.inputs import IDLE_CONFIRM
    with pytest.raises(StopRun) as info:
        for _ in range(IDLE_CONFIRM):
            fn(*args)
    assert info.value.reason == "idle"


# --- 16550: reset and plain registers ---------------------------------------------------------
@pytest.mark.parametrize("waiting_rbr", [True, False])
def test_uart_reset_values(waiting_rbr):
    com, *_ = uart(b"", waiting_rbr=waiting_rbr)
    assert (com.read(IER, 1), com.read(IIR, 1), com.read(LCR, 1), com.read(MCR, 1),
            com.read(MSR, 1), com.read(SCR, 1)) == (0x00, 0x01, 0x03, 0x00, 0xB0, 0x00)
    assert com.divisor == 12
    assert com.lsr() == 0x60 and not com.irq_pending()


def test_uart_divisor_latch_and_lcr_scr_mcr_store():
    com, *_ = uart(waiting_rbr=False)
    out(com, LCR, 0x80)
    out(com, DLL, 0x03)
    out(com, DLM, 0x00)
    assert (com.read(DLL, 1), com.read(DLM, 1), com.divisor) == (0x03, 0x00, 3)
    out(com, LCR, 0x1B)
    out(com, SCR, 0xA5)
    out(com, MCR, 0xFF)
    assert (com.read(LCR, 1), com.read(SCR, 1), com.read(MCR, 1)) == (0x1B, 0xA5, 0x1F)
    assert com.read(IER, 1) == 0               # DLM went to the latch, not IER


def test_uart_thr_goes_to_the_named_output():
    com, _, _, sink = uart(name="com2", receives=False)
    for b in b"hi\r\n":
        out(com, THR, b)
    assert sink.lines == [("com2", "hi", False)]


# --- 16550: loopback -----------------------------------------------------------------------------
@pytest.mark.parametrize("waiting_rbr", [True, False])
def test_uart_osdev_init_and_loopback_probe_pass(waiting_rbr):
    """OSDev "Serial Ports": init, MCR=0x1E, send 0xAE, read it back, MCR=0x0F, print."""
    com, inputs, rec, sink = uart(b"k", waiting_rbr=waiting_rbr)
    for offset, value in [(IER, 0x00), (LCR, 0x80), (DLL, 0x03), (DLM, 0x00), (LCR, 0x03),
                          (FCR, 0xC7), (MCR, 0x0B), (MCR, 0x1E), (THR, 0xAE)]:
        out(com, offset, value)
    assert com.read(RBR, 1) == 0xAE            # the faulty-port check passes
    out(com, MCR, 0x0F)
    for b in b"ok\n":
        out(com, THR, b)
    assert sink.lines == [("com1", "ok", False)]   # 0xae never reached the output
    assert rec.keys == [] and list(inputs.pending) == [(ord("k"), 0)]   # no key was taken


def test_uart_loopback_does_not_take_input_and_lsr_is_still_an_idle_point():
    com, inputs, rec, _ = uart(b"", waiting_rbr=False)
    out(com, MCR, 0x10)
    ends_idle(com.read, LSR, 1)
    assert rec.keys == []


def test_uart_loopback_write_bytes_loops_back_too():
    com, _, _, sink = uart(waiting_rbr=False)
    out(com, FCR, 0x01)
    out(com, MCR, 0x10)
    com.write_bytes(THR, b"abc")
    assert [com.read(RBR, 1) for _ in range(3)] == list(b"abc")
    com.finish()
    assert sink.lines == []


@pytest.mark.parametrize("mcr, lines", [
    (0x10, 0x00), (0x11, 0x20), (0x12, 0x10), (0x14, 0x40), (0x18, 0x80), (0x1F, 0xF0)])
def test_uart_loopback_modem_lines(mcr, lines):
    """DTR -> DSR, RTS -> CTS, OUT1 -> RI, OUT2 -> DCD."""
    com, *_ = uart(waiting_rbr=False)
    out(com, MCR, 0x10)
    com.read(MSR, 1)                            # clear the deltas of entering loopback
    out(com, MCR, mcr)
    assert com.read(MSR, 1) & 0xF0 == lines


def test_uart_msr_delta_bits_set_on_change_and_clear_on_read():
    com, *_ = uart(waiting_rbr=False)
    out(com, MCR, 0x10)                         # loopback: CTS, DSR, DCD drop (terminal gone)
    assert com.read(MSR, 1) == 0x0B             # DCTS | DDSR | DDCD, lines all low
    assert com.read(MSR, 1) == 0x00             # deltas cleared by the read
    out(com, MCR, 0x14)                         # OUT1 -> RI rises: no TERI (trailing edge only)
    assert com.read(MSR, 1) == 0x40
    out(com, MCR, 0x10)                         # RI falls
    assert com.read(MSR, 1) == 0x04             # TERI
    out(com, MCR, 0x00)                         # leave loopback: the terminal's lines again
    assert com.read(MSR, 1) == 0xB0 | 0x0B


# --- 16550: FIFOs and overrun --------------------------------------------------------------------
def test_uart_fifo_enable_shows_in_iir_bits_6_7():
    com, *_ = uart(waiting_rbr=False)
    out(com, FCR, 0x01)
    assert com.read(IIR, 1) == 0xC1
    out(com, FCR, 0x00)
    assert com.read(IIR, 1) == 0x01


def test_uart_rx_fifo_holds_16_and_overrun_drops_the_17th():
    com, *_ = uart(waiting_rbr=False)
    out(com, FCR, 0x07)
    out(com, MCR, 0x10)
    for b in range(17):
        out(com, THR, 0x40 + b)
    assert com.read(LSR, 1) == 0x63            # DR | OE | THRE | TEMT
    assert com.read(LSR, 1) == 0x61            # reading LSR cleared OE
    assert [com.read(RBR, 1) for _ in range(16)] == [0x40 + b for b in range(16)]
    assert com.lsr() & 0x01 == 0
    assert com.stats()["overruns"] == 1


def test_uart_without_fifo_the_holding_register_is_overwritten_on_overrun():
    com, *_ = uart(waiting_rbr=False)
    out(com, MCR, 0x10)
    out(com, THR, 0x31)
    out(com, THR, 0x32)
    assert com.read(LSR, 1) & 0x03 == 0x03
    assert com.read(RBR, 1) == 0x32
    assert com.lsr() & 0x01 == 0


def test_uart_fcr_clear_rx_empties_the_fifo():
    com, *_ = uart(waiting_rbr=False)
    out(com, FCR, 0x01)
    out(com, MCR, 0x10)
    out(com, THR, 0x31)
    out(com, FCR, 0x03)
    assert com.lsr() & 0x01 == 0 and com.rx_fifo == []


def test_uart_switching_fifo_mode_empties_the_receiver():
    com, *_ = uart(waiting_rbr=False)
    out(com, MCR, 0x10)
    out(com, THR, 0x31)
    out(com, FCR, 0x01)
    assert com.rx_fifo == []


def test_uart_fcr_bits_count_only_with_fifo_enable():
    com, *_ = uart(waiting_rbr=False)
    out(com, FCR, 0xC0)
    assert com.fcr == 0 and com.read(IIR, 1) == 0x01


@pytest.mark.parametrize("fcr, trigger", [(0x01, 1), (0x41, 4), (0x81, 8), (0xC1, 14)])
def test_uart_rx_trigger_level_and_character_timeout(fcr, trigger):
    com, *_ = uart(waiting_rbr=False)
    out(com, FCR, fcr)
    out(com, IER, 0x01)
    out(com, MCR, 0x10)
    for b in range(trigger - 1):
        out(com, THR, b)
        assert com.iir() == 0xCC                # below the trigger: character timeout
    out(com, THR, 0xFF)
    assert com.iir() == 0xC4                    # trigger level reached
    for _ in range(trigger):
        com.read(RBR, 1)
    assert com.iir() == 0xC1


def test_uart_rx_data_interrupt_without_fifo():
    com, *_ = uart(waiting_rbr=False)
    out(com, IER, 0x01)
    out(com, MCR, 0x10)
    out(com, THR, 0x55)
    assert com.read(IIR, 1) == 0x04
    com.read(RBR, 1)
    assert com.read(IIR, 1) == 0x01


# --- 16550: interrupts ---------------------------------------------------------------------------
def test_uart_iir_priority_order():
    com, *_ = uart(waiting_rbr=False)
    out(com, MCR, 0x10)                         # loopback: modem deltas pending
    out(com, THR, 1)
    out(com, THR, 2)                            # 16450 overrun; THR empty again
    out(com, IER, 0x0F)
    assert com.read(IIR, 1) == 0x06             # line status first
    com.read(LSR, 1)                            # clears OE
    assert com.read(IIR, 1) == 0x04             # then received data
    com.read(RBR, 1)
    assert com.read(IIR, 1) == 0x02             # then THR empty; this read clears it
    assert com.read(IIR, 1) == 0x00             # then modem status
    com.read(MSR, 1)
    assert com.read(IIR, 1) == 0x01             # nothing pending


def test_uart_thr_empty_interrupt_on_enable_cleared_by_iir_read_set_by_thr_write():
    com, *_ = uart(waiting_rbr=False)
    assert com.read(IIR, 1) == 0x01
    out(com, IER, 0x02)
    assert com.read(IIR, 1) == 0x02             # enabling it with THR empty raises it
    assert com.read(IIR, 1) == 0x01             # the IIR read cleared it
    out(com, THR, ord("x"))
    assert com.read(IIR, 1) == 0x02             # the byte left at once: THR empty again
    out(com, IER, 0x02)                         # rewriting IER with the bit already set
    com.read(IIR, 1)
    out(com, IER, 0x02)
    assert com.read(IIR, 1) == 0x01             # ... raises nothing new


def test_uart_ier_disables_a_pending_source():
    com, *_ = uart(waiting_rbr=False)
    out(com, IER, 0x02)
    out(com, IER, 0x00)
    assert com.read(IIR, 1) == 0x01


def test_uart_irq_line_is_gated_by_out2_and_closed_in_loopback():
    com, *_ = uart(waiting_rbr=False)
    out(com, IER, 0x02)
    assert not com.irq_pending()                # OUT2 low: the PC's gate is closed
    out(com, MCR, 0x08)
    assert com.irq_pending()
    out(com, MCR, 0x18)
    assert not com.irq_pending()                # loopback: the OUT2 pin is inactive
    out(com, MCR, 0x0B)
    assert com.irq_pending()
    com.read(IIR, 1)
    assert not com.irq_pending()


# --- 16550: receiving from the input source ------------------------------------------------------
def test_uart_pc_mode_lsr_takes_one_key_and_rbr_returns_it():
    com, inputs, rec, _ = uart(b"ab", waiting_rbr=False)
    assert com.read(LSR, 1) == 0x61
    assert rec.keys == [(0, "com1", ord("a"))]
    assert com.read(LSR, 1) == 0x61             # a byte waits: no new key taken
    assert len(rec.keys) == 1
    assert com.read(RBR, 1) == ord("a")
    assert com.read(LSR, 1) == 0x61 and com.read(RBR, 2) == ord("b")


def test_uart_pc_mode_lsr_with_nothing_is_an_idle_point():
    com, *_ = uart(b"", waiting_rbr=False)
    ends_idle(com.read, LSR, 1)


def test_uart_pc_mode_rbr_with_nothing_returns_the_last_byte_without_waiting():
    com, inputs, rec, _ = uart(b"", waiting_rbr=False)
    assert com.read(RBR, 1) == 0                # nothing ever received: 0, no wait, no idle
    assert inputs.idle_points == 0
    inputs.pending.append((ord("z"), 0))
    com.read(LSR, 1)
    assert com.read(RBR, 1) == ord("z")
    assert com.read(RBR, 1) == ord("z")         # stale: the last byte again
    assert com.lsr() & 0x01 == 0 and com.stats()["received"] == 1
    assert inputs.idle_points == 0 and len(rec.keys) == 1


def test_uart_p3_mode_rbr_waits_for_the_recorded_key():
    replay = ReplayInput([{"n": 1, "type": "key", "dev": "com1", "byte": 0x41, "at": 0}],
                         None, None)
    com = Serial16550(replay, Sink())            # the p3 constructor: waiting_rbr by default
    out(com, IER, 0x05)
    replay.observe()
    assert com.read(RBR, 2) == 0x0541           # key in AL, IER in AH


def test_uart_p3_mode_rbr_with_nothing_coming_waits_at_idle_points():
    from vmm.inputs import IDLE_CONFIRM
    com, inputs, _, _ = uart(b"")
    with pytest.raises(StopRun) as info:
        com.read(RBR, 1)                        # one read: it waits, idle point after idle point
    assert info.value.reason == "idle" and inputs.idle_points == IDLE_CONFIRM


def test_uart_poll_rx_takes_one_byte_without_an_idle_point():
    com, inputs, rec, _ = uart(b"xy", waiting_rbr=False)
    assert com.poll_rx() and com.rx_fifo == [ord("x")]
    assert not com.poll_rx()                    # the receiver is full (no FIFO): held back
    assert inputs.idle_points == 0 and len(rec.keys) == 1


def test_uart_com2_that_receives_nothing_never_takes_a_key():
    com, inputs, rec, _ = uart(b"k", name="com2", receives=False, waiting_rbr=False)
    assert not com.poll_rx()
    assert com.read(RBR, 1) == 0
    ends_idle(com.read, LSR, 1)
    assert rec.keys == [] and len(inputs.pending) == 1


def test_uart_com2_asks_the_input_source_by_its_name():
    com, _, rec, _ = uart(b"k", name="com2", waiting_rbr=False)
    com.read(LSR, 1)
    assert rec.keys == [(0, "com2", ord("k"))]


def test_uart_state_round_trips():
    com, *_ = uart(waiting_rbr=False)
    for offset, value in [(LCR, 0x83), (DLL, 0x01), (LCR, 0x1B), (FCR, 0x81), (IER, 0x07),
                          (MCR, 0x1D), (SCR, 0x42), (THR, 0x61), (THR, 0x62)]:
        out(com, offset, value)
    state = com.state()
    assert state["rx_fifo"] == [0x61, 0x62]
    copy, *_ = uart(waiting_rbr=False)
    copy.from_state(state)
    assert copy.state() == state
    assert [copy.read(o, 1) for o in (IIR, LCR, MCR, SCR, MSR, LSR)] == \
           [com.read(o, 1) for o in (IIR, LCR, MCR, SCR, MSR, LSR)]
    assert copy.read(RBR, 1) == 0x61 and copy.divisor == 1


# --- VGA -----------------------------------------------------------------------------------------
V = {port: port - PORT_BASE for port in range(PORT_BASE, PORT_BASE + PORT_COUNT)}


def crtc(vga, index, value=None):
    out(vga, V[0x3D4], index)
    if value is not None:
        out(vga, V[0x3D5], value)
    return vga.read(V[0x3D5], 1)


def test_vga_reset_is_mode_3():
    vga = VgaText()
    assert vga.read(V[0x3CC], 1) == 0x67
    assert (crtc(vga, 0x0A), crtc(vga, 0x0B), crtc(vga, 0x11)) == (0x0D, 0x0E, 0x8E)
    assert vga.cursor_position == (0, 0) and not vga.cursor_disabled
    assert vga.cursor() == (0, 0)


def test_vga_all_25_crtc_registers_read_back():
    vga = VgaText()
    crtc(vga, 0x11, 0x0E)                       # clear the protect bit first
    for i in range(25):
        crtc(vga, i, (i * 7 + 3) & 0xFF if i != 0x11 else 0x0E)
    assert [crtc(vga, i) for i in range(25)] == \
           [(i * 7 + 3) & 0xFF if i != 0x11 else 0x0E for i in range(25)]


def test_vga_crtc_protect_bit_guards_registers_0_to_7():
    vga = VgaText()                             # reg 0x11 = 0x8e: protected
    assert crtc(vga, 0x00, 0x12) == 0x5F
    assert crtc(vga, 0x07, 0x00) == 0x0F        # only bit 4 (line compare bit 8) changed
    assert crtc(vga, 0x08, 0x05) == 0x05        # 8 and up are not protected
    crtc(vga, 0x11, 0x0E)
    assert crtc(vga, 0x00, 0x12) == 0x12


def test_vga_cursor_from_16_bit_crtc_writes():
    vga = VgaText()
    pos = 4 * 80 + 16
    vga.write(V[0x3D4], 2, 0x0F | ((pos & 0xFF) << 8))    # outw: index in AL, data in AH
    vga.write(V[0x3D4], 2, 0x0E | ((pos >> 8) << 8))
    assert vga.cursor_location == pos and vga.cursor_position == (4, 16)
    assert vga.read(V[0x3D4], 2) == 0x0E | (0x01 << 8)


def test_vga_cursor_disable_and_off_screen():
    vga = VgaText()
    crtc(vga, 0x0A, 0x20)
    assert vga.cursor_disabled and vga.cursor() is None
    crtc(vga, 0x0A, 0x0D)
    crtc(vga, 0x0E, 0x07)
    crtc(vga, 0x0F, 0xD0)                       # 2000: just past the last cell
    assert vga.cursor_position == (25, 0) and vga.cursor() is None


def test_vga_cursor_is_relative_to_the_start_address():
    vga = VgaText()
    crtc(vga, 0x0D, 80)                         # the screen starts one row down
    crtc(vga, 0x0F, 81)
    assert vga.start_address == 80 and vga.cursor() == (0, 1)
    assert vga.screen_address == 0xB8000 + 160
    crtc(vga, 0x0C, 0x40)                       # 0x4050 cells: past the 32 KiB window
    assert vga.screen_address == 0xB8000 + 160


def test_vga_status1_toggles_retrace_bits_at_every_read():
    vga = VgaText()
    assert [vga.read(V[0x3DA], 1) for _ in range(4)] == [0x09, 0x00, 0x09, 0x00]
    again = VgaText()
    assert [again.read(V[0x3DA], 1) for _ in range(4)] == [0x09, 0x00, 0x09, 0x00]


def test_vga_status1_read_resets_the_attribute_flip_flop():
    vga = VgaText()
    out(vga, V[0x3C0], 0x10)                    # index 0x10 (mode control)
    vga.read(V[0x3DA], 1)                       # reset: the next write is an index again
    out(vga, V[0x3C0], 0x12)                    # index 0x12
    out(vga, V[0x3C0], 0x05)                    # data
    assert vga.attr[0x12] == 0x05 and vga.attr[0x10] == 0x0C
    assert vga.read(V[0x3C0], 1) == 0x12
    out(vga, V[0x3C0], 0x31)                    # index 0x11 with PAS (bit 5)
    out(vga, V[0x3C0], 0x04)
    assert vga.read(V[0x3C0], 1) == 0x31 and vga.read(V[0x3C1], 1) == 0x04


def test_vga_misc_output_selects_colour_or_mono_crtc_addresses():
    vga = VgaText()
    bus = PortBus()
    bus.register(vga, PORT_BASE, PORT_COUNT)
    bus.register(vga.mono, MONO_BASE, MONO_COUNT)

    def io(port, value=None):
        dev, off = bus.lookup(port)
        if value is None:
            return dev.read(off, 1)
        dev.write(off, 1, value)

    assert io(0x3B5) == 0xFF                    # colour: the mono addresses float
    io(0x3C2, 0x66)                             # bit 0 clear: monochrome addressing
    assert io(0x3CC) == 0x66 and io(0x3D5) == 0xFF
    io(0x3B4, 0x0E)
    io(0x3B5, 0x01)
    assert vga.crtc[0x0E] == 0x01 and io(0x3BA) == 0x09
    io(0x3D4, 0x0F)                             # ignored
    assert vga.crtc_index == 0x0E
    io(0x3C2, 0x67)
    assert io(0x3D5) == 0x01 and io(0x3B5) == 0xFF


def test_vga_sequencer_graphics_and_dac_are_stored():
    vga = VgaText()
    out(vga, V[0x3C4], 0x02)
    out(vga, V[0x3C5], 0x0F)
    out(vga, V[0x3CE], 0x06)
    out(vga, V[0x3CF], 0x0E)
    assert (vga.read(V[0x3C5], 1), vga.read(V[0x3CF], 1)) == (0x0F, 0x0E)
    out(vga, V[0x3C8], 5)
    for c in (0x3F, 0x20, 0x41):
        out(vga, V[0x3C9], c)
    assert vga.read(V[0x3C8], 1) == 6           # the write index moved to the next entry
    out(vga, V[0x3C7], 5)
    assert vga.read(V[0x3C7], 1) == 3
    assert [vga.read(V[0x3C9], 1) for _ in range(3)] == [0x3F, 0x20, 0x01]   # 6 bits each


def test_vga_state_round_trips():
    vga = VgaText()
    crtc(vga, 0x0E, 0x02)
    vga.read(V[0x3DA], 1)
    out(vga, V[0x3C0], 0x10)
    state = vga.state()
    assert "mono" not in state
    copy = VgaText()
    copy.from_state(state)
    assert copy.state() == state
    assert copy.read(V[0x3DA], 1) == vga.read(V[0x3DA], 1) == 0x00
    assert copy.cursor_location == 0x200


# --- exit, shutdown and POST ports ---------------------------------------------------------------
def stop_of(fn, *args) -> StopRun:
    with pytest.raises(StopRun) as info:
        fn(*args)
    return info.value


@pytest.mark.parametrize("offset, size, value, status", [
    (0, 1, 0x31, 0x63), (1, 1, 0x00, 1), (0, 2, 0x1234, 0x69), (0, 1, 0x7F, 0xFF)])
def test_debug_exit_port_ends_with_qemus_status(offset, size, value, status):
    stop = stop_of(DebugExitPort(0x501).write, offset, size, value)
    assert (stop.reason, stop.exit_code) == ("exit-device", status)
    assert f"port {0x501 + offset:#x}" in stop.message
    assert debug_exit_status(value) == status


def test_acpi_shutdown_on_slp_en_with_type_0():
    stop = stop_of(AcpiShutdown(0x604).write, 0, 2, 0x2000)
    assert (stop.reason, stop.exit_code) == ("shutdown", 0) and "0x604" in stop.message


def test_acpi_shutdown_from_two_byte_writes():
    pm = AcpiShutdown(0xB004)
    pm.write(0, 1, 0x01)                        # SCI_EN
    assert pm.read(0, 2) == 0x0001
    stop = stop_of(pm.write, 1, 1, 0x20)         # high byte: SLP_EN
    assert stop.reason == "shutdown" and "0xb004" in stop.message


def test_acpi_other_sleep_types_are_stored_without_slp_en():
    pm = AcpiShutdown()
    pm.write(0, 2, 0x2400)                      # SLP_TYP 1 (S3): not modelled
    assert pm.read(0, 2) == 0x0400 and pm.read(1, 1) == 0x04


def test_bochs_shutdown_string_ends_the_run_at_its_last_byte():
    dev = BochsShutdown()
    for b in b"Shutdow":
        dev.write(0, 1, b)
    stop = stop_of(dev.write, 0, 1, ord("n"))
    assert (stop.reason, stop.exit_code) == ("shutdown", 0)


@pytest.mark.parametrize("prefix", [b"Shut", b"S", b"", b"Shux", b"SShutdow"])
def test_bochs_shutdown_other_bytes_reset_the_match(prefix):
    dev = BochsShutdown()
    for b in prefix + b"X":
        dev.write(0, 1, b)                      # never the whole string: no stop
    assert dev.matched == 0
    for b in b"Shutdow":
        dev.write(0, 2, 0x4100 | b)             # a wide write uses its low byte
    assert stop_of(dev.write, 0, 1, ord("n")).reason == "shutdown"


def test_bochs_shutdown_restarts_on_s():
    dev = BochsShutdown()
    for b in b"ShuSh":
        dev.write(0, 1, b)
    assert dev.matched == 2


def test_post_code_port_counts_writes_and_reads_all_ones():
    post = PostCodePort()
    for code in (0x12, 0x00, 0x34):
        post.write(0, 1, code)
    post.write_bytes(0, b"\x55\x66")
    assert post.stats() == {"writes": 5, "last_code": 0x66}
    assert (post.read(0, 1), post.read(0, 2)) == (0xFF, 0xFFFF)


def test_shutdown_reason_exits_0_and_is_not_an_error():
    assert EXIT_CODES["shutdown"] == 0
    assert not RunEnd("shutdown", "guest powered off", 0).is_error


def test_vmms_own_exit_codes_stay_even():
    assert all(code % 2 == 0 for reason, code in EXIT_CODES.items()
               if reason not in ("redrive-differs", "interrupted", "terminated"))


def test_the_pc_board_port_ranges_do_not_overlap():
    bus = PortBus()
    vga = VgaText()
    bus.register(Serial16550(None, Sink()), 0x3F8, 8)
    bus.register(Serial16550(None, Sink(), name="com2", receives=False), 0x2F8, 8)
    bus.register(vga, PORT_BASE, PORT_COUNT)
    bus.register(vga.mono, MONO_BASE, MONO_COUNT)
    bus.register(DebugExitPort(0xF4), 0xF4)
    bus.register(DebugExitPort(0x501), 0x501, 2)
    bus.register(AcpiShutdown(0x604), 0x604, 2)
    bus.register(AcpiShutdown(0xB004), 0xB004, 2)
    bus.register(BochsShutdown(), 0x8900)
    bus.register(PostCodePort(), 0x80)
    assert len(bus.describe()) == 10


def test_uart_pc_mode_the_lsr_read_after_sending_a_byte_is_no_idle_point():
    # A kernel prints by polling LSR for THRE before each byte: those reads are no waits for
    # input, so the virtual clock does not jump at them; a read with nothing sent since is one.
    com, inputs, _, sink = uart(b"", waiting_rbr=False)
    for byte in b"hi\n":
        out(com, RBR, byte)
        assert com.read(LSR, 1) & 0x20          # THRE
    assert inputs.idle_points == 0
    com.read(LSR, 1)                            # nothing sent since: the guest waits
    assert inputs.idle_points == 1


def test_uart_p3_mode_keeps_every_empty_lsr_read_an_idle_point():
    com, inputs, _, _ = uart(b"")
    out(com, RBR, ord("x"))
    com.read(LSR, 1)
    assert inputs.idle_points == 1
