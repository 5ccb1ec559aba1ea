"""`vmm grade`: score student guests against a rubric (docs/grading.md).

Each scenario is a scripted run under the virtual clock — the same `--script` machinery and the
same recorder as `vmm record` (vmm.runner.live_run) — so scores do not depend on machine load,
and its trace is kept next to the report for the student to `vmm replay`. A crash, hang, triple
fault or flood ends only that scenario, with its reason. Submissions are graded in parallel
processes; results are identical for any number of them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

from vmm.boards import BOARDS
from vmm.boot import BootOptions
from vmm.errors import Terminated, UsageError, VmmError

from .limits import Cgroup, Limits, apply_rlimits
from .sandbox import SandboxUnavailable
from .rubric import (SETTINGS, Check, Rubric, Scenario, check_settings, load_rubric,
                     parse_settings)

TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".tar")
ABNORMAL = {"triple-fault", "guest-exception", "memory-outside-ram", "unknown-port", "timeout",
            "output-flood", "kvm-error", "max-time", "expect-failed", "interrupted",
            "terminated", "vmm-limit", "max-observations", "max-exits", "max-instructions",
            "spin", "reset"}


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
    limit: str = ""                  # the [limits] key that ended the scenario ("" if none did)
    work: dict = field(default_factory=dict)   # guest work: observations, exits, instructions


@dataclass
class SubmissionResult:
    name: str
    source: str
    score: float
    max_score: float
    build_status: str                # "none" (a binary), "ok", "failed"
    build_log: str | None
    problem: str                     # why nothing could be graded ("" normally)
    build_limit: str | None = None   # the build limit that ended the build, if one did
    settings: dict = field(default_factory=dict)   # the boot settings it ran with
    scenarios: list[ScenarioResult] = field(default_factory=list)
    execution_time: float = 0.0      # informational

    def to_dict(self) -> dict:
        return asdict(self)


# --- submissions --------------------------------------------------------------------------------
@dataclass
class Submission:
    name: str
    source: str                      # as given on the command line


# Names that a submission's folder must not take: the class-wide reports beside them in OUT.
RESERVED_NAMES = {"report.json", "summary.md", "junit.xml", "report.html"}


def _clean(text: str) -> str:
    """A name reduced to [A-Za-z0-9._-]: never empty, never "." or "..", no leading dot."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip(".")
    text = text.strip("_") or "submission"
    return "submission" if text.lower() in RESERVED_NAMES else text[:100]


def _file_name(source: str) -> str:
    base = os.path.basename(os.path.normpath(source))
    for suffix in TARBALL_SUFFIXES:
        if base.endswith(suffix):
            return base[:-len(suffix)]
    return base


def submission_names(sources: list[str]) -> list[Submission]:
    """Name each submission after its file (a tarball without its suffix) or directory; guest
    binaries that share a file name (alice/kernel.bin, bob/kernel.bin) are named after their
    folders. Names are reduced to [A-Za-z0-9._-] and made unique: a repeated name gets -2,
    -3, ..., skipping every name another submission has, so no result replaces another's.
    The order is kept."""
    files = [_file_name(s) for s in sources]
    bases = []
    for source, file in zip(sources, files):
        if files.count(file) > 1 and not is_source(source):
            folder = os.path.basename(os.path.dirname(os.path.abspath(source)))
            file = folder or file
        bases.append(_clean(file))
    taken, used, subs = set(bases), set(), []
    for source, base in zip(sources, bases):
        name, n = base, 1
        while name in used or (name != base and name in taken):
            n += 1
            name = f"{base}-{n}"
        used.add(name)
        subs.append(Submission(name, source))
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


def is_source(path: str) -> bool:
    """A submission to build (a directory or a tarball), as opposed to a guest binary."""
    return os.path.isdir(path) or path.endswith(TARBALL_SUFFIXES)


@dataclass
class Prepared:
    guest: str | None                # the guest file to run, inside the submission's folder
    build_status: str                # "none" (a binary), "ok", "failed"
    build_log: str | None            # relative to the submission's folder
    problem: str                     # why nothing can be graded ("" normally)
    build_limit: str | None = None   # which build limit ended the build, if one did
    settings: str | dict | None = None   # the submission's vmm.toml (see sandbox.BuildOutcome)


