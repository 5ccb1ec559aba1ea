"""Backends: the emulator (Unicorn) against KVM, per CPU mode.

    python3 bench/bench_backends.py [--runs N] [--json FILE]     # standalone
    from bench_backends import backend_rows                     # a group of `make bench`

Two kinds of row, each in real, protected and long mode, each timed on both backends in this
process with `live_run` (run for run interleaved: emu, KVM, emu, KVM, ...):

- port-I/O exit: a guest doing N one-byte OUTs to COM1's scratch register (not a batched port,
  so every OUT is an exit the run loop handles) and one doing N INs from it; the time per exit
  is (t(N) - t(0)) / N, so start-up and teardown cancel out.
- compute: a guest running a loop of M iterations of four instructions (add, xor, dec, jnz) with
  no exit at all; the time per million guest instructions is (t(M) - t(0)) / (4M / 1e6), with M
  chosen per backend (LOOP_ITERATIONS) so that each run takes a fraction of a second.

The figure is emulator / KVM: below 1 the emulator is faster. On a host where /dev/kvm is a
software nested hypervisor (this project's CI host), KVM emulates much of ring-0 code itself,
so the emulator can win; on bare metal with hardware virtualization KVM runs guest code at
native speed and wins compute by far.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    from common import ROOT, Row, summary, timed
except ImportError:                          # run from elsewhere: find bench/common.py
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import ROOT, Row, summary, timed

from vmm.boot import BootOptions
from vmm.runner import LiveRun, live_run

MODES = ("real", "protected", "long")
BITS = {"real": 16, "protected": 32, "long": 64}
IO_EXITS = 20_000
# Loop iterations (x 4 instructions) per backend: each run should take a fraction of a second.
LOOP_ITERATIONS = {"emu": 50_000_000, "kvm": 250_000}
GROUP = "6. backends"

IO_GUEST = """
    mov $0x3ff, %dx
    mov $0x5a, %al
    mov ${count}, %ecx
    test %ecx, %ecx
    jz 2f
1:  {op}
    dec %ecx
    jnz 1b
2:  hlt
"""
COMPUTE_GUEST = """
    mov ${count}, %ecx
    xor %eax, %eax
    test %ecx, %ecx
    jz 2f
1:  add %ecx, %eax
    xor $0x55, %eax
    dec %ecx
    jnz 1b
2:  hlt
"""


def assemble(source: str, bits: int, tmp: Path, name: str) -> bytes:
    src, obj, elf, raw = (tmp / f"{name}.{ext}" for ext in ("s", "o", "elf", "bin"))
    src.write_text(f".code{bits}\n.text\n.globl _start\n_start:\n{source}\n")
    subprocess.run(["as", "--64" if bits == 64 else "--32", str(src), "-o", str(obj)], check=True)
    subprocess.run(["ld", "-m", "elf_x86_64" if bits == 64 else "elf_i386", "-Ttext", "0x1000",
                    "-e", "_start", str(obj), "-o", str(elf)], check=True)
    subprocess.run(["objcopy", "-O", "binary", str(elf), str(raw)], check=True)
    return raw.read_bytes()


def _run(data: bytes, mode: str, backend: str) -> float:
    spec = LiveRun(guest_bytes=data, guest_name=f"bench-{mode}.bin",
                   boot=BootOptions(mode=mode), backend=backend)
    result = {}
    seconds = timed(lambda: result.setdefault("r", live_run(spec)))
    assert result["r"].end.reason == "halt", result["r"].end.message
    return seconds


def _per_unit(empty: bytes, full: bytes, mode: str, backend: str, units: float) -> float:
    return (_run(full, mode, backend) - _run(empty, mode, backend)) / units


def backend_rows(runs: int, tmp: str, backends=("emu", "kvm")) -> list[Row]:
    """The rows; `backends` is (measured, baseline)."""
    measured, baseline = backends
    tmp_path = Path(tmp)
    rows = []
    io_counts = {b: IO_EXITS for b in backends}
    kinds = [("out", "port-I/O exit (OUT)", IO_GUEST, {"op": "out %al, %dx"}, io_counts, "us"),
             ("in", "port-I/O exit (IN)", IO_GUEST, {"op": "in %dx, %al"}, io_counts, "us"),
             ("compute", "compute, per million instructions", COMPUTE_GUEST, {},
              LOOP_ITERATIONS, "ms")]
    for key, label, template, fields, counts, unit in kinds:
        for mode in MODES:
            bits = BITS[mode]
            name = f"{key}-{mode}"
            empty = assemble(template.format(count=0, **fields), bits, tmp_path, name + "-0")
            full = {b: assemble(template.format(count=counts[b], **fields), bits, tmp_path,
                                f"{name}-{b}") for b in backends}
            units = {b: counts[b] * 4 / 1e6 if key == "compute" else counts[b]
                     for b in backends}
            for backend in backends:                        # warm up
                _run(full[backend], mode, backend)
                _run(empty, mode, backend)
            samples = {b: [] for b in backends}
            for _ in range(runs):
                for backend in backends:
                    per = _per_unit(empty, full[backend], mode, backend, units[backend])
                    samples[backend].append(per * (1e6 if unit == "us" else 1e3))
            rows.append(Row(
                id=f"backend-{key}-{mode}", group=GROUP, name=f"{label}, {mode} mode",
                unit=unit, vmm=summary(samples[measured]), baseline=summary(samples[baseline]),
                baseline_name="KVM" if baseline == "kvm" else baseline, compare="ratio",
                note=("vmm column: the emulator; figure: emulator / KVM (below 1: the "
                      "emulator is faster)") if key == "out" and mode == "real" else ""))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    if not all(shutil.which(t) for t in ("as", "ld", "objcopy")):
        print("bench_backends: needs binutils (as, ld, objcopy)", file=sys.stderr)
        return 2
    from vmm.runner import kvm_usable
    if not kvm_usable():
        print("bench_backends: needs /dev/kvm to compare the emulator with", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vmm-bench-backends-") as tmp:
        rows = backend_rows(args.runs, tmp)
    from common import fmt_value
    print("| measurement | emulator | KVM | faster |")
    print("|---|---|---|---|")
    for row in rows:
        ratio = row.figure
        faster = (f"emulator, {1 / ratio:.3g}x" if ratio < 1 else f"KVM, {ratio:.3g}x")
        print(f"| {row.name} | {fmt_value(row.vmm, row.unit)} | "
              f"{fmt_value(row.baseline, row.unit)} | {faster} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [r.to_json() for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["backend_rows", "ROOT"]
