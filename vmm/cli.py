"""The `vmm` command line. Maps every VmmError to a one-line message and its exit code."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from . import __version__
from .errors import EXIT_CODES, Terminated, UsageError, VmmError
from .units import MAX_ICOUNT_NS, parse_address, parse_count, parse_duration, parse_size


EPILOG_EXIT_CODES = """\
exit status:
  0          the guest halted (HLT), or went idle with nothing more to come (virtual clock);
             pc board: it shut down (ACPI at 0x604/0xb004, the Bochs string at 0x8900)
  (v<<1)|1   the guest wrote v to the exit device at port 0xf4 (as QEMU's isa-debug-exit;
             pc board: also at 0x501)
  2          bad command-line usage
  10         the guest file cannot be booted (missing, empty, malformed, does not fit)
  12         no usable CPU backend (/dev/kvm with --backend kvm, or the emulator)
  16         --gdb: cannot listen for gdb (the port is in use, a bad address)
  20         triple fault            22  unhandled guest exception / BIOS call
  24         memory outside RAM      26  unknown port
  28         --timeout or --max-time ran out, or a guest-work budget (--max-observations,
             --max-exits, --max-instructions)               30  output past --max-output
  32         KVM/emulator error      34  a --script expect step's text did not come
  36         the quit key (Ctrl-]) was pressed
  50         the guest spins forever: no I/O, and its state came round exactly
  52         pc board: the guest reset the machine (8042 0xfe or 0xd1 bit 0, port 0x92)
  130        interrupted (Ctrl-C)    143 terminated (SIGTERM)
