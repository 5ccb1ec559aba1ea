"""The text screen as a run sees it (DESIGN §9): guest RAM, so read only at deterministic points.

The machine samples the board's text buffer (80×25 cells of a character and an attribute, at
0xB8000 on the pc board) at every observation, before the read is answered, and once more when
the run ends; never at a host-timed moment. A sample that differs from the last becomes one
`screen` trace record holding the rows that changed, so that an exact replay verifies the screen
as it verifies output lines, and re-drive and goldens can compare it (docs/trace-format.md).

A row is stored as its text and its attributes:
- text: the 80 characters decoded as code page 437 as a VGA draws them (control bytes as their
  glyphs: 0x01 is ☺, 0x1b ←; NUL shows as a space), trailing spaces dropped;
- attributes: run-length encoded, `"1f*11,07*69"` for 11 cells of 0x1f then 69 of 0x07.
"""

from __future__ import annotations

from .screen import COLS, ROWS, decode_cp437
from .screen import encode_attrs as _encode_runs

ROW_BYTES = COLS * 2


def decode_text(cells: bytes) -> str:
    """The characters of a row of cells (char, attribute pairs), CP437 as a VGA draws it
    (vmm.screen: control bytes as their glyphs, never as control characters), NUL as a space."""
    return decode_cp437(cells[0::2]).rstrip(" ")


def encode_attrs(cells: bytes) -> str:
    """A row of cells' attributes, run-length encoded (vmm.screen.encode_attrs)."""
    return _encode_runs(cells[1::2])


def screen_text(rows: list[str]) -> str:
    """The `--screen final` form: trailing blanks trimmed (already), trailing empty rows dropped."""
    end = len(rows)
    while end and not rows[end - 1]:
        end -= 1
    return "".join(row + "\n" for row in rows[:end])


def replay_rows(records) -> list[str]:
    """The screen a trace's `screen` records leave, applied in order over a blank screen (the
    state a guest starts with unless it loads text there itself)."""
    rows = [""] * ROWS
    for record in records:
        for row, text, _ in record["rows"]:
            rows[row] = text
    return rows


def transcript_lines(rows: list[str] | None) -> list[str]:
    """The screen's non-empty rows as transcript lines: what goldens and re-drive compare."""
    if rows is None:
        return []
    return [f"[screen] row {i:2d}: {text}" for i, text in enumerate(rows) if text]


class ScreenLog:
    """Samples a text buffer in guest memory and reports the rows that changed."""

    def __init__(self, memory, base: int, size: int, on_change=None, base_of=None):
        """`base_of()`, if given, says where the screen starts at each sample (a VGA's CRTC
        start address scrolls it); it must stay within `memory`."""
        self._memory, self._base, self._end = memory, base, base + size
        self._size, self._base_of = size, base_of
        self._last = bytes(memory[base:self._end])     # what the guest starts with: no record
        self._rows = [decode_text(self._row(self._last, r)) for r in range(ROWS)]
        self.on_change = on_change                    # on_change(n, [(row, text, attrs)])
        self.changes = 0

    @staticmethod
    def _row(cells: bytes, row: int) -> bytes:
        return cells[row * ROW_BYTES:(row + 1) * ROW_BYTES]

    def sample(self, n: int) -> None:
        if self._base_of is not None:
            base = self._base_of()
            if base + self._size <= len(self._memory):
                self._base, self._end = base, base + self._size
        now = bytes(self._memory[self._base:self._end])
        if now == self._last:
            return
        changed = []
        for row in range(ROWS):
            cells = self._row(now, row)
            if cells != self._row(self._last, row):
                text = decode_text(cells)
                self._rows[row] = text
                changed.append((row, text, encode_attrs(cells)))
        self._last = now
        self.changes += 1
        if self.on_change is not None:
            self.on_change(n, changed)

    @property
    def rows(self) -> list[str]:
        """The 25 rows as last sampled, trailing spaces dropped."""
        return list(self._rows)

    @property
    def cells(self) -> bytes:
        """The raw buffer as last sampled (for rendering with colours)."""
        return self._last

    def state(self) -> dict:
        return {"last": self._last, "rows": list(self._rows), "changes": self.changes}

    def from_state(self, state: dict) -> None:
        self._last, self._rows, self.changes = state["last"], list(state["rows"]), state["changes"]

    def current_text(self) -> str:
        """The screen as guest memory holds it now (not the last sample): for the debugger."""
        now = bytes(self._memory[self._base:self._end])
        return screen_text([decode_text(self._row(now, r)) for r in range(ROWS)])

    def is_blank(self) -> bool:
        return not any(self._rows)

    def text(self) -> str:
        return screen_text(self._rows)
