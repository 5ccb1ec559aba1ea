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

from .boot import BootOptions, build_boot_image
from .errors import EXIT_CODES, TraceError
from .machine import Observer
from .outcome import RunEnd, StopRun
from .record import HOST_REASONS, OutputDigest
from .script import validate_steps
from .trace import Trace


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
        # A recording the host stopped while the guest computed (--timeout, a signal) ends at
        # observation `n` with the lines then unfinished flushed as partial ones: the replay
        # stops at the same point, the output it has printed there (see on_output).
        end = trace.end
        self.host_stop = (StopRun(end["reason"], end.get("message") or end["reason"],
                                  exit_code=end["exit_code"])
                          if end is not None and end["reason"] in HOST_REASONS
                          and not end.get("at_read") else None)
        self.stop_n = end["n"] if self.host_stop is not None else None
        self.stopped = False
        # The recording ended where its backend could not execute the guest (a KVM internal
        # error): a replay on a backend that can goes on from there.
        self.recorded_cannot_run = end is not None and end["reason"] == "kvm-error"

    def _stop_here(self, n: int) -> bool:
        """A host-stopped recording: all its output has been printed, at its last observation."""
        return self.host_stop is not None and n == self.stop_n \
            and self.position == len(self.expected)

    def on_output(self, n: int, device: str, text: str, partial: bool) -> None:
        if self.stopped:
            return                  # the lines the stop itself flushes, past the recording's end
        if self.position >= len(self.expected) and self._stop_here(n):
            self.stopped = True
            raise self.host_stop
        self.recent = (self.recent + [_fmt(device, text, partial)])[-5:]
        if self.position >= len(self.expected):
            self.outputs.add(device, text, partial)
            if self.recorded_cannot_run:
                raise StopRun("cannot-run", f"the replay goes on past observation {n}, where "
                                            "the recording's backend could not")
            if self.trace.truncated:
                raise StopRun("truncated-end", "replayed the truncated trace's whole prefix")
            raise StopRun("diverged", f"at observation {n} the replayed guest printed "
                                      f"{_fmt(device, text, partial)!r}, after all the output "
                                      "the recording has")
        e = self.expected[self.position]
        got = (n, device, text, partial)
        want = (e["n"], e["dev"], e["text"], bool(e.get("partial")))
        if self.host_stop is not None and want[3] and got[:2] == want[:2] \
                and text.startswith(want[2]) \
                and all(r.get("partial") for r in self.expected[self.position:]):
            # The line the stop cut short: the replay finishes it; up to the cut it is the same.
            self.outputs.add(device, want[2], True)
            self.position += 1
            if self._stop_here(n):
                self.stopped = True
                raise self.host_stop
            return
        self.outputs.add(device, text, partial)
        if got != want:
            raise StopRun("diverged", f"output differs: the recording printed "
                                      f"{_fmt(*want[1:])!r} at observation {want[0]}, the replay "
                                      f"printed {_fmt(device, text, partial)!r} at observation {n}")
        self.position += 1
        if self._stop_here(n):
            self.stopped = True
            raise self.host_stop

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
        for key in ("mode", "load", "entry", "mem", "stack"):
            value = boot.get(key)
            if value is not None and not isinstance(value, (int, str)):
                raise ValueError(key)
        options = BootOptions(mode=boot.get("mode"), load=boot.get("load"),
                              entry=boot.get("entry"), mem=int(boot["mem"]),
                              stack=boot.get("stack"))
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
        elif guest_bytes[:4] == b"\x7fELF" or trace.header["machine"].get("kind") != "raw":
            # Another kind of file: boot it the way its own kind boots, in the same RAM size.
            options = BootOptions(mem=options.mem)
        image = build_boot_image(guest_name, guest_bytes, options)
    return image, cpuid


