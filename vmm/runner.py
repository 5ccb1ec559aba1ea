"""Running guests as a library: a live run (optionally recorded), and replaying a trace.

The CLI, the tests and (later) the pytest plugin and the grader all go through here. Nothing in
this module prints or exits: output goes to the `sink` given, diagnostics to `log`, and errors
are VmmError exceptions.
"""

from __future__ import annotations

import contextlib
import os
import time
from .record_type import Record, factory

from .boot import BootOptions, build_boot_image, load_guest, read_guest_file
from .errors import UsageError
from .outcome import RunEnd, StopRun

KVM_PATH_ENV = "VMM_KVM_PATH"          # where to find /dev/kvm (tests point it elsewhere)
DEFAULT_MAX_TIME_NS = 60_000_000_000   # virtual clock: default bound on guest time
DEFAULT_CHECKPOINT_EVERY = 1024        # observations between register checkpoints


BACKEND_ENV = "VMM_BACKEND"            # what --backend auto means: kvm, emu or auto
BACKENDS = ("auto", "kvm", "emu")


def kvm_path() -> str:
    return os.environ.get(KVM_PATH_ENV, "/dev/kvm")


def kvm_usable() -> bool:
    """Whether /dev/kvm (or $VMM_KVM_PATH) can be opened."""
    try:
        os.close(os.open(kvm_path(), os.O_RDWR | os.O_CLOEXEC))
        return True
    except OSError:
        return False


def resolve_backend(choice: str | None = None) -> str:
    """The backend `choice` stands for: "kvm", "emu", or "auto" (decided when it is created).
    None and "auto" follow $VMM_BACKEND when it is set."""
    if choice in (None, "auto"):
        choice = os.environ.get(BACKEND_ENV) or "auto"
        if choice not in BACKENDS:
            raise UsageError(f"bad {BACKEND_ENV}={choice!r}: choose one of {', '.join(BACKENDS)}")
    elif choice not in BACKENDS:
        raise UsageError(f"bad --backend {choice!r}: choose one of {', '.join(BACKENDS)}")
    return choice


def create_backend(choice: str | None, mem_size: int, log=lambda text: None):
    """A CPU backend with `mem_size` bytes of RAM: KVM, the emulator, or (auto) KVM when
    /dev/kvm can be used and else the emulator, with a one-line note to `log`."""
    choice = resolve_backend(choice)
    if choice in ("kvm", "auto"):
        from .errors import BackendUnavailable
        from .cpu.kvm_backend import KvmBackend
        try:
            return KvmBackend(mem_size, kvm_path())
        except (BackendUnavailable, OSError) as e:
            if choice == "kvm":
                if isinstance(e, BackendUnavailable):
                    raise
                raise BackendUnavailable(f"cannot use {kvm_path()}: {e}") from None
            log(f"vmm: {e}; running on the emulator instead (--backend emu)")
    from .cpu.emu_backend import EmuBackend
    return EmuBackend(mem_size, kvm_path())


class OutputCollector:
    """A sink that keeps every output line (unless `keep` is false: `vmm replay` keeps none, so
    that a long replay runs in small memory); with a stream, also writes each line to it."""

    def __init__(self, stream=None, keep: bool = True):
        self.stream = stream
        self.keep = keep
        self.lines: list[tuple[str, str, bool]] = []
        self._shown: dict[str, int] = {}     # per device: bytes of its unfinished line shown
        self._open: str | None = None        # the device whose line the stream is in the middle of
        self._ended: set[str] = set()        # devices whose shown part another line ended

    def __call__(self, device: str, text: str, partial: bool) -> None:
        if self.keep:
            self.lines.append((device, text, partial))
        if self.stream is not None:
            shown = self._shown.pop(device, 0)
            ended = device in self._ended          # its shown part was ended by a newline
            self._ended.discard(device)
            self._switch_to(device)
            rest = text[shown:]
            if ended and not rest and not partial:
                return                           # all of it is on the stream already
            self._write(rest + ("" if partial else "\n"))
            self._open = device if partial and text else None

    def show_unfinished(self, device: str, text: str) -> None:
        """Write the part of an unfinished line (a prompt) not yet shown; the rest of the line
        follows when it is finished, so the stream's bytes are the same either way."""
        if self.stream is None:
            return
        shown = self._shown.get(device, 0)
        if len(text) > shown and self._open in (None, device):
            # (while another device's line is half shown, this one waits: shown both at once,
            # two devices printing the same text would interleave a character of each)
            self._shown[device] = len(text)
            self._write(text[shown:])
            self._open = device

    def _switch_to(self, device: str) -> None:
        """Another device's line is half shown: end it on the stream first (its device's own
        bytes are unchanged: only where two devices' lines meet is a newline added)."""
        if self._open is not None and self._open != device:
            self._ended.add(self._open)
            self._write("\n")
            self._open = None

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text.encode("ascii"))
            self.stream.flush()
        except BrokenPipeError:
            raise StopRun("quit", "stdout was closed", exit_code=0) from None

    @property
    def text(self) -> str:
        return "".join(t if p else t + "\n" for _, t, p in self.lines)


