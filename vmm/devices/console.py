"""Line-buffered output devices: the console (0x42), the debug console (0xe9), the
pseudo-serial port (0xf1), and the transmit side of COM1.

A guest OUTs one byte at a time (wider accesses write their low byte). Printable ASCII and tab
are buffered; '\\n' emits the buffered line. Other bytes are either dropped and counted
(`nonprintable="drop"`; `on_drop` hears of each, so that they count toward an output bound) or
shown as '.' (`nonprintable="dot"`). A line longer than `max_line`
is emitted anyway (not partial: the guest simply wrote a long line), and a partial line left at
the end of the run is emitted with `partial=True`.
"""

from __future__ import annotations

from .bus import Device

MAX_LINE = 4096      # bytes buffered before a line is emitted anyway: bounds memory per device
_PRINTABLE = frozenset(range(0x20, 0x7F)) | {0x09}
_PLAIN = bytes(sorted(_PRINTABLE | {0x0A}))   # bytes put_bytes() can take in bulk


class LineOutput(Device):
    def __init__(self, name: str, sink, nonprintable: str = "drop", drop_cr: bool = False,
                 max_line: int = MAX_LINE):
        self.name = name
        self._sink = sink
        self._dot = nonprintable == "dot"
        self._drop_cr = drop_cr
        self._max_line = max_line
        self.line_buffer = bytearray()
        self.dropped = 0
        self.bytes_written = 0
        self.on_drop = None          # called with the device's name for every byte dropped

    def write(self, offset: int, size: int, value: int) -> None:
        self.put(value & 0xFF)

    def write_bytes(self, offset: int, data: bytes) -> None:
        self.put_bytes(data)

    def put_bytes(self, data: bytes) -> None:
        """put() of each byte of `data`, in order; plain text (printable, tab, newline) in bulk."""
        if data.translate(None, _PLAIN):
            for byte in data:
                self.put(byte)
            return
        self.bytes_written += len(data)
        *lines, rest = data.split(b"\n")
        for line in lines:
            self._append(line)
            self._emit(False)
        self._append(rest)

    def _append(self, text: bytes) -> None:
        """Add plain text to the line, emitting it each time it reaches max_line (as put does)."""
        buffer, limit = self.line_buffer, self._max_line
        buffer += text
        while len(buffer) >= limit:
            rest = buffer[limit:]
            del buffer[limit:]
            self._emit(False)
            buffer += rest

    def put(self, byte: int) -> None:
        self.bytes_written += 1
        if byte == 0x0A:
            self._emit(False)
        elif byte in _PRINTABLE or self._dot and not (byte == 0x0D and self._drop_cr):
            self.line_buffer.append(byte if byte in _PRINTABLE else 0x2E)
            if len(self.line_buffer) >= self._max_line:
                self._emit(False)
        elif byte != 0x0D or not self._drop_cr:
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop(self.name)

    def _emit(self, partial: bool) -> None:
        text = self.line_buffer.decode("ascii")
        self.line_buffer.clear()
        self._sink(self.name, text, partial)

    @property
    def partial(self) -> str:
        """The unfinished line, as the guest has written it so far."""
        return self.line_buffer.decode("ascii")

    def finish(self) -> None:
        if self.line_buffer:
            self._emit(True)

    def stats(self) -> dict:
        return {"bytes": self.bytes_written, "dropped": self.dropped}
