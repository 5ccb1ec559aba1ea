"""Scripted input: a small line-oriented format, parsed without eval (docs/scripts.md).

    # a comment
    send "hello\\n"          send text (escapes: \\n \\r \\t \\e \\0 \\\\ \\" \\xHH)
    sendline "hello"        send text followed by "\\n"
    expect "hello"          wait for console text (default: within 10s of guest time)
    expect /hel+o/ within 2s
                            wait for a regular expression (Python syntax)
    expect screen "Booted"  wait for text within one row of the text screen (pc board)
    expect screen /up \\d+s/ ... or a regular expression over the rows, joined by newlines
    wait 500ms              let guest time pass
    wait 4 ticks            wait for 4 firings of the guest's own timer, whatever its period
    wait 4 ticks within 30s ... failing the run if they have not come in 30s (default: 60s)
    idle                    wait until the guest has consumed all input and waits for more

Steps run under the virtual clock; every limit is guest time, so a loaded host cannot change a
result. The run ends at the first idle point after the last step. A step list is stored in the
trace header, so a re-drive can run the same script against another guest.
"""

from __future__ import annotations

import re

from .errors import UsageError
from .units import parse_duration

DEFAULT_EXPECT_TIMEOUT_NS = 10_000_000_000
DEFAULT_TICKS_TIMEOUT_NS = 60_000_000_000
_TICKS = r"(\d+)\s+ticks?\b(.*)$"          # compiled by re when first used (start-up)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "e": "\x1b", "0": "\0", "\\": "\\", '"': '"',
            "b": "\b"}


def unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if i + 1 >= len(text):
            raise ValueError("a lone backslash at the end")
        e = text[i + 1]
        if e == "x":
            digits = text[i + 2:i + 4]
            if len(digits) != 2 or not all(ch in "0123456789abcdefABCDEF" for ch in digits):
                raise ValueError(f"bad escape \\x{digits}")
            out.append(chr(int(digits, 16)))
            i += 4
        elif e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
        else:
            raise ValueError(f"unknown escape \\{e}")
    return "".join(out)


def _quoted(rest: str, where: str) -> tuple[str, str]:
    """Parse a leading double-quoted string; return (value, remainder)."""
    rest = rest.strip()
    if not rest.startswith('"'):
        raise UsageError(f"{where}: expected a double-quoted string")
    i = 1
    while i < len(rest):
        if rest[i] == "\\":
            i += 2
            continue
        if rest[i] == '"':
            try:
                return unescape(rest[1:i]), rest[i + 1:]
            except ValueError as e:
                raise UsageError(f"{where}: {e}") from None
        i += 1
    raise UsageError(f"{where}: unterminated string")


def parse_script(text: str, name: str = "script") -> list[dict]:
    steps = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{name}:{number}"
        op, _, rest = line.partition(" ")
        if op in ("send", "sendline"):
            value, tail = _quoted(rest, where)
            _no_tail(tail, where)
            if op == "sendline":
                value += "\n"
            try:
                value.encode("latin-1")
            except UnicodeEncodeError:
                raise UsageError(f"{where}: send takes bytes: use \\xHH for non-ASCII") from None
            steps.append({"op": "send", "data": value})
        elif op == "expect":
            rest = rest.strip()
            screen = rest.startswith("screen ") or rest.startswith("screen\t")
            if screen:
                rest = rest[len("screen"):].strip()
            if rest.startswith("/"):
                end = _regex_end(rest)
                if end is None:
                    raise UsageError(f"{where}: unterminated /regex/ (write \\/ for a slash "
                                     "inside it)")
                pattern, tail = rest[1:end], rest[end + 1:]
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise UsageError(f"{where}: bad regular expression: {e}") from None
                step = {"op": "expect", "regex": pattern}
            else:
                value, tail = _quoted(rest, where)
                step = {"op": "expect", "text": value}
            if screen:
                step["screen"] = True
            step["timeout_ns"] = _within(tail, where)
            steps.append(step)
        elif op == "wait":
            m = re.match(_TICKS, _strip_comment(rest).strip())
            if m:
                count = int(m.group(1))
                if not 1 <= count <= 1_000_000:
                    raise UsageError(f"{where}: wait N ticks takes 1 to 1000000 ticks")
                timeout = (_within(m.group(2), where) if m.group(2).strip()
                           else DEFAULT_TICKS_TIMEOUT_NS)
                steps.append({"op": "ticks", "count": count, "timeout_ns": timeout})
            else:
                steps.append({"op": "wait", "ns": _duration(_strip_comment(rest), where)})
        elif op == "idle":
            _no_tail(rest, where)
            steps.append({"op": "idle"})
        else:
            raise UsageError(f"{where}: unknown step {op!r} (send, sendline, expect, wait, idle)")
    return steps


def _strip_comment(text: str) -> str:
    return text.split("#", 1)[0].strip()


def _regex_end(rest: str) -> int | None:
    """Index of the slash closing a /regex/ that starts at rest[0]; \\/ does not close it."""
    i = 1
    while i < len(rest):
        if rest[i] == "\\":
            i += 2
            continue
        if rest[i] == "/":
            return i
        i += 1
    return None


def _no_tail(tail: str, where: str) -> None:
    if tail.strip() and not tail.strip().startswith("#"):
        raise UsageError(f"{where}: unexpected {tail.strip()!r}")


def _within(tail: str, where: str) -> int:
    import shlex                 # here: off the start-up path of `vmm run` without a script
    try:
        words = shlex.split(tail, comments=True)
    except ValueError as e:
        raise UsageError(f"{where}: {e}") from None
    if not words:
        return DEFAULT_EXPECT_TIMEOUT_NS
    if len(words) == 2 and words[0] == "within":
        return _duration(words[1], where)
    raise UsageError(f"{where}: after the pattern, only 'within DURATION' may follow")