"""


def _argument(parse):
    """An argparse type from one of vmm.units' parsers: its UsageError becomes argparse's."""
    def convert(text: str) -> int:
        try:
            return parse(text)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = parse.__name__.replace("parse_", "")   # argparse names it in errors
    return convert


_duration, _size, _address, _budget = (_argument(p) for p in (parse_duration, parse_size,
                                                             parse_address, parse_count))


def _icount(text: str) -> int:
    """--icount NS: guest nanoseconds per instruction, 1 to MAX_ICOUNT_NS."""
    value = str(text).strip()
    if value.endswith("ns"):
        value = value[:-2]
    if not value.isdigit() or not 1 <= int(value) <= MAX_ICOUNT_NS:
        raise argparse.ArgumentTypeError(f"{text!r} is not guest nanoseconds per instruction: "
                                         f"give a whole number from 1 to {MAX_ICOUNT_NS}, "
                                         "e.g. 10")
    return int(value)


_icount.__name__ = "icount"


def _positive_duration(text: str) -> int:
    value = _duration(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is no time at all: give a duration above "
                                         "zero, e.g. 500ms, 10s")
    return value


_positive_duration.__name__ = "duration"
# Options whose value may look like an option to argparse ("--timeout -1s"): given so, the
# value is passed on as "--timeout=-1s", for the option's own parser to refuse it by name.
_NUMERIC_OPTIONS = frozenset({"--timeout", "--max-time", "--mem", "--max-output", "--load",
                              "--max-observations", "--max-exits", "--max-instructions",
                              "--icount",
                              "--entry", "--stack", "--checkpoint-every", "-j", "--jobs",
                              "--limit"})


def _join_negative_values(argv: list[str]) -> list[str]:
    out: list[str] = []
    for word in argv:
        if (out and out[-1] in _NUMERIC_OPTIONS and word[:1] == "-" and len(word) > 1
                and (word[1].isdigit() or word[1] == ".")):
            out[-1] = f"{out[-1]}={word}"
        else:
            out.append(word)
    return out


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, not {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number, 0 or more, not {text!r}")
    return value


def _entry(text: str):
    return "reset" if text == "reset" else _address(text)


def add_backend_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("auto", "kvm", "emu"), default=None,
                   help="CPU backend: kvm (/dev/kvm), emu (the Unicorn emulator: no KVM "
                        "needed, same results, docs/emulator.md) or auto (default: KVM when "
                        "/dev/kvm can be opened, else the emulator; $VMM_BACKEND overrides)")


def add_machine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("machine")
    g.add_argument("--mode", choices=("real", "protected", "long"),
                   help="CPU mode at entry for a raw binary (default real; ELF32: protected, "
                        "ELF64: long; real also starts an ELF32 at a 16-bit entry; multiboot "
                        "kernels: protected, docs/boot.md)")
    g.add_argument("--load", type=_address, metavar="ADDR",
                   help="where a raw binary is loaded (default 0x1000)")
    g.add_argument("--entry", type=_entry, metavar="ADDR|reset",
                   help="entry address (default: the load address or the ELF entry); 'reset' "
                        "loads a 64 KiB image at 0xF0000 and starts at F000:FFF0")
    g.add_argument("--board", metavar="NAME",
                   help="the machine's devices: p3 (the seeds' port-I/O devices, with an optional "
                        "8259 PIC pair) or pc (8259 PICs, 8254 PIT, PS/2, CMOS clock, VGA text, "
                        "16550 UARTs, PC exit ports; docs/devices.md). Default: pc for "
                        "multiboot kernels, p3 for everything else")
    g.add_argument("--mem", type=_size, metavar="SIZE",
                   help="guest RAM, 64K..2G (default: the board's, 16M on p3, 128M on pc)")
    g.add_argument("--stack", type=_address, metavar="ADDR",
                   help="initial stack pointer (default: top of RAM, below vmm's page tables "
                        "in long mode; top of conventional memory in real mode)")
    g.add_argument("--cmdline", metavar="TEXT",
                   help="multiboot kernels: the command line (multiboot 1 receives 'FILE TEXT', "
                        "FILE the kernel's file name, as QEMU's -append; multiboot 2 TEXT)")
    g.add_argument("--module", action="append", metavar="FILE[=STRING]",
                   help="multiboot kernels: load FILE as a boot module, with STRING (default "
                        "FILE) as its string; repeatable, in order, like QEMU's -initrd a,b")
    g.add_argument("--cpuid", choices=("portable", "host"), default="portable",
                   help="CPUID table the guest sees: a fixed portable one (default) or this "
                        "host's")
    add_backend_option(g)
    r = p.add_argument_group("limits")
    r.add_argument("--timeout", type=_positive_duration, metavar="DURATION",
                   help="stop the run after this much wall-clock time, e.g. 10s, 500ms, 2m")
    r.add_argument("--max-output", type=_size, default="10M", metavar="SIZE",
                   help="stop the run when the guest has printed more than this, bytes the "
                        "devices drop included (default 10M; 0 = no limit)")
    r.add_argument("--max-observations", type=_budget, metavar="N",
                   help="guest-work budget: end the run at the guest's read number N+1 (the "
                        "observation counter; reason max-observations, status 28). Budgets end "
                        "a run at the same point on every machine and backend")
    r.add_argument("--max-exits", type=_budget, metavar="N",
                   help="guest-work budget: end the run once the guest has made more than N "
                        "exits (I/O operations, batched writes included, and halts)")
    r.add_argument("--max-instructions", type=_budget, metavar="N",
                   help="guest-work budget, the emulator only (picks it under --backend "
                        "auto): end the run before it executes more than N instructions "
                        "(counted per translated block; docs/emulator.md)")
    r.add_argument("--ignore-unknown-ports", action="store_true",
                   help="log accesses to ports no device owns and go on (IN reads all ones) "
                        "instead of stopping the run")


def add_clock_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input and time")
    g.add_argument("--script", metavar="FILE",
                   help="drive the guest from a script (docs/scripts.md) instead of stdin; "
                        "implies --clock virtual")
    g.add_argument("--clock", choices=("real", "virtual"),
                   help="real: timers follow the host clock (default); virtual: guest time "
                        "stands still while it computes, jumps at idle points and passes 10us "
                        "per other read (default with --script; piped stdin then gives one "
                        "byte per idle point; docs/scripts.md)")
    g.add_argument("--max-time", type=_positive_duration, metavar="DURATION",
                   help="virtual clock: stop when guest time passes this (default 60s)")
    g.add_argument("--icount", type=_icount, metavar="NS",
                   help="instruction-count mode, the emulator only (picks it under --backend "
                        "auto; implies --clock virtual): guest time passes NS ns per "
                        "instruction, and timer interrupts preempt loops at exact instruction "
                        "counts, so that any interrupt-driven kernel replays exactly "
                        "(docs/emulator.md). 10 is a 100 MIPS machine")
    g.add_argument("--local-echo", action="store_true",
                   help="on a terminal, show each typed key as it is sent, for guests that do "
                        "not echo (the guest, and a recording, get the same keys either way)")


def add_feeds_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("web data (ports 0x100-0x106, 0x201-0x206; docs/feeds.md)")
    g.add_argument("--feeds", metavar="FILE",
                   help="a TOML feeds file: where the headline, weather and air-quality "
                        "devices get their text (default: the built-in feeds, Hacker News and "
                        "Open-Meteo)")
    g.add_argument("--offline", action="store_true",
                   help="never touch the network: web devices with an HTTP source answer "
                        "'<kind> unavailable: offline'")


def _terminal_columns() -> int:
    """shutil.get_terminal_size().columns, as argparse's HelpFormatter asks it, without
    importing shutil (and the compression modules it loads: ~3 ms of `vmm run`'s start-up):
    argparse makes a formatter for every add_argument, and almost no run prints help."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _HelpFormatter(argparse.HelpFormatter):
    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
        super().__init__(prog, indent_increment, max_help_position,
                         _terminal_columns() - 2 if width is None else width)


class _RawHelpFormatter(_HelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


SCREEN_MODES = ("auto", "live", "final", "none")


def add_screen_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--screen", choices=SCREEN_MODES, default="auto",
                   help="the text screen of boards that have one (pc): live (drawn in place "
                        "under the output lines), final (printed as text when the run ends: "
                        "the form for pipes and CI), none; auto (default): live on a terminal, "
                        "else final when the screen holds text (docs/devices.md)")


def _add_run(run: argparse.ArgumentParser) -> None:
    run.add_argument("guest", help="raw binary or ELF file")
    add_machine_options(run)
    add_screen_option(run)
    add_clock_options(run)
    add_feeds_options(run)
    run.add_argument("-v", "--verbose", action="store_true",
                     help="report how the run ended and its counters on stderr")
    run.add_argument("--gdb", metavar="[HOST:]PORT",
                     help="wait for gdb on this port (host 127.0.0.1 unless given) before the "
                          "first instruction, and run under its control (docs/debugging.md)")
    run.set_defaults(func=cmd_run, output=None)


def _add_record(record: argparse.ArgumentParser) -> None:
    record.add_argument("guest", help="raw binary or ELF file")
    record.add_argument("-o", "--output", required=True, metavar="TRACE",
                        help="trace file to write (gzip-compressed if it ends in .gz)")
    add_machine_options(record)
    add_screen_option(record)
    add_clock_options(record)
    add_feeds_options(record)
    record.add_argument("--checkpoint-every", type=_positive, default=1024, metavar="N",
                        help="record a digest of the vCPU registers every N observations "
                             "(default 1024); replay compares them")
    record.add_argument("-v", "--verbose", action="store_true",
                        help="report how the run ended and its counters on stderr")
    record.set_defaults(func=cmd_run)


def _add_replay(replay: argparse.ArgumentParser) -> None:
    replay.add_argument("trace", help="a trace written by vmm record")
    replay.add_argument("--guest", metavar="FILE",
                        help="re-drive: run this guest binary on the recorded inputs instead")
    replay.add_argument("-q", "--quiet", action="store_true",
                        help="do not print the guest's output, only the verdict")
    replay.add_argument("--timeout", type=_positive_duration, metavar="DURATION",
                        help="wall-clock bound on the replay (default: twice the recording's "
                             "wall time plus 10s)")
    add_backend_option(replay)
    add_screen_option(replay)
    d = replay.add_argument_group("debugging (docs/debugging.md)")
    d.add_argument("--gdb", metavar="[HOST:]PORT",
                   help="wait for gdb on this port (host 127.0.0.1 unless given) before the "
                        "first instruction; gdb can then also run the replay backwards")
    d.add_argument("--stop-at", type=int, metavar="N",
                   help="replay to observation N (just after its read) and print the registers, "
                        "the screen, the device state and the next input events")
    g = replay.add_argument_group("re-drive boot options (default: the recording's, or the "
                                  "other guest's own for an ELF file)")
    g.add_argument("--mode", choices=("real", "protected", "long"))
    g.add_argument("--load", type=_address, metavar="ADDR")
    g.add_argument("--entry", type=_entry, metavar="ADDR|reset")
    replay.set_defaults(func=cmd_replay)


def _add_grade(grade: argparse.ArgumentParser) -> None:
    grade.add_argument("--rubric", required=True, metavar="FILE", help="the rubric (TOML)")
    grade.add_argument("--out", required=True, metavar="DIR",
                       help="where reports and traces go")
    grade.add_argument("-j", "--jobs", type=_positive, default=1, metavar="N",
                       help="grade N submissions at a time in separate processes (default 1); "
                            "results are identical for any N")
    grade.add_argument("--shard", metavar="K/N",
                       help="grade only the K-th of N slices of the submissions (sorted by "
                            "name); combine the slices with `vmm grade merge`")
    grade.add_argument("--overrides", metavar="FILE",
                       help="boot settings per submission, over its own vmm.toml: a TOML "
                            "table per submission name, e.g. [alice] mode = \"protected\"")
    grade.add_argument("--no-sandbox", action="store_true",
                       help="build source submissions as this user, outside the sandbox: for "
                            "trusted code only (e.g. where bubblewrap cannot run)")
    grade.add_argument("submissions", nargs="+", metavar="SUBMISSION",
                       help="guest binaries, directories with a Makefile, or tarballs")
    add_backend_option(grade)
    grade.set_defaults(func=cmd_grade)


def _add_grade_merge(merge: argparse.ArgumentParser) -> None:
    merge.add_argument("--out", required=True, metavar="DIR", help="where the merged reports go")
    merge.add_argument("shards", nargs="+", metavar="SHARD_DIR",
                       help="the --out directories of the shard runs")
    merge.set_defaults(func=cmd_grade_merge)


def _add_grade_rubric(rubric: argparse.ArgumentParser) -> None:
    rubric.add_argument("rubric", metavar="RUBRIC", help="the rubric (TOML)")
    rubric.add_argument("--public", action="store_true",
                        help="leave out every scenario that is not visible")
    rubric.set_defaults(func=cmd_grade_rubric)


def _add_grade_diff(diff: argparse.ArgumentParser) -> None:
    diff.add_argument("old", metavar="OLD_DIR")
    diff.add_argument("new", metavar="NEW_DIR")
    diff.set_defaults(func=cmd_grade_diff)


def _add_grade_bundle(bundle: argparse.ArgumentParser) -> None:
    bundle.add_argument("--rubric", required=True, metavar="FILE", help="the rubric (TOML)")
    bundle.add_argument("-o", "--output", required=True, metavar="ZIP",
                        help="where to write the zip, e.g. autograder.zip")
    bundle.add_argument("--leaderboard", action="store_true",
                        help="also put each submission's score on Gradescope's leaderboard")
    bundle.set_defaults(func=cmd_grade_bundle)


def _add_inspect(inspect: argparse.ArgumentParser) -> None:
    inspect.add_argument("trace", help="a trace written by vmm record")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.add_argument("--png", metavar="FILE",
                         help="also render the screen at the end of the run as a PNG (boards with "
                              "a text screen: pc), CP437 glyphs in the 16 VGA colours")
    inspect.add_argument("--limit", type=_count, default=40, metavar="N",
                         help="timeline entries to show (default 40; 0 = all)")
    inspect.set_defaults(func=cmd_inspect)


# Each subcommand: what `vmm --help` lists and its own --help says, and what adds its
# arguments. Only the subcommand given is built (start-up: argparse is slow to build parsers,
# _LazyParser).
COMMANDS = {
    "run": (_add_run, dict(
        help="run a guest live: console on stdout, keyboard from stdin",
        description="Run a guest live. Its console output goes to stdout, diagnostics to "
                    "stderr. On a terminal, keys go to the guest one at a time; press Ctrl-] "
                    "to quit (Ctrl-C also stops the run). From a pipe or file, bytes are fed as "
                    "the guest consumes them, and at end of input the guest keeps running until "
                    "it halts or times out.",
        epilog=EPILOG_EXIT_CODES, formatter_class=_RawHelpFormatter)),
    "record": (_add_record, dict(
        help="run a guest live and write every input to a trace file",
        description="Run a guest exactly as `vmm run` does, and write every nondeterministic "
                    "input it is given (keys, timer firings, fetched web data), its output, "
                    "register checkpoints and its end to a trace file, as they happen: a "
                    "recording cut short by "
                    "Ctrl-C, SIGTERM, a guest crash or a timeout is still a valid trace. "
                    "`vmm replay` re-executes it.",
        epilog=EPILOG_EXIT_CODES, formatter_class=_RawHelpFormatter)),
    "replay": (_add_replay, dict(
        help="re-execute a trace and prove it does exactly the same thing",
        description="Exact replay: rebuild the machine from the trace alone, give the guest "
                    "every recorded input at the same observation, and compare output, register "
                    "checkpoints and the final state. No terminal, clock or network is used. "
                    "With --guest, re-drive: feed the recorded inputs to another guest binary "
                    "under the virtual clock and diff its console output against the recording.",
        epilog="exit status: 0 identical, 40 diverged (a report names the first difference), "
               "41 re-driven output differs, 42 the trace is truncated and its prefix replayed "
               "identically, 14 unreadable or malformed trace, 10 bad --guest file, 12 no KVM; "
               "with --gdb: 44 gdb wrote into the replay (diverged by the debugger), 16 cannot "
               "listen (port in use); --stop-at: 46 the run ended before observation N; 48 this "
               "backend cannot execute the guest (cannot run: try the other --backend)",
        formatter_class=_RawHelpFormatter)),
    "grade": (_add_grade, dict(
        help="score student guests against a rubric; reports and traces to --out",
        description="Grade submissions against a rubric (docs/grading.md). A submission is a "
                    "guest binary, a directory with a Makefile (unpacked and built in a "
                    "bubblewrap sandbox with no network, no view of the grader's files and "
                    "limits on time, memory, processes and disk; its log kept), or a tarball of "
                    "one. Every scenario runs under the virtual clock, so scores do not depend "
                    "on machine load, and its trace is kept for `vmm replay`. Writes "
                    "report.json, report.html, junit.xml, summary.md and, per submission, a "
                    "Gradescope results.json. Also: `vmm grade merge`, `vmm grade rubric`, "
                    "`vmm grade diff`, `vmm grade bundle` (see their --help).",
        epilog="exit status: 0 when every submission was graded (whatever the scores), "
               "2 bad usage or rubric", formatter_class=_RawHelpFormatter)),
    "grade-merge": (_add_grade_merge, dict(
        help="(written `vmm grade merge`) combine the reports of --shard runs",
        description="Combine the reports of `vmm grade --shard K/N` runs into one class "
                    "report.", formatter_class=_HelpFormatter)),
    "grade-rubric": (_add_grade_rubric, dict(
        help="(written `vmm grade rubric`) check a rubric; --public: without hidden scenarios",
        description="Check a rubric and print it. With --public, print it without its "
                    "scenarios that are not visible (hidden, after_due_date, after_published), "
                    "for students: `vmm grade --rubric public.toml` then gives them the "
                    "grader's scores for the visible scenarios.", formatter_class=_HelpFormatter)),
    "grade-diff": (_add_grade_diff, dict(
        help="(written `vmm grade diff`) what changed between two gradings",
        description="Compare two `vmm grade --out` folders: scores per submission and per "
                    "scenario, submissions added or gone, a changed rubric.",
        epilog="exit status: 0 the same scores, 1 something changed, 2 bad usage",
        formatter_class=_HelpFormatter)),
    "grade-bundle": (_add_grade_bundle, dict(
        help="(written `vmm grade bundle`) a Gradescope autograder zip",
        description="Write a Gradescope autograder zip (setup.sh, run_autograder, the rubric "
                    "and vmm's own wheel) that grades each submission with this rubric; see "
                    "docs/grading.md.", formatter_class=_HelpFormatter)),
    "inspect": (_add_inspect, dict(
        help="summarise a trace: guest, configuration, counts, timeline",
        description="Print a readable summary of a trace: the guest, the machine "
                    "configuration, durations (guest and wall clock), counts, and a timeline of "
                    "inputs and output.", formatter_class=_HelpFormatter)),
}


class _LazyParser:
    """A subcommand's parser, made (and its arguments added) only when argparse first uses it:
    for the subcommand given. Each ArgumentParser costs ~0.2 ms to make (its -h, gettext's
    look-ups of its headings), and `vmm run` starts in tens of ms; `vmm --help` and a wrong
    subcommand read only the names and help that add_parser keeps apart from the parsers."""

    def __init__(self, populate, **kwargs):
        self._populate, self._kwargs, self._parser = populate, kwargs, None

    def __getattr__(self, name):
        if name in ("_populate", "_kwargs", "_parser"):      # not made yet (a copy, say)
            raise AttributeError(name)
        if self._parser is None:
            self._parser = argparse.ArgumentParser(**self._kwargs)
            self._populate(self._parser)
        return getattr(self._parser, name)


def build_parser() -> argparse.ArgumentParser:
    """The whole parser; each subcommand's own parser is made when it is used (_LazyParser)."""
    parser = argparse.ArgumentParser(
        prog="vmm", description="A deterministic record-and-replay micro VMM for small x86 "
                                "guest kernels, on Linux KVM.", formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"vmm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_LazyParser)
    sub.required = True
    for name, (populate, kwargs) in COMMANDS.items():
        sub.add_parser(name, populate=populate, **kwargs)
    return parser


def boot_options(args):
    from .boot import BootOptions, read_module_file
    modules = tuple(read_module_file(spec) for spec in getattr(args, "module", None) or ())
    return BootOptions(mode=args.mode, load=args.load, entry=args.entry, mem=args.mem,
                       stack=args.stack, board=args.board, cmdline=getattr(args, "cmdline", None),
                       modules=modules)


def _stdin_feed():
    from .inputs import FdFeed, NullFeed
    try:
        os.fstat(0)
    except OSError:
        return NullFeed(), False
    if os.isatty(0):
        return FdFeed(0, terminal=True), True
    return FdFeed(0), False


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def cmd_run(args) -> int:
    """`vmm run` and `vmm record`: a live run, recorded when args.output is set."""
    from .runner import LiveRun, OutputCollector, live_run

    boot, script = boot_options(args), None           # in this order: which error comes first
    if args.script:
        from .script import load_script
        script = load_script(args.script)
    spec = LiveRun(guest=args.guest, boot=boot, script=script,
                   clock=args.clock, max_time_ns=args.max_time, timeout_ns=args.timeout,
                   max_output=args.max_output, ignore_unknown_ports=args.ignore_unknown_ports,
                   cpuid=args.cpuid, trace_path=args.output, feeds=args.feeds,
                   offline=args.offline, backend=args.backend,
                   max_observations=args.max_observations, max_exits=args.max_exits,
                   max_instructions=args.max_instructions, icount_ns=args.icount)
    if args.output is not None:
        spec.checkpoint_every = args.checkpoint_every
    feed, terminal = (None, False) if args.script else _stdin_feed()
    if args.local_echo:
        if not terminal:
            raise UsageError("--local-echo shows keys typed on a terminal, and stdin is not one"
                             + (" (--script sends the keys)" if args.script else ""))
        from .terminal import LocalEcho
        feed = LocalEcho(feed)
    if getattr(args, "gdb", None) is not None:
        if (args.max_observations, args.max_exits, args.max_instructions) != (None,) * 3:
            raise UsageError("the --max-observations/--max-exits/--max-instructions budgets "
                             "do not apply under --gdb: the debugger decides when to stop")
        if args.icount is not None:
            raise UsageError("--gdb does not support instruction-count mode (--icount) yet: "
                             "its snapshots do not keep the instruction count")
        from .gdb.session import live_spec, serve
        from .inputs import NullFeed
        if terminal:
            feed = NullFeed()     # the terminal is the user's; keys come from a pipe or --script
        spec.timeout_ns = None
        out = OutputCollector(sys.stdout.buffer)
        return serve(live_spec(spec, feed or NullFeed(), _log), args.gdb, out, _log)
    sink = _output_sink(args.screen, None)
    result = live_run(spec, feed=feed, terminal=terminal, sink=sink, log=_log)
    _show_final_screen(args.screen, sink, result.end)
    report_end(result.end, args.verbose)
    return result.end.exit_code


def _output_sink(screen: str, stream=None, keep: bool = True):
    """Where the guest's output goes: stdout, through the live screen panel on a terminal.
    `keep`: whether the sink keeps every line (OutputCollector)."""
    from .runner import OutputCollector
    stream = sys.stdout.buffer if stream is None else stream
    if screen == "live" or (screen == "auto" and _stdout_is_terminal()):
        from .screen_panel import ScreenPanel
        panel = ScreenPanel(stream)
        panel.keep = keep
        return panel
    return OutputCollector(stream, keep=keep)


def _stdout_is_terminal() -> bool:
    try:
        return os.isatty(sys.stdout.fileno())
    except (OSError, ValueError):
        return False


def _show_final_screen(mode: str, sink, end) -> None:
    """At the end of a run on a board with a screen: the final screen, as --screen asks. A
    kernel whose only output is its screen never ends looking like a silent success."""
    finish = getattr(sink, "finish", None)
    if finish is not None:
        finish()                           # the live panel: its last state drawn
    rows = end.screen
    if rows is None or getattr(sink, "showed_screen", False):
        return
    from .screenlog import screen_text
    text = screen_text(rows)
    if mode == "final" or (mode == "auto" and text):
        if text:
            print("vmm: the screen at the end of the run:", file=sys.stderr, flush=True)
        sys.stdout.write(text)
        sys.stdout.flush()
    elif mode == "none" and text and not sink.lines:
        print("vmm: the guest printed nothing, but its screen holds text (not shown: "
              "--screen none)", file=sys.stderr)


def cmd_replay(args) -> int:
    from .runner import OutputCollector, replay_trace
    if args.gdb is not None or args.stop_at is not None:
        if args.guest is not None:
            raise UsageError("--gdb and --stop-at debug an exact replay: drop --guest")
        if args.gdb is not None and args.stop_at is not None:
            raise UsageError("use either --gdb or --stop-at (in gdb: monitor seek N)")
        from .gdb.session import replay_spec, serve, stop_at
        spec, trace = replay_spec(args.trace, args.backend, _log)
        if trace.header["machine"].get("icount_ns") is not None:
            flag = "--gdb" if args.gdb is not None else "--stop-at"
            raise UsageError(f"{flag} does not support traces recorded in instruction-count "
                             "mode (--icount) yet: its snapshots do not keep the instruction "
                             f"count; replay it without {flag}")
        if args.stop_at is not None:
            if args.stop_at < 0:
                raise UsageError("--stop-at N: N is an observation count, 0 or more")
            return stop_at(spec, args.stop_at)
        out = OutputCollector(None if args.quiet else sys.stdout.buffer)
        return serve(spec, args.gdb, out, _log, guest_bytes=trace.guest_bytes)
    override = None
    if args.mode or args.load is not None or args.entry is not None:
        override = dict(mode=args.mode, load=args.load, entry=args.entry)
    keep = args.guest is not None      # re-drive compares the lines; exact replay keeps none
    sink = (OutputCollector(None, keep=keep) if args.quiet
            else _output_sink(args.screen, keep=keep))
    result = replay_trace(args.trace, guest=args.guest, boot_override=override,
                          timeout_ns=args.timeout, sink=sink, log=_log, backend=args.backend)
    if not args.quiet:
        _show_final_screen(args.screen, sink, result.end)
    for line in result.report:
        print(line, file=sys.stderr)
    return result.exit_code


def cmd_grade(args) -> int:
    from harness.grader import grade, load_overrides
    overrides = load_overrides(args.overrides) if args.overrides else None
    report = grade(args.submissions, args.rubric, args.out, jobs=args.jobs,
                   shard_spec=args.shard, sandbox=not args.no_sandbox, overrides=overrides)
    _print_grade_summary(report, args.out)
    return 0


def cmd_grade_merge(args) -> int:
    from harness.reports import merge
    report = merge(args.shards, args.out)
    _print_grade_summary(report, args.out)
    return 0


def cmd_grade_rubric(args) -> int:
    from harness.rubric import load_rubric
    from harness.rubric_tools import public_rubric
    if args.public:
        sys.stdout.write(public_rubric(args.rubric))
        return 0
    rubric = load_rubric(args.rubric)
    print(f"{args.rubric}: {rubric.title!r}, {len(rubric.scenarios)} scenarios, "
          f"{rubric.max_score:g} points")
    for scenario in rubric.scenarios:
        print(f"  {scenario.name}: {scenario.points:g} points, {scenario.visibility}, "
              f"{len(scenario.checks)} checks")
    return 0


def cmd_grade_bundle(args) -> int:
    from harness.bundle import build_bundle
    names = build_bundle(args.rubric, args.output, leaderboard=args.leaderboard)
    print(f"vmm: wrote {args.output}: {', '.join(names)}", file=sys.stderr)
    return 0


def cmd_grade_diff(args) -> int:
    from harness.rubric_tools import diff_reports
    lines = diff_reports(args.old, args.new)
    for line in lines:
        print(line)
    if not lines:
        print(f"vmm: the same scores in {args.old} and {args.new}", file=sys.stderr)
    return 1 if lines else 0


def _print_grade_summary(report: dict, out: str) -> None:
    for sub in report["submissions"]:
        note = f"  ({sub['problem']})" if sub["problem"] else ""
        print(f"{sub['name']}: {sub['score']:g}/{sub['max_score']:g}{note}")
    count = len(report["submissions"])
    print(f"vmm: graded {count} submission{'' if count == 1 else 's'}; reports in "
          f"{os.path.join(out, 'summary.md')}, report.json, junit.xml", file=sys.stderr)


def cmd_inspect(args) -> int:
    from .summary import write_summary
    from .trace import open_trace
    trace = open_trace(args.trace)
    if args.png:
        _write_screen_png(trace, args.png)
    write_summary(trace, args.limit, args.json, sys.stdout)
    return 0


def _write_screen_png(trace, path: str) -> None:
    """The final screen of a trace, rebuilt from its screen records, as a PNG."""
    from .errors import TraceError
    from .screen import apply_rows, render_png
    if not trace.counts.get("screen") and trace.header["machine"].get("board", "p3") != "pc":
        raise UsageError(f"--png: {trace.path} has no screen (its board has no text screen)")
    screen = None
    try:
        for record in trace.iter_records():          # one at a time (a trace streams)
            if record["type"] == "screen":
                screen = apply_rows(screen, record["rows"])
    except ValueError as e:
        raise TraceError(f"corrupt trace {trace.path}: {e}") from None
    try:
        render_png(screen if screen is not None else apply_rows(None, []), path)
    except OSError as e:
        raise UsageError(f"--png: cannot write {path}: {e.strerror}") from None
    print(f"vmm: wrote the final screen to {path}", file=sys.stderr)


def report_end(end, verbose: bool) -> None:
    if end.is_error:
        print(f"vmm: {end.message}", file=sys.stderr)
        if end.cpu is not None and end.reason not in ("interrupted", "terminated", "timeout"):
            print(end.cpu.format(), file=sys.stderr)
    elif verbose or end.reason in ("exit-device", "quit"):
        print(f"vmm: {end.message}", file=sys.stderr)
    if verbose:
        s = end.stats
        print(f"vmm: {s['exits']} exits, {s['observations']} observations, "
              f"{s['output_bytes']} output bytes, end reason {end.reason}, "
              f"exit status {end.exit_code}", file=sys.stderr)
        for name, counters in s["devices"].items():
            print(f"vmm:   {name}: " + ", ".join(f"{k} {v}" for k, v in counters.items()),
                  file=sys.stderr)
    sys.stderr.flush()


def _terminated(signum, frame):
    raise Terminated("terminated (SIGTERM)")


def main(argv=None) -> int:
    # From here on SIGTERM unwinds like an exception, so every `finally` (terminal restore,
    # trace close) runs; during a run the machine replaces this with an orderly stop.
    signal.signal(signal.SIGTERM, _terminated)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["grade"] and argv[1:2] in (["merge"], ["rubric"], ["diff"],
                                                           ["bundle"]):
        argv = [f"grade-{argv[1]}"] + argv[2:]
    argv = _join_negative_values(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "backend", None) is not None:
        from .runner import BACKEND_ENV
        os.environ[BACKEND_ENV] = args.backend      # also for what runs guests indirectly (grade)
    try:
        return args.func(args)
    except VmmError as e:
        print(f"vmm: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("vmm: interrupted", file=sys.stderr)
        return EXIT_CODES["interrupted"]
    except BrokenPipeError:
        # stdout went away (`vmm inspect t.trace | head`): as any Unix tool, stop quietly; and
        # point stdout at /dev/null so that the interpreter's last flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
