"""Golden traces: compare what a session printed with a trace kept in the repository.

A golden trace is an ordinary vmm trace. What is compared is the *transcript*: every output line
(device and text, partial lines marked), the text screen's final rows on a board with a screen
(`[screen] row N: text`), and how the run ended (reason and exit status). The
guest binary may change between the recording and the test — next week's build — and the test
still passes as long as the guest behaves the same. Importable without pytest.
"""

from __future__ import annotations

import difflib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from vmm.screenlog import replay_rows, transcript_lines
from vmm.trace import Trace, read_trace


def _line(device: str, text: str, partial: bool = False) -> str:
    return f"{device}: {text}" + (" (partial line)" if partial else "")


def _end_line(reason: str, exit_code: int) -> str:
    return f"[end] {reason} (exit status {exit_code})"


def trace_transcript(trace: Trace) -> list[str]:
    lines = [_line(r["dev"], r["text"], bool(r.get("partial"))) for r in trace.outputs()]
    lines += transcript_lines(replay_rows(trace.screens()))
    if trace.end is not None:
        lines.append(_end_line(trace.end["reason"], trace.end["exit_code"]))
    return lines


def session_transcript(session) -> list[str]:
    lines = [_line(*entry) for entry in session.output_lines.lines]
    lines += transcript_lines(session.screen)
    if session.end is not None:
        lines.append(_end_line(session.end.reason, session.end.exit_code))
    return lines


@dataclass
class Comparison:
    ok: bool
    expected: list[str]
    actual: list[str]
    golden_path: str
    first: int | None = None               # index of the first differing line
    notes: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        """What differs, and the first difference."""
        if self.ok:
            return [f"the session matches the golden trace {self.golden_path}"]
        what = ("the screen differs" if self.first is not None and self.first < len(self.actual)
                and self.actual[self.first].startswith("[screen]") else "console output differs")
        out = [f"{what} from the golden trace {self.golden_path}"]
        if self.first is not None:
            want = self.expected[self.first] if self.first < len(self.expected) else "(nothing more)"
            got = self.actual[self.first] if self.first < len(self.actual) else "(nothing more)"
            out += [f"first difference at line {self.first + 1}:",
                    f"  expected: {want}", f"  actual:   {got}"]
        return out

    def details(self) -> list[str]:
        """The whole unified diff, and any notes."""
        if self.ok:
            return []
        return list(difflib.unified_diff(self.expected, self.actual, fromfile="golden",
                                         tofile="actual", lineterm="", n=2)) + self.notes

    def explain(self) -> list[str]:
        return self.summary() + self.details()


def compare(expected: list[str], actual: list[str], golden_path: str) -> Comparison:
    if expected == actual:
        return Comparison(True, expected, actual, golden_path)
    first = next((i for i, (a, b) in enumerate(zip(expected, actual)) if a != b),
                 min(len(expected), len(actual)))
    return Comparison(False, expected, actual, golden_path, first)


def compare_with_golden(session, golden_path: Path, shown: str | None = None) -> Comparison:
    """Close the session, then compare its transcript with the golden trace."""
    session.close()
    return compare(trace_transcript(read_trace(str(golden_path))), session_transcript(session),
                   shown or str(golden_path))


def write_golden(session, golden_path: Path) -> None:
    session.close()
    golden_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(session.trace_path, golden_path)


_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


def safe_name(text: str) -> str:
    """A file name for a test id, with no characters a shell or pytest treats specially:
    'tests/test_x.py::test_y[a/b]' -> 'tests_test_x.py__test_y-a_b'."""
    text = text.replace("::", "__").replace("[", "-").replace("]", "")
    return _UNSAFE.sub("_", text).strip("_")[:180] or "test"
