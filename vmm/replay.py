"""Replaying a trace (DESIGN §5).

Exact replay rebuilds the machine from the trace header alone, serves every recorded input at
its stamp, and checks as it goes that the guest does exactly what it did: the same output at the
same observations, the same register checkpoints, the same end and final digests. The first
difference stops the replay with a report.

Re-drive feeds the recorded inputs to another guest binary under the virtual clock — the same
script if the recording had one, otherwise each key at its recorded clock time, and the recorded
web-data fetches in order per device, never the network — and compares console output with the
recording.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from .boards import BOARDS
from .boot import BootOptions, build_boot_image, detect_protocol
from .errors import EXIT_CODES, TraceError
from .machine import Observer
from .outcome import RunEnd, StopRun
from .record import HOST_REASONS, OutputDigest
from .script import validate_steps
from .trace import Trace


def screen_difference(want: dict, n: int, got: list) -> str:
    """The first differing row of a screen change, recorded against replayed."""
    recorded = {row: (text, attrs) for row, text, attrs in want["rows"]}
    replayed = {row: (text, attrs) for row, text, attrs in got}
    if want["n"] != n:
        where = (f"the recording's screen changed at observation {want['n']}, the replay's at "
                 f"observation {n}")
    else:
        where = f"at observation {n}"
    for row in sorted(set(recorded) | set(replayed)):
        if recorded.get(row) != replayed.get(row):
            a, b = recorded.get(row, ("(unchanged)", "")), replayed.get(row, ("(unchanged)", ""))
            what = "text" if a[0] != b[0] else "colours"
            return (f"{where}, row {row} ({what}): recorded {a[0]!r}"
                    + (f" [{a[1]}]" if what == "colours" else "") + f", replayed {b[0]!r}"
                    + (f" [{b[1]}]" if what == "colours" else ""))
    return where


def legacy_digest(trace: Trace) -> bool:
    """Whether the trace's register digests are of the older kind (all of RFLAGS)."""
    from .trace import LEGACY_DIGEST_VERSIONS
    return trace.header.get("version") in LEGACY_DIGEST_VERSIONS


def _fmt(device: str, text: str, partial: bool = False) -> str:
    return f"{device}: {text}" + (" (partial line)" if partial else "")


class ReplayVerifier(Observer):
    """Compares a replay, as it happens, with the recording."""

    def __init__(self, trace: Trace):
        self.trace = trace
        self.expected = trace.outputs()
        self.position = 0
        self.checkpoints = {c["n"]: c["regs"] for c in trace.checkpoints()}
        self.legacy_digest = legacy_digest(trace)
        self.checked = 0
        self.outputs = OutputDigest()
        self.recent: list[str] = []
        self.screens = trace.screens()
        self.screen_position = 0
        end = trace.end or {}
        # A recording stopped by the host between reads left a screen sampled at a moment the
        # replay cannot find again: its last sample is not compared.
        self._unverified_screen_n = (end.get("n") if end.get("reason") in HOST_REASONS
                                     and not end.get("at_read") else None)

    def on_output(self, n: int, device: str, text: str, partial: bool) -> None:
        self.outputs.add(device, text, partial)
        self.recent = (self.recent + [_fmt(device, text, partial)])[-5:]
        if self.position >= len(self.expected):
            if self.trace.truncated:
                raise StopRun("truncated-end", "replayed the truncated trace's whole prefix")
            raise StopRun("diverged", f"at observation {n} the replayed guest printed "
                                      f"{_fmt(device, text, partial)!r}, after all the output "
                                      "the recording has")
        e = self.expected[self.position]
        got = (n, device, text, partial)
        want = (e["n"], e["dev"], e["text"], bool(e.get("partial")))
        if got != want:
            raise StopRun("diverged", f"output differs: the recording printed "
                                      f"{_fmt(*want[1:])!r} at observation {want[0]}, the replay "
                                      f"printed {_fmt(device, text, partial)!r} at observation {n}")
        self.position += 1

    def on_screen(self, n: int, rows: list) -> None:
        got = [list(row) for row in rows]
        if self.screen_position >= len(self.screens):
            if self.trace.truncated:
                raise StopRun("truncated-end", "replayed the truncated trace's whole prefix")
            if n == self._unverified_screen_n:
                return
            row, text, _ = got[0]
            raise StopRun("diverged", f"at observation {n} the replayed guest's screen changed "
                                      f"(row {row}: {text!r}), after all the screen changes the "
                                      "recording has")
        want = self.screens[self.screen_position]
        if want["n"] == n == self._unverified_screen_n:
            self.screen_position += 1
            return
        if want["n"] != n or want["rows"] != got:
            raise StopRun("diverged", "the screen differs: " + screen_difference(want, n, got))
        self.screen_position += 1

    def on_checkpoint(self, n: int, cpu) -> None:
        want = self.checkpoints.get(n)
        if want is None:
            return
        got = cpu.digest(self.legacy_digest)
        if got != want:
            raise StopRun("diverged", f"registers differ at the checkpoint at observation {n}: "
                                      f"recorded digest {want}, replay {got} (rip={cpu.rip:#x}); "
                                      "the guest saw something the trace does not hold, such "
                                      "as RDTSC or RDRAND")
        self.checked += 1


