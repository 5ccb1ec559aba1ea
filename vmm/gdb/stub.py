"""The GDB remote-protocol engine: parses packets, owns the protocol, and asks a target.

Source: the GDB manual, appendix "GDB Remote Serial Protocol" ("Packets", "Stop Reply Packets",
"General Query Packets", "Host I/O Packets").

The engine knows nothing of vmm's machines. A target (vmm.gdb.target) implements a small base
(registers, memory, resume, stop reason) and, optionally, extensions the engine discovers at run
time, in the style of the gdbstub crate: `target.breakpoints()`, `target.reverse()`,
`target.monitor()`, `target.exec_file()` return an object, or None where the target cannot do
it. `qSupported` then advertises exactly what exists, and a packet for a missing extension gets
the empty reply the protocol prescribes for unknown packets.

Every packet is untrusted input: a malformed one gets an error reply (E01), an unknown one the
empty reply, an oversized one a NAK; nothing a client sends raises out of `serve()`.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from .packets import (INTERRUPT, MAX_PACKET, PacketError, PacketReader, frame, hex_bytes,
                      hex_int, split_fields, to_hex)

MAX_MEMORY_READ = (MAX_PACKET - 8) // 2        # bytes: a reply must fit in PacketSize
IDLE_POLL_S = 0.25                             # waiting for gdb: look for a stop request so often
SIGTRAP, SIGINT = 5, 2
THREAD = 1                                     # vmm's one vCPU, as gdb's one thread
ERROR = b"E01"


@dataclass
class Stop:
    """Why the target stopped, for a stop reply."""
    kind: str = "signal"        # signal | exited | replay-begin | replay-end
    signal: int = SIGTRAP
    breakpoint: str | None = None      # "sw" or "hw": a breakpoint's instruction is next
    watch: tuple[str, int] | None = None   # ("watch" | "rwatch" | "awatch", address)
    exit_code: int = 0

    def reply(self) -> bytes:
        if self.kind == "exited":
            return b"W%02x" % (self.exit_code & 0xFF)
        out = b"T%02xthread:%x;" % (self.signal, THREAD)
        if self.kind == "replay-begin":
            out += b"replaylog:begin;"
        elif self.kind == "replay-end":
            out += b"replaylog:end;"
        if self.watch is not None:
            out += self.watch[0].encode() + b":%x;" % self.watch[1]
        elif self.breakpoint == "sw":
            out += b"swbreak:;"
        elif self.breakpoint == "hw":
            out += b"hwbreak:;"
        return out


class Disconnected(Exception):
    """The connection to gdb is gone."""


class GdbStub:
    """Serves one gdb connection until gdb detaches, kills, or goes away.

    `serve()` returns "detach", "kill", "disconnect", or "signal" when vmm itself was asked to
    stop (Ctrl-C, SIGTERM) while gdb had the guest stopped."""

    def __init__(self, conn: socket.socket, target, log=lambda text: None):
        self.conn = conn
        self.target = target
        self.log = log
        self.reader = PacketReader()
        self.pending: list[tuple[str, bytes]] = []
        self.ack = True
        self.interrupted = False
        self.arch = None             # the target description gdb was given (None: not yet)
        self.bad_packets = 0
        self.mode_noted = None
        if hasattr(target, "client"):
            target.client = self

    # --- transport -------------------------------------------------------------------------------
    def _send(self, payload: bytes) -> None:
        try:
            self.conn.sendall(frame(payload))
        except OSError:
            raise Disconnected() from None

    def console(self, text: str) -> None:
        """Show text in gdb's console (an 'O' packet: only while the target runs)."""
        self._send(b"O" + to_hex(text.encode("utf-8", "replace")))

    def _receive(self, block: bool = True) -> None:
        try:
            if block:
                self.conn.settimeout(IDLE_POLL_S)
            else:
                self.conn.setblocking(False)
            data = self.conn.recv(65536)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return
        except OSError:
            raise Disconnected() from None
        finally:
            try:
                self.conn.setblocking(True)
            except OSError:
                pass
        if not data:
            raise Disconnected()
        for event in self.reader.feed(data):
            if event[0] == "interrupt":
                self.interrupted = True
            else:
                self.pending.append(event)

    def interrupt_requested(self) -> bool:
        """Polled by the target while the guest runs: has gdb sent Ctrl-C?"""
        if not self.interrupted:
            self._receive(block=False)
        requested, self.interrupted = self.interrupted, False
        return requested

    # --- the session -----------------------------------------------------------------------------
    def serve(self) -> str:
        try:
            while True:
                while not self.pending:
                    self._receive()
                    if not self.pending and self.target.stop_requested():
                        return "signal"
                kind, body = self.pending.pop(0)
                if kind == "bad":
                    self.bad_packets += 1
                    if self.ack:
                        self.conn.sendall(b"-")
                    continue
                if self.ack:
                    self.conn.sendall(b"+")
                reply = self.handle(body)
                if isinstance(reply, str):           # the session ends
                    return reply
                if reply is not None:
                    self._send(reply)
        except (Disconnected, OSError):
            return "disconnect"

    def handle(self, body: bytes) -> bytes | str | None:
        """The reply to one packet (None: no reply; a str: the session ends so)."""
        try:
            return self._dispatch(body)
        except PacketError:
            self.bad_packets += 1
            return ERROR
        except (ValueError, OverflowError, IndexError, UnicodeDecodeError):
            self.bad_packets += 1
            return ERROR

    def _dispatch(self, body: bytes):
        if not body:
            return b""
        head = body[:1]
        target = self.target
        if head == b"q" or head == b"Q":
            return self._query(body)
        if head == b"?":
            return target.stop_reason().reply()
        if head == b"g":
            regs = target.read_registers()
            self.arch = self.arch or target.arch()
            return to_hex(self.arch.encode(regs))
        if head == b"G":
            arch = self.arch or target.arch()
            values = arch.decode(hex_bytes(body[1:]))
            return b"OK" if target.write_registers(self._vmm_registers(arch, values)) else ERROR
        if head == b"p":
            arch = self.arch or target.arch()
            number = hex_int(body[1:], 16)
            if number >= len(arch.registers):
                return ERROR
            name, bits = arch.registers[number]
            value = arch.value_of(name, target.read_registers())
            return to_hex((value & ((1 << bits) - 1)).to_bytes(bits // 8, "little"))
        if head == b"P":
            arch = self.arch or target.arch()
            number, value = split_fields(body[1:], b"=", 2)
            number = hex_int(number, 16)
            if number >= len(arch.registers):
                return ERROR
            name, bits = arch.registers[number]
            data = hex_bytes(value)
            if len(data) != bits // 8:
                return ERROR
            regs = self._vmm_registers(arch, {name: int.from_bytes(data, "little")})
            if not regs:
                return b"OK"               # x87 and segment registers: not writable, ignored
            return b"OK" if target.write_registers(regs) else ERROR
        if head == b"m":
            address, length = split_fields(body[1:], b",", 2)
            address, length = hex_int(address), hex_int(length)
            data = target.read_memory(address, min(length, MAX_MEMORY_READ))
            return to_hex(data) if data or not length else b"E14"
        if head == b"M":
            where, data = split_fields(body[1:], b":", 2)
            address, length = (hex_int(x) for x in split_fields(where, b",", 2))
            data = hex_bytes(data)
            if len(data) != length:
                return ERROR
            return b"OK" if target.write_memory(address, data) else b"E14"
        if head == b"X":
            where, data = split_fields(body[1:], b":", 2)
            address, length = (hex_int(x) for x in split_fields(where, b",", 2))
            if len(data) != length:
                return ERROR
            if not length:
                return b"OK"               # gdb's probe for X support
            return b"OK" if target.write_memory(address, data) else b"E14"
        if head in (b"c", b"s", b"C", b"S"):
            if len(body) > 1 and head in (b"c", b"s"):
                hex_int(body[1:])          # a resume address: validated, not supported
                return ERROR
            return self._resume("step" if head in (b"s", b"S") else "continue")
        if head == b"v":
            return self._v_packet(body)
        if head == b"b" and body in (b"bs", b"bc"):
            reverse = target.reverse()
            if reverse is None:
                return b""
            stop = reverse.step_back() if body == b"bs" else reverse.continue_back(self)
            self._check_mode()
            return stop.reply()
        if head in (b"Z", b"z"):
            return self._breakpoint(body)
        if head == b"H" or head == b"T":
            return b"OK"
        if head == b"D":
            self._send(b"OK")
            return "detach"
        if head == b"k":
            return "kill"
        return b""

    def _vmm_registers(self, arch, values: dict[str, int]) -> dict[str, int]:
        out = {}
        for name, value in values.items():
            vmm = arch.vmm_name(name)
            if vmm is not None:
                out[vmm] = value
        return out

    def _resume(self, how: str) -> bytes:
        stop = self.target.resume(how, self)
        self._check_mode()
        return stop.reply()

    def _check_mode(self) -> None:
        """gdb reads the target description once per connection. When the guest switches to a
        mode whose registers differ, the 'g' replies keep the layout gdb was given (so gdb
        never sees a reply too long for it), and gdb's console says how to get the new one."""
        if self.arch is None:
            return
        now = self.target.arch()
        if now.name != self.arch.name and now.name != self.mode_noted:
            self.mode_noted = now.name
            self.console(f"vmm: the guest switched to {now.name} mode; gdb still shows "
                         f"{self.arch.name} registers. For the {now.name} ones, reconnect "
                         "(the guest stays stopped): disconnect, then target remote again; "
                         "with a 32-bit ELF file loaded gdb stays i386 (docs/debugging.md)\n")

    def _v_packet(self, body: bytes):
        if body == b"vCont?":
            return b"vCont;c;C;s;S"
        if body.startswith(b"vCont;"):
            action = body[6:].split(b";")[0].split(b":")[0]
            if action[:1] in (b"c", b"C"):
                return self._resume("continue")
            if action[:1] in (b"s", b"S"):
                return self._resume("step")
            return ERROR
        if body == b"vMustReplyEmpty":
            return b""
        if body.startswith(b"vKill"):
            self._send(b"OK")
            return "kill"
        return b""

    def _breakpoint(self, body: bytes) -> bytes:
        insert = body[:1] == b"Z"
        kind, address, length = split_fields(body[1:].split(b";")[0], b",", 3)
        kind, address, length = hex_int(kind, 8), hex_int(address), hex_int(length, 16)
        points = self.target.breakpoints()
        if points is None or kind > 4:
            return b""
        if kind >= 2 and not 1 <= length <= 4096:
            return ERROR
        done = points.insert(kind, address, length) if insert else points.remove(kind, address,
                                                                                 length)
        if done is None:
            return b""                        # this kind is not supported
        return b"OK" if done else ERROR

    def _query(self, body: bytes):
        target = self.target
        if body.startswith(b"qSupported"):
            features = [b"PacketSize=%x" % MAX_PACKET, b"qXfer:features:read+", b"swbreak+",
                        b"hwbreak+", b"QStartNoAckMode+", b"vContSupported+"]
            if target.exec_file() is not None:
                features.append(b"qXfer:exec-file:read+")
            if target.reverse() is not None:
                features += [b"ReverseStep+", b"ReverseContinue+"]
            return b";".join(features)
        if body == b"QStartNoAckMode":
            self._send(b"OK")
            self.ack = False
            return None
        if body.startswith(b"qXfer:features:read:"):
            annex, window = split_fields(body[len(b"qXfer:features:read:"):], b":", 2)
            if annex != b"target.xml":
                return b"E00"
            self.arch = target.arch()
            return self._xfer(self.arch.target_xml(), window)
        if body.startswith(b"qXfer:exec-file:read:"):
            path = target.exec_file()
            if path is None:
                return b""
            _, window = split_fields(body[len(b"qXfer:exec-file:read:"):], b":", 2)
            return self._xfer(path.encode("utf-8", "surrogateescape"), window)
        if body == b"qC":
            return b"QC%x" % THREAD
        if body == b"qfThreadInfo":
            return b"m%x" % THREAD
        if body == b"qsThreadInfo":
            return b"l"
        if body.startswith(b"qAttached"):
            return b"1"
        if body.startswith(b"qSymbol"):
            return b"OK"
        if body.startswith(b"qRcmd,"):
            monitor = target.monitor()
            if monitor is None:
                return b""
            command = hex_bytes(body[6:]).decode("utf-8", "replace")
            text = monitor.command(command)
            if text:
                for start in range(0, len(text), 1024):
                    self.console(text[start:start + 1024])
            return b"OK"
        return b""

    def _xfer(self, data: bytes, window: bytes) -> bytes:
        offset, length = (hex_int(x) for x in split_fields(window, b",", 2))
        length = min(length, MAX_PACKET - 16)
        chunk = data[offset:offset + length]
        return (b"m" if offset + length < len(data) else b"l") + chunk


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port. Raises OSError (port in use, bad host)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1)
    except BaseException:
        sock.close()
        raise
    return sock


def accept(sock: socket.socket) -> socket.socket:
    conn, _ = sock.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


__all__ = ["GdbStub", "Stop", "listen", "accept", "INTERRUPT"]
