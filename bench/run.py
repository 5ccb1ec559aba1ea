"""`make bench`: vmm measured against baselines run in the same command, on this machine.

    python3 bench/run.py [--runs N] [--only exits,output,startup,record,suites,gdb,boot,backends]
                         [--json FILE] [--compare OLD.json] [--no-install]
    python3 bench/run.py --show FILE      # the table of an earlier run, without running

Rows (each the median of --runs runs, at least 5, with min and max, and a figure against its
baseline; see each module's docstring for exactly what is timed):
  1. exit dispatch     bench_exits.py    vmm's run loop vs a minimal C KVM loop (bench/kvm_loop.c)
  2. console output    bench_output.py   bytes/s, one OUT per byte and rep outsb, vs the C loop
  3. start-up          bench_startup.py  `vmm run` vs `python -c pass`, the C loop and QEMU
  4. record/replay     bench_record.py   record vs run, replay speed under the virtual clock
     suites            bench_suites.py   golden-suite and grading throughput
     debugging         bench_gdb.py      stepi, reverse-stepi and a debugged replay, per backend
     boot              bench_boot.py     boot to first output of a multiboot kernel:
                                                 vmm (KVM, emu) vs qemu -kernel (KVM, TCG)
  backends (only with --only)  bench_backends.py  the emulator backend against KVM

Prints the table (Markdown, as the README shows it) and writes every sample as JSON to
bench/results/latest.json (or --json FILE); --compare prints each row against an earlier file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from common import ROOT, Row, Tools, fmt_value, guests_built, machine_description

GROUPS = ("exits", "output", "startup", "record", "suites", "gdb", "boot", "irq")  # the default
OPTIONAL_GROUPS = ("backends",)
MIN_RUNS = 5


def run_groups(groups: list[str], runs: int, install_qemu: bool) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="vmm-bench-") as tmp:
        tools = Tools(tmp)
        for group in groups:
            started = time.perf_counter()
            print(f"bench: {group} ...", file=sys.stderr, flush=True)
            if group == "exits":
                from bench_exits import exit_rows
                rows += exit_rows(tools, max(runs, 7), n=50_000)   # a ratio near 1: more runs
            elif group == "output":
                from bench_output import output_rows
                rows += output_rows(tools, runs, lines=2048, tmp=tmp)
            elif group == "startup":
                from bench_startup import startup_rows
                rows += startup_rows(tools, max(runs * 3, 15), install_qemu)
            elif group == "record":
                from bench_record import record_rows
                rows += record_rows(runs, tmp)
            elif group == "suites":
                from bench_suites import suite_rows
                rows += suite_rows(runs, tmp)
            elif group == "gdb":
                from bench_gdb import gdb_rows
                rows += gdb_rows(max(3, runs // 2), tmp)
            elif group == "backends":
                from bench_backends import backend_rows
                rows += backend_rows(runs, tmp)
            elif group == "boot":
                from bench_boot import boot_rows
                rows += boot_rows(runs)
            elif group == "irq":
                from bench_irq import irq_rows
                rows += irq_rows(runs)
            print(f"bench: {group} done in {time.perf_counter() - started:.0f} s",
                  file=sys.stderr, flush=True)
    return rows


def markdown_table(rows: list[Row]) -> str:
    lines = ["| row | measurement | vmm | baseline | vmm vs baseline | target | met |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        baseline = (f"{row.baseline_name}: {fmt_value(row.baseline, row.unit)}"
                    if row.baseline is not None else row.baseline_name or "-")
        met = {True: "yes", False: "**no**", None: "-"}[row.met]
        lines.append(f"| {row.group} | {row.name} | {fmt_value(row.vmm, row.unit)} | "
                     f"{baseline} | {row.figure_text()} | {row.target_text()} | {met} |")
    notes = [f"- `{row.id}`: {row.note}" for row in rows if row.note]
    return "\n".join(lines + ([""] + notes if notes else []))


def compare(rows: list[Row], old_path: str) -> str:
    old = {r["id"]: r for r in json.loads(Path(old_path).read_text())["rows"]}
    lines = [f"against {old_path}:"]
    for row in rows:
        before = old.get(row.id)
        if before is None or before.get("figure") is None or row.figure is None:
            continue
        lines.append(f"  {row.id:28s} {before['figure']:10.3f} -> {row.figure:10.3f}  "
                     f"(vmm median {before['vmm']['median']:.4g} -> {row.vmm['median']:.4g} "
                     f"{row.unit})")
    return "\n".join(lines)


def describe(result: dict) -> str:
    m = result["machine"]
    return (f"{result['date']}, commit {result['commit']}; {m['cpu']}, {m['cores']} cores, "
            f"kernel {m['kernel']}, Python {m['python']}"
            f"{', nested KVM' if m['kvm_nested'] else ''}; {result['runs']} runs per row "
            f"(exit dispatch: 7), {result['duration_s']:.0f} s in all")


def git_commit() -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "vmm",
                                "bench"], capture_output=True, text=True).stdout.strip()
        return proc.stdout.strip() + ("+dirty" if dirty else "") if proc.returncode == 0 else None
    except OSError:
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=MIN_RUNS,
                        help=f"runs per row (at least {MIN_RUNS}; default {MIN_RUNS})")
    parser.add_argument("--only", default=",".join(GROUPS),
                        help="comma-separated groups: " + ", ".join(GROUPS + OPTIONAL_GROUPS))
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "latest.json"),
                        metavar="FILE", help="where to write the results (default %(default)s)")
    parser.add_argument("--compare", metavar="OLD.json", help="print each row against this file")
    parser.add_argument("--no-install", action="store_true",
                        help="never apt-get install qemu-system-x86 for the QEMU start-up row")
    parser.add_argument("--show", metavar="FILE", help="print the table of a results file")
    args = parser.parse_args(argv)
    if args.show:
        result = json.loads(Path(args.show).read_text())
        print(describe(result) + "\n")
        print(markdown_table([Row.from_json(r) for r in result["rows"]]))
        return 0
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS + OPTIONAL_GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(GROUPS + OPTIONAL_GROUPS)}")
    runs = max(args.runs, MIN_RUNS)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("bench: /dev/kvm is not usable here; nothing to measure", file=sys.stderr)
        return 12
    started = time.perf_counter()
    guests_built()
    rows = run_groups(groups, runs, install_qemu=not args.no_install)
    duration = time.perf_counter() - started
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "commit": git_commit(), "machine": machine_description(), "runs": runs,
              "duration_s": round(duration, 1), "rows": [row.to_json() for row in rows]}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n" + describe(result) + "\n")
    print(markdown_table(rows))
    if args.compare:
        print("\n" + compare(rows, args.compare))
    print(f"\nbench: {len(rows)} rows in {duration:.0f} s; results in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
