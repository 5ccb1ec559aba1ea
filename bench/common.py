"""What every benchmark shares: samples and rows, timing, and building the baselines.

A row compares vmm with a baseline measured in the same command, on the same machine, run for
run interleaved (vmm, baseline, vmm, baseline, ...) so that drift of a shared, nested machine
falls on both. Each side is summarised as the median of its samples with min and max.

The baselines are built here, into a temporary directory, with the tools `make guests` already
needs: the C KVM loop (bench/kvm_loop.c) with gcc, the bench guests (bench/guests/*.s) with GNU
as, ld and objcopy, using the guests' own include files and link script.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
GUESTS = ROOT / "guests"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# --- samples and rows -------------------------------------------------------------------------
def summary(samples: list[float]) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "runs": len(samples), "samples": samples}


@dataclass
class Row:
    """One line of the table. `compare` says how vmm is held against the baseline: "ratio"
    (vmm / baseline), "difference" (vmm - baseline), or "value" (no baseline: vmm's median
    itself). `target` is (operator, number) on that figure. With `paired`, the samples of vmm
    and the baseline were taken in pairs, one right after the other: the figure is then the
    median of the pairs' ratios (or differences), which a machine whose speed drifts from one
    moment to the next blurs far less than a ratio of two medians."""
    id: str
    group: str
    name: str
    unit: str                          # of the medians: "us", "ms", "s", "MB/s", "traces/s"
    vmm: dict | None
    baseline: dict | None = None
    baseline_name: str = ""
    compare: str = "ratio"
    target: tuple[str, float] | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)
    paired: bool = False

    @property
    def figure(self) -> float | None:
        if self.vmm is None:
            return None
        if self.compare == "value":
            return self.vmm["median"]
        if self.baseline is None:
            return None
        if self.paired and len(self.vmm["samples"]) == len(self.baseline["samples"]):
            pairs = zip(self.vmm["samples"], self.baseline["samples"])
            return statistics.median(v - b if self.compare == "difference" else v / b
                                     for v, b in pairs)
        v, b = self.vmm["median"], self.baseline["median"]
        return v - b if self.compare == "difference" else v / b

    @property
    def met(self) -> bool | None:
        figure = self.figure
        if self.target is None or figure is None:
            return None
        op, bound = self.target
        return figure <= bound if op == "<=" else figure >= bound

    def target_text(self) -> str:
        if self.target is None:
            return "-"
        op, bound = self.target
        return f"{op} {_fmt_figure(bound, self.compare, self.unit)}"

    def figure_text(self) -> str:
        figure = self.figure
        return "-" if figure is None else _fmt_figure(figure, self.compare, self.unit)

    @classmethod
    def from_json(cls, d: dict) -> "Row":
        return cls(id=d["id"], group=d["group"], name=d["name"], unit=d["unit"], vmm=d["vmm"],
                   baseline=d["baseline"], baseline_name=d["baseline_name"] or "",
                   compare=d["compare"], target=tuple(d["target"]) if d["target"] else None,
                   note=d["note"], extra=d.get("extra", {}), paired=bool(d.get("paired")))

    def to_json(self) -> dict:
        return {"id": self.id, "group": self.group, "name": self.name, "unit": self.unit,
                "vmm": self.vmm, "baseline_name": self.baseline_name or None,
                "baseline": self.baseline, "compare": self.compare, "figure": self.figure,
                "target": list(self.target) if self.target else None, "met": self.met,
                "note": self.note, **({"extra": self.extra} if self.extra else {}),
                **({"paired": True} if self.paired else {})}


def _fmt_figure(value: float, compare: str, unit: str) -> str:
    if compare == "difference":
        return f"{value:+.1f} {unit}"
    if compare == "value":
        return f"{value:.3g} {unit}"
    return f"{value:.2f}x"


def fmt_value(s: dict | None, unit: str) -> str:
    if s is None:
        return "-"
    digits = 2 if s["median"] < 10 else 1 if s["median"] < 100 else 0
    return (f"{s['median']:.{digits}f} {unit} "
            f"[{s['min']:.{digits}f}-{s['max']:.{digits}f}]")


# --- timing -------------------------------------------------------------------------------------
def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def wall(argv: list[str], **kwargs) -> tuple[float, subprocess.CompletedProcess]:
    """Whole-process wall time of a command (fork, exec, run, exit), and its result."""
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, **kwargs)
    return time.perf_counter() - start, proc


# --- building the baselines ---------------------------------------------------------------------
class Tools:
    """The C loop and the bench guests, built once per benchmark run into `tmp`."""

    def __init__(self, tmp: str):
        self.tmp = Path(tmp)
        self.c_loop = self.tmp / "kvm_loop"
        subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(self.c_loop),
                        str(BENCH / "kvm_loop.c")], check=True)
        self._built: dict[tuple, Path] = {}

    def guest(self, source: str, reset: bool = False, **symbols: int) -> Path:
        """bench/guests/<source> assembled with --defsym NAME=value for each symbol."""
        key = (source, reset, tuple(sorted(symbols.items())))
        if key in self._built:
            return self._built[key]
        stem = Path(source).stem + "".join(f"-{k}{v}" for k, v in sorted(symbols.items()))
        obj, elf, out = (self.tmp / f"{stem}{ext}" for ext in (".o", ".img", ".bin"))
        defsyms = [arg for k, v in sorted(symbols.items()) for arg in ("--defsym", f"{k}={v}")]
        subprocess.run(["as", "--32", "--fatal-warnings", "--noexecstack", "-I",
                        str(GUESTS / "include"), *defsyms, "-o", str(obj),
                        str(BENCH / "guests" / source)], check=True)
        subprocess.run(["ld", "-m", "elf_i386", "--fatal-warnings", "--build-id=none",
                        "-nostdlib", "-static", "-T", str(GUESTS / "raw.ld"), "-Ttext",
                        "0x0" if reset else "0x1000", "-o", str(elf), str(obj)], check=True)
        subprocess.run(["objcopy", "-O", "binary", str(elf), str(out)], check=True)
        self._built[key] = out
        return out

    def run_c(self, guest: Path, *args: str) -> tuple[dict, bytes]:
        """Run the C loop with --stats: its counters (exits, out_bytes, loop_ns) and stdout."""
        proc = subprocess.run([str(self.c_loop), str(guest), "--stats", *args],
                              capture_output=True)
        stats = json.loads(proc.stderr.decode().strip().splitlines()[-1])
        stats["status"] = proc.returncode
        return stats, proc.stdout


def guests_built() -> None:
    subprocess.run(["make", "-s", "-C", str(GUESTS)], check=True)


def machine_description() -> dict:
    """Where the numbers come from: CPU, cores, kernel, Python, and whether KVM is nested."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    hypervisor = False
    try:
        with open("/proc/cpuinfo") as f:
            hypervisor = " hypervisor" in f.read()
    except OSError:
        pass
    uname = os.uname()
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": uname.release,
            "python": sys.version.split()[0], "executable": sys.executable,
            "kvm_nested": hypervisor}
