"""Raw keyboard input on a terminal, restored on every way out.

Input is raw (one byte per key, no echo, no line editing, no signals from keys: Ctrl-C arrives
as byte 0x03 and vmm ends the run itself), while output processing stays on so that the guest's
'\\n' still starts a new line on the screen.
"""

from __future__ import annotations

import contextlib
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
