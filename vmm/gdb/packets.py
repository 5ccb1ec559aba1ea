"""GDB remote serial protocol framing: packets, checksums, escapes, run-length encoding.

Source: the GDB manual, appendix "GDB Remote Serial Protocol", sections "Overview" (framing
`$data#cs`, `+`/`-` acknowledgments, `}` escapes, `*` run-length encoding) and "Packets".

Everything here is pure and bounded: `PacketReader` takes whatever bytes a socket delivered and
yields complete packets; a packet longer than MAX_PACKET is dropped (and answered with an error
by the engine) instead of growing a buffer without end; garbage between packets is skipped.
gdb's bytes are untrusted input like a trace file: no byte sequence may raise anything but
PacketError, which the engine turns into an error reply.
"""

from __future__ import annotations

MAX_PACKET = 16384          # bytes of payload we accept, and advertise as PacketSize
INTERRUPT = b"\x03"         # gdb's Ctrl-C, sent outside any packet
_ESCAPE = 0x7D              # '}': the next byte is XORed with 0x20
_RLE = 0x2A                 # '*': repeat the previous byte (next byte - 29) more times
_NEEDS_ESCAPE = frozenset(b"$#}*")


class PacketError(ValueError):
    """A packet's contents cannot be parsed (bad hex, missing field, out of range)."""


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def frame(payload: bytes) -> bytes:
    """`$payload#cs`, escaping the bytes the protocol reserves."""
    if any(b in _NEEDS_ESCAPE for b in payload):
        out = bytearray()
        for b in payload:
            if b in _NEEDS_ESCAPE:
                out += bytes((_ESCAPE, b ^ 0x20))
            else:
                out.append(b)
        payload = bytes(out)
    return b"$" + payload + b"#%02x" % checksum(payload)


def unescape(raw: bytes) -> bytes:
    """Undo `}` escapes and `*` run-length encoding in a received packet body."""
    if _ESCAPE not in raw and _RLE not in raw:
        return raw
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        b = raw[i]
        if b == _ESCAPE:
            if i + 1 >= n:
                raise PacketError("escape at the end of a packet")
            out.append(raw[i + 1] ^ 0x20)
            i += 2
        elif b == _RLE:
            if not out or i + 1 >= n:
                raise PacketError("run-length marker without a byte to repeat")
            count = raw[i + 1] - 29
            if count < 3 or len(out) + count > MAX_PACKET:
                raise PacketError("bad run-length count")
            out += bytes((out[-1],)) * count
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


class PacketReader:
    """Collects bytes from the connection into packets.

    `feed(data)` returns a list of events: ("packet", body) for a packet with a good checksum,
    ("bad", reason) for one to NAK (bad checksum, too long, bad escapes), ("interrupt", b"") for
    Ctrl-C. Acknowledgment bytes (+/-) and noise between packets are skipped. The buffer never
    holds more than MAX_PACKET + 3 bytes."""

    def __init__(self):
        self._buf = bytearray()
        self._in_packet = False
        self._overflow = False

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        events: list[tuple[str, bytes]] = []
        for b in data:
            if not self._in_packet:
                if b == 0x24:                       # '$'
                    self._in_packet, self._overflow = True, False
                    self._buf.clear()
                elif b == 0x03:
                    events.append(("interrupt", b""))
                continue                             # '+', '-', noise
            if b == 0x24:                            # a new packet starts: drop the torn one
                events.append(("bad", b"packet cut short by another"))
                self._buf.clear()
                self._overflow = False
                continue
            self._buf.append(b)
            if len(self._buf) >= 3 and self._buf[-3] == 0x23:   # '#' and two checksum digits
                events.append(self._finish())
            elif len(self._buf) > MAX_PACKET + 3:
                self._overflow = True
                del self._buf[:-3]                   # keep only what may hold the '#xx' trailer
        return events

    def _finish(self) -> tuple[str, bytes]:
        body, trailer = bytes(self._buf[:-3]), bytes(self._buf[-2:])
        self._buf.clear()
        self._in_packet = False
        if self._overflow:
            self._overflow = False
            return ("bad", b"packet longer than %d bytes" % MAX_PACKET)
        try:
            want = int(trailer, 16)
        except ValueError:
            return ("bad", b"checksum is not hex")
        if checksum(body) != want:
            return ("bad", b"checksum mismatch")
        try:
            return ("packet", unescape(body))
        except PacketError as e:
            return ("bad", str(e).encode())


# --- field parsing: every helper raises PacketError, never anything else ----------------------
MAX_HEX_DIGITS = 32          # no register or address needs more


def hex_int(text: bytes | str, limit_bits: int = 64) -> int:
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise PacketError("not hex") from None
    if not text or len(text) > MAX_HEX_DIGITS or not all(c in "0123456789abcdefABCDEF"
                                                         for c in text):
        raise PacketError(f"bad hex number {text[:20]!r}")
    value = int(text, 16)
    if value >> limit_bits:
        raise PacketError(f"number {text[:20]} out of range")
    return value


def hex_bytes(text: bytes) -> bytes:
    if len(text) % 2:
        raise PacketError("odd number of hex digits")
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise PacketError("bad hex data") from None


def to_hex(data: bytes) -> bytes:
    return data.hex().encode("ascii")


def split_fields(body: bytes, sep: bytes, count: int) -> list[bytes]:
    parts = body.split(sep, count - 1)
    if len(parts) != count:
        raise PacketError("missing fields")
    return parts
