"""Rubrics: what `vmm grade` runs against each submission, and how it scores it (docs/grading.md).

A rubric is a TOML file: a title, boot options, how to build a submission directory, default
limits, and scenarios. A scenario is an input script (the `--script` step format), limits and
checks; each check is worth a share of the scenario's points (its weight over the sum of the
weights), so partial credit is natural. Loading validates everything and reports the first
problem as one line naming the file and the key.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field

from vmm.boot import MODES, BootOptions
from vmm.errors import EXIT_CODES, UsageError
from vmm.script import parse_script
from vmm.units import MAX_ICOUNT_NS, parse_count, parse_duration, parse_size

from .sandbox import BuildLimits

VISIBILITY = ("visible", "hidden", "after_due_date", "after_published")   # Gradescope's values
DEFAULT_VMM_MEMORY = 1 << 30       # each scenario's VMM process: resident memory ...
DEFAULT_VMM_CPU_S = 60             # ... and CPU seconds
# Guest-work budgets per scenario ([limits]; docs/grading.md). The scenarios of a console
# assignment take hundreds of exits and thousands of instructions; a guest that computes
# without end reaches these in well under a second, at the same point on every machine.
DEFAULT_MAX_EXITS = 50_000
DEFAULT_MAX_INSTRUCTIONS = 2_000_000      # the emulator counts them (KVM cannot)
BUDGETS = {"max_observations": None, "max_exits": DEFAULT_MAX_EXITS,
           "max_instructions": DEFAULT_MAX_INSTRUCTIONS}
SETTINGS = ("board", "mode", "load", "entry", "mem", "stack")  # what a vmm.toml may set
MAX_SETTINGS_FILE = 16 << 10
CHECK_KINDS = ("contains", "not_contains", "regex_lines", "lines", "end_reason", "exit_code",
               "echo_per_tick", "timer_period_ms", "keyboard_acked", "max_lost_firings",
               "screen_contains", "screen_regex")


@dataclass
class Check:
    kind: str
    value: object
    weight: float = 1.0
    description: str = ""
    gate: bool = False           # the scenario scores nothing unless this check passes

    def describe(self) -> str:
        if self.description:
            return self.description
        return DESCRIPTIONS[self.kind](self.value)


# How a check describes itself when the rubric gives no description (values are checked).
DESCRIPTIONS = {
    "contains": lambda v: f"output contains {v!r}",
    "not_contains": lambda v: f"output does not contain {v!r}",
    "regex_lines": lambda v: f"lines match {', '.join(f'/{r}/' for r in v)} in order",
    "lines": lambda v: f"output is exactly {len(v)} lines" + (f": {v!r}" if len(v) <= 4 else ""),
    "end_reason": lambda v: "the run ends by " + " or ".join(v),
    "exit_code": lambda v: f"exit status {v}",
    "echo_per_tick": lambda v: f"one echo of {v!r} per timer firing after it is entered",
    "timer_period_ms": lambda v: f"the timer period is {v[0]}-{v[1]} ms",
    "keyboard_acked": lambda v: ("every key is acknowledged" if v
                                 else "not every key is acknowledged"),
    "max_lost_firings": lambda v: f"at most {v} timer firings lost",
    "screen_contains": lambda v: f"the final screen shows {v!r}",
    "screen_regex": lambda v: f"the final screen matches /{v}/",
}


@dataclass
class Scenario:
    name: str
    points: float
    visibility: str
    script: list[dict]
    script_text: str
    max_time_ns: int
    wall_time_ns: int
    max_output: int
    memory: int = DEFAULT_VMM_MEMORY          # the scenario's VMM process (harness.limits)
    cpu_s: int = DEFAULT_VMM_CPU_S
    checks: list[Check] = field(default_factory=list)
    # guest-work budgets (vmm.machine.RunConfig; None: none): the same end on every machine
    max_observations: int | None = None
    max_exits: int | None = DEFAULT_MAX_EXITS
    max_instructions: int | None = DEFAULT_MAX_INSTRUCTIONS   # on the emulator


@dataclass
class Build:
    command: list[str]
    guest: str                   # the built guest, relative to the submission directory
    limits: BuildLimits = field(default_factory=BuildLimits)

    @property
    def timeout_s(self) -> float:
        return self.limits.timeout_s


@dataclass
class Rubric:
    title: str
    path: str
    sha256: str
    boot: BootOptions
    cpuid: str
    build: Build
    scenarios: list[Scenario]
    per_submission: list[str] = field(default_factory=list)   # boot settings a vmm.toml may set
    icount_ns: int | None = None   # [boot] icount: the emulator's instruction-count mode

    @property
    def max_score(self) -> float:
        return sum(s.points for s in self.scenarios)


def load_rubric(path: str) -> Rubric:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise UsageError(f"rubric not found: {path}") from None
    except OSError as e:
        raise UsageError(f"cannot read rubric {path}: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"rubric {path} is not valid TOML: {e}") from None
    try:
        return _build(data, path, hashlib.sha256(raw).hexdigest())
    except _Bad as e:
        raise UsageError(f"rubric {path}: {e}") from None


class _Bad(Exception):
    pass


def _get(table: dict, key: str, where: str, kind, default=...):
    if key not in table:
        if default is ...:
            raise _Bad(f"{where}: '{key}' is required")
        return default
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _Bad(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _known(table: dict, where: str, keys) -> None:
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise _Bad(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(keys))})")


def _duration(text, where: str) -> int:
    try:
        return parse_duration(text)
    except UsageError as e:
        raise _Bad(f"{where}: {e}") from None


def _size(text, where: str) -> int:
    try:
        return parse_size(text)
    except UsageError as e:
        raise _Bad(f"{where}: {e}") from None


def _budget(table: dict, key: str, where: str, default: int | None) -> int | None:
    """A guest-work budget: a whole number, or a string such as "5M" (k, M, G: powers of
    1000); 0 or "none" for no budget."""
    if key not in table:
        return default
    value = table[key]
    if value == "none" or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _Bad(f"{where}.{key}: expected a whole number such as 5000000 or \"5M\"")
    try:
        return parse_count(str(value))
    except UsageError as e:
        raise _Bad(f"{where}.{key}: {e}") from None


def _board(name: str | None, where: str) -> str | None:
    from vmm.boards import BOARDS
    if name is not None and name not in BOARDS:
        raise _Bad(f"{where}: expected one of {', '.join(BOARDS)}, got {name!r}")
    return name


def _build(data: dict, path: str, digest: str) -> Rubric:
    _known(data, "rubric", ("title", "boot", "build", "limits", "scenario"))
    title = _get(data, "title", "rubric", str)
    boot_t = _get(data, "boot", "rubric", dict, {})
    _known(boot_t, "boot", ("board", "mode", "load", "entry", "mem", "stack", "cpuid",
                            "per_submission", "icount"))
    per_submission = _get(boot_t, "per_submission", "boot", list, [])
    bad = [k for k in per_submission if k not in SETTINGS]
    if bad or not all(isinstance(k, str) for k in per_submission):
        raise _Bad(f"boot.per_submission: expected names among {', '.join(SETTINGS)}, "
                   f"got {bad[0] if bad else per_submission!r}")
    mode = _get(boot_t, "mode", "boot", str, None)
    if mode is not None and mode not in MODES:
        raise _Bad(f"boot.mode: expected one of {', '.join(MODES)}, got {mode!r}")
    entry = boot_t.get("entry")
    if entry is not None and entry != "reset" and not (isinstance(entry, int)
                                                      and not isinstance(entry, bool)):
        raise _Bad(f"boot.entry: expected an address or \"reset\", got {entry!r}")
    mem = _get(boot_t, "mem", "boot", str, None)
    boot = BootOptions(mode=mode, load=_get(boot_t, "load", "boot", int, None), entry=entry,
                       mem=None if mem is None else _size(mem, "boot.mem"),
                       stack=_get(boot_t, "stack", "boot", int, None),
                       board=_board(_get(boot_t, "board", "boot", str, None), "boot.board"))
    icount = _get(boot_t, "icount", "boot", int, None)
    if icount is not None and not 1 <= icount <= MAX_ICOUNT_NS:
        raise _Bad(f"boot.icount: expected guest nanoseconds per instruction, 1 to "
                   f"{MAX_ICOUNT_NS}, got {icount}")
    cpuid = _get(boot_t, "cpuid", "boot", str, "portable")
    if cpuid not in ("portable", "host"):
        raise _Bad(f"boot.cpuid: expected portable or host, got {cpuid!r}")

    build = _build_table(_get(data, "build", "rubric", dict, {}))

    limits_t = _get(data, "limits", "rubric", dict, {})
    _known(limits_t, "limits", ("max_time", "wall_time", "max_output", "memory", "cpu_time",
                                *BUDGETS))
    default_limits = {
        "max_time": _duration(_get(limits_t, "max_time", "limits", str, "30s"), "limits.max_time"),
        "wall_time": _duration(_get(limits_t, "wall_time", "limits", str, "10s"),
                               "limits.wall_time"),
        "max_output": _size(_get(limits_t, "max_output", "limits", str, "64K"),
                            "limits.max_output"),
        "memory": _positive_size(limits_t, "memory", "limits", DEFAULT_VMM_MEMORY),
        "cpu_time": _seconds(limits_t, "cpu_time", "limits", DEFAULT_VMM_CPU_S),
        **{key: _budget(limits_t, key, "limits", default) for key, default in BUDGETS.items()}}

    raw_scenarios = _get(data, "scenario", "rubric", list)
    if not raw_scenarios:
        raise _Bad("there are no [[scenario]] tables")
    scenarios, names = [], set()
    for index, table in enumerate(raw_scenarios, start=1):
        scenarios.append(_scenario(table, f"scenario[{index}]", default_limits, path))
        if scenarios[-1].name in names:
            raise _Bad(f"scenario[{index}]: the name {scenarios[-1].name!r} is used twice")
        names.add(scenarios[-1].name)
    return Rubric(title=title, path=path, sha256=digest, boot=boot, cpuid=cpuid, build=build,
                  scenarios=scenarios, per_submission=list(per_submission), icount_ns=icount)


def _positive_size(table: dict, key: str, where: str, default: int) -> int:
    if key not in table:
        return default
    value = _size(_get(table, key, where, str), f"{where}.{key}")
    if value <= 0:
        raise _Bad(f"{where}.{key}: must be more than 0")
    return value


def _seconds(table: dict, key: str, where: str, default: float) -> int:
    if key not in table:
        return default
    value = _duration(_get(table, key, where, str), f"{where}.{key}")
    if value < 1_000_000_000:
        raise _Bad(f"{where}.{key}: must be at least 1s")
    return -(-value // 1_000_000_000)


def _build_table(build_t: dict) -> Build:
    """[build]: the command, the guest it makes, and the sandbox's limits."""
    _known(build_t, "build", ("command", "guest", "timeout", "memory", "processes", "cpu_time",
                              "file_size", "open_files", "disk", "files"))
    command = _get(build_t, "command", "build", (str, list), "make")
    command = command.split() if isinstance(command, str) else command
    if not command or not all(isinstance(c, str) for c in command):
        raise _Bad("build.command: expected a command line")
    guest = _get(build_t, "guest", "build", str, "kernel.bin")
    if not guest or guest.startswith("/") or ".." in guest.split("/") or "\0" in guest:
        raise _Bad(f"build.guest: expected a path inside the submission, got {guest!r}")
    d = BuildLimits()
    timeout = _duration(_get(build_t, "timeout", "build", str, f"{d.timeout_s:g}s"),
                        "build.timeout")
    if timeout <= 0:
        raise _Bad("build.timeout: must be more than 0")

    def count(key: str, default: int) -> int:
        value = _get(build_t, key, "build", int, default)
        if value < 1:
            raise _Bad(f"build.{key}: must be at least 1")
        return value
    limits = BuildLimits(
        timeout_s=timeout / 1e9,
        memory=_positive_size(build_t, "memory", "build", d.memory),
        processes=count("processes", d.processes),
        cpu_s=_seconds(build_t, "cpu_time", "build", d.cpu_s),
        file_size=_positive_size(build_t, "file_size", "build", d.file_size),
        open_files=count("open_files", d.open_files),
        disk=_positive_size(build_t, "disk", "build", d.disk),
        files=count("files", d.files))
    return Build(command=command, guest=guest, limits=limits)


