"""Row 1, exit dispatch: time per port-I/O exit in vmm's run loop vs the minimal C loop.

The guest (bench/guests/exits.s) does N one-byte OUTs to COM1's scratch register, then halts;
that port is not batched, so each OUT is one exit: KVM_RUN returns, the exit is decoded, the bus
finds the device, the device stores the byte. The C loop does the same with the least work
possible. vmm's time per exit is the difference between a run with N exits and one with none,
divided by N (`live_run` in this process: set-up and teardown cancel out); the C loop reports the
time of its run loop itself. An IN row shows the read path too (the observation counter moves
and the device answers); it has no target.
"""

from __future__ import annotations

from common import Row, Tools, summary, timed
from vmm.runner import LiveRun, live_run

TARGET_RATIO = 1.15


def _vmm_per_exit(empty, full, n: int) -> float:
    t0 = timed(lambda: live_run(LiveRun(guest=str(empty))))
    t1 = timed(lambda: live_run(LiveRun(guest=str(full))))
    return (t1 - t0) / n * 1e6


def exit_rows(tools: Tools, runs: int, n: int) -> list[Row]:
    rows = []
    for direction, symbols in (("OUT", {}), ("IN", {"IN": 1})):
        empty = tools.guest("exits.s", COUNT=0, **symbols)
        full = tools.guest("exits.s", COUNT=n, **symbols)
        live_run(LiveRun(guest=str(full)))                 # warm up: caches, page faults
        vmm, c = [], []
        for _ in range(runs):
            vmm.append(_vmm_per_exit(empty, full, n))
            stats, _ = tools.run_c(full)
            c.append(stats["loop_ns"] / stats["exits"] / 1e3)
        port_op = "OUT to" if direction == "OUT" else "IN from"
        rows.append(Row(
            id=f"exit-dispatch-{direction.lower()}", group="1. exit dispatch",
            name=f"{direction} exit: {n} x {port_op} COM1 SCR (0x3ff), time per exit",
            unit="us", vmm=summary(vmm), baseline=summary(c), baseline_name="C loop",
            compare="ratio", target=("<=", TARGET_RATIO) if direction == "OUT" else None,
            note="vmm: (t(N) - t(0)) / N of live_run; C: its run loop's own clock"))
    return rows