def prepare(sub: Submission, rubric: Rubric, folder: Path, sandboxed: bool = True) -> Prepared:
    """The guest of a submission, copied into its folder as a regular file before anything
    runs: a binary as it is; a directory or tarball unpacked and built in the sandbox."""
    source = Path(sub.source)
    if not os.path.lexists(source):
        return Prepared(None, "failed", None, f"submission not found: {sub.source}")
    cap = rubric.boot.mem or max(board.default_mem for board in BOARDS.values())
    target = folder / _clean(os.path.basename(rubric.build.guest))
    if not is_source(sub.source):
        from .sandbox_init import take_guest
        data, why = take_guest(str(source), cap)
        if data is None:
            return Prepared(None, "failed", None, f"the guest file is {why}")
        target = folder / _clean(source.name)
        _write_new(target, data)
        return Prepared(str(target), "none", None, "")
    if sandboxed:
        from .sandbox import build
        outcome = build(source, rubric.build.command, rubric.build.guest, rubric.build.limits,
                        cap, cgroup_name=f"vmm-build-{os.getpid()}-{sub.name}")
    else:
        outcome = _build_unsandboxed(source, rubric, folder, cap)
    _write_new(folder / "build.log", outcome.log)
    if outcome.guest is None:
        return Prepared(None, "failed", "build.log", outcome.problem, outcome.limit,
                        outcome.settings)
    _write_new(target, outcome.guest)
    return Prepared(str(target), "ok", "build.log", "", settings=outcome.settings)