def _duration(text: str, where: str) -> int:
    try:
        return parse_duration(text)
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None


def load_script(path: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UsageError(f"script file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read script {path}: {e}") from None
    return parse_script(text, path)


def validate_steps(steps) -> list[dict]:
    """Check a step list that came from a trace header (untrusted)."""
    if not isinstance(steps, list):
        raise ValueError("script is not a list")
    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    for step in steps:
        if not isinstance(step, dict):
            raise ValueError("a script step is not an object")
        op = step.get("op")
        if op == "send" and isinstance(step.get("data"), str):
            try:
                step["data"].encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError("send data must be bytes (Latin-1 text)") from None
            continue
        if op == "expect" and whole(step.get("timeout_ns")) and (
                isinstance(step.get("text"), str) or isinstance(step.get("regex"), str)) and \
                isinstance(step.get("screen", False), bool):
            if "regex" in step:
                try:
                    re.compile(step["regex"])
                except re.error as e:
                    raise ValueError(f"bad regular expression: {e}") from None
            continue
        if op in ("wait", "at") and whole(step.get("ns")):
            continue
        if op == "ticks" and whole(step.get("count")) and step["count"] >= 1 and \
                whole(step.get("timeout_ns")):
            continue
        if op == "idle":
            continue
        raise ValueError(f"bad script step {step!r}")
    return steps


class ScriptRunner:
    """Runs steps against the guest under the virtual clock. The input source calls
    `advance(now)` at every read and idle point, `on_output` with each output line, and asks
    `next_time()` for the clock time the script next needs (a wait's end, an expect's limit)."""

    def __init__(self, steps: list[dict], send):
        self.steps = steps
        self.index = 0
        self._send = send            # send(bytes, now): queue input bytes
        self._wake: int | None = None
        self._deadline: int | None = None
        self.output = ""             # all output so far, lines joined with "\n"
        self._cursor = 0             # where the next expect starts searching
        self.step_done = None        # callback(index, now) for recorders
        self.unfinished = lambda: ""  # the devices' unfinished lines (a prompt has no newline)
        self.input_pending = lambda: False  # sent bytes the guest has not read yet
        self.timer_firings = lambda: 0      # firings of the guest's timer so far
        self.screen = lambda: None          # the text screen's rows now (None: no screen)
        self._ticks_from = 0

    @property
    def finished(self) -> bool:
        return self.index >= len(self.steps)

    def on_output(self, device: str, text: str, partial: bool) -> None:
        self.output += text if partial else text + "\n"

    def next_time(self) -> int | None:
        return self._wake if self._wake is not None else self._deadline

    def advance(self, now: int, idle: bool = False):
        """Run every step that can run now; `idle`: this is an idle point. Returns a failure
        message if an expect timed out."""
        while not self.finished:
            step = self.steps[self.index]
            op = step["op"]
            if op == "send":
                self._send(step["data"].encode("latin-1"), now)
            elif op in ("wait", "at"):
                if self._wake is None:
                    self._wake = now + step["ns"] if op == "wait" else step["ns"]
                if now < self._wake:
                    return None
                self._wake = None
            elif op == "expect":
                if self._deadline is None:
                    self._deadline = now + step["timeout_ns"]
                if not self._match(step):
                    if now >= self._deadline:
                        self._deadline = None
                        what = f"/{step['regex']}/" if "regex" in step else repr(step["text"])
                        if step.get("screen"):
                            rows = [row for row in self.screen() or [] if row]
                            return (f"script step {self.index + 1}: expected {what} on the "
                                    f"screen within {step['timeout_ns'] / 1e9:g}s of guest time;"
                                    f" the screen shows {' | '.join(rows)[-200:]!r}")
                        printed = (self.output + self.unfinished())[self._cursor:]
                        return (f"script step {self.index + 1}: expected {what} within "
                                f"{step['timeout_ns'] / 1e9:g}s of guest time; the guest printed "
                                f"{printed[-200:]!r} since the last match")
                    return None
                self._deadline = None
            elif op == "ticks":
                if self._deadline is None:
                    self._deadline = now + step["timeout_ns"]
                    self._ticks_from = self.timer_firings()
                fired = self.timer_firings() - self._ticks_from
                if fired < step["count"]:
                    if now >= self._deadline:
                        self._deadline = None
                        return (f"script step {self.index + 1}: waited for {step['count']} "
                                f"timer firings within {step['timeout_ns'] / 1e9:g}s of guest "
                                f"time; the guest's timer fired {fired} times")
                    return None
                self._deadline = None
            elif op == "idle":
                if not idle or self.input_pending():
                    return None
                idle = False                   # one idle point satisfies one idle step
            self.index += 1
            if self.step_done is not None:
                self.step_done(self.index - 1, now)
        return None

    def _match(self, step: dict) -> bool:
        if step.get("screen"):
            rows = self.screen()
            if rows is None:
                return False
            if "regex" in step:
                return re.compile(step["regex"], re.MULTILINE).search("\n".join(rows)) is not None
            return any(step["text"] in row for row in rows)
        # An unfinished line is matched too (prompts end without a newline); when it is
        # finished it is the same text at the same place, so the cursor stays valid.
        seen = self.output + self.unfinished()
        if "regex" in step:
            m = re.compile(step["regex"], re.MULTILINE).search(seen, self._cursor)
            if m is None:
                return False
            self._cursor = m.end()
            return True
        at = seen.find(step["text"], self._cursor)
        if at < 0:
            return False
        self._cursor = at + len(step["text"])
        return True
