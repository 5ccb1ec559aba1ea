"""Row 2, console output: bytes per second, one OUT per byte and `rep outsb`, vs the C loop.

The guest (bench/guests/output.s) prints lines of 64 bytes on the debug console (0xe9). The
naive C loop takes an exit per byte (a `rep outsb` too: KVM exits once per byte for it); vmm
batches OUTs to the output ports as coalesced PIO once a guest has printed 1 KiB, so it takes an
exit per ring of writes. vmm's time is the whole `live_run` (set-up and teardown included); the
C loop's is its run loop alone.

Every run is checked, not only timed: vmm's output must be byte for byte the C loop's, and the
same session recorded with batching on and off must give the same trace records (apart from
the `info` fields, which hold wall-clock figures).
"""

from __future__ import annotations

import json
import os

from common import Row, Tools, summary, timed
from vmm.runner import LiveRun, live_run

TARGET_SPEEDUP = 3.0


def trace_records(path: str) -> list[dict]:
    records = []
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            record.pop("info", None)
            records.append(record)
    return records


def same_traces(guest, tmp: str) -> bool:
    """Record the guest under the virtual clock batched from the start and unbatched."""
    paths = [os.path.join(tmp, f"coalesce-{name}.trace") for name in ("on", "off")]
    live_run(LiveRun(guest=str(guest), clock="virtual", trace_path=paths[0], coalesce_after=0))
    live_run(LiveRun(guest=str(guest), clock="virtual", trace_path=paths[1],
                     coalesce_output=False))
    return trace_records(paths[0]) == trace_records(paths[1])


def output_rows(tools: Tools, runs: int, lines: int, tmp: str) -> list[Row]:
    rows = []
    nbytes = lines * 64
    for kind, symbols in (("byte", {}), ("rep", {"REP": 1})):
        guest = tools.guest("output.s", LINES=lines, **symbols)
        vmm, c = [], []
        identical = True
        for _ in range(runs):
            result = {}
            seconds = timed(lambda: result.setdefault("r", live_run(LiveRun(guest=str(guest)))))
            vmm.append(nbytes / seconds / 1e6)
            stats, stdout = tools.run_c(guest)
            c.append(stats["out_bytes"] / stats["loop_ns"] * 1e3)
            identical &= result["r"].output.text.encode() == stdout
        c_batched, _ = tools.run_c(guest, "--coalesce")
        traces = same_traces(guest, tmp)
        what = "one OUT per byte" if kind == "byte" else "rep outsb per line"
        rows.append(Row(
            id=f"console-output-{kind}", group="2. console output",
            name=f"{nbytes >> 10} KiB on 0xe9, {what}: throughput",
            unit="MB/s", vmm=summary(vmm), baseline=summary(c), baseline_name="naive C loop",
            compare="ratio", target=(">=", TARGET_SPEEDUP) if kind == "byte" else None,
            note=(f"output identical to the C loop's: {'yes' if identical else 'NO'}; traces "
                  f"identical batched and unbatched: {'yes' if traces else 'NO'}; C loop with "
                  f"coalescing: {c_batched['out_bytes'] / c_batched['loop_ns'] * 1e3:.2f} MB/s"),
            extra={"output_identical": identical, "traces_identical": traces,
                   "c_coalesced_mb_s": c_batched["out_bytes"] / c_batched["loop_ns"] * 1e3}))
    return rows