def replay_inputs_for(trace: Trace):
    from .inputs import ReplayInput
    end = trace.end
    if end is not None and end.get("at_read"):
        stop = StopRun(end["reason"], end.get("message") or end["reason"],
                       exit_code=end["exit_code"])
        return ReplayInput(trace.inputs(), end["n"], stop)
    if end is not None and end["reason"] in HOST_REASONS:
        # Stopped by the host between reads: the next read is past the recording.
        stop = StopRun(end["reason"], end.get("message") or end["reason"],
                       exit_code=end["exit_code"])
        return ReplayInput(trace.inputs(), end["n"] + 1, stop)
    last = max((r["n"] for r in trace.records), default=0) if trace.truncated else None
    return ReplayInput(trace.inputs(), None, None, last_stamp=last)


def exact_verdict(trace: Trace, verifier: ReplayVerifier, end: RunEnd, machine) -> Verdict:
    """Decide whether the replay did exactly what the recording did."""
    recorded = trace.end
    tail = [f"  last output: {line}" for line in verifier.recent]
    checked = f"{verifier.position} output lines and {verifier.checked} checkpoints"
    if end.reason == "diverged":
        return Verdict(EXIT_CODES["diverged"], [f"vmm: replay diverged: {end.message}"]
                       + ([f"  at rip={end.cpu.rip:#x}"] if end.cpu else []) + tail)
    recorded_on = ((recorded or {}).get("info") or {}).get("backend")
    recorded_on = f" (on {recorded_on})" if isinstance(recorded_on, str) else ""
    if end.reason == "kvm-error" and (recorded is None or recorded["reason"] != "kvm-error"):
        # The backend stopped at an instruction it cannot execute, where the recording went on:
        # not a divergence of the guest, a limit of this backend.
        return Verdict(EXIT_CODES["cannot-run"], [
            f"vmm: cannot run: this backend cannot execute the guest at observation "
            f"{end.observation}, where the recording{recorded_on} went on: {end.message}",
            f"  replayed identically up to there: {checked}"] + tail)
    if recorded is not None and recorded["reason"] == "kvm-error" and end.reason != "kvm-error" \
            and verifier.position == len(verifier.expected):
        # The other way round: the recording's backend could not go on, this one can.
        return Verdict(EXIT_CODES["cannot-run"], [
            f"vmm: cannot run: the recording{recorded_on} ended where its backend could not "
            f"execute the guest ({recorded['message']}); this backend can, and the replay went "
            f"on ({end.message}): record it on this backend instead",
            f"  replayed identically up to there: {checked}"] + tail)
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


def recorded_quantum(trace: Trace) -> int:
    """The virtual clock's quantum per observation the recording ran with (machine.quantum_ns;
    a trace from before it existed has none: 0, time moved only at idle points)."""
    from .inputs import MAX_QUANTUM_NS
    value = trace.header["machine"].get("quantum_ns", 0)
    if type(value) is not int or not 0 <= value <= MAX_QUANTUM_NS:
        raise TraceError(f"corrupt trace {trace.path}: machine.quantum_ns must be an integer "
                         f"from 0 to {MAX_QUANTUM_NS}, not {value!r}")
    return value


def recorded_fetches(trace: Trace) -> dict[str, list[str]]:
    """Re-drive: the recorded web-data answers, in order, per device (served without network)."""
    answers: dict[str, list[str]] = {}
    for e in trace.inputs():
        if e["type"] == "fetch":
            answers.setdefault(e["dev"], []).append(e["text"])
    return answers


def redrive_verdict(trace: Trace, actual: list[tuple[str, str, bool]], end: RunEnd,
                    guest_name: str) -> Verdict:
    expected = [_fmt(r["dev"], r["text"], bool(r.get("partial"))) for r in trace.outputs()]
    got = [_fmt(*o) for o in actual]
    if expected == got:
        return Verdict(0, [f"vmm: re-drive identical: {guest_name} printed the same "
                           f"{len(got)} output lines as the recording"])
    diff = list(difflib.unified_diff(expected, got, fromfile=f"recorded ({trace.header['guest']['name']})",
                                     tofile=f"re-driven ({guest_name})", lineterm="", n=2))
    first = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b),
                 min(len(expected), len(got)))
    return Verdict(EXIT_CODES["redrive-differs"],
                   [f"vmm: re-drive differs: console output differs from the recording at line "
                    f"{first + 1} (the run ended: {end.message})"] + diff)
