"""Row 4, suites: golden-suite throughput and grading throughput, in-process.

- Golden suite: every trace under traces/ re-driven against the guest its header names, with
  `vmm.runner.replay_trace(path, guest=...)` (what `pytest traces/` does for each file), in
  traces per second of wall time.
- Grading: `vmm grade` (harness/grader.py) over the echo guest and its mutants with the example
  rubric (examples/rubrics/echo.toml), one process (-j 1): submissions per second for those
  that do I/O, seconds for the one that spins (found at a watchdog tick), and seconds for a
  guest that computes forever (ended by the rubric's instruction budget).
  `grading_throughput` calls the grader's Python API, `grade(sources, rubric_path, out,
  jobs=1)`, and is skipped with a note when that API is absent.
"""

from __future__ import annotations

import io
import json
import os

from common import ROOT, Row, summary, timed
from vmm.runner import replay_trace

RUBRIC = ROOT / "examples" / "rubrics" / "echo.toml"
MUTANTS = ROOT / "guests" / "build" / "mutants"


def golden_traces() -> list[tuple[str, str]]:
    """(trace, guest) for every trace under traces/ whose header names a built guest."""
    pairs = []
    for path in sorted((ROOT / "traces").rglob("*.trace")):
        with open(path) as f:
            header = json.loads(f.readline())
        guest = (header.get("guest") or {}).get("path")
        if isinstance(guest, str) and (ROOT / guest).exists():
            pairs.append((str(path), str(ROOT / guest)))
    return pairs


def golden_throughput(runs: int) -> Row:
    pairs = golden_traces()
    samples, failed = [], set()

    def suite() -> None:
        for trace, guest in pairs:
            result = replay_trace(trace, guest=guest)
            if result.end.reason == "kvm-error":     # as `pytest traces/` does: KVM here
                result = replay_trace(trace, guest=guest, backend="emu")   # cannot run it
            if result.exit_code != 0:
                failed.add(os.path.basename(trace))

    suite()                                            # warm up
    for _ in range(runs):
        samples.append(len(pairs) / timed(suite))
    return Row(id="golden-suite", group="4. suites",
               name=f"golden suite: re-drive all {len(pairs)} traces under traces/",
               unit="traces/s", vmm=summary(samples), compare="value",
               note=("all identical" if not failed
                     else f"{len(failed)} differ: {', '.join(sorted(failed))}"))


def grading_throughput(runs: int, tmp: str) -> list[Row]:
    """The grading rows. Fill-in point for the grader: they need `harness.grader.grade`.
    The echo guest and the mutants that do I/O are graded together, in submissions per second;
    the mutant that spins without I/O separately, in seconds per submission: vmm finds the
    spin (its state comes round exactly) at a watchdog tick, so no scenario waits for the
    rubric's wall-time limit (target: under 1 s per submission)."""
    name = "grading: examples/rubrics/echo.toml, -j 1"
    try:
        from harness.grader import grade
    except ImportError as e:
        return [Row(id="grading", group="4. suites", name=name, unit="subs/s", vmm=None,
                    compare="value", note=f"skipped: the grader's API is not there yet ({e})")]
    mutants = sorted(str(p) for p in MUTANTS.glob("*.bin"))
    working = [str(ROOT / "guests" / "build" / "echo.bin")] + [m for m in mutants
                                                                if "spin" not in m]
    spinning = [m for m in mutants if "spin" in m]
    if not RUBRIC.exists() or not mutants:
        return [Row(id="grading", group="4. suites", name=name, unit="subs/s", vmm=None,
                    compare="value", note="skipped: no rubric or no mutants (make guests)")]
    busy = str(ROOT / "guests" / "build" / "faults" / "busy.bin")
    rates, spins, busies = [], [], []
    for i in range(runs):
        out = os.path.join(tmp, f"grade-{i}")
        rates.append(len(working) / timed(lambda: grade(working, str(RUBRIC), out, jobs=1,
                                                        progress_stream=io.StringIO())))
        if spinning:
            out = os.path.join(tmp, f"grade-spin-{i}")
            spins.append(timed(lambda: grade(spinning, str(RUBRIC), out, jobs=1,
                                             progress_stream=io.StringIO())))
        if os.path.exists(busy):
            out = os.path.join(tmp, f"grade-busy-{i}")
            busies.append(timed(lambda: grade([busy], str(RUBRIC), out, jobs=1,
                                              progress_stream=io.StringIO())))
    rows = [Row(id="grading", group="4. suites",
                name=f"{name}: echo.bin and {len(working) - 1} mutants that do I/O",
                unit="subs/s", vmm=summary(rates), compare="value",
                note="5 scripted scenarios each, under the virtual clock")]
    if spinning:
        rows.append(Row(id="grading-spin", group="4. suites",
                        name=f"{name}: the mutant that spins without I/O", unit="s",
                        vmm=summary([t / len(spinning) for t in spins]), compare="value",
                        target=("<=", 1.0),
                        note="6 scenarios; each ends as a spin at a watchdog tick, not by the "
                             "rubric's wall_time (5 s)"))
    if busies:
        rows.append(Row(id="grading-busy", group="4. suites",
                        name=f"{name}: a guest that computes forever (faults/busy.s)", unit="s",
                        vmm=summary(busies), compare="value",
                        note="6 scenarios; each ends at the rubric's instruction budget (2M, "
                             "on the emulator): the same end on every machine"))
    return rows


def sandbox_build_row(runs: int, tmp: str) -> Row:
    """The reference submission (examples/submissions/alice) built the way `vmm grade`
    builds it: in the bubblewrap sandbox (unpacked from a tar stream inside it, limits, the
    guest handed back on a pipe) against --no-sandbox (a copy and `make` under unshare -n),
    interleaved run for run. The figure is the sandbox's cost per build."""
    from pathlib import Path

    from harness.grader import Submission, prepare
    from harness.rubric import load_rubric
    from harness.sandbox import unavailable_reason
    name = "grading: build the reference submission, sandboxed vs --no-sandbox"
    reason = unavailable_reason()
    if reason:
        return Row(id="sandbox-build", group="4. suites", name=name, unit="ms", vmm=None,
                   compare="difference", note=f"skipped: {reason}")
    src = ROOT / "examples" / "submissions" / "alice"     # the shipped reference hand-in
    rubric = load_rubric(str(RUBRIC))
    sub = Submission("reference", str(src))
    sandboxed, plain = [], []
    for i in range(max(runs, 10)):
        for sandbox, samples in ((True, sandboxed), (False, plain)):
            folder = Path(tmp) / f"build-{sandbox}-{i}"
            folder.mkdir()
            took = timed(lambda: prepare(sub, rubric, folder, sandboxed=sandbox))
            assert (folder / "echo.bin").exists(), folder
            samples.append(took * 1000)
    return Row(id="sandbox-build", group="4. suites", name=name, unit="ms",
               vmm=summary(sandboxed), baseline=summary(plain),
               baseline_name="--no-sandbox", compare="difference", target=("<=", 100),
               note="bubblewrap with every namespace, cgroup limits, tar stream in, guest out")


def suite_rows(runs: int, tmp: str) -> list[Row]:
    return [golden_throughput(runs), *grading_throughput(runs, tmp), sandbox_build_row(runs, tmp)]