class LiveRun(Record):
    """What to run and how. `guest` is a path, or `guest_bytes` with `guest_name` is given."""
    guest: str | None = None
    guest_bytes: bytes | None = None
    guest_name: str = "guest"
    boot: BootOptions = factory(BootOptions)
    script: list[dict] | None = None
    clock: str | None = None            # None: virtual with a script, else real
    max_time_ns: int | None = None      # virtual clock only; None: DEFAULT_MAX_TIME_NS
    timeout_ns: int | None = None
    max_output: int | None = 10 << 20
    ignore_unknown_ports: bool = False
    cpuid: str = "portable"
    trace_path: str | None = None       # record to this file
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY
    feeds: str | None = None            # web-data feeds file (None: the built-in feeds)
    offline: bool = False               # web devices answer "... unavailable: offline"
    coalesce_output: bool = True        # batch OUTs to output-only ports (coalesced PIO)
    coalesce_after: int | None = None   # ... after this many output bytes (None: the default,
                                        # vmm.machine.COALESCE_AFTER; 0: from the start)
    backend: str | None = None          # "kvm", "emu" or "auto" (None: auto, or $VMM_BACKEND)
    max_observations: int | None = None  # guest-work budgets (machine.RunConfig); with
    max_exits: int | None = None         # max_instructions, "auto" picks the emulator, the
    max_instructions: int | None = None  # backend that counts instructions
    icount_ns: int | None = None         # instruction-count mode (the emulator; RunConfig)


def budget_backend(choice: str | None, max_instructions, icount_ns=None) -> str | None:
    """The backend to ask for: an instruction budget or instruction-count mode needs the
    emulator, so "auto" (or none given) becomes "emu" then; an explicit "kvm" is left for the
    callers (live_run, replay_trace) and the machine to refuse in one line."""
    if (max_instructions is not None or icount_ns is not None) \
            and resolve_backend(choice) == "auto":
        return "emu"
    return choice


class _FetcherOnDemand:
    """The built-in feeds' vmm.web.Fetcher, made at a guest's first web-data read: loading the
    feeds (TOML, templates) is a good part of `vmm run`'s start-up, and most guests never read."""

    def __init__(self, offline: bool):
        self.offline = offline
        self._fetcher = None

    def fetch(self, device: str, poll=None) -> str:
        if self._fetcher is None:
            from .feeds import load_feeds
            from .web import Fetcher
            self._fetcher = Fetcher(load_feeds(None), offline=self.offline)
        return self._fetcher.fetch(device, poll=poll)


class RunResult(Record):
    end: RunEnd
    output: OutputCollector
    trace_path: str | None = None


