"""Debugging: the cost of running under gdb's control, per backend.

    python3 bench/bench_gdb.py [--runs N] [--json FILE]     # standalone
    from bench_gdb import gdb_rows                          # a group of `make bench`

The guest reads a port (COM1's scratch register) READS times in a loop and halts; it is
recorded once per backend, so its trace has READS + 1 observations. Rows, each per backend:

- gdb-step: one `vCont;s` (stepi) through the protocol engine, against one `g` (read all
  registers) through the same engine: what executing one instruction adds to a round trip.
- gdb-reverse-stepi: `bs` (reverse-stepi) at the end of the trace, which restores the last
  snapshot and re-executes from there under instruction counting, against a plain `vmm
  replay` of the whole trace.
- gdb-replay: the replay run to its end under the debugger (every instruction counted), against
  a plain replay: the price of being able to go back.
- gdb-snapshot: one snapshot of CPU, memory and devices, against copying all of guest RAM
  once.
- gdb-replay-snapshots: the debugged replay to its end with snapshots on (the default
  interval) against off.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    from common import ROOT, Row, summary, timed
except ImportError:                          # run from elsewhere: find bench/common.py
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import ROOT, Row, summary, timed

READS = 100_000
STEPS = 2_000
GROUP = "7. debugging"
GUEST = """
    .code16
    mov $0x3ff, %dx
    mov ${count}, %ecx
1:  in %dx, %al
    dec %ecx
    jnz 1b
    hlt
"""


def _build_guest(tmp: str, count: int) -> str:
    src, obj, img, out = (f"{tmp}/reads.{ext}" for ext in ("s", "o", "img", "bin"))
    Path(src).write_text(GUEST.replace("{count}", str(count)))
    subprocess.run(["as", "--32", "-o", obj, src], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-nostdlib", "-static", "-T",
                    str(ROOT / "guests" / "raw.ld"), "-Ttext", "0x1000", "-o", img, obj],
                   check=True)
    subprocess.run(["objcopy", "-O", "binary", img, out], check=True)
    return out


def _record(guest: str, trace: str, backend: str) -> None:
    subprocess.run([sys.executable, "-m", "vmm", "record", guest, "-o", trace, "--clock",
                    "virtual", "--backend", backend], check=True, capture_output=True, cwd=ROOT)


class _Quiet:
    def interrupt_requested(self) -> bool:
        return False

    def console(self, text: str) -> None:
        pass


def _target(trace: str, backend: str):
    from vmm.gdb.session import replay_spec
    from vmm.gdb.target import MachineTarget
    spec, _ = replay_spec(trace, backend, lambda text: None)
    return MachineTarget(spec)


def _usable_backends() -> list[str]:
    import importlib.util

    from vmm.runner import kvm_usable
    return [name for name, ok in (("kvm", kvm_usable()),
                                  ("emu", importlib.util.find_spec("unicorn") is not None)) if ok]


def gdb_rows(runs: int, tmp: str, backends=None) -> list[Row]:
    from vmm.gdb.stub import GdbStub
    from vmm.runner import replay_trace

    guest = _build_guest(tmp, READS)
    rows = []
    for backend in backends or _usable_backends():
        trace = f"{tmp}/reads-{backend}.trace"
        _record(guest, trace, backend)
        step, regs, back, plain, debugged, nosnap, snap, copy = [], [], [], [], [], [], [], []
        for _ in range(runs):
            target = _target(trace, backend)
            ours, theirs = socket.socketpair()
            stub = GdbStub(ours, target)
            try:
                step.append(timed(lambda: [stub.handle(b"vCont;s:1") for _ in range(STEPS)])
                            / STEPS * 1e6)
                regs.append(timed(lambda: [stub.handle(b"g") for _ in range(STEPS)])
                            / STEPS * 1e6)
                debugged.append(timed(lambda: target.resume("continue", _Quiet())))
                back.append(timed(target.step_back))
                if target.ex.store is not None:
                    from vmm.gdb import snapshot
                    ex = target.ex
                    snap.append(timed(lambda: snapshot.take(ex, None)) * 1e6)
                    copy.append(timed(lambda: bytes(ex.backend.memory)) * 1e6)
            finally:
                target.ex.close()
                ours.close()
                theirs.close()
            plain.append(timed(lambda: replay_trace(trace, backend=backend)))
            if snap:
                off = _target(trace, backend)
                off.snapshots.every = 1 << 62
                try:
                    nosnap.append(timed(lambda: off.resume("continue", _Quiet())))
                finally:
                    off.ex.close()
        rows.append(Row(id=f"gdb-step-{backend}", group=GROUP,
                        name=f"stepi under gdb, {backend} (vs a register read)", unit="us",
                        vmm=summary(step), baseline=summary(regs),
                        baseline_name="`g` packet through the same engine"))
        rows.append(Row(id=f"gdb-reverse-stepi-{backend}", group=GROUP,
                        name=f"reverse-stepi at the end of a {READS}-observation trace, "
                             f"{backend}", unit="s", vmm=summary(back), baseline=summary(plain),
                        baseline_name="plain `vmm replay` of the trace",
                        note="from the last snapshot before it"))
        rows.append(Row(id=f"gdb-replay-{backend}", group=GROUP,
                        name=f"replay to the end under gdb (every instruction counted), "
                             f"{backend}", unit="s", vmm=summary(debugged),
                        baseline=summary(plain), baseline_name="plain `vmm replay`"))
        if snap:
            rows.append(Row(id=f"gdb-snapshot-{backend}", group=GROUP,
                            name=f"one snapshot (CPU, memory, devices), {backend}", unit="us",
                            vmm=summary(snap), baseline=summary(copy),
                            baseline_name="copying all guest RAM once"))
            rows.append(Row(id=f"gdb-replay-snapshots-{backend}", group=GROUP,
                            name=f"debugged replay to the end, snapshots on vs off, {backend}",
                            unit="s", vmm=summary(debugged), baseline=summary(nosnap),
                            baseline_name="snapshots off"))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vmm-bench-gdb-") as tmp:
        rows = gdb_rows(args.runs, tmp)
    for row in rows:
        print(f"{row.id:<28} {row.vmm['median']:>10.3f} {row.unit:<3} vs "
              f"{row.baseline['median']:>10.3f}  x{row.figure:.2f}  {row.name}")
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=2,
                                              default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