@dataclass
class Verdict:
    exit_code: int
    lines: list[str] = field(default_factory=list)


def replay_machine_parts(trace: Trace, guest_name: str | None = None,
                         guest_bytes: bytes | None = None, boot_override: dict | None = None):
    """The boot image and CPUID table a trace's header describes (or another guest's)."""
    machine = trace.header["machine"]
    try:
        boot = dict(machine["boot"])
        cpuid = [{k: int(e[k]) for k in ("function", "index", "flags", "eax", "ebx", "ecx",
                                         "edx")} for e in machine["cpuid"]]
        board = machine.get("board", "p3")         # traces before boards ran on p3
        if not isinstance(board, str) or board not in BOARDS:
            raise ValueError(f"board {board!r}")
        options = BootOptions.from_dict(dict(boot, board=board))  # with cmdline and modules
    except (KeyError, TypeError, ValueError) as e:
        raise TraceError(f"corrupt trace {trace.path}: the machine configuration is "
                         f"incomplete ({e})") from None
    if guest_bytes is None:
        image = build_boot_image(trace.header["guest"]["name"], trace.guest_bytes, options)
        if image.load_map != machine.get("load_map") or image.entry.to_dict() != machine.get("entry"):
            raise TraceError(f"{trace.path}: this vmm lays the guest out differently from the "
                             "vmm that recorded it; the trace cannot be replayed exactly")
    else:
        if boot_override is not None:
            options = BootOptions(**boot_override)
        elif detect_protocol(guest_bytes) is not None:
            # A multiboot kernel: boots as its header says, with the recording's command line
            # and modules, in the same RAM size.
            options = BootOptions(mem=options.mem, board=options.board,
                                  cmdline=options.cmdline, modules=options.modules)
        elif guest_bytes[:4] == b"\x7fELF" or trace.header["machine"].get("kind") != "raw":
            # Another kind of file: boot it the way its own kind boots, in the same RAM size.
            options = BootOptions(mem=options.mem, board=options.board)
        image = build_boot_image(guest_name, guest_bytes, options)
    return image, cpuid


def replay_inputs_for(trace: Trace):
    from .inputs import ReplayInput
    end = trace.end
    if end is not None and end.get("at_read"):
        stop = StopRun(end["reason"], end.get("message") or end["reason"],
                       exit_code=end["exit_code"])
        return ReplayInput(trace.inputs(), end["n"], stop)
    last = max((r["n"] for r in trace.records), default=0) if trace.truncated else None
    return ReplayInput(trace.inputs(), None, None, last_stamp=last)


