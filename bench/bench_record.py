"""Record/replay benchmarks (issue 3's targets), run in-process on real KVM.

1. Recording overhead: the same session run with `live_run` and recorded with
   `live_run(trace_path=...)`, interleaved, median of N runs each. Target: <= 3%. Two sessions:
   input-heavy (a 4 KiB line typed into the echo guest under the virtual clock: an input event
   every four exits, the worst case for recording) and exit-heavy output (the flood guest
   printing 1 MiB, one OUT exit per byte, an output record per line).
2. Virtual-clock replay speed: a recording holding 60 s of guest time (the echo guest echoing a
   line on every timer event) replayed exactly. Target: < 0.6 s (>= 100x real time).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmm.runner import LiveRun, live_run, replay_trace  # noqa: E402
from vmm.script import parse_script  # noqa: E402

ECHO = str(ROOT / "guests" / "build" / "echo.bin")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(samples: list[float]) -> dict:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "runs": len(samples)}


def record_overhead(runs: int, tmp: str) -> dict:
    script = parse_script('send "%s"\nsendline ""\nwait 1s\n' % ("x" * 4096))
    trace = os.path.join(tmp, "overhead.trace")
    plain, recorded = [], []
    for _ in range(runs):
        plain.append(timed(lambda: live_run(LiveRun(guest=ECHO, script=script))))
        recorded.append(timed(lambda: live_run(LiveRun(guest=ECHO, script=script,
                                                       trace_path=trace))))
    p, r = summary(plain), summary(recorded)
    return {"name": "record overhead (4 KiB typed into echo, virtual clock)",
            "baseline": p, "measured": r, "ratio": r["median"] / p["median"],
            "target": "ratio <= 1.03"}


def record_overhead_output(runs: int, tmp: str) -> dict:
    flood = str(ROOT / "guests" / "build" / "faults" / "flood.bin")
    trace = os.path.join(tmp, "flood.trace")
    spec = dict(guest=flood, clock="virtual", max_output=1 << 20)
    plain, recorded = [], []
    for _ in range(runs):
        plain.append(timed(lambda: live_run(LiveRun(**spec))))
        recorded.append(timed(lambda: live_run(LiveRun(**spec, trace_path=trace))))
    p, r = summary(plain), summary(recorded)
    return {"name": "record overhead (1 MiB of console output, one exit per byte)",
            "baseline": p, "measured": r, "ratio": r["median"] / p["median"],
            "target": "ratio <= 1.03"}


def replay_speed(runs: int, tmp: str) -> dict:
    trace = os.path.join(tmp, "sixty.trace")
    live_run(LiveRun(guest=ECHO, script=parse_script('sendline "tick"\nwait 60s\n'),
                     max_time_ns=120_000_000_000, trace_path=trace))
    samples = []
    for _ in range(runs):
        result = {}
        samples.append(timed(lambda: result.setdefault("r", replay_trace(trace))))
        assert result["r"].exit_code == 0, result["r"].report
    s = summary(samples)
    return {"name": "exact replay of 60 s of guest time (echo, 500 ms timer)",
            "measured": s, "guest_seconds_per_wall_second": 60 / s["median"],
            "target": "median < 0.6 s"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [record_overhead(args.runs, tmp), record_overhead_output(args.runs, tmp),
                replay_speed(args.runs, tmp)]
    for row in rows:
        m = row["measured"]
        line = f"{row['name']}: {m['median'] * 1e3:.1f} ms (min {m['min'] * 1e3:.1f}, max {m['max'] * 1e3:.1f})"
        if "ratio" in row:
            line += f", baseline {row['baseline']['median'] * 1e3:.1f} ms, ratio {row['ratio']:.3f}"
        if "guest_seconds_per_wall_second" in row:
            line += f", {row['guest_seconds_per_wall_second']:.0f}x real time"
        print(line + f"   [target: {row['target']}]")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