def live_run(spec: LiveRun, *, feed=None, terminal: bool = False, sink=None,
             log=lambda text: None) -> RunResult:
    from .cpu.cpuid import cpuid_table
    from .inputs import LiveInput, NullFeed, RealClock, VirtualClock
    from .machine import Machine, RunConfig

    image = (load_guest(spec.guest, spec.boot) if spec.guest_bytes is None
             else build_boot_image(spec.guest_name, spec.guest_bytes, spec.boot))
    clock_name = spec.clock or ("virtual" if spec.script is not None or spec.icount_ns
                                else "real")
    if spec.script is not None and clock_name == "real":
        raise UsageError("--script runs under the virtual clock; drop --clock real")
    if spec.icount_ns is not None and clock_name == "real":
        raise UsageError("--icount makes guest time the instruction count's (a virtual "
                         "clock); drop --clock real")
    if spec.icount_ns is not None and resolve_backend(spec.backend) == "kvm":
        raise UsageError("--icount needs the emulator (--backend emu): KVM has no instruction "
                         "counter here")
    if spec.max_time_ns is not None and clock_name == "real":
        raise UsageError("--max-time bounds guest time under the virtual clock; use --timeout "
                         "for wall-clock time, or add --clock virtual")
    max_time = (spec.max_time_ns if spec.max_time_ns is not None else DEFAULT_MAX_TIME_NS) \
        if clock_name == "virtual" else None
    if spec.feeds is None and spec.trace_path is None:
        feeds, fetcher = None, _FetcherOnDemand(spec.offline)
    else:
        from .feeds import load_feeds
        from .web import Fetcher            # imports httpx only when it makes a request
        feeds = load_feeds(spec.feeds)
        fetcher = Fetcher(feeds, offline=spec.offline)
    if spec.script is not None:
        feed, terminal = NullFeed(), False
    elif feed is None:
        feed = NullFeed()
    output = sink if isinstance(sink, OutputCollector) else OutputCollector()
    if spec.max_instructions is not None and resolve_backend(spec.backend) == "kvm":
        raise UsageError("--max-instructions needs the emulator (--backend emu): KVM has no "
                         "instruction counter here; bound KVM runs with --max-exits")
    recorder = None
    if spec.trace_path is not None:
        from .record import TraceRecorder
        from .trace import make_header_check        # before the file is created
        make_header_check(image.guest_bytes, {"boot": image.options.to_dict()})
        recorder = TraceRecorder(spec.trace_path)
    config = RunConfig(timeout_ns=spec.timeout_ns, max_output=spec.max_output or None,
                       ignore_unknown_ports=spec.ignore_unknown_ports,
                       checkpoint_every=spec.checkpoint_every if recorder else 0,
                       kick_for_input=terminal and clock_name == "real",
                       max_observations=spec.max_observations, max_exits=spec.max_exits,
                       max_instructions=spec.max_instructions, icount_ns=spec.icount_ns)
    if clock_name == "real":
        config.rtc_epoch = int(time.time())       # the real date: the trace keeps it
    if not spec.coalesce_output:
        config.coalesce_after = None
    elif spec.coalesce_after is not None:
        config.coalesce_after = spec.coalesce_after
    backend = None
    try:
        backend = create_backend(budget_backend(spec.backend, spec.max_instructions,
                                                spec.icount_ns), image.mem_size, log)
        cpuid = cpuid_table(spec.cpuid, backend.supported_cpuid())
        clock = VirtualClock() if clock_name == "virtual" else RealClock()
        inputs = LiveInput(feed, clock, script=spec.script, max_time_ns=max_time,
                           record=recorder, fetcher=fetcher)
        if terminal:
            log(f"vmm: running {image.guest_name}; press Ctrl-] to quit")
        if terminal:
            from .terminal import raw_input_mode
        with raw_input_mode(0) if terminal else contextlib.nullcontext():
            machine = Machine(image, backend, inputs, output, log, config, cpuid,
                              observer=recorder)
            if recorder is not None:
                recorder.write_header(machine, boot_options=image.options.to_dict(), cpuid=cpuid,
                                      clock=clock_name, script=spec.script, max_time_ns=max_time,
                                      feeds=feeds.describe(spec.offline))
                if inputs.script is not None:
                    inputs.script.step_done = recorder.step_done
            end = machine.run()
            if recorder is not None:
                recorder.finish(end, machine)
    finally:
        if recorder is not None:
            recorder.close()
        if backend is not None:
            backend.close()
    return RunResult(end, output, spec.trace_path)


class ReplayResult(Record):
    exit_code: int
    report: list[str]
    end: RunEnd
    output: OutputCollector