def _scenario(table, where: str, limits: dict, path: str) -> Scenario:
    if not isinstance(table, dict):
        raise _Bad(f"{where}: expected a table")
    _known(table, where, ("name", "points", "visibility", "script", "max_time", "wall_time",
                          "max_output", "memory", "cpu_time", *BUDGETS, "check"))
    name = _get(table, "name", where, str)
    where = f"scenario {name!r}"
    points = _get(table, "points", where, float)
    if points < 0:
        raise _Bad(f"{where}.points: must not be negative")
    visibility = _get(table, "visibility", where, str, "visible")
    if visibility not in VISIBILITY:
        raise _Bad(f"{where}.visibility: expected one of {', '.join(VISIBILITY)}")
    script_text = _get(table, "script", where, str, "")
    try:
        script = parse_script(script_text, f"{path}: {where}.script line")
    except UsageError as e:
        raise _Bad(str(e).split(": ", 1)[1] if ": " in str(e) else str(e)) from None
    checks = [_check(c, f"{where}.check[{i}]") for i, c in
              enumerate(_get(table, "check", where, list), start=1)]
    if not checks:
        raise _Bad(f"{where}: needs at least one [[scenario.check]]")
    if not sum(c.weight for c in checks):
        raise _Bad(f"{where}: its checks' weights add up to 0: give one a weight")
    return Scenario(
        name=name, points=points, visibility=visibility, script=script, script_text=script_text,
        max_time_ns=_duration(table["max_time"], f"{where}.max_time") if "max_time" in table
        else limits["max_time"],
        wall_time_ns=_duration(table["wall_time"], f"{where}.wall_time") if "wall_time" in table
        else limits["wall_time"],
        max_output=_size(table["max_output"], f"{where}.max_output") if "max_output" in table
        else limits["max_output"],
        memory=_positive_size(table, "memory", where, limits["memory"]),
        cpu_s=_seconds(table, "cpu_time", where, limits["cpu_time"]),
        checks=checks,
        **{key: _budget(table, key, where, limits[key]) for key in BUDGETS})


