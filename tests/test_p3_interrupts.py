"""The p3 board's optional interrupt lines (issue 15): its keyboard's "key waiting" drives IRQ 1
and its interval timer's "fired" IRQ 0, through an 8259A pair at 0x20/0xA0 that takes part only
once the guest has initialised the master (ICW1). A polled guest that never does runs exactly
as before: no line is polled, nothing is injected, a HLT with interrupts on still ends the run.

The interrupt-driven p3 kernel itself (guests/irq/echo-p3.s) is tested, with goldens, in
tests/test_irq_kernels.py."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import records_without_info, test_backends
from vmm.devices.keyboard import Keyboard
from vmm.devices.timer import IntervalTimer
from vmm.inputs import LiveInput, NullFeed, ReplayInput, VirtualClock
from vmm.trace import TraceError, read_trace

HAVE_AS = all(shutil.which(tool) for tool in ("as", "ld", "objcopy"))
BACKENDS = test_backends()
GOLDEN_V4 = (Path(__file__).resolve().parent.parent / "traces" / "test_irq_kernels"
             / "test_tick_real_without_keys.trace")
MS = 1_000_000
KBD_STATUS, TIMER_PERIOD, TIMER_CTRL = 1, 0, 1      # offsets in the devices' port ranges


class Recorder:
    def __init__(self):
        self.records = []

    def key(self, n, at, device, byte):
        self.records.append(("key", n, byte, None))

    def key_at(self, n, at, device, byte, point):
        self.records.append(("key", n, byte, point))

    def timer(self, n, at, count):
        self.records.append(("timer", n, at, count, None))

    def timer_at(self, n, at, count, point):
        self.records.append(("timer", n, at, count, point))


def live(keys=b""):
    rec = Recorder()
    inputs = LiveInput(NullFeed(), VirtualClock(), record=rec)
    inputs.pending.extend((b, 0) for b in keys)
    return inputs, rec


# ---- the devices' lines (no /dev/kvm) ------------------------------------------------------------

def test_the_keyboard_raises_irq_1_while_a_key_waits_and_its_ack_lowers_it():
    inputs, rec = live(b"ab")
    kbd = Keyboard(inputs)
    assert not kbd.irq_pending()
    inputs.point = "hlt"
    assert kbd.poll() and kbd.irq_pending() and kbd.data == ord("a")
    assert kbd.poll() and kbd.data == ord("a")           # latched: the next key waits
    assert inputs.idle_points == 0                       # a poll is no idle point
    kbd.write(KBD_STATUS, 1, 0)                          # the guest's ack
    assert not kbd.irq_pending() and kbd.data == ord("a")
    inputs.point = "in"
    assert kbd.poll() and kbd.data == ord("b")
    kbd.write(KBD_STATUS, 1, 0)
    assert not kbd.poll() and not kbd.irq_pending()      # nothing more: the line stays low
    assert rec.records == [("key", 0, ord("a"), "hlt"), ("key", 0, ord("b"), "in")]
    assert kbd.stats() == {"keys": 2, "acks": 2}


def test_the_timer_raises_irq_0_when_it_fires_and_its_ack_lowers_it():
    inputs, rec = live()
    timer = IntervalTimer(inputs)
    timer.write(TIMER_PERIOD, 2, 10)
    timer.write(TIMER_CTRL, 1, 1)
    inputs.point = "hlt"
    assert not timer.poll()                              # not yet due
    inputs.clock.advance_to(10 * MS)
    inputs.point = "idle"
    assert timer.poll() and timer.irq_pending()
    assert inputs.idle_points == 0
    timer.write(TIMER_CTRL, 1, 1)                        # ack, still enabled
    assert not timer.irq_pending()
    inputs.clock.advance_to(30 * MS)                     # two periods: one is lost
    assert timer.poll()
    timer.write(TIMER_CTRL, 1, 0)                        # disabled: the line falls for good
    assert not timer.irq_pending() and not timer.poll()
    assert rec.records == [("timer", 0, 10 * MS, 1, "idle"), ("timer", 0, 30 * MS, 2, "idle")]
    assert timer.stats()["lost"] == 1


def test_a_timer_read_records_no_point():
    inputs, rec = live()
    timer = IntervalTimer(inputs)
    timer.write(TIMER_PERIOD, 2, 5)
    timer.write(TIMER_CTRL, 1, 1)
    inputs.clock.advance_to(5 * MS)
    assert timer.read(TIMER_CTRL, 1) == 3                # enabled, fired
    assert rec.records == [("timer", 0, 5 * MS, 1, None)]


def test_a_replay_finds_a_firing_only_at_a_point_of_its_kind():
    inputs = ReplayInput([{"type": "timer", "n": 1, "at": 7, "count": 1, "point": "idle"},
                          {"type": "timer", "n": 1, "at": 9, "count": 2}], None, None)
    inputs.observe()
    assert inputs.timer_fired(0, 1) == 0                 # a read: it came at an idle point
    for point in ("in", "hlt"):
        inputs.point = point
        assert inputs.timer_fired(0, 1) == 0
    inputs.point = "idle"
    assert inputs.timer_fired(0, 1) == 1 and inputs.now() == 7
    inputs.point = None
    assert inputs.timer_fired(0, 1) == 2                 # no point: taken where asked


def _one_record_trace(tmp_path, record: dict, version: int = 4) -> Path:
    header = json.loads(GOLDEN_V4.read_text().splitlines()[0])
    header["version"] = version
    path = tmp_path / "t.trace"
    path.write_text(json.dumps(header) + "\n" + json.dumps(record, separators=(",", ":")) + "\n")
    return path


def test_a_timer_record_with_a_point_is_read_and_a_bad_one_refused(tmp_path):
    good = {"type": "timer", "n": 1, "at": 0, "count": 1, "point": "idle"}
    assert read_trace(str(_one_record_trace(tmp_path, good))).records[0]["point"] == "idle"
    with pytest.raises(TraceError, match="out of range"):
        read_trace(str(_one_record_trace(tmp_path, dict(good, point="soon"))))
    with pytest.raises(TraceError, match="point needs trace format version 4"):
        read_trace(str(_one_record_trace(tmp_path, good, version=3)))


# ---- polled guests on the real backends ----------------------------------------------------------

# Real mode at 0x1000: (INIT), the p3 timer at 10 ms, `sti`, then three times: poll the timer's
# status until it fired, ack, print 'T' on 0xe9. Then "\n", the timer off, and HLT with
# interrupts still on.
POLLED = r"""
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0x7000, %sp
    INIT
    mov $10, %ax
    out %ax, $0x46
    mov $1, %al
    out %al, $0x47
    sti
    mov $3, %cx
