"""Interrupts on the pc board, deterministically (DESIGN §10): the 8254's channel 0 drives IRQ 0
through the 8259A pair; vmm injects at points a replay finds again (after an IN, at a HLT with
interrupts enabled), and records the edges and the injections."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import records_without_info, test_backends

HAVE_AS = all(shutil.which(tool) for tool in ("as", "ld", "objcopy"))
pytestmark = pytest.mark.skipif(not HAVE_AS, reason="needs binutils (as, ld, objcopy)")

# Real mode at 0x1000: remap the PICs to 0x20/0x28, unmask IRQ 0 only, program PIT channel 0
# for 100 Hz (mode 2, divisor 11932), then wait in `hlt` until the handler has counted TICKS
# ticks; the handler prints 't' and sends EOI. Then "D" and a final `cli; hlt`.
TICK_KERNEL = r"""
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0x7000, %sp
    movw $handler, 0x80             # IVT[0x20] = 0000:handler
    movw $0, 0x82
    mov $0x11, %al                  # ICW1: edge, cascade, ICW4
    out %al, $0x20
    out %al, $0xA0
    mov $0x20, %al                  # ICW2: vectors 0x20 and 0x28
    out %al, $0x21
    mov $0x28, %al
    out %al, $0xA1
    mov $4, %al                     # ICW3
    out %al, $0x21
    mov $2, %al
    out %al, $0xA1
    mov $1, %al                     # ICW4: 8086 mode
    out %al, $0x21
    out %al, $0xA1
    mov $MASK, %al                  # OCW1: IRQ 0 only
    out %al, $0x21
    mov $0xFF, %al
    out %al, $0xA1
    mov $0x34, %al                  # PIT channel 0, lobyte/hibyte, mode 2
    out %al, $0x43
    mov $(11932 & 0xff), %al
    out %al, $0x40
    mov $(11932 >> 8), %al
    out %al, $0x40
    sti
1:  WAIT
    cmpw $TICKS, ticks
    jb 1b
    cli
    mov $'D', %al
    out %al, $0xE9
    mov $'\n', %al
    out %al, $0xE9
    hlt
handler:
    push %ax
    incw ticks
    mov $'t', %al
    out %al, $0xE9
    mov $0x20, %al                  # EOI
    out %al, $0x20
    pop %ax
    iret
ticks: .word 0
"""


def kernel(tmp_path: Path, name: str = "tick", *, ticks: int = 5, mask: int = 0xFE,
           wait: str = "hlt") -> Path:
    src = TICK_KERNEL.replace("TICKS", str(ticks)).replace("MASK", hex(mask)) \
        .replace("WAIT", wait)
    s, o, elf, raw = (tmp_path / f"{name}.{ext}" for ext in ("s", "o", "elf", "bin"))
    s.write_text(".code16\n.text\n.globl _start\n_start:\n" + src)
    subprocess.run(["as", "--32", str(s), "-o", str(o)], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext", "0x1000", "-e", "_start", str(o), "-o",
                    str(elf)], check=True)
    subprocess.run(["objcopy", "-O", "binary", str(elf), str(raw)], check=True)
    return raw


BACKENDS = test_backends()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clock", ["virtual", "real"])
def test_timer_interrupts_are_delivered_and_replay_exactly(vmm, tmp_path, backend, clock):
    guest = kernel(tmp_path)
    trace = tmp_path / "tick.trace"
    r = vmm("record", guest, "--board", "pc", "--backend", backend, "--clock", clock,
            "--timeout", "20s", "-o", trace)
    assert r.returncode == 0 and r.lines == ["tttttD"], r
    records = records_without_info(trace)
    irqs = [rec for rec in records if rec["type"] == "irq"]
    edges = [rec for rec in records if rec["type"] == "edge"]
    assert [(i["vector"], i["point"]) for i in irqs] == [(0x20, "hlt")] * 5
    assert len(edges) == 5 and all(e["line"] == 0 and e["count"] >= 1 for e in edges)
    if clock == "virtual":
        # 100 Hz from 1193182 Hz / 11932: edges exactly a PIT period apart in guest time
        assert [e["count"] for e in edges] == [1] * 5
        period = 11932 * 10**9 // 1193182
        gaps = [b["at"] - a["at"] for a, b in zip(edges, edges[1:])]
        assert all(abs(g - period) <= 1 for g in gaps), gaps
    for replay_backend in BACKENDS:
        rep = vmm("replay", trace, "--backend", replay_backend)
        assert rep.returncode == 0 and rep.lines == ["tttttD"], (replay_backend, rep)
        assert "5 interrupts" in rep.stderr


def test_a_guest_waiting_with_its_timer_masked_ends_idle(vmm, tmp_path):
    guest = kernel(tmp_path, mask=0xFF)           # IRQ 0 masked: nothing can wake the HLT
    trace = tmp_path / "idle.trace"
    r = vmm("record", guest, "--board", "pc", "--clock", "virtual", "--max-time", "2s",
            "-o", trace)
    assert r.returncode in (0, 28), r             # idle, or --max-time: never a hang
    assert records_without_info(trace)[-1]["reason"] in ("idle", "max-time")
    assert vmm("replay", trace).returncode == 0


def test_a_forged_interrupt_record_is_a_divergence(vmm, tmp_path):
    guest = kernel(tmp_path)
    trace = tmp_path / "tick.trace"
    assert vmm("record", guest, "--board", "pc", "--clock", "virtual", "-o", trace) \
        .returncode == 0
    lines = trace.read_text().splitlines()
    forged = []
    for line in lines:
        rec = json.loads(line)
        if rec.get("type") == "irq" and not any('"irq"' in f for f in forged):
            line = line.replace('"vector":32', '"vector":33')
        forged.append(line)
    trace.write_text("\n".join(forged) + "\n")
    r = vmm("replay", trace)
    assert r.returncode == 40, r
    assert "interrupts differ: the recording injected vector 0x21" in r.stderr


def test_an_interrupt_that_comes_while_interrupts_are_off_waits_for_the_next_point(vmm,
                                                                                  tmp_path):
    # Poll the PIT's count with interrupts off, and turn them on for the next read only (after
    # a NOP: a read right after STI is in its interrupt shadow): an interrupt that came
    # meanwhile is delivered after that read (point "in"), never while they are off. Under the
    # virtual clock, time passes by the quantum per read (docs/scripts.md).
    wait = "cli\n    in $0x40, %al\n    sti\n    nop\n    in $0x40, %al\n    cli"
    guest = kernel(tmp_path, wait=wait, ticks=3)
    for clock in ("virtual", "real"):
        trace = tmp_path / f"{clock}.trace"
        r = vmm("record", guest, "--board", "pc", "--clock", clock, "--timeout", "20s",
                "-o", trace)
        assert r.returncode == 0 and r.lines == ["tttD"], (clock, r)
        points = {rec["point"] for rec in records_without_info(trace) if rec["type"] == "irq"}
        assert points == {"in"}, points
        rep = vmm("replay", trace)
        assert rep.returncode == 0, rep
