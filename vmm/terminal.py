"""Raw keyboard input on a terminal, restored on every way out; and --local-echo.

Input is raw (one byte per key, no echo, no line editing, no signals from keys: Ctrl-C arrives
as byte 0x03 and vmm ends the run itself), while output processing stays on so that the guest's
'\\n' still starts a new line on the screen.
"""

from __future__ import annotations

import contextlib
import os
import termios


@contextlib.contextmanager
def raw_input_mode(fd: int):
    saved = termios.tcgetattr(fd)
    mode = termios.tcgetattr(fd)
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = mode
    iflag &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP | termios.IXON)
    lflag &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
    cflag |= termios.CS8
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


_BACKSPACES = (0x08, 0x7F)


def _shown(data: bytes) -> bytes:
    """How typed bytes look when echoed: Enter starts a new line, a backspace rubs out, other
    control bytes (escape sequences of arrow keys, say) show nothing."""
    out = bytearray()
    for byte in data:
        if byte == 0x0D or byte == 0x0A:
            out += b"\r\n"
        elif byte in _BACKSPACES:
            out += b"\b \b"
        elif byte == 0x09 or 0x20 <= byte < 0x7F:
            out.append(byte)
    return bytes(out)


class LocalEcho:
    """`--local-echo`: a terminal feed that also shows each typed key on the terminal as vmm
    reads it, for guests that do not echo what they are sent. Only the screen changes: the
    guest gets the same bytes, and a recording holds the same records, as without it."""

    def __init__(self, feed, fd: int = 1):
        self.feed, self.fd = feed, fd

    @property
    def eof(self) -> bool:
        return self.feed.eof

    def read(self, block: bool = False) -> bytes:
        data = self.feed.read(block)
        if data:
            shown = _shown(data)
            if shown:
                os.write(self.fd, shown)
        return data

    def wait(self, timeout: float) -> None:
        self.feed.wait(timeout)