def _write_new(path: Path, data: bytes) -> None:
    """Write a file of the grader's own, replacing whatever is there without following it."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


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


def _build_unsandboxed(source: Path, rubric: Rubric, folder: Path, cap: int):
    """--no-sandbox, for trusted code only: unpack with the same bounded unpacker, build as
    this user with no network where `unshare -n` works, and take the guest as the sandbox
    does (no links, at most the guest's RAM)."""
    from .sandbox import BuildOutcome
    from .sandbox_init import (MAKEFILES, Refused, read_settings, take_guest, unpack,
                               work_directory)
    limits = rubric.build.limits
    work = folder / "build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        if source.is_dir():
            shutil.copytree(source, work, symlinks=True, dirs_exist_ok=True)
        else:
            with open(source, "rb") as f:
                unpack(f, str(work), limits.files, limits.file_size, limits.disk)
    except Refused as e:
        return BuildOutcome(None, b"", f"cannot unpack the submission: {e}")
    except OSError as e:
        return BuildOutcome(None, b"", f"cannot copy the submission: {e.strerror}")
    work = Path(work_directory(str(work)))
    settings = read_settings(str(work))
    command = rubric.build.command
    if os.path.basename(command[0]) == "make" and not any((work / m).is_file()
                                                          for m in MAKEFILES):
        return BuildOutcome(None, b"", "the submission has no Makefile")
    header = f"$ {' '.join(command)}\n".encode()
    try:
        proc = subprocess.Popen(_network_isolation() + command, cwd=work,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as e:
        return BuildOutcome(None, header, f"cannot run {command[0]}: {e.strerror}")
    try:
        output, _ = proc.communicate(timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)     # make and what it started in its session
        output, _ = proc.communicate()
        return BuildOutcome(None, header + output[:1 << 20],
                            f"the build took longer than {limits.timeout_s:g}s", "time")
    log = header + output[:1 << 20]
    if proc.returncode != 0:
        return BuildOutcome(None, log, f"the build failed (exit status {proc.returncode}): "
                                       "see build.log")
    guest, why = take_guest(str(work / rubric.build.guest), cap)
    if guest is None:
        return BuildOutcome(None, log, f"the build did not produce {rubric.build.guest}"
                            if why == "missing" else f"the build's {rubric.build.guest} is {why}",
                            settings=settings)
    return BuildOutcome(guest, log, "", settings=settings)


# --- one scenario -------------------------------------------------------------------------------
def evaluate(check: Check, lines: list[str], output: str, end_reason: str,
             exit_code: int | None, stats: dict | None = None,
             trace: str | None = None, screen: list[str] | None = None) -> tuple[bool, str]:
    """Does the run pass the check? (passed, one-line detail when it does not). `stats` are
    the run's (RunEnd.stats: exits, observations, each device's counters) and `trace` its
    trace file, for the checks of what the guest did to its devices; `screen` the text
    screen's rows at the end of the run (None on a board without one)."""
    kind, value = check.kind, check.value
    if kind in ("screen_contains", "screen_regex"):
        if screen is None:
            return False, "the board has no text screen (screen checks need board = \"pc\")"
        shown = [row for row in screen if row]
        found = (any(value in row for row in screen) if kind == "screen_contains"
                 else re.search(value, "\n".join(screen), re.MULTILINE) is not None)
        return found, "" if found else (f"the final screen shows {' | '.join(shown)[-160:]!r}"
                                        if shown else "the final screen is blank")
    devices = (stats or {}).get("devices", {})
    if kind == "timer_period_ms":
        low, high = value
        periods = devices.get("timer", {}).get("periods_ms", [])
        if not periods:
            return False, "the guest never programmed a timer period"
        bad = [p for p in periods if not low <= p <= high]
        return not bad, (f"it programmed {bad[0]} ms, outside {low}-{high} ms" if bad else "")
    if kind == "keyboard_acked":
        keyboard = devices.get("keyboard", {})
        keys, acks = keyboard.get("keys", 0), keyboard.get("acks", 0)
        ok = (acks >= keys) == value
        return ok, "" if ok else (f"it acknowledged {acks} of the {keys} keys it was given"
                                  if value else "it acknowledged every key")
    if kind == "max_lost_firings":
        lost = devices.get("timer", {}).get("lost", 0)
        return lost <= value, "" if lost <= value else f"{lost} timer firings were lost"
    if kind == "echo_per_tick":
        return echo_per_tick(trace, value)
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


def echo_per_tick(trace: str | None, text: str) -> tuple[bool, str]:
    """After `text` was entered (its Enter read by the guest), until the next line's Enter or
    the end: one output line `text` per timer firing the guest saw, whatever the period, and
    at least one firing. Read from the scenario's trace: key, timer and output records."""
    from vmm.errors import TraceError
    from vmm.trace import read_trace
    try:
        records = read_trace(trace).records if trace else []
    except (TraceError, OSError):
        return False, "the scenario's trace cannot be read"
    typed, entered, window = bytearray(), False, None
    firings = echoes = 0
    for record in records:
        kind = record.get("type")
        if kind == "key":
            byte = record.get("byte")
            if byte in (10, 13):
                line = typed.decode("latin-1")
                typed.clear()
                if window is not None:
                    break                            # the next line ends the window
                if line == text:
                    window, entered = True, True
            elif isinstance(byte, int):
                typed.append(byte)
        elif window and kind == "timer":
            firings += 1                             # one firing seen (lost ones merged)
        elif window and kind == "out" and record.get("text") == text:
            echoes += 1
    if not entered:
        return False, f"{text!r} was never entered"
    if not firings:
        return False, f"the timer never fired after {text!r} was entered"
    if echoes != firings:
        return False, (f"{firings} timer firing{'s' * (firings != 1)} after {text!r} was "
                       f"entered, {echoes} echo{'es' * (echoes != 1)} of it")
    return True, ""


def boot_for(guest: str, rubric: Rubric, settings: dict | None = None) -> BootOptions:
    """The rubric's boot options with the submission's own settings over them; an ELF
    submission keeps only memory and stack, since the file itself says where it loads and in
    which mode it starts (unless its settings name a mode, e.g. real for a 16-bit entry)."""
    settings = settings or {}
    try:
        with open(guest, "rb") as f:
            is_elf = f.read(4) == b"\x7fELF"
    except OSError:
        is_elf = False
    base = (BootOptions(mem=rubric.boot.mem, stack=rubric.boot.stack, board=rubric.boot.board)
            if is_elf
            else BootOptions(**rubric.boot.to_dict()))
    for key, value in settings.items():
        setattr(base, key, value)
    return base


# The [limits] key behind each way a scenario can be ended by one.
LIMIT_OF_END = {"max-time": "max_time", "timeout": "wall_time", "output-flood": "max_output",
                "max-observations": "max_observations", "max-exits": "max_exits",
                "max-instructions": "max_instructions"}


def instruction_budget(scenario: Scenario) -> int | None:
    """The scenario's instruction budget where it applies: on the emulator, which grading uses
    under --backend auto when there is one; on KVM (--backend kvm), which cannot count
    instructions, the other limits and spin detection stop a guest that computes forever."""
    from vmm.runner import resolve_backend
    return None if resolve_backend(None) == "kvm" else scenario.max_instructions


def run_scenario(guest: str, rubric: Rubric, scenario: Scenario, trace: Path,
                 settings: dict | None = None) -> ScenarioResult:
    from vmm.runner import LiveRun, live_run
    started = time.monotonic()
    try:
        result = live_run(LiveRun(
            guest=guest, boot=boot_for(guest, rubric, settings), script=scenario.script,
            clock="virtual", max_time_ns=scenario.max_time_ns, timeout_ns=scenario.wall_time_ns,
            max_output=scenario.max_output, cpuid=rubric.cpuid, trace_path=str(trace),
            offline=True, max_observations=scenario.max_observations,
            max_exits=scenario.max_exits, max_instructions=instruction_budget(scenario),
            icount_ns=rubric.icount_ns))
    except VmmError as e:                         # the guest cannot even be booted
        return _zero(scenario, f"cannot run the guest: {e}", "not-run", None, started)
    end = result.end
    lines = [text for _, text, _ in result.output.lines]
    output = result.output.text
    total_weight = sum(c.weight for c in scenario.checks)
    outcomes = [(check, *evaluate(check, lines, output, end.reason, end.exit_code, end.stats,
                                  str(trace), end.screen))
                for check in scenario.checks]
    failed_gates = [check for check, passed, _ in outcomes if check.gate and not passed]
    checks, lost, score = [], [], 0.0
    for check, passed, detail in outcomes:
        worth = scenario.points * check.weight / total_weight
        earned = worth if passed and not failed_gates else 0
        score += earned            # summed unrounded: three checks of 10/3 make 10, not 9.99
        checks.append(CheckResult(check.describe(), passed, round(earned, 2), round(worth, 2),
                                  detail))
        if not passed:
            lost.append(f"{check.describe()}: {detail}")
    reason = "; ".join(lost)
    if failed_gates:
        reason = (f"no points: the gate \"{failed_gates[0].describe()}\" failed"
                  + (f" -- {reason}" if reason else ""))
    if end.reason in ABNORMAL:
        reason = _in_rubric_terms(end.message) + (f" -- {reason}" if reason else "")
    return ScenarioResult(
        name=scenario.name, score=round(min(scenario.points, score), 2),
        max_score=scenario.points, visibility=scenario.visibility, reason=reason,
        end_reason=end.reason, exit_code=end.exit_code, checks=checks,
        output=output[:4000], trace=None, execution_time=round(time.monotonic() - started, 3),
        limit=LIMIT_OF_END.get(end.reason, ""),
        work=_work(end))


# The command-line flags a run's end message names, and the rubric keys they stand for here.
_FLAG_KEYS = {"--timeout": "limits.wall_time", "--max-time": "limits.max_time",
              "--max-output": "limits.max_output", "--max-observations": "limits.max_observations",
              "--max-exits": "limits.max_exits", "--max-instructions": "limits.max_instructions"}


def _in_rubric_terms(message: str) -> str:
    """An end message as the rubric's author and the student read it: with the [limits] key
    instead of the `vmm run` flag that sets the same limit."""
    return re.sub(r"--[a-z-]+", lambda m: _FLAG_KEYS.get(m.group(0), m.group(0)), message)


def _work(end) -> dict:
    """The guest work a scenario took, as its report keeps it: reads and exits, and
    instructions where the end did not depend on when the host looked. (A spin is found at a
    host-timed moment, but it makes no exit: its reads and exits are the same every time;
    only a wall-clock timeout, the safety net, leaves them to chance.)"""
    from vmm.record import HOST_REASONS
    work = {"observations": end.stats.get("observations", 0), "exits": _guest_exits(end.stats)}
    if "instructions" in end.stats and end.reason not in HOST_REASONS:
        work["instructions"] = end.stats["instructions"]
    return work


def _guest_exits(stats: dict) -> int:
    """The exits the guest made (vmm.machine.Machine.guest_exits), from a run's stats."""
    return stats.get("guest_exits", stats.get("exits", 0))


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


# --- one scenario in a process of its own ------------------------------------------------------
_FORWARDED_ENV = ("VMM_BACKEND", "VMM_KVM_PATH")   # what the forkserver must see as we do now


def _scenario_child(conn, guest, rubric, scenario, trace, limits, cgroup, env,
                    settings) -> None:
    """In a fresh process from the forkserver: take the limits, run the scenario, send back
    its result."""
    if cgroup is not None:
        cgroup.join()
    apply_rlimits(limits, cgroup)
    _die_with_parent()            # the forkserver, which ends with its grading process
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    try:
        conn.send(run_scenario(guest, rubric, scenario, Path(trace), settings))
    except MemoryError:
        conn.send("MemoryError")
    except BaseException:           # interrupted, or a VMM bug: the parent reports it
        pass
    finally:
        conn.close()


def run_scenario_isolated(guest: str, rubric: Rubric, scenario: Scenario, trace: Path,
                          cgroup_name: str, settings: dict | None = None) -> ScenarioResult:
    """run_scenario in a child process with memory and CPU limits ([limits] memory and
    cpu_time), so that a VMM bug or a pathological guest costs this scenario only."""
    started = time.monotonic()
    limits = Limits(memory=scenario.memory, cpu_s=scenario.cpu_s)
    cgroup = Cgroup.create(cgroup_name, scenario.memory, None)
    if cgroup is None:        # RLIMIT_AS bounds address space: the emulator reserves ~2 GiB
        limits.memory = scenario.memory + (3 << 30)
    ctx = _scenario_context()
    result = None
    receive, send = ctx.Pipe(duplex=False)
    env = {key: os.environ.get(key) for key in _FORWARDED_ENV}
    child = ctx.Process(target=_scenario_child, daemon=True,
                        args=(send, os.path.abspath(guest), rubric, scenario,
                              str(trace.absolute()), limits, cgroup, env, settings))
    try:
        child.start()
        send.close()
        deadline = scenario.wall_time_ns / 1e9 + 30     # live_run's own limit comes first
        result = receive.recv() if receive.poll(deadline) else None
        child.join(timeout=5)
    except (EOFError, OSError):
        result = None
    finally:                       # also when vmm grade is interrupted: nothing stays behind
        receive.close()
        if child.is_alive():
            child.kill()
        child.join()
        hits = cgroup.hits() if cgroup is not None else set()
        if cgroup is not None:
            cgroup.remove()
    if isinstance(result, ScenarioResult):
        return result
    code = child.exitcode
    limit = ""
    if "memory" in hits or result == "MemoryError":
        why, limit = f"the VMM went over its memory limit ({_size_text(scenario.memory)})", "memory"
    elif code == -signal.SIGXCPU:
        why, limit = f"the VMM went over its CPU-time limit ({scenario.cpu_s}s)", "cpu_time"
    elif code is None or code == -signal.SIGKILL:
        why = "the VMM did not finish and was killed"
    elif code < 0:
        why = f"the VMM crashed ({signal.Signals(-code).name})"
    else:
        why = f"the VMM ended without a result (exit status {code})"
    zero = _zero(scenario, why, "vmm-limit", None, started)
    zero.limit = limit
    return zero


def _size_text(n: int) -> str:
    from .sandbox import _size
    return _size(n)


_context = None


def _scenario_context():
    """A forkserver: each scenario forks from a clean, preloaded process (a few ms), not from
    this one (which may hold threads, a terminal or a KVM descriptor)."""
    global _context
    if _context is None:
        import multiprocessing
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(["harness.preload"])
    return _context


# --- one submission (runs in a worker process) ----------------------------------------------------
def grade_submission(sub: Submission, rubric: Rubric, out: str, sandboxed: bool = True,
                     override: dict | None = None) -> SubmissionResult:
    """Grade one submission; whatever goes wrong inside costs this submission only.
    `override`: the staff's boot settings for it (vmm grade --overrides)."""
    started = time.monotonic()
    try:
        return _grade_submission(sub, rubric, out, sandboxed, started, override or {})
    except (Terminated, SandboxUnavailable):
        raise
    except Exception as e:        # a vmm bug must not lose the class's run
        problem = f"internal error while grading: {type(e).__name__}: {e}"[:300]
        return SubmissionResult(
            name=sub.name, source=sub.source, score=0.0, max_score=rubric.max_score,
            build_status="failed", build_log=None, problem=problem,
            scenarios=[_zero(sc, problem, "not-run", None, started) for sc in rubric.scenarios],
            execution_time=round(time.monotonic() - started, 3))


def _grade_submission(sub, rubric, out, sandboxed, started, override) -> SubmissionResult:
    folder = Path(out) / sub.name
    if folder.is_symlink():
        folder.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "traces").mkdir(exist_ok=True)
    prepared = prepare(sub, rubric, folder, sandboxed)
    settings, problem = submission_settings(prepared.settings, rubric, override)
    if problem:
        prepared.guest, prepared.problem = None, problem
    results = []
    for scenario in rubric.scenarios:
        if prepared.guest is None:
            results.append(_zero(scenario, prepared.problem, "not-run", None, time.monotonic()))
            continue
        slug = scenario_slug(scenario.name)
        trace = folder / "traces" / f"{slug}.trace"
        result = run_scenario_isolated(prepared.guest, rubric, scenario, trace,
                                       f"vmm-scenario-{os.getpid()}-{sub.name}-{slug}",
                                       settings)
        if trace.exists():
            result.trace = str(trace.relative_to(out))
        results.append(result)
    return SubmissionResult(
        name=sub.name, source=sub.source, score=round(sum(r.score for r in results), 2),
        max_score=rubric.max_score, build_status=prepared.build_status,
        build_log=f"{sub.name}/{prepared.build_log}" if prepared.build_log else None,
        problem=prepared.problem, build_limit=prepared.build_limit,
        settings=_shown_settings(prepared.guest, rubric, settings),
        scenarios=results, execution_time=round(time.monotonic() - started, 3))


def submission_settings(own, rubric: Rubric, override: dict) -> tuple[dict, str]:
    """(boot settings, problem): the submission's vmm.toml within what the rubric allows
    ([boot] per_submission), then the staff's override over it."""
    settings = {}
    if isinstance(own, dict):
        return {}, own.get("problem", "vmm.toml is unusable")
    if isinstance(own, str):
        try:
            settings = parse_settings(own, rubric.per_submission, "vmm.toml")
        except UsageError as e:
            return {}, str(e)[:300]
    settings.update(override)
    return settings, ""


def _shown_settings(guest, rubric: Rubric, settings: dict) -> dict:
    """The boot settings a submission ran with, for the report (hex addresses)."""
    if guest is None:
        return {}
    boot = boot_for(guest, rubric, settings).to_dict()
    return {k: (hex(v) if isinstance(v, int) and k in ("load", "entry", "stack") else v)
            for k, v in boot.items() if v is not None}


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


def load_overrides(path: str) -> dict[str, dict]:
    """`--overrides FILE`: a TOML table per submission name of boot settings, e.g.
    `[alice] mode = "protected"`. The staff's own file: any setting is allowed."""
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 20)
        data = tomllib.loads(raw.decode("utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read --overrides {path}: {e.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"--overrides {path} is not valid TOML: {e}") from None
    out = {}
    for name, table in data.items():
        if not isinstance(table, dict):
            raise UsageError(f"--overrides {path}: [{name}] must be a table of settings")
        out[name] = check_settings(table, list(SETTINGS), f"--overrides {path} [{name}]")
    return out


def grade(sources: list[str], rubric_path: str, out: str, jobs: int = 1,
          shard_spec: str | None = None, progress_stream=None, sandbox: bool = True,
          overrides: dict[str, dict] | None = None) -> dict:
    """Grade submissions; write every report into `out`; return the JSON report. Source
    submissions are built in the sandbox (harness.sandbox) unless `sandbox` is False, which
    is for trusted code only. `overrides`: boot settings per submission name."""
    from .reports import build_report, write_reports
    rubric = load_rubric(rubric_path)
    if rubric.icount_ns is not None:
        from vmm.runner import resolve_backend
        if resolve_backend(None) == "kvm":      # every scenario would fail alike: say it once
            raise UsageError("the rubric's boot.icount needs the emulator, which counts "
                             "instructions (KVM cannot): grade with --backend emu or auto")
    if jobs < 1:
        raise UsageError(f"-j must be at least 1, not {jobs}")
    missing = [s for s in sources if not os.path.lexists(s)]
    if missing:      # a typo on the command line, not a student's fault: refuse, don't score 0
        raise UsageError(f"submission not found: {missing[0]}"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if sandbox and any(is_source(s) for s in sources):
        from .sandbox import unavailable_reason
        reason = unavailable_reason()
        if reason:
            raise UsageError(f"cannot grade source submissions: {reason}")
    named = submission_names(sources)
    overrides = overrides or {}
    unknown = sorted(set(overrides) - {s.name for s in named})
    if unknown:
        raise UsageError(f"--overrides names {unknown[0]!r}, which is no submission here "
                         f"(submissions: {', '.join(s.name for s in named[:5])}"
                         + (", ..." if len(named) > 5 else "") + ")")
    subs, shard_label = shard(named, shard_spec)
    Path(out).mkdir(parents=True, exist_ok=True)
    progress = Progress(len(subs), progress_stream)
    results: dict[str, SubmissionResult] = {}
    started = time.monotonic()
    if jobs == 1 or len(subs) <= 1:
        for sub in subs:
            results[sub.name] = grade_submission(sub, rubric, out, sandbox,
                                                 overrides.get(sub.name))
            progress.step(sub.name)
    else:
        # Fresh worker processes ("spawn"): no KVM file descriptor or signal handler of this
        # process leaks into them.
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"),
                                   initializer=_die_with_parent)
        try:
            futures = {pool.submit(grade_submission, sub, rubric, out, sandbox,
                                   overrides.get(sub.name)): sub
                       for sub in subs}
            for future in _as_completed(futures):
                sub = futures[future]
                results[sub.name] = future.result()
                progress.step(sub.name)
        except BaseException:     # interrupted: stop the workers now, and their builds with them
            for process in list(getattr(pool, "_processes", {}).values()):
                with contextlib.suppress(OSError):
                    process.kill()
            manager = getattr(pool, "_executor_manager_thread", None)
            pool.shutdown(wait=False, cancel_futures=True)
            # Let the pool's manager thread see the killed workers and close its pipes before
            # the interpreter exits: else the exit hook of concurrent.futures can write to a
            # pipe that thread is closing at that moment, and print an OSError traceback
            # (EBADF) after our one-line message. Bounded: the workers are dead already.
            if manager is not None and manager.is_alive():      # (a stop may come before
                manager.join(timeout=5)                          # it has started)
            raise
        pool.shutdown()
    ordered = [results[sub.name] for sub in subs]
    report = build_report(rubric, ordered, shard_label, time.monotonic() - started)
    write_reports(report, out)
    return report


def _die_with_parent() -> None:
    """In each worker: die with vmm grade, whatever ends it (even SIGKILL)."""
    from .sandbox import _PRCTL
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL, 0, 0, 0)                      # PR_SET_PDEATHSIG


def _as_completed(futures):
    from concurrent.futures import as_completed
    return as_completed(futures)
