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
from .errors import EXIT_CODES, GuestImageError, TraceError, UsageError
from .machine import Observer
from .outcome import RunEnd, StopRun
from .record import OutputDigest, ended_by_chance
from .script import validate_steps
from .trace import CHECKPOINT, INPUT, IRQ, OUTPUT, SCREEN, ReplayStream, Trace, TraceFile


def _by_chance(end: dict) -> bool:
    """A recorded end found at a host-timed moment (record.ended_by_chance)."""
    return ended_by_chance(end.get("reason"), bool(end.get("at_read")), end.get("icount"))


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
    """Compares a replay, as it happens, with the recording. The recorded outputs and
    checkpoints come from `stream` (shared with the replay's input source: one pass over the
    file), read as the replay reaches them."""

    def __init__(self, trace: Trace | TraceFile, stream: ReplayStream | None = None):
        self.trace = trace
        self.stream = stream if stream is not None else ReplayStream(
            trace, (OUTPUT, SCREEN, CHECKPOINT, IRQ))
        self.total_outputs = trace.counts["out"]
        self.position = 0
        self.legacy_digest = legacy_digest(trace)
        self.checked = 0
        self.outputs = OutputDigest()
        self.recent: list[str] = []
        self.total_screens = trace.counts.get("screen", 0)
        self.screen_position = 0
        self.total_irqs = trace.counts.get("irq", 0)
        self.irq_position = 0
        end = trace.end or {}
        # A recording stopped by the host between reads left a screen sampled at a moment the
        # replay cannot find again: its last sample is not compared.
        self._unverified_screen_n = (end.get("n") if _by_chance(end) else None)

        # A recording the host stopped while the guest computed (--timeout, a signal) ends at
        # observation `n` with the lines then unfinished flushed as partial ones: the replay
        # stops at the same point, the output it has printed there (see on_output).
        end = trace.end
        self.host_stop = (StopRun(end["reason"], end.get("message") or end["reason"],
                                  exit_code=end["exit_code"])
                          if end is not None and _by_chance(end) else None)
        self.stop_n = end["n"] if self.host_stop is not None else None
        self.stopped = False
        # The recording ended where its backend could not execute the guest (a KVM internal
        # error): a replay on a backend that can goes on from there.
        self.recorded_cannot_run = end is not None and end["reason"] == "kvm-error"


    def _stop_here(self, n: int) -> bool:
        """A host-stopped recording: all its output has been printed, at its last observation."""
        return self.host_stop is not None and n == self.stop_n \
            and self.position == self.total_outputs

    def next_expected(self) -> dict | None:
        """The next recorded output line the replay has not printed (None: no more)."""
        try:
            return self.stream.peek(OUTPUT)
        except StopRun:
            return None

    def next_screen(self) -> dict | None:
        """The next recorded screen change the replay has not shown (None: no more)."""
        try:
            return self.stream.peek(SCREEN)
        except StopRun:
            return None

    def on_output(self, n: int, device: str, text: str, partial: bool) -> None:
        if self.stopped:
            return                  # the lines the stop itself flushes, past the recording's end
        if self.position >= self.total_outputs and self._stop_here(n):
            self.stopped = True
            raise self.host_stop
        self.recent = (self.recent + [_fmt(device, text, partial)])[-5:]
        e = self.stream.peek(OUTPUT) if self.position < self.total_outputs else None
        if e is None:
            self.outputs.add(device, text, partial)
            if self.recorded_cannot_run:
                raise StopRun("cannot-run", f"the replay goes on past observation {n}, where "
                                            "the recording's backend could not")
            if self.trace.truncated:
                raise StopRun("truncated-end", "replayed the truncated trace's whole prefix")
            raise StopRun("diverged", f"at observation {n} the replayed guest printed "
                                      f"{_fmt(device, text, partial)!r}, after all the output "
                                      "the recording has")
        got = (n, device, text, partial)
        want = (e["n"], e["dev"], e["text"], bool(e.get("partial")))
        if self.host_stop is not None and want[3] and got[:2] == want[:2] \
                and text.startswith(want[2]) and want[0] == self.stop_n:
            # The line the stop cut short (the stop flushes the unfinished lines, stamped at
            # its observation): the replay finishes it; up to the cut it is the same.
            self.outputs.add(device, want[2], True)
            self.stream.pop(OUTPUT)
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
        self.stream.pop(OUTPUT)
        self.position += 1
        if self._stop_here(n):
            self.stopped = True
            raise self.host_stop

    def on_screen(self, n: int, rows: list) -> None:
        got = [list(row) for row in rows]
        want = self.stream.peek(SCREEN) if self.screen_position < self.total_screens else None
        if want is None:
            if self.trace.truncated:
                raise StopRun("truncated-end", "replayed the truncated trace's whole prefix")
            if n == self._unverified_screen_n:
                return
            row, text, _ = got[0]
            raise StopRun("diverged", f"at observation {n} the replayed guest's screen changed "
                                      f"(row {row}: {text!r}), after all the screen changes the "
                                      "recording has")
        if want["n"] == n == self._unverified_screen_n:
            self.stream.pop(SCREEN)
            self.screen_position += 1
            return
        if want["n"] != n or want["rows"] != got:
            raise StopRun("diverged", "the screen differs: " + screen_difference(want, n, got))
        self.stream.pop(SCREEN)
        self.screen_position += 1

    def next_interrupt(self) -> dict | None:
        try:
            return self.stream.peek(IRQ)
        except StopRun:
            return None

    def on_interrupt(self, n: int, at: int, vector: int, point: str) -> None:
        want = self.stream.peek(IRQ) if self.irq_position < self.total_irqs else None
        if want is None:
            if self.trace.truncated:
                raise StopRun("truncated-end", "replayed the truncated trace's whole prefix")
            raise StopRun("diverged", f"at observation {n} the replay injected interrupt "
                                      f"vector {vector:#x} ({point}), after all the interrupts "
                                      "the recording has")
        if (want["n"], want["vector"], want["point"]) != (n, vector, point):
            raise StopRun("diverged", f"interrupts differ: the recording injected vector "
                                      f"{want['vector']:#x} at observation {want['n']} "
                                      f"({want['point']}), the replay vector {vector:#x} at "
                                      f"observation {n} ({point})")
        self.stream.pop(IRQ)
        self.irq_position += 1

    def on_checkpoint(self, n: int, backend) -> None:
        stream = self.stream
        while True:                          # checkpoints before n were never reached: skipped
            e = stream.peek(CHECKPOINT, n + 1)
            if e is None or e["n"] > n:
                return
            stream.pop(CHECKPOINT)
            if e["n"] == n:
                break
        want = e["regs"]
        got = backend.register_digest(self.legacy_digest)
        if got != want:
            rip = backend.cpu_state().rip
            raise StopRun("diverged", f"registers differ at the checkpoint at observation {n}: "
                                      f"recorded digest {want}, replay {got} (rip={rip:#x}); "
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
        try:
            image = build_boot_image(trace.header["guest"]["name"], trace.guest_bytes, options)
        except (UsageError, GuestImageError) as e:     # the trace's fault, not the user's
            raise TraceError(f"corrupt trace {trace.path}: its machine cannot be built: {e}") \
                from None
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
            # Another kind of file: boot it the way its own kind boots, in the same RAM size
            # (an ELF recorded with a mode asked for, as a 16-bit entry is, keeps that mode).
            keep_mode = guest_bytes[:4] == b"\x7fELF" and machine.get("kind") != "raw"
            options = BootOptions(mem=options.mem, board=options.board,
                                  mode=options.mode if keep_mode else None)
        image = build_boot_image(guest_name, guest_bytes, options)
    return image, cpuid


def recorded_rtc_epoch(machine_cfg: dict) -> int:
    """The CMOS clock's epoch a trace's machine ran with (the virtual clock's, if it says none)."""
    from .devices.cmos import MAX_EPOCH, VIRTUAL_EPOCH
    epoch = machine_cfg.get("rtc_epoch", VIRTUAL_EPOCH)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= MAX_EPOCH:
        raise TraceError("corrupt trace: machine.rtc_epoch is not a Unix time")
    return epoch


def replay_streams(trace: Trace | TraceFile):
    """The input source and the verifier of an exact replay, sharing one pass over the
    trace's records."""
    stream = ReplayStream(trace)
    return replay_inputs_for(trace, stream), ReplayVerifier(trace, stream)


def replay_inputs_for(trace: Trace | TraceFile, stream: ReplayStream | None = None):
    from .inputs import ReplayInput
    events = stream if stream is not None else ReplayStream(trace, (INPUT,))
    end = trace.end
    if end is not None and end.get("at_read"):
        stop = StopRun(end["reason"], end.get("message") or end["reason"],
                       exit_code=end["exit_code"])
        return ReplayInput(events, end["n"], stop)
    if end is not None and _by_chance(end):
        # Stopped by the host between reads: the next read is past the recording.
        stop = StopRun(end["reason"], end.get("message") or end["reason"],
                       exit_code=end["exit_code"])
        return ReplayInput(events, end["n"] + 1, stop)
    last = trace.last_stamp if trace.truncated else None
    inputs = ReplayInput(events, None, None, last_stamp=last)
    if end is not None:                   # where a guest waiting for an interrupt stopped
        inputs.final_stop = StopRun(end["reason"], end.get("message") or end["reason"],
                                    exit_code=end["exit_code"])
        inputs.end_icount = end.get("icount")     # ... or at this instruction point
        inputs.end_n = end["n"]
    elif trace.truncated:
        inputs.final_stop = StopRun("truncated-end", "replayed the truncated trace's prefix")
    return inputs


def exact_verdict(trace: Trace, verifier: ReplayVerifier, end: RunEnd, machine) -> Verdict:
    """Decide whether the replay did exactly what the recording did."""
    recorded = trace.end
    tail = [f"  last output: {line}" for line in verifier.recent]
    checked = f"{verifier.position} output lines and {verifier.checked} checkpoints"
    if verifier.total_screens or verifier.total_irqs:
        parts = [f"{verifier.position} output lines"]
        if verifier.total_screens:
            parts.append(f"{verifier.screen_position} screen changes")
        if verifier.total_irqs:
            parts.append(f"{verifier.irq_position} interrupts")
        checked = ", ".join(parts) + f" and {verifier.checked} checkpoints"
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
            and verifier.position == verifier.total_outputs:
        # The other way round: the recording's backend could not go on, this one can.
        return Verdict(EXIT_CODES["cannot-run"], [
            f"vmm: cannot run: the recording{recorded_on} ended where its backend could not "
            f"execute the guest ({recorded['message']}); this backend can, and the replay went "
            f"on ({end.message}): record it on this backend instead",
            f"  replayed identically up to there: {checked}"] + tail)
    if trace.truncated:
        missing = verifier.total_outputs - verifier.position
        if missing and end.reason != "truncated-end":
            return Verdict(EXIT_CODES["diverged"], [
                f"vmm: replay diverged: the replay ended ({end.message}) before printing "
                f"{missing} more output lines the truncated trace holds"] + tail)
        return Verdict(EXIT_CODES["truncated-end"], [
            f"vmm: the trace is truncated (the recording was cut short); its prefix replayed "
            f"identically: {checked}, up to observation {end.observation}"])
    problems = []
    if verifier.irq_position != verifier.total_irqs:
        missing = verifier.next_interrupt()
        if missing is not None:
            problems.append(f"the replay ended before injecting interrupt vector "
                            f"{missing['vector']:#x} (observation {missing['n']}, "
                            f"{missing['point']})")
    if verifier.screen_position != verifier.total_screens:
        missing = verifier.next_screen()
        if missing is not None and missing["n"] != verifier._unverified_screen_n:
            row, text, _ = missing["rows"][0]
            problems.append(f"the replay ended before its screen showed row {row} {text!r} "
                            f"(observation {missing['n']})")
    missing = verifier.next_expected() if verifier.position != verifier.total_outputs else None
    if missing is not None:
        problems.append(f"the replay ended before printing {_fmt(missing['dev'], missing['text'])!r} "
                        f"(observation {missing['n']})")
    host_end_outside_read = _by_chance(recorded)
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
        elif recorded.get("icount") is not None and end.icount != recorded["icount"]:
            where = (f"at instruction {end.icount}" if end.icount is not None
                     else f"elsewhere ({end.message})")
            problems.append(f"the recording ended at instruction {recorded['icount']}, the "
                            f"replay {where}")
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
    for e in trace.iter_records():
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
    for e in trace.iter_records():
        if e["type"] == "fetch":
            answers.setdefault(e["dev"], []).append(e["text"])
    return answers


def redrive_verdict(trace: Trace, actual: list[tuple[str, str, bool]], end: RunEnd,
                    guest_name: str) -> Verdict:
    from .screenlog import replay_rows, transcript_lines
    expected = [_fmt(r["dev"], r["text"], bool(r.get("partial"))) for r in trace.iter_records()
                if r["type"] == "out"]
    got = [_fmt(*o) for o in actual]
    if trace.counts.get("screen") or end.screen is not None:
        expected += transcript_lines(replay_rows(r for r in trace.iter_records()
                                                 if r["type"] == "screen"))
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