def exact_verdict(trace: Trace, verifier: ReplayVerifier, end: RunEnd, machine) -> Verdict:
    """Decide whether the replay did exactly what the recording did."""
    recorded = trace.end
    tail = [f"  last output: {line}" for line in verifier.recent]
    checked = f"{verifier.position} output lines and {verifier.checked} checkpoints"
    if verifier.screens:
        checked = (f"{verifier.position} output lines, {verifier.screen_position} screen changes "
                   f"and {verifier.checked} checkpoints")
    if end.reason == "diverged":
        return Verdict(EXIT_CODES["diverged"], [f"vmm: replay diverged: {end.message}"]
                       + ([f"  at rip={end.cpu.rip:#x}"] if end.cpu else []) + tail)
    if trace.truncated:
        missing = len(verifier.expected) - verifier.position
        if missing and end.reason != "truncated-end":
            return Verdict(EXIT_CODES["diverged"], [
                f"vmm: replay diverged: the replay ended ({end.message}) before printing "
                f"{missing} more output lines the truncated trace holds"] + tail)
        return Verdict(EXIT_CODES["truncated-end"], [
            f"vmm: the trace is truncated (the recording was cut short); its prefix replayed "
            f"identically: {checked}, up to observation {end.observation}"])
    problems = []
    if verifier.screen_position != len(verifier.screens):
        missing = verifier.screens[verifier.screen_position]
        if missing["n"] != verifier._unverified_screen_n:
            row, text, _ = missing["rows"][0]
            problems.append(f"the replay ended before its screen showed row {row} {text!r} "
                            f"(observation {missing['n']})")
    if verifier.position != len(verifier.expected):
        missing = verifier.expected[verifier.position]
        problems.append(f"the replay ended before printing {_fmt(missing['dev'], missing['text'])!r} "
                        f"(observation {missing['n']})")
    host_end_outside_read = recorded["reason"] in HOST_REASONS and not recorded.get("at_read")
    if host_end_outside_read:
        if end.reason != "timeout" and end.reason != recorded["reason"]:
            problems.append(f"the recording ended by {recorded['reason']}, the replay by "
                            f"{end.reason} ({end.message})")
    else:
        if (end.reason, end.exit_code) != (recorded["reason"], recorded["exit_code"]):
            problems.append(f"the recording ended by {recorded['reason']} (exit status "
                            f"{recorded['exit_code']}), the replay by {end.reason} (exit status "
                            f"{end.exit_code}): {end.message}")
        elif end.observation != recorded["n"]:
            problems.append(f"the recording ended at observation {recorded['n']}, the replay "
                            f"at {end.observation}")
        else:
            regs = end.cpu.digest(legacy_digest(trace)) if end.cpu else None
            if recorded.get("regs") is not None and regs != recorded["regs"]:
                problems.append(f"final registers differ: recorded digest {recorded['regs']}, "
                                f"replay {regs}" + (f" (rip={end.cpu.rip:#x})" if end.cpu else ""))
            mem = machine.backend.memory_digest()
            if recorded.get("mem") is not None and mem != recorded["mem"]:
                problems.append(f"final guest memory differs: recorded digest {recorded['mem']}, "
                                f"replay {mem}")
    if not problems and recorded.get("output") not in (None, verifier.outputs.hexdigest()):
        problems.append("the output digest differs from the recorded one")
    if problems:
        return Verdict(EXIT_CODES["diverged"], [f"vmm: replay diverged: {problems[0]}"]
                       + [f"  also: {p}" for p in problems[1:]] + tail)
    note = (" (the recording was stopped while the guest computed between reads, so its final "
            "state is not compared)" if host_end_outside_read else "")
    return Verdict(0, [f"vmm: replay identical: {checked}, ended by {recorded['reason']} at "
                       f"observation {end.observation}{note}"])


def redrive_script(trace: Trace) -> list[dict]:
    """The recorded session as script steps: the recording's own script, or its keys in time."""
    script = trace.header.get("script")
    if script is not None:
        try:
            return validate_steps(script)
        except (ValueError, TypeError) as e:
            raise TraceError(f"corrupt trace {trace.path}: its script is malformed "
                             f"({str(e).splitlines()[0]})") from None
    steps = []
    for e in trace.inputs():
        if e["type"] == "key":
            steps.append({"op": "at", "ns": e["at"]})
            steps.append({"op": "send", "data": chr(e["byte"])})
    end_at = (trace.end or {}).get("at")
    if isinstance(end_at, int):
        steps.append({"op": "at", "ns": end_at})     # run on until the recording's end time
    return steps


def recorded_fetches(trace: Trace) -> dict[str, list[str]]:
    """Re-drive: the recorded web-data answers, in order, per device (served without network)."""
    answers: dict[str, list[str]] = {}
    for e in trace.inputs():
        if e["type"] == "fetch":
            answers.setdefault(e["dev"], []).append(e["text"])
    return answers


def redrive_verdict(trace: Trace, actual: list[tuple[str, str, bool]], end: RunEnd,
                    guest_name: str) -> Verdict:
    from .screenlog import replay_rows, transcript_lines
    expected = [_fmt(r["dev"], r["text"], bool(r.get("partial"))) for r in trace.outputs()]
    got = [_fmt(*o) for o in actual]
    screens = trace.screens()
    if screens or end.screen is not None:
        expected += transcript_lines(replay_rows(screens))
        got += transcript_lines(end.screen)
    if expected == got:
        screen = " and left the same screen" if end.screen is not None else ""
        return Verdict(0, [f"vmm: re-drive identical: {guest_name} printed the same "
                           f"{len(actual)} output lines as the recording{screen}"])
    diff = list(difflib.unified_diff(expected, got, fromfile=f"recorded ({trace.header['guest']['name']})",
                                     tofile=f"re-driven ({guest_name})", lineterm="", n=2))
    first = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b),
                 min(len(expected), len(got)))
    differing = (got[first] if first < len(got) else "") or (
        expected[first] if first < len(expected) else "")
    if differing.startswith("[screen]"):
        what = f"the screen differs from the recording's ({differing.split(':')[0][9:]})"
    else:
        what = f"console output differs from the recording at line {first + 1}"
    return Verdict(EXIT_CODES["redrive-differs"],
                   [f"vmm: re-drive differs: {what} (the run ended: {end.message})"] + diff)
