"""Interrupts (issue 15): what a delivered interrupt costs, vmm against QEMU, and how fast a
recording of an interrupt-driven kernel replays.

(a) Cost per delivered interrupt. guests/build/irq/tick1k-real.bin (real mode: the IVT, so it
    runs on this host's KVM too) remaps the 8259A pair, runs PIT channel 0 at 1000 Hz and waits
    in `sti; hlt` for 5000 ticks; its IRQ 0 handler counts, writes the count into VGA memory,
    sends EOI and IRETs; then it exits through 0xF4. The baseline kernel, idle-real.bin, is the
    same set-up that exits at once. A sample is (wall(tick1k) - wall(idle)) / 5000 in us:
    - vmm: `vmm run --board pc --clock virtual` on KVM and on the emulator; the virtual clock
      jumps to the PIT's next edge at each HLT, so the wall time is the work alone;
    - QEMU TCG: the same kernel with a multiboot a.out-kludge header (tick1k-real-mb.bin, which
      drops back to real mode), `qemu-system-i386 -kernel ... -icount shift=0,sleep=off`: QEMU's
      virtual clock also jumps over the HLTs, so the wall time is again the work alone;
    - QEMU KVM: a KVM guest's clock is real time (5 s of ticks take 5 s), so the wall time says
      nothing; its sample is the host CPU time (user + system, from wait4) of the run minus the
      baseline's, per interrupt. QEMU's boot under -accel kvm takes seconds on the nested bench
      machine, in both runs.
    - vmm emu-icount: the emulator with `--icount 1` (1 ns per instruction, interrupts also at
      instruction counts), the mode that matches QEMU's -icount shift=0.
    The rows compare vmm KVM with QEMU KVM and vmm's emulator (either way) with QEMU's TCG
    (ratio).
(b) Exact replay of 60 s of guest time: tick60-real.bin (tick-real at 100 Hz, 6000 ticks)
    recorded once under the virtual clock, then `vmm replay` timed on KVM and on the emulator;
    the figure is 60 s / replay wall time, the target at least 100x real time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import GUESTS, ROOT, Row, summary

IRQ = GUESTS / "build" / "irq"
TICKS_1K = 5000
GUEST_SECONDS_60 = 60.0
QEMU = "qemu-system-i386"
EXIT_OK = 33
TIMEOUT_S = 180


def _run(argv: list[str], cwd=None) -> tuple[float, float]:
    """Run argv to its end; (wall seconds, child CPU seconds). Must end with status 33."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=cwd)
    try:
        _, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"`{' '.join(map(str, argv))}` did not end within {TIMEOUT_S} s")
    wall = time.perf_counter() - start
    if proc.returncode != EXIT_OK:
        raise RuntimeError(f"`{' '.join(map(str, argv))}` ended with status {proc.returncode}: "
                           f"{err.decode(errors='replace')[-300:]}")
    return wall, 0.0


def _run_cpu(argv: list[str]) -> tuple[float, float]:
    """As _run, with the child's CPU time (user + system) from wait4."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = start + TIMEOUT_S
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"`{' '.join(argv)}` did not end within {TIMEOUT_S} s")
        time.sleep(0.01)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != EXIT_OK:
        raise RuntimeError(f"`{' '.join(argv)}` ended with status {proc.returncode}")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def vmm_argv(kernel: str, backend: str) -> list[str]:
    """`backend` "emu-icount": the emulator in instruction-count mode at 1 ns per
    instruction, as QEMU's -icount shift=0."""
    mode = ["--backend", "emu", "--icount", "1"] if backend == "emu-icount" else [
        "--backend", backend]
    return [sys.executable, "-m", "vmm", "run", str(IRQ / kernel), "--board", "pc",
            "--clock", "virtual", *mode, "--max-time", "60s"]


