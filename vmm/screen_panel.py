"""`vmm run --screen live`: the guest's text screen drawn in place on a terminal, like QEMU's
curses display, with the console and serial lines scrolling above it.

Layout (docs/devices.md, "The screen on a terminal"): output lines scroll as they always do;
below them sits the screen panel, a rule, the 25 rows in their colours, and a rule naming the
cursor position. When a line is printed the panel is erased, the line written, and the panel
drawn again under it; when the screen changes the panel is redrawn in place. The panel is only
a view: what is drawn, and when, never reaches the guest or a trace. Redraws of screen changes
are limited to REDRAW_HZ; the last state is always drawn when the run ends, so the final screen
stays on the terminal.
"""

from __future__ import annotations

import time

from .runner import OutputCollector
from .screen import CP437
from .screenlog import COLS, ROWS, ROW_BYTES

REDRAW_HZ = 30
# VGA colour number (IRGB: blue is bit 0) -> ANSI colour number (red is bit 0).
_VGA_TO_ANSI = (0, 4, 2, 6, 1, 5, 3, 7)


def sgr(attr: int) -> str:
    """The ANSI select-graphic-rendition sequence of a VGA attribute (bit 7: bright background,
    as with blinking off)."""
    fg, bg = attr & 0x0F, attr >> 4
    fg_code = (90 if fg & 8 else 30) + _VGA_TO_ANSI[fg & 7]
    bg_code = (100 if bg & 8 else 40) + _VGA_TO_ANSI[bg & 7]
    return f"\x1b[{fg_code};{bg_code}m"


def render_rows(cells: bytes) -> list[str]:
    """The 25 rows as terminal text with colours, every row 80 columns wide."""
    rows = []
    for r in range(ROWS):
        row = cells[r * ROW_BYTES:(r + 1) * ROW_BYTES]
        parts, current = [], None
        for c in range(COLS):
            char, attr = row[2 * c], row[2 * c + 1]
            if attr != current:
                parts.append(sgr(attr))
                current = attr
            parts.append(CP437[char])          # glyphs: a cell never sends a control char
        rows.append("".join(parts) + "\x1b[0m")
    return rows


class ScreenPanel(OutputCollector):
    """An OutputCollector for a terminal that also shows the text screen in place."""

    def __init__(self, stream, clock=time.monotonic):
        super().__init__(stream)
        self._screen = None
        self._height = 0              # lines the panel occupies now (0: not drawn)
        self._partial = ""            # an unfinished line shown above the panel
        self._clock = clock
        self._last_draw = float("-inf")
        self._dirty = False

    # --- the sink's interface ---------------------------------------------------------------
    def __call__(self, device: str, text: str, partial: bool) -> None:
        if self._screen is None:              # no screen yet: plain lines, as without a panel
            return super().__call__(device, text, partial)
        self.lines.append((device, text, partial))
        if self.stream is None:
            return
        out = self._erase()
        if partial:
            self._partial = text
        else:
            out += text + "\n"
            self._partial = ""
        self._emit(out + self._draw())

    def show_unfinished(self, device: str, text: str) -> None:
        if self._screen is None:
            return super().show_unfinished(device, text)
        if self.stream is None or text == self._partial:
            return
        self._partial = text
        self._emit(self._erase() + self._draw())

    def show_screen(self, screen) -> None:
        if self._screen is None and self._shown and self.stream is not None:
            self._shown.clear()               # a prompt shown before the panel: it keeps its line
            self._emit("\n")
        self._screen = screen
        now = self._clock()
        if now - self._last_draw < 1 / REDRAW_HZ:
            self._dirty = True
            return
        self._redraw()

    @property
    def showed_screen(self) -> bool:
        """Whether the screen was drawn here (then it need not be printed again at the end)."""
        return self._screen is not None

    def finish(self) -> None:
        """The run ended: draw the final screen (never left behind a rate limit)."""
        if self._dirty or (self._screen is not None and not self._height):
            self._redraw()

    # --- drawing ------------------------------------------------------------------------------
    def _redraw(self) -> None:
        if self.stream is None:
            return
        self._dirty = False
        self._emit(self._erase() + self._draw())

    def _erase(self) -> str:
        lines, self._height = self._height, 0
        if not lines:
            return ""
        return f"\r\x1b[{lines}A\x1b[J"

    def _draw(self) -> str:
        out = self._partial + "\n" if self._partial else ""
        height = 1 if self._partial else 0
        self._last_draw = self._clock()
        rows = render_rows(self._screen.cells)
        rule = "─" * COLS
        out += "┌" + rule + "┐\n"
        out += "".join("│" + row + "│\n" for row in rows)
        out += "└" + rule + "┘\n"
        self._height = height + ROWS + 2
        return out

    def _emit(self, text: str) -> None:
        if text:
            try:
                self.stream.write(text.encode("utf-8"))
                self.stream.flush()
            except BrokenPipeError:
                from .outcome import StopRun
                raise StopRun("quit", "stdout was closed", exit_code=0) from None
