"""`vmm grade`: score student guests against a rubric (docs/grading.md).

Each scenario is a scripted run under the virtual clock — the same `--script` machinery and the
same recorder as `vmm record` (vmm.runner.live_run) — so scores do not depend on machine load,
and its trace is kept next to the report for the student to `vmm replay`. A crash, hang, triple
fault or flood ends only that scenario, with its reason. Submissions are graded in parallel
processes; results are identical for any number of them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

from vmm.boot import BootOptions
from vmm.errors import UsageError, VmmError

from .rubric import Check, Rubric, Scenario, load_rubric

TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".tar")
ABNORMAL = {"triple-fault", "guest-exception", "memory-outside-ram", "unknown-port", "timeout",
            "output-flood", "kvm-error", "max-time", "expect-failed", "interrupted",
            "terminated"}


# --- results ----------------------------------------------------------------------------------
@dataclass
class CheckResult:
    description: str
    passed: bool
    score: float
    max_score: float
    detail: str = ""


@dataclass
class ScenarioResult:
    name: str
    score: float
    max_score: float
    visibility: str
    reason: str                      # one line: why points were lost ("" for full marks)
    end_reason: str
    exit_code: int | None
    checks: list[CheckResult]
    output: str                      # the console transcript (capped)
    trace: str | None                # relative to the output directory
    execution_time: float = 0.0      # informational


@dataclass
class SubmissionResult:
    name: str
    source: str
    score: float
    max_score: float
    build_status: str                # "none" (a binary), "ok", "failed"
    build_log: str | None
    problem: str                     # why nothing could be graded ("" normally)
    scenarios: list[ScenarioResult] = field(default_factory=list)
    execution_time: float = 0.0      # informational

    def to_dict(self) -> dict:
        return asdict(self)


# --- submissions --------------------------------------------------------------------------------
@dataclass
class Submission:
    name: str
    source: str                      # as given on the command line


def submission_names(sources: list[str]) -> list[Submission]:
    """Name each submission after its file or directory; make names unique; keep the order."""
    subs, seen = [], {}
    for source in sources:
        base = os.path.basename(os.path.normpath(source))
        for suffix in TARBALL_SUFFIXES:
            if base.endswith(suffix) and len(base) > len(suffix):
                base = base[:-len(suffix)]
                break
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", base) or "submission"
        count = seen.get(base, 0) + 1
        seen[base] = count
        subs.append(Submission(base if count == 1 else f"{base}-{count}", source))
    return subs


def shard(subs: list[Submission], spec: str | None) -> tuple[list[Submission], str]:
    """`K/N`: the K-th of N contiguous slices of the submissions sorted by name."""
    if spec is None:
        return subs, "1/1"
    m = re.fullmatch(r"(\d+)/(\d+)", spec)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise UsageError(f"bad --shard {spec!r}: write K/N with 1 <= K <= N, e.g. 2/4")
    k, n = int(m.group(1)), int(m.group(2))
    ordered = sorted(subs, key=lambda s: s.name)
    size = -(-len(ordered) // n) if ordered else 0
    return ordered[(k - 1) * size:k * size], f"{k}/{n}"


def _network_isolation() -> list[str]:
    """A prefix that runs a command without network access, when this host allows it."""
    if shutil.which("unshare"):
        try:
            if subprocess.run(["unshare", "-n", "true"], capture_output=True,
                              timeout=10).returncode == 0:
                return ["unshare", "-n"]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return []


def prepare(sub: Submission, rubric: Rubric, folder: Path) -> tuple[str | None, str, str | None, str]:
    """The guest binary of a submission: (path or None, build status, build log, problem)."""
    source = Path(sub.source)
    if source.is_file() and not source.name.endswith(TARBALL_SUFFIXES):
        return str(source), "none", None, ""
    work = folder / "build"
    shutil.rmtree(work, ignore_errors=True)
    if source.is_dir():
        shutil.copytree(source, work, symlinks=True)
    elif source.is_file():
        try:
            with tarfile.open(source) as tar:
                tar.extractall(work, filter="data")
        except (tarfile.TarError, OSError, ValueError) as e:
            return None, "failed", None, f"cannot unpack {source.name}: {e}"
        entries = list(work.iterdir()) if work.exists() else []
        if len(entries) == 1 and entries[0].is_dir():     # the usual single top directory
            work = entries[0]
    else:
        return None, "failed", None, f"submission not found: {sub.source}"
    if not (work / "Makefile").exists() and not (work / "makefile").exists():
        return None, "failed", None, "the submission has no Makefile"
    log_path = folder / "build.log"
    command = _network_isolation() + rubric.build.command
    try:
        with open(log_path, "wb") as log:
            log.write(f"$ {' '.join(rubric.build.command)}\n".encode())
            log.flush()
            proc = subprocess.run(command, cwd=work, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=rubric.build.timeout_s)
        status = proc.returncode
    except subprocess.TimeoutExpired:
        return None, "failed", "build.log", (f"the build took longer than "
                                             f"{rubric.build.timeout_s:g}s")
    except OSError as e:
        return None, "failed", "build.log", f"cannot run {rubric.build.command[0]}: {e.strerror}"
    if status != 0:
        return None, "failed", "build.log", f"the build failed (exit status {status}): see build.log"
    guest = work / rubric.build.guest
    if not guest.is_file():
        return None, "failed", "build.log", f"the build did not produce {rubric.build.guest}"
    return str(guest), "ok", "build.log", ""


# --- one scenario -------------------------------------------------------------------------------
def evaluate(check: Check, lines: list[str], output: str, end_reason: str,
             exit_code: int | None) -> tuple[bool, str]:
    """Does the run pass the check? (passed, one-line detail when it does not)."""
    kind, value = check.kind, check.value
    if kind == "contains":
        return value in output, "" if value in output else f"{value!r} never appeared"
    if kind == "not_contains":
        return value not in output, "" if value not in output else f"{value!r} appeared"
    if kind == "lines":
        if lines == value:
            return True, ""
        first = next((i for i, (a, b) in enumerate(zip(value, lines)) if a != b),
                     min(len(value), len(lines)))
        want = repr(value[first]) if first < len(value) else "no more lines"
        got = repr(lines[first]) if first < len(lines) else "no more lines"
        return False, f"line {first + 1}: expected {want}, got {got} ({len(lines)} lines in all)"
    if kind == "regex_lines":
        position = 0
        for pattern in value:
            regex = re.compile(pattern)
            while position < len(lines) and not regex.search(lines[position]):
                position += 1
            if position == len(lines):
                return False, f"no line matching /{pattern}/" + (
                    " after the earlier matches" if pattern != value[0] else "")
            position += 1
        return True, ""
    if kind == "end_reason":
        return end_reason in value, "" if end_reason in value else f"it ended by {end_reason}"
    if kind == "exit_code":
        return exit_code == value, "" if exit_code == value else f"exit status {exit_code}"
    raise AssertionError(kind)


def boot_for(guest: str, rubric: Rubric) -> BootOptions:
    """The rubric's boot options; an ELF submission keeps only memory and stack, since the
    file itself says where it loads and in which mode it starts."""
    try:
        with open(guest, "rb") as f:
            is_elf = f.read(4) == b"\x7fELF"
    except OSError:
        is_elf = False
    if is_elf:
        return BootOptions(mem=rubric.boot.mem, stack=rubric.boot.stack)
    return rubric.boot


def run_scenario(guest: str, rubric: Rubric, scenario: Scenario, trace: Path) -> ScenarioResult:
    from vmm.runner import LiveRun, live_run
    started = time.monotonic()
    try:
        result = live_run(LiveRun(
            guest=guest, boot=boot_for(guest, rubric), script=scenario.script, clock="virtual",
            max_time_ns=scenario.max_time_ns, timeout_ns=scenario.wall_time_ns,
            max_output=scenario.max_output, cpuid=rubric.cpuid, trace_path=str(trace),
            offline=True))
    except VmmError as e:                         # the guest cannot even be booted
        return _zero(scenario, f"cannot run the guest: {e}", "not-run", None, started)
    end = result.end
    lines = [text for _, text, _ in result.output.lines]
    output = result.output.text
    total_weight = sum(c.weight for c in scenario.checks)
    checks, lost = [], []
    for check in scenario.checks:
        passed, detail = evaluate(check, lines, output, end.reason, end.exit_code)
        worth = scenario.points * check.weight / total_weight
        checks.append(CheckResult(check.describe(), passed, round(worth if passed else 0, 2),
                                  round(worth, 2), detail))
        if not passed:
            lost.append(f"{check.describe()}: {detail}")
    reason = "; ".join(lost)
    if end.reason in ABNORMAL:
        reason = f"{end.message}" + (f" -- {reason}" if reason else "")
    return ScenarioResult(
        name=scenario.name, score=round(min(scenario.points, sum(c.score for c in checks)), 2),
        max_score=scenario.points, visibility=scenario.visibility, reason=reason,
        end_reason=end.reason, exit_code=end.exit_code, checks=checks,
        output=output[:4000], trace=None, execution_time=round(time.monotonic() - started, 3))


def _zero(scenario: Scenario, reason: str, end_reason: str, exit_code, started) -> ScenarioResult:
    total = sum(c.weight for c in scenario.checks)
    return ScenarioResult(
        name=scenario.name, score=0.0, max_score=scenario.points, visibility=scenario.visibility,
        reason=reason, end_reason=end_reason, exit_code=exit_code,
        checks=[CheckResult(c.describe(), False, 0.0, round(scenario.points * c.weight / total, 2),
                            reason) for c in scenario.checks],
        output="", trace=None, execution_time=round(time.monotonic() - started, 3))


def scenario_slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-").lower() or "scenario"


# --- one submission (runs in a worker process) ----------------------------------------------------
def grade_submission(sub: Submission, rubric_path: str, out: str) -> SubmissionResult:
    rubric = load_rubric(rubric_path)
    started = time.monotonic()
    folder = Path(out) / sub.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "traces").mkdir(exist_ok=True)
    guest, build_status, build_log, problem = prepare(sub, rubric, folder)
    results = []
    for scenario in rubric.scenarios:
        if guest is None:
            results.append(_zero(scenario, problem, "not-run", None, time.monotonic()))
            continue
        trace = folder / "traces" / f"{scenario_slug(scenario.name)}.trace"
        result = run_scenario(guest, rubric, scenario, trace)
        if trace.exists():
            result.trace = str(trace.relative_to(out))
        results.append(result)
    return SubmissionResult(
        name=sub.name, source=sub.source, score=round(sum(r.score for r in results), 2),
        max_score=rubric.max_score, build_status=build_status,
        build_log=f"{sub.name}/{build_log}" if build_log else None, problem=problem,
        scenarios=results, execution_time=round(time.monotonic() - started, 3))


# --- the whole class ----------------------------------------------------------------------------
class Progress:
    """Progress of a grading run: on a terminal, a one-line bar with time left; elsewhere (a CI
    log, a pipe) one line per graded submission, on stderr unless a stream is given, so that
    stdout keeps only the scores."""

    def __init__(self, total: int, stream=None):
        self.total, self.done, self.started = total, 0, time.monotonic()
        self.stream = stream or sys.stdout
        self.bar = self.stream.isatty() and total > 0
        if not self.bar and stream is None:
            self.stream = sys.stderr

    def step(self, name: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        if not self.bar:
            self.stream.write(f"vmm: graded {self.done}/{self.total} {name} "
                              f"({elapsed:.1f}s)\n")
            self.stream.flush()
            return
        left = elapsed / self.done * (self.total - self.done)
        width = 30
        filled = width * self.done // self.total
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                          f"graded, {left:4.0f}s left  {name[:30]:<30}")
        self.stream.flush()
        if self.done == self.total:
            self.stream.write("\n")


def grade(sources: list[str], rubric_path: str, out: str, jobs: int = 1,
          shard_spec: str | None = None, progress_stream=None) -> dict:
    """Grade submissions; write every report into `out`; return the JSON report."""
    from .reports import build_report, write_reports
    rubric = load_rubric(rubric_path)
    if jobs < 1:
        raise UsageError(f"-j must be at least 1, not {jobs}")
    missing = [s for s in sources if not os.path.exists(s)]
    if missing:      # a typo on the command line, not a student's fault: refuse, don't score 0
        raise UsageError(f"submission not found: {missing[0]}"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    subs, shard_label = shard(submission_names(sources), shard_spec)
    Path(out).mkdir(parents=True, exist_ok=True)
    progress = Progress(len(subs), progress_stream)
    results: dict[str, SubmissionResult] = {}
    started = time.monotonic()
    if jobs == 1 or len(subs) <= 1:
        for sub in subs:
            results[sub.name] = grade_submission(sub, rubric_path, out)
            progress.step(sub.name)
    else:
        # Fresh worker processes ("spawn"): no KVM file descriptor or signal handler of this
        # process leaks into them.
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(grade_submission, sub, rubric_path, out): sub for sub in subs}
            for future in _as_completed(futures):
                sub = futures[future]
                results[sub.name] = future.result()
                progress.step(sub.name)
    ordered = [results[sub.name] for sub in subs]
    report = build_report(rubric, ordered, shard_label, time.monotonic() - started)
    write_reports(report, out)
    return report


def _as_completed(futures):
    from concurrent.futures import as_completed
    return as_completed(futures)