def qemu_argv(kernel: str, accel: str) -> list[str]:
    argv = [QEMU, "-kernel", str(IRQ / kernel), "-m", "128", "-display", "none",
            "-monitor", "none", "-serial", "none", "-no-reboot",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-accel", accel]
    if accel == "tcg":
        argv += ["-icount", "shift=0,sleep=off"]
    return argv


def _per_interrupt_us(run, tick_argv, idle_argv, index: int) -> float:
    tick = run(tick_argv)[index]
    idle = run(idle_argv)[index]
    return (tick - idle) / TICKS_1K * 1e6


def _probe(fn) -> str | None:
    try:
        fn()
        return None
    except (RuntimeError, OSError) as e:
        return str(e)[:300]


def cost_rows(runs: int) -> list[Row]:
    have_qemu = shutil.which(QEMU) is not None
    pairs = [("kvm", "kvm", "qemu-system-i386 -accel kvm (host CPU time per interrupt)"),
             ("emu", "tcg", "qemu-system-i386 TCG -icount shift=0,sleep=off (wall time)"),
             ("emu-icount", "tcg", "qemu-system-i386 TCG -icount shift=0,sleep=off (wall time)")]
    rows = []
    for backend, accel, qemu_name in pairs:
        v_tick, v_idle = vmm_argv("tick1k-real.bin", backend), vmm_argv("idle-real.bin", backend)
        q_tick, q_idle = qemu_argv("tick1k-real-mb.bin", accel), qemu_argv("idle-real-mb.bin",
                                                                           accel)
        q_run, q_index = (_run_cpu, 1) if accel == "kvm" else (_run, 0)
        why_not = _probe(lambda: _run(v_idle, cwd=ROOT))
        q_why_not = (f"{QEMU} is not installed" if not have_qemu
                     else _probe(lambda: q_run(q_idle)))
        # QEMU under -accel kvm boots for seconds here: fewer runs of it
        q_runs = max(2, runs // 2) if accel == "kvm" else runs
        mine, theirs = [], []
        for i in range(runs):
            if why_not is None:
                mine.append(_per_interrupt_us(lambda a: _run(a, cwd=ROOT), v_tick, v_idle, 0))
            if q_why_not is None and i < q_runs:
                theirs.append(_per_interrupt_us(q_run, q_tick, q_idle, q_index))
        notes = [f"{TICKS_1K} IRQ 0 at 1000 Hz, handler: count, VGA, EOI, IRET; minus a "
                 "baseline run without interrupts"]
        if why_not:
            notes.append(f"vmm ({backend}) not measured: {why_not}")
        if q_why_not:
            notes.append(f"QEMU ({accel}) not measured: {q_why_not}")
        rows.append(Row(id=f"irq-cost-{backend}", group="6. interrupts",
                        name=f"per delivered interrupt (IRQ 0, 1000 Hz), vmm {backend}",
                        unit="us", vmm=summary(mine) if mine else None,
                        baseline=summary(theirs) if theirs else None,
                        baseline_name=qemu_name, compare="ratio", note="; ".join(notes)))
    return rows


def replay_rows(runs: int) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="vmm-bench-irq-") as tmp:
        trace = Path(tmp) / "tick60.trace"
        rec = subprocess.run([sys.executable, "-m", "vmm", "record",
                              str(IRQ / "tick60-real.bin"), "--board", "pc", "--clock",
                              "virtual", "--max-time", "120s", "-o", str(trace)],
                             cwd=ROOT, capture_output=True, timeout=TIMEOUT_S)
        if rec.returncode != EXIT_OK:
            raise RuntimeError(f"recording tick60-real.bin ended with status {rec.returncode}: "
                               f"{rec.stderr.decode(errors='replace')[-300:]}")
        for backend in ("kvm", "emu"):
            argv = [sys.executable, "-m", "vmm", "replay", str(trace), "--backend", backend]
            probe = subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=TIMEOUT_S)
            note = "60 s of guest time: 6000 IRQ 0 at 100 Hz, each at a HLT"
            speedups = []
            if probe.returncode != 0 or b"replay identical" not in probe.stderr:
                note += f"; not measured on {backend}: " + probe.stderr.decode(
                    errors="replace")[-200:]
            else:
                for _ in range(runs):
                    start = time.perf_counter()
                    subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=TIMEOUT_S,
                                   check=True)
                    speedups.append(GUEST_SECONDS_60 / (time.perf_counter() - start))
            rows.append(Row(id=f"irq-replay-60s-{backend}", group="6. interrupts",
                            name=f"exact replay of a 100 Hz tick kernel's 60 s, vmm {backend}",
                            unit="x real time", vmm=summary(speedups) if speedups else None,
                            compare="value", target=(">=", 100.0), note=note))
    return rows


def irq_rows(runs: int) -> list[Row]:
    subprocess.run(["make", "-s", "-C", str(GUESTS)], check=True)
    return cost_rows(runs) + replay_rows(runs)


if __name__ == "__main__":
    from run import markdown_table
    print(markdown_table(irq_rows(int(sys.argv[1]) if len(sys.argv) > 1 else 5)))
