"""Boot to first output of a multiboot kernel: vmm (KVM, emulator) against
`qemu-system-i386 -kernel` (`-accel kvm`, TCG), side by side (issue 14).

The kernel is guests/build/pc/mb1-hello.elf (a multiboot1 ELF in the OSDev Bare Bones shape):
it initialises COM1, runs the loopback probe, and prints its first line on VGA and COM1. What is
timed, for each side, is the wall time from spawning the process to the first complete line
of output on its stdout, the kernel's COM1 line (`Hello from mb1-hello, ...`):
- QEMU: `qemu-system-i386 -kernel mb1-hello.elf -serial stdio` with the default pc machine
  (SeaBIOS, its multiboot option ROM, VGA), `-m 128`, `-display none`;
- vmm: `vmm run mb1-hello.elf --board pc` (COM1 and the 0xE9 console print line by line on
  stdout).
A line rather than a byte, because vmm prints whole lines: the rest of the line costs QEMU a
few microseconds. Runs interleave (vmm, QEMU, vmm, QEMU, ...) as in every row.

On the nested benchmark machine QEMU's own boot under `-accel kvm` takes seconds (16 s on
2026-12-02, against 0.38 s under TCG): SeaBIOS, the VGA BIOS and the multiboot option ROM
loading the kernel through fw_cfg exit to the nested hypervisor very often. So this group is
optional (`bench/run.py --only boot`), and takes a few minutes.

Rows: vmm on KVM vs `qemu -accel kvm` (hardware virtualisation on both sides), and vmm's
emulator vs QEMU's TCG (a CPU emulator on both sides). vmm's side needs the pc board; where
`vmm run --help` has no `--board` yet, the rows keep QEMU's measurement and say why vmm's is
missing.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time

from common import GUESTS, ROOT, Row, summary

KERNEL = GUESTS / "build" / "pc" / "mb1-hello.elf"
FIRST_LINE = b"Hello from mb1-hello, a multiboot1 ELF kernel!"
QEMU = "qemu-system-i386"
TIMEOUT_S = 60.0


def first_line_ms(argv: list[str], **kwargs) -> tuple[float, bytes]:
    """Spawn argv; the ms until its stdout holds a complete first line, and that line (\\r
    dropped). The process is then left to end by itself (the kernel exits through 0xF4), or
    killed after TIMEOUT_S."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kwargs)
    out = b""
    elapsed = None
    try:
        fd = proc.stdout.fileno()
        deadline = start + TIMEOUT_S
        while b"\n" not in out:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out += chunk
        if b"\n" in out:
            elapsed = (time.perf_counter() - start) * 1e3
        try:
            proc.wait(timeout=max(deadline - time.perf_counter(), 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    line = out.split(b"\n", 1)[0].replace(b"\r", b"")
    if elapsed is None or line != FIRST_LINE:
        raise RuntimeError(f"`{' '.join(map(str, argv))}` printed {out[:200]!r} "
                           f"(status {proc.returncode}): {err.decode(errors='replace')[-300:]}")
    return elapsed, line


def qemu_argv(accel: str) -> list[str]:
    return [QEMU, "-accel", accel, "-kernel", str(KERNEL), "-m", "128", "-display", "none",
            "-monitor", "none", "-serial", "stdio", "-no-reboot",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]


def vmm_argv(backend: str) -> list[str]:
    return [sys.executable, "-m", "vmm", "run", str(KERNEL), "--board", "pc",
            "--backend", backend]


def vmm_missing() -> str | None:
    """None where this vmm can run the kernel on the pc board, else why not."""
    proc = subprocess.run([sys.executable, "-m", "vmm", "run", "--help"], capture_output=True,
                          cwd=ROOT)
    if b"--board" not in proc.stdout:
        return "this vmm has no pc board yet (`vmm run --help` has no --board)"
    return None


def usable(argv: list[str], **kwargs) -> str | None:
    try:
        first_line_ms(argv, **kwargs)
        return None
    except (RuntimeError, OSError) as e:
        return str(e)[:300]


def boot_rows(runs: int) -> list[Row]:
    if shutil.which(QEMU) is None:
        raise RuntimeError(f"{QEMU} is not installed (Debian package qemu-system-x86; "
                           f"`make check-tools` installs it)")
    subprocess.run(["make", "-s", "-C", str(GUESTS)], check=True)
    pairs = [("kvm", "kvm", "qemu-system-i386 -kernel, -accel kvm"),
             ("emu", "tcg", "qemu-system-i386 -kernel, TCG")]
    missing = vmm_missing()
    rows = []
    for backend, accel, qemu_name in pairs:
        why_not = missing or usable(vmm_argv(backend), cwd=ROOT)
        qemu_why_not = usable(qemu_argv(accel))               # also warms the page cache
        vmm_ms, qemu_ms = [], []
        for _ in range(runs):
            if why_not is None:
                vmm_ms.append(first_line_ms(vmm_argv(backend), cwd=ROOT)[0])
            if qemu_why_not is None:
                qemu_ms.append(first_line_ms(qemu_argv(accel))[0])
        notes = []
        if why_not:
            notes.append(f"vmm ({backend}) not measured: {why_not}")
        if qemu_why_not:
            notes.append(f"QEMU ({accel}) not measured: {qemu_why_not}")
        rows.append(Row(id=f"boot-multiboot-{backend}", group="5. multiboot boot",
                        name=f"spawn to the first COM1 line of mb1-hello.elf, vmm {backend}",
                        unit="ms", vmm=summary(vmm_ms) if vmm_ms else None,
                        baseline=summary(qemu_ms) if qemu_ms else None,
                        baseline_name=qemu_name, compare="ratio", note="; ".join(notes)))
    return rows


if __name__ == "__main__":
    from run import markdown_table
    print(markdown_table(boot_rows(int(sys.argv[1]) if len(sys.argv) > 1 else 5)))
