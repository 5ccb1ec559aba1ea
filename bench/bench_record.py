"""Row 4, record and replay: recording overhead and virtual-clock replay speed, in-process.

1. Recording overhead: the same session run with `live_run` and recorded with
   `live_run(trace_path=...)`, interleaved. Target (issue 3): <= 3%. Two sessions: input-heavy
   (a 4 KiB line typed into the echo guest under the virtual clock: an input event every four
   exits, the worst case for recording) and output-heavy (the flood guest printing 1 MiB: an
   output record per line; its OUTs are batched, so this is now mostly Python work per line).
2. Virtual-clock replay speed: a recording holding 60 s of guest time (the echo guest echoing a
   line on every timer event) replayed exactly, in guest seconds per wall second. Target:
   >= 100x real time (a replay under 0.6 s).

Run on its own (`python3 bench/bench_record.py`) it prints just these rows.
"""

from __future__ import annotations

import os

from common import ROOT, Row, summary, timed
from vmm.runner import LiveRun, live_run, replay_trace
from vmm.script import parse_script

ECHO = str(ROOT / "guests" / "build" / "echo.bin")
FLOOD = str(ROOT / "guests" / "build" / "faults" / "flood.bin")


def paired_runs(runs: int, plain, recorded) -> tuple[list[float], list[float]]:
    """`runs` pairs of timings (ms) of the two, taken one right after the other, in turn
    in either order (so that neither always runs on a warmer or a cooler machine)."""
    a, b = [], []
    for i in range(runs):
        if i % 2:
            b.append(timed(recorded) * 1e3)
            a.append(timed(plain) * 1e3)
        else:
            a.append(timed(plain) * 1e3)
            b.append(timed(recorded) * 1e3)
    return a, b


def record_overhead(runs: int, tmp: str) -> Row:
    script = parse_script('send "%s"\nsendline ""\nwait 1s\n' % ("x" * 4096))
    trace = os.path.join(tmp, "overhead.trace")
    plain, recorded = paired_runs(
        runs, lambda: live_run(LiveRun(guest=ECHO, script=script)),
        lambda: live_run(LiveRun(guest=ECHO, script=script, trace_path=trace)))
    return Row(id="record-overhead-input", group="4. record and replay",
               name="record vs run: 4 KiB typed into echo (virtual clock)", unit="ms",
               vmm=summary(recorded), baseline=summary(plain), baseline_name="vmm run",
               compare="ratio", target=("<=", 1.03), paired=True,
               note=f"{runs} pairs, each run then recorded or the other way round in turn: "
                    "the median of the pairs' ratios")


def record_overhead_output(runs: int, tmp: str) -> Row:
    trace = os.path.join(tmp, "flood.trace")
    spec = dict(guest=FLOOD, clock="virtual", max_output=1 << 20)
    plain, recorded = paired_runs(runs, lambda: live_run(LiveRun(**spec)),
                                  lambda: live_run(LiveRun(**spec, trace_path=trace)))
    return Row(id="record-overhead-output", group="4. record and replay",
               name="record vs run: flood guest, 1 MiB of console output", unit="ms",
               vmm=summary(recorded), baseline=summary(plain), baseline_name="vmm run",
               compare="ratio", target=("<=", 1.03), paired=True,
               note=f"{runs} pairs, each run then recorded or the other way round in turn: "
                    "the median of the pairs' ratios")


def replay_speed(runs: int, tmp: str) -> Row:
    trace = os.path.join(tmp, "sixty.trace")
    live_run(LiveRun(guest=ECHO, script=parse_script('sendline "tick"\nwait 60s\n'),
                     max_time_ns=120_000_000_000, trace_path=trace))
    speeds = []
    for _ in range(runs):
        result = {}
        seconds = timed(lambda: result.setdefault("r", replay_trace(trace)))
        if result["r"].exit_code != 0:
            raise RuntimeError("\n".join(result["r"].report))
        speeds.append(60 / seconds)
    return Row(id="replay-speed", group="4. record and replay",
               name="exact replay of 60 s of guest time (echo, 500 ms timer)",
               unit="x real time", vmm=summary(speeds), compare="value", target=(">=", 100))


# The two overhead rows hold a ratio near 1 against a target 3% above it, while a shared
# machine moves single runs by 5-10%: they take more runs than the others (as exit dispatch
# does), the input-heavy one most, since its runs are short. Drawn from 160 pairs of the
# input-heavy session, the median of 21 pairs' ratios scattered with a standard deviation of
# 0.9% (that of 61 pairs: 0.3%), as wide as the margin between the recorder's ~2% and 3%.
INPUT_RUNS, OUTPUT_RUNS = 61, 25


def record_rows(runs: int, tmp: str) -> list[Row]:
    return [record_overhead(max(runs, INPUT_RUNS), tmp),
            record_overhead_output(max(runs, OUTPUT_RUNS), tmp), replay_speed(runs, tmp)]


if __name__ == "__main__":
    import sys

    from run import main
    sys.exit(main(["--only", "record"]))