def replay_trace(path: str, *, guest: str | None = None, boot_override: dict | None = None,
                 timeout_ns: int | None = None, sink=None,
                 log=lambda text: None, backend: str | None = None) -> ReplayResult:
    """Exact replay of a trace, or (with `guest`) a re-drive of another binary, on `backend`
    ("kvm", "emu", or None/"auto": see create_backend)."""
    from .inputs import LiveInput, NullFeed, VirtualClock
    from .machine import Machine, RunConfig
    from .replay import (exact_verdict, recorded_fetches, recorded_quantum, recorded_rtc_epoch,
                         redrive_script, redrive_verdict, replay_machine_parts, replay_streams)
    from .trace import open_trace

    trace = open_trace(path)
    machine_cfg = trace.header["machine"]
    end_info = (trace.end or {}).get("info")          # informational: free-form
    recorded_wall = end_info.get("wall_ns") if isinstance(end_info, dict) else None
    if timeout_ns is None:
        timeout_ns = (2 * recorded_wall + 10_000_000_000 if isinstance(recorded_wall, int)
                      else 120_000_000_000)
    max_output = machine_cfg.get("max_output")
    config = RunConfig(timeout_ns=timeout_ns,
                       max_output=max_output if isinstance(max_output, int) else None,
                       ignore_unknown_ports=bool(machine_cfg.get("ignore_unknown_ports")),
                       rtc_epoch=recorded_rtc_epoch(machine_cfg))
    for name in ("max_observations", "max_exits", "max_instructions"):
        value = machine_cfg.get(name)          # the recording's budgets: it ends where it did
        if name == "max_instructions" and (trace.end or {}).get("reason") != "max-instructions":
            continue       # never reached: the replay needs no counter, and may run on KVM
        if isinstance(value, int) and value >= 0:
            setattr(config, name, value)
    icount = machine_cfg.get("icount_ns")
    if isinstance(icount, int) and not isinstance(icount, bool):
        config.icount_ns = icount          # instruction points: the emulator finds them again
    output = sink if isinstance(sink, OutputCollector) else OutputCollector()
    if guest is None:
        if boot_override is not None:
            raise UsageError("--mode, --load and --entry apply to re-drive (--guest) only: an "
                             "exact replay boots the way the recording did")
        image, cpuid = replay_machine_parts(trace)
        inputs, observer = replay_streams(trace)
        every = machine_cfg.get("checkpoint_every")
        config.checkpoint_every = every if isinstance(every, int) and every > 0 else 0
    else:
        if boot_override is not None:
            boot_override = dict(boot_override, mem=int(machine_cfg.get("mem", 16 << 20)))
        image, cpuid = replay_machine_parts(trace, os.path.basename(guest),
                                            read_guest_file(guest), boot_override)
        max_time = machine_cfg.get("max_time_ns")        # None for a real-clock recording
        end_at = (trace.end or {}).get("at")
        if not isinstance(max_time, int) and isinstance(end_at, int):
            max_time = end_at + 1_000_000_000
        inputs = LiveInput(NullFeed(), VirtualClock(), script=redrive_script(trace),
                           max_time_ns=max_time if isinstance(max_time, int)
                           else DEFAULT_MAX_TIME_NS,
                           fetch_answers=recorded_fetches(trace),
                           quantum_ns=recorded_quantum(trace))
        observer = None
    if config.max_instructions is not None and resolve_backend(backend) == "kvm":
        raise UsageError("the recording ended at its instruction budget (max-instructions), "
                         "which only the emulator counts: replay it with --backend emu")
    if config.icount_ns is not None and resolve_backend(backend) == "kvm":
        raise UsageError("the recording placed interrupts at instruction counts (--icount), "
                         "which only the emulator counts: replay it with --backend emu")
    backend = create_backend(budget_backend(backend, config.max_instructions, config.icount_ns),
                             image.mem_size, log)
    try:
        machine = Machine(image, backend, inputs, output, log, config, cpuid, observer=observer)
        end = machine.run()
        if guest is None:
            verdict = exact_verdict(trace, observer, end, machine)
        else:
            verdict = redrive_verdict(trace, output.lines, end, image.guest_name)
    finally:
        backend.close()
    return ReplayResult(verdict.exit_code, verdict.lines, end, output)