1:  in $0x47, %al
    test $2, %al
    jz 1b
    mov $1, %al
    out %al, $0x47
    mov $'T', %al
    out %al, $0xE9
    loop 1b
    mov $'\n', %al
    out %al, $0xE9
    xor %al, %al
    out %al, $0x47
    hlt
"""
# The master initialised (vectors 0x20), and every line masked
PIC_INIT_MASKED = r"""
    mov $0x11, %al
    out %al, $0x20
    mov $0x20, %al
    out %al, $0x21
    mov $4, %al
    out %al, $0x21
    mov $1, %al
    out %al, $0x21
    mov $0xFF, %al
    out %al, $0x21
"""


def polled_guest(tmp_path: Path, init: str = "") -> Path:
    s, o, elf, raw = (tmp_path / f"polled.{ext}" for ext in ("s", "o", "elf", "bin"))
    s.write_text(".code16\n.text\n.globl _start\n_start:\n" + POLLED.replace("INIT", init))
    subprocess.run(["as", "--32", str(s), "-o", str(o)], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext", "0x1000", "-e", "_start", str(o), "-o",
                    str(elf)], check=True)
    subprocess.run(["objcopy", "-O", "binary", str(elf), str(raw)], check=True)
    return raw


@pytest.mark.skipif(not HAVE_AS, reason="needs binutils (as, ld, objcopy)")
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_polled_guest_with_interrupts_on_sees_no_controller(vmm, tmp_path, backend):
    # The PIC is at its power-on state (vector base 0, nothing masked) and the guest has IF=1
    # while its timer fires: were the controller to take part before ICW1, the first firing
    # would inject vector 0 (vmm's stub: a guest exception), and the last HLT would wait
    guest = polled_guest(tmp_path)
    trace = tmp_path / "polled.trace"
    r = vmm("record", guest, "--backend", backend, "--clock", "virtual", "-v", "-o", trace)
    assert r.returncode == 0 and r.lines == ["TTT"], r
    records = records_without_info(trace)
    assert records[-1]["reason"] == "halt"
    assert not [rec for rec in records if rec["type"] in ("irq", "edge")]
    timers = [rec for rec in records if rec["type"] == "timer"]
    assert len(timers) == 3 and not [rec for rec in timers if "point" in rec]
    assert "pic-master" not in r.stderr                  # `-v` reports as without a PIC
    rep = vmm("replay", trace, "--backend", backend)
    assert rep.returncode == 0 and "identical" in rep.stderr, rep


@pytest.mark.skipif(not HAVE_AS, reason="needs binutils (as, ld, objcopy)")
@pytest.mark.parametrize("backend", BACKENDS)
def test_once_the_guest_initialises_the_pic_a_hlt_with_interrupts_on_waits(vmm, tmp_path,
                                                                           backend):
    # The same guest with the master initialised and every line masked: its HLT with IF=1 is
    # now an idle point that waits for an interrupt; none can come, nothing is scheduled
    guest = polled_guest(tmp_path, PIC_INIT_MASKED)
    trace = tmp_path / "masked.trace"
    r = vmm("record", guest, "--backend", backend, "--clock", "virtual", "-v", "-o", trace)
    assert r.returncode == 0 and r.lines == ["TTT"], r
    records = records_without_info(trace)
    assert records[-1]["reason"] == "idle", records[-1]
    assert not [rec for rec in records if rec["type"] == "irq"]
    assert "pic-master: acks [0, 0, 0, 0, 0, 0, 0, 0]" in r.stderr
    rep = vmm("replay", trace, "--backend", backend)
    assert rep.returncode == 0 and "identical" in rep.stderr, rep