def _check(table, where: str) -> Check:
    if not isinstance(table, dict):
        raise _Bad(f"{where}: expected a table")
    kinds = [k for k in CHECK_KINDS if k in table]
    if len(kinds) != 1:
        raise _Bad(f"{where}: give exactly one of {', '.join(CHECK_KINDS)}")
    _known(table, where, (*CHECK_KINDS, "weight", "description", "gate"))
    kind = kinds[0]
    value = table[kind]
    if kind in ("contains", "not_contains", "screen_contains") and not isinstance(value, str):
        raise _Bad(f"{where}.{kind}: expected a string")
    if kind == "screen_contains" and ("\n" in value or len(value) > 80):
        raise _Bad(f"{where}.screen_contains: expected text within one row (80 columns)")
    if kind == "screen_regex":
        if not isinstance(value, str):
            raise _Bad(f"{where}.screen_regex: expected a regular expression")
        try:
            re.compile(value)
        except re.error as e:
            raise _Bad(f"{where}.screen_regex: bad regular expression {value!r}: {e}") from None
    if kind in ("regex_lines", "lines"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _Bad(f"{where}.{kind}: expected a list of strings")
        if kind == "regex_lines":
            for pattern in value:
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise _Bad(f"{where}.regex_lines: bad regular expression {pattern!r}: {e}") \
                        from None
    if kind == "end_reason":
        value = [value] if isinstance(value, str) else value
        reasons = {*EXIT_CODES, "exit-device"}   # (its status is the guest's: exit_code)
        if not isinstance(value, list) or not value or not all(v in reasons for v in value):
            raise _Bad(f"{where}.end_reason: expected one or more of "
                       f"{', '.join(sorted(reasons))}")
    if kind == "exit_code" and (not isinstance(value, int) or isinstance(value, bool)):
        raise _Bad(f"{where}.exit_code: expected a whole number")
    if kind == "echo_per_tick" and (not isinstance(value, str) or not value or
                                    "\n" in value or "\r" in value):
        raise _Bad(f"{where}.echo_per_tick: expected the line's text (one line, not empty)")
    if kind == "timer_period_ms" and not (
            isinstance(value, list) and len(value) == 2 and
            all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
            and value[0] <= value[1]):
        raise _Bad(f"{where}.timer_period_ms: expected [lowest, highest] in ms, e.g. [1, 10000]")
    if kind == "keyboard_acked" and not isinstance(value, bool):
        raise _Bad(f"{where}.keyboard_acked: expected true or false")
    if kind == "max_lost_firings" and (not isinstance(value, int) or isinstance(value, bool)
                                       or value < 0):
        raise _Bad(f"{where}.max_lost_firings: expected a whole number >= 0")
    gate = _get(table, "gate", where, bool, False)
    weight = _get(table, "weight", where, float, 0.0 if gate else 1.0)
    if weight < 0 or (weight == 0 and not gate):
        raise _Bad(f"{where}.weight: must be positive (0 is allowed for a gate only)")
    return Check(kind, value, weight, _get(table, "description", where, str, ""), gate)


def parse_settings(text: str, allowed: list[str], where: str) -> dict:
    """A submission's boot settings (its vmm.toml's [boot] table, or the staff's overrides for
    it), checked against what the rubric allows; UsageError with one line otherwise."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{where} is not valid TOML: {e}") from None
    try:
        _known(data, where, ("boot",))
        table = _get(data, "boot", where, dict, {})
        return check_settings(table, allowed, f"{where} [boot]")
    except _Bad as e:
        raise UsageError(str(e)) from None


def check_settings(table: dict, allowed: list[str], where: str) -> dict:
    try:
        for key in table:
            if key not in SETTINGS:
                raise _Bad(f"{where}: unknown setting {key!r} (known: {', '.join(SETTINGS)})")
            if key not in allowed:
                raise _Bad(f"{where}: the rubric does not let a submission set {key!r}"
                           + (f" (it allows {', '.join(allowed)})" if allowed else ""))
        out = {}
        if "mode" in table:
            mode = _get(table, "mode", where, str)
            if mode not in MODES:
                raise _Bad(f"{where}.mode: expected one of {', '.join(MODES)}, got {mode!r}")
            out["mode"] = mode
        for key in ("load", "stack"):
            if key in table:
                value = _get(table, key, where, int)
                if not 0 <= value < 1 << 64:
                    raise _Bad(f"{where}.{key}: out of range")
                out[key] = value
        if "entry" in table:
            entry = table["entry"]
            if entry != "reset" and not (isinstance(entry, int) and not isinstance(entry, bool)
                                         and 0 <= entry < 1 << 64):
                raise _Bad(f"{where}.entry: expected an address or \"reset\", got {entry!r}")
            out["entry"] = entry
        if "mem" in table:
            out["mem"] = _size(_get(table, "mem", where, str), f"{where}.mem")
        if "board" in table:
            out["board"] = _board(_get(table, "board", where, str), f"{where}.board")
        return out
    except _Bad as e:
        raise UsageError(str(e)) from None
