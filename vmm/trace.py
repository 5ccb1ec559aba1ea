"""Trace files: the public, versioned record of a run (DESIGN §6; documented in
docs/trace-format.md).

A trace is text, one JSON object per line, gzip-compressed when the file name ends in `.gz`.
The first line is the header; then records in the order they happened; the last is the end
record. Records are written and flushed as they happen, so a recording cut short leaves a
readable prefix. Everything a reader needs is validated here; reading never runs code.
Fields that may differ between two recordings of the same scripted session live only under
the `info` key of the header and of the end record.
"""

from __future__ import annotations

import base64
import collections
import gzip
import hashlib
import itertools
import json
import os
import re
import time
import zlib
from dataclasses import dataclass, field

from .errors import TraceError
from .units import MAX_ICOUNT_NS            # guest time per instruction in icount mode

FORMAT = "vmm-trace"
VERSION = 5                  # 2: fetch records (web data) added; 3: register digests narrowed;
                             # 4: boards (machine.board) and screen records; 5: instruction
                             # points (icount records, point "icount", machine.icount_ns)
READABLE_VERSIONS = (1, 2, 3, 4, 5)  # version 1 traces are version 2 traces without fetch records
LEGACY_DIGEST_VERSIONS = (1, 2)  # their register digests cover all of RFLAGS (docs/trace-format.md)
GZIP_MAGIC = b"\x1f\x8b"

# --- bounds (docs/trace-format.md, "Bounds") -----------------------------------------------------
# A trace is untrusted: every limit below is checked as the file is read, before anything is
# built from it, so that a malformed or hostile trace is refused quickly and in small memory.
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
MAX_TRACE_BYTES = 256 * MiB      # decompressed bytes in all: some 4 million records
MAX_GUEST_BYTES = 16 * MiB       # the embedded guest and its multiboot modules, together (and
                                 # never more than the header's RAM)
MAX_MODULES = 64                 # multiboot modules (machine.boot.modules)
MAX_HEADER_LINE = MAX_GUEST_BYTES * 4 // 3 + 4 * MiB    # their base64, and the rest of the header
MAX_RECORD_LINE = 64 * KiB       # any other line (an output line is at most 4096 characters)
MAX_TEXT = 4096                  # characters of an output line (vmm.devices.console.MAX_LINE)
MAX_NAME = 64                    # characters of a device name, an end reason, a digest
MAX_CPUID_ENTRIES = 256          # what KVM_SET_CPUID2 accepts (KVM_MAX_CPUID_ENTRIES)
MAX_LOAD_MAP = 256               # guest segments and boot structures
MAX_DEVICES = 256                # port-bus entries
KEEP_RECORDS = 1 << 16           # a trace of at most this many records, and
KEEP_BYTES = 4 * MiB             # of at most this many bytes of them, is read only once
MAX_SCRIPT_STEPS = 100_000       # script steps; `step` records are at most one per step
MAX_INT = (1 << 63) - 1          # every stamp, time and count
_READ_CHUNK = 64 * KiB           # compressed bytes read at a time
_INFLATE_CHUNK = 1 * MiB         # decompressed bytes produced at a time

# Record types and the fields each must carry (name -> accepted Python types).
_INT = (int,)
RECORD_FIELDS = {
    "key": {"n": _INT, "at": _INT, "dev": (str,), "byte": _INT},
    "timer": {"n": _INT, "at": _INT, "count": _INT},
    "out": {"n": _INT, "dev": (str,), "text": (str,)},
    "cp": {"n": _INT, "regs": (str,)},
    "step": {"n": _INT, "at": _INT, "index": _INT},
    "end": {"n": _INT, "reason": (str,), "exit_code": _INT},
    "fetch": {"n": _INT, "at": _INT, "dev": (str,), "text": (str,)},
    "screen": {"n": _INT, "rows": (list,)},
    "time": {"n": _INT, "at": _INT},
    "edge": {"n": _INT, "at": _INT, "line": _INT, "count": _INT},
    "irq": {"n": _INT, "at": _INT, "vector": _INT, "point": (str,)},
    "icount": {"n": _INT, "at": _INT, "count": _INT},
}
INPUT_TYPES = frozenset({"key", "timer", "fetch", "time", "edge", "icount"})
IRQ_POINTS = frozenset({"in", "hlt", "spin", "icount"})   # where vmm injects an interrupt
                                                          # (vmm.machine)
EDGE_POINTS = IRQ_POINTS | {"idle"}  # where edges and polled keys are taken
# Optional fields: name -> accepted types (None allowed where listed).
_OPTIONAL = {
    "out": {"partial": (bool,)},
    "edge": {"point": (str,)},
    "key": {"point": (str,)},
    "timer": {"point": (str,)},
    "end": {"at": (int, type(None)), "at_read": (bool,), "message": (str, type(None)),
            "regs": (str, type(None)), "mem": (str, type(None)), "output": (str, type(None)),
            "icount": (int,)},
}
_SHORT = {"dev", "regs", "reason", "mem", "output"}      # strings of at most MAX_NAME


@dataclass
class Trace:
    """A whole trace in memory (read_trace): for small traces, tools and tests. Replay and
    `vmm inspect` use TraceFile (open_trace), which streams."""
    header: dict
    records: list[dict] = field(default_factory=list)
    end: dict | None = None
    truncated: bool = False
    path: str = ""

    @property
    def guest_bytes(self) -> bytes:
        return base64.b64decode(self.header["guest"]["data"])

    def inputs(self) -> list[dict]:
        return [r for r in self.records if r["type"] in INPUT_TYPES]

    def outputs(self) -> list[dict]:
        return [r for r in self.records if r["type"] == "out"]

    def checkpoints(self) -> list[dict]:
        return [r for r in self.records if r["type"] == "cp"]

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(RECORD_FIELDS, 0)
        for r in self.records:
            counts[r["type"]] = counts.get(r["type"], 0) + 1
        return counts

    @property
    def last_stamp(self) -> int:
        return max((r["n"] for r in self.records), default=0)

    def iter_records(self):
        return iter(self.records)

    def cursor(self) -> "ListCursor":
        return ListCursor(self.records)

    def screens(self) -> list[dict]:
        return [r for r in self.records if r["type"] == "screen"]


def encode(record: dict) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"


FLUSH_INTERVAL_NS = 20_000_000   # records reach the file at most this long after hand-over


class TraceWriter:
    """Writes records as they happen. Each record handed over reaches the file (a write
    syscall, and a gzip sync flush) within FLUSH_INTERVAL_NS when more records follow, at the
    next watchdog tick (vmm.machine.WATCHDOG_TICK) when none do, and at once when the run ends
    or vmm stops on a signal or an error. The recorder (vmm.record) hands records over at
    least at every tick, so only SIGKILL or a power cut can lose the last few tens of ms."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._raw = open(path, "wb")
        except OSError as e:
            raise TraceError(f"cannot write trace {path}: {e.strerror}") from None
        self._gzip = gzip.GzipFile(fileobj=self._raw, mode="wb", mtime=0, filename="") \
            if path.endswith(".gz") else None
        self._pending: list[bytes] = []
        self._last_flush = time.monotonic_ns()
        self.records = 0

    def write(self, record: dict) -> None:
        self.write_line(encode(record))

    def write_line(self, line: bytes) -> None:
        """An already-encoded record, ending in a newline."""
        self._pending.append(line)
        self.records += 1
        if time.monotonic_ns() - self._last_flush >= FLUSH_INTERVAL_NS:
            self.flush()

    def write_lines(self, lines: list[bytes]) -> None:
        """Already-encoded records, in order (a recorder's batch: one time check for all)."""
        self._pending.extend(lines)
        self.records += len(lines)
        if time.monotonic_ns() - self._last_flush >= FLUSH_INTERVAL_NS:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        if self._gzip is not None:
            self._gzip.write(data)
            self._gzip.flush(zlib.Z_SYNC_FLUSH)   # a readable prefix even if we are killed
        else:
            self._raw.write(data)
        self._raw.flush()
        self._last_flush = time.monotonic_ns()

    def close(self) -> None:
        if self._raw.closed:
            return
        self.flush()
        if self._gzip is not None:
            self._gzip.close()
            self._gzip = None
        self._raw.close()


def make_header(*, guest_name: str, guest_bytes: bytes, machine: dict, clock: str,
                script: list[dict] | None, info: dict, vmm_version: str,
                guest_path: str | None = None) -> dict:
    make_header_check(guest_bytes, machine)
    guest = {"name": guest_name, "size": len(guest_bytes),
             "sha256": hashlib.sha256(guest_bytes).hexdigest(),
             "data": base64.b64encode(guest_bytes).decode("ascii")}
    if guest_path is not None:
        guest["path"] = guest_path     # where to rebuild it, relative to the repository
    header = {
        "type": "header", "format": FORMAT, "version": VERSION, "vmm": vmm_version,
        "guest": guest,
        "machine": machine,
        "clock": clock,
    }
    if script is not None:
        header["script"] = script
    header["info"] = info
    return header


# --- reading: decompressed lines, with the bounds ----------------------------------------------
class _Lines:
    """The lines of a trace file, decompressed as they are read (gzip is detected by its
    magic), in bounded memory: at most a line and a chunk are held. `offset` is where the next
    line starts in the decompressed data; `number` its line number (1 = the header)."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._file = open(path, "rb")
        except FileNotFoundError:
            raise TraceError(f"trace file not found: {path}") from None
        except IsADirectoryError:
            raise TraceError(f"trace path is a directory: {path}") from None
        except OSError as e:
            raise TraceError(f"cannot read trace {path}: {e.strerror}") from None
        self.gzip = self._read_raw(2) == GZIP_MAGIC
        self._rewind()

    def _read_raw(self, size: int) -> bytes:
        try:
            return self._file.read(size)
        except OSError as e:
            raise TraceError(f"cannot read trace {self.path}: {e.strerror}") from None

    def _rewind(self) -> None:
        self._file.seek(0)
        self._buf = bytearray()
        self._pos = 0                  # where the next line starts in _buf
        self.offset = 0
        self.number = 1
        self.total = 0                 # decompressed bytes produced
        self._tail = b""               # compressed bytes read but not yet consumed
        self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if self.gzip else None
        self._fed = False              # the current gzip member has been given data
        self.eof = False
        self.cut = False               # a gzip stream cut short (or damaged) at its end

    def close(self) -> None:
        self._file.close()

    def _more(self) -> bool:
        """Append more decompressed data to _buf; False at the end of the file."""
        if self.eof:
            return False
        if not self.gzip:
            data = self._read_raw(_READ_CHUNK)
            if not data:
                self.eof = True
                return False
            self._grow(data)
            return True
        while True:
            if not self._tail:
                self._tail = self._read_raw(_READ_CHUNK)
                if not self._tail:
                    self.eof = True
                    if self._fed and not self._inflater.eof:
                        self.cut = True            # the stream stops mid-member
                    return False
            d = self._inflater
            self._fed = True
            try:
                data = d.decompress(self._tail, _INFLATE_CHUNK)
            except zlib.error:
                if self.total == 0:
                    raise TraceError(f"{self.path} is not a readable gzip file") from None
                self.eof = self.cut = True         # damage after a readable prefix
                return False
            rest = d.unconsumed_tail if not d.eof else d.unused_data
            self._tail = rest
            if d.eof:                              # the next member, if any (as gzip does)
                self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._fed = False
            if data:
                self._grow(data)
                return True

    def _grow(self, data: bytes) -> None:
        self.total += len(data)
        if self.total > MAX_TRACE_BYTES:
            raise TraceError(f"{self.path}: refused: the trace is larger than "
                             f"{MAX_TRACE_BYTES >> 20} MiB (decompressed)")
        if self._pos > _READ_CHUNK and self._pos * 2 > len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def next_line(self, limit: int) -> tuple[bytes, bool] | None:
        """The next line without its newline, and whether it had one; None at the end."""
        buf = self._buf
        searched = self._pos
        while True:
            i = buf.find(b"\n", searched)
            if i >= 0:
                if i - self._pos > limit:
                    self._too_long(limit)
                line = bytes(buf[self._pos:i])
                self.offset += i + 1 - self._pos
                self._pos = i + 1
                self.number += 1
                return line, True
            done = len(buf) - self._pos
            if done > limit:
                self._too_long(limit)
            if not self._more():
                if not done:
                    return None
                line = bytes(buf[self._pos:])
                self.offset += done
                self._pos = len(buf)
                self.number += 1
                return line, False
            buf = self._buf
            searched = self._pos + done

    def batches(self, limit: int):
        """The remaining lines, as (number of the first, lines without their newlines,
        complete): about a megabyte of lines at a time, split in C; a last line without a
        newline comes alone, with complete False."""
        while True:
            buf = self._buf
            end = buf.rfind(b"\n", self._pos)
            if end >= 0:
                lines = bytes(buf[self._pos:end]).split(b"\n")
                if max(map(len, lines)) > limit:
                    self.number += next(i for i, x in enumerate(lines) if len(x) > limit)
                    self._too_long(limit)
                first = self.number
                self.offset += end + 1 - self._pos
                self._pos = end + 1
                self.number += len(lines)
                yield first, lines, True
                continue
            done = len(buf) - self._pos
            if done > limit:
                self._too_long(limit)
            if not self._more():
                if done:
                    line = bytes(self._buf[self._pos:])
                    self.offset += done
                    self._pos = len(self._buf)
                    self.number += 1
                    yield self.number - 1, [line], False
                return

    def _too_long(self, limit: int) -> None:
        what = "the header line" if self.number == 1 else f"line {self.number}"
        why = (f"(an embedded guest is at most {MAX_GUEST_BYTES >> 20} MiB)" if self.number == 1
               else "(no record is that long)")
        raise TraceError(f"corrupt trace {self.path}: {what} is longer than {limit} bytes {why}")

    def seek(self, offset: int, number: int) -> None:
        """Go to a line start found before (an offset this reader returned)."""
        if not self.gzip:
            self._file.seek(offset)
            self._buf, self._pos, self.offset, self.number = bytearray(), 0, offset, number
            self.total, self.eof = offset, False
            return
        if offset < self.offset:
            self._rewind()
        while self.offset + (len(self._buf) - self._pos) < offset:   # skip without parsing
            self.offset += len(self._buf) - self._pos
            self._buf, self._pos = bytearray(), 0
            if not self._more():
                break
        skip = min(offset - self.offset, len(self._buf) - self._pos)
        self._pos += skip
        self.offset += skip
        self.number = number


# --- reading: records ---------------------------------------------------------------------------
_NUM = rb"(0|[1-9][0-9]{0,18})"
_DEV = rb'"([a-z0-9-]{1,64})"'
# The exact lines vmm writes for the frequent kinds, parsed without the JSON decoder (anything
# else, however written, goes through json.loads and the same checks).
_FAST = {
    ord("k"): (re.compile(rb'\{"type":"key","n":' + _NUM + rb',"at":' + _NUM + rb',"dev":'
                          + _DEV + rb',"byte":(0|[1-9][0-9]{0,2})\}'),
               lambda g: {"type": "key", "n": int(g[0]), "at": int(g[1]),
                          "dev": g[2].decode("ascii"), "byte": int(g[3])}),
    ord("t"): (re.compile(rb'\{"type":"timer","n":' + _NUM + rb',"at":' + _NUM + rb',"count":'
                          + _NUM + rb'\}'),
               lambda g: {"type": "timer", "n": int(g[0]), "at": int(g[1]), "count": int(g[2])}),
    ord("o"): (re.compile(rb'\{"type":"out","n":' + _NUM + rb',"dev":' + _DEV
                          + rb',"text":"([ !#-\[\]-~]{0,4096})"(,"partial":true)?\}'),
               lambda g: dict({"type": "out", "n": int(g[0]), "dev": g[1].decode("ascii"),
                               "text": g[2].decode("ascii")},
                              **({"partial": True} if g[3] else {}))),
    ord("c"): (re.compile(rb'\{"type":"cp","n":' + _NUM + rb',"regs":"([0-9a-f]{1,64})"\}'),
               lambda g: {"type": "cp", "n": int(g[0]), "regs": g[1].decode("ascii")}),
}
_POINT = rb'"(in|hlt|spin|idle)"'
# Interrupt-driven kernels' traces are mostly these (version 4): checked as _check_record would.
_FAST_V4 = {
    ord("t"): (re.compile(rb'\{"type":"time","n":' + _NUM + rb',"at":' + _NUM + rb'\}'),
               lambda g: {"type": "time", "n": int(g[0]), "at": int(g[1])}),
    ord("e"): (re.compile(rb'\{"type":"edge","n":' + _NUM + rb',"at":' + _NUM
                          + rb',"line":([0-9]|1[0-5]),"count":' + _NUM
                          + rb'(?:,"point":' + _POINT + rb')?\}'),
               lambda g: dict({"type": "edge", "n": int(g[0]), "at": int(g[1]),
                               "line": int(g[2]), "count": int(g[3])},
                              **({"point": g[4].decode("ascii")} if g[4] else {}))),
    ord("i"): (re.compile(rb'\{"type":"irq","n":' + _NUM + rb',"at":' + _NUM
                          + rb',"vector":(0|[1-9][0-9]{0,2}),"point":"(in|hlt|spin)"\}'),
               lambda g: {"type": "irq", "n": int(g[0]), "at": int(g[1]),
                          "vector": int(g[2]), "point": g[3].decode("ascii")}),
}
_FAST_AT = len(b'{"type":"')
_SEEN = 256              # lines remembered with their records: a repeated line is parsed once


def _cached_record(cache: dict, path: str, number: int, line: bytes, complete: bool,
                   version: int) -> dict | None:
    """_record, for a line seen lately without parsing it again (records are never changed by
    their readers). Repetitive data — a flooding guest, or a gzip bomb — costs a lookup."""
    record = cache.get(line)
    if record is None:
        record = _record(path, number, line, complete, version)
        if record is not None and complete:
            if len(cache) >= _SEEN:
                cache.clear()
            cache[line] = record
    return record


def _parse_line(path: str, number: int, line: bytes, last: bool):
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        if last:
            return None
        raise TraceError(f"corrupt trace {path}: line {number} is not valid JSON") from None
    if not isinstance(value, dict):
        raise TraceError(f"corrupt trace {path}: line {number} is not a JSON object")
    return value


def _record(path: str, number: int, line: bytes, complete: bool, version: int) -> dict | None:
    """A checked record from a line (None: a last line cut off mid-write)."""
    if len(line) > _FAST_AT:
        first = line[_FAST_AT]
        for fast in (_FAST.get(first), _FAST_V4.get(first) if version >= 4 else None):
            if fast is None:
                continue
            m = fast[0].fullmatch(line)
            if m is not None:
                record = fast[1](m.groups())
                if record["n"] <= MAX_INT and record.get("at", 0) <= MAX_INT and \
                        record.get("count", 0) <= MAX_INT and record.get("byte", 0) <= 255 \
                        and record.get("vector", 0) <= 255:
                    return record
                break
    record = _parse_line(path, number, line, last=not complete)
    if record is not None:
        _check_record(path, number, record, version)
    return record


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT


def _check_record(path: str, number: int, record: dict, version: int = VERSION) -> None:
    """Every field a reader uses has its type and range checked (a trace is untrusted)."""
    kind = record.get("type")
    fields = RECORD_FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        shown = kind if isinstance(kind, str) else type(kind).__name__
        raise TraceError(f"corrupt trace {path}: line {number} has unknown record type "
                         f"{str(shown)[:40]!r}")
    for name, types in fields.items():
        value = record.get(name)
        if not isinstance(value, types) or isinstance(value, bool):
            raise TraceError(f"corrupt trace {path}: line {number} ({kind}) lacks a valid "
                             f"'{name}'")
    for name, types in _OPTIONAL.get(kind, {}).items():
        if name in record and not isinstance(record[name], types):
            raise TraceError(f"corrupt trace {path}: line {number} ({kind}) has an invalid "
                             f"'{name}'")
    for name, value in record.items():
        if name in ("type", "info"):        # info: informational, free-form (docs)
            continue
        if isinstance(value, int) and not isinstance(value, bool) and name != "exit_code" \
                and not 0 <= value <= MAX_INT:
            raise TraceError(f"corrupt trace {path}: line {number} ({kind}) has a value out "
                             f"of range ('{name}')")
        if isinstance(value, str) and len(value) > (MAX_NAME if name in _SHORT else
                                                     MAX_TEXT if name == "text" else MAX_INT):
            raise TraceError(f"corrupt trace {path}: line {number} ({kind}) has a '{name}' "
                             "that is too long")
    if kind == "key" and (not 0 <= record["byte"] <= 255
                          or record.get("point", "in") not in EDGE_POINTS) or \
            kind == "timer" and record.get("point", "in") not in EDGE_POINTS or \
            kind == "end" and abs(record["exit_code"]) > MAX_INT:
        raise TraceError(f"corrupt trace {path}: line {number} ({kind}) has a value out of range")
    if kind in ("key", "timer") and "point" in record and version < 4:
        raise TraceError(f"corrupt trace {path}: line {number} ({kind}): a point needs trace "
                         f"format version 4, the header says {version}")
    if kind == "end" and isinstance(record.get("icount"), bool):
        raise TraceError(f"corrupt trace {path}: line {number} (end) has an invalid 'icount'")
    if version < 5 and (kind == "icount" or record.get("point") == "icount"
                        or kind == "end" and "icount" in record):
        raise TraceError(f"corrupt trace {path}: line {number} ({kind}): instruction points "
                         f"need trace format version 5, the header says {version}")
    if kind == "fetch":
        _check_fetch(path, number, record, version)
    elif kind == "screen":
        _check_screen(path, number, record, version)
    elif kind in ("time", "irq", "edge"):
        if version < 4:
            raise TraceError(f"corrupt trace {path}: line {number} ({kind}): {kind} records "
                             f"need trace format version 4, the header says {version}")
        if kind == "irq" and (record["point"] not in IRQ_POINTS
                              or not 0 <= record["vector"] <= 255) or \
                kind == "edge" and (not 0 <= record["line"] < 16
                                    or record.get("point", "in") not in EDGE_POINTS):
            raise TraceError(f"corrupt trace {path}: line {number} ({kind}) has a value out of "
                             "range")


def _check_fetch(path: str, number: int, record: dict, version: int) -> None:
    """A fetch record's text goes to the guest as is: only the web devices' names, and only
    what a live fetch can give (printable ASCII, at most MAX_TEXT characters)."""
    from .devices.web import DEVICE_NAMES, MAX_TEXT as FETCH_TEXT
    where = f"corrupt trace {path}: line {number} (fetch)"
    if version < 2:
        raise TraceError(f"{where}: fetch records need trace format version 2, the header "
                         f"says {version}")
    if record["dev"] not in DEVICE_NAMES:
        raise TraceError(f"{where} names no web device: {record['dev'][:40]!r}")
    text = record["text"]
    if len(text) > FETCH_TEXT or not all(" " <= c <= "~" for c in text):
        raise TraceError(f"{where}: the text is not one line of at most {FETCH_TEXT} printable "
                         "ASCII characters")


class _Order:
    """The checks that need the records before: stamps never decrease (records are in the order
    they happened), one checkpoint per observation, each script step done once, in order."""

    def __init__(self, path: str, steps: int):
        self.path, self.steps = path, steps
        self.n = 0
        self.cp = -1
        self.step = -1

    def check(self, number: int, record: dict) -> None:
        n, kind = record["n"], record["type"]
        if n < self.n:
            raise TraceError(f"corrupt trace {self.path}: line {number} ({kind}) is stamped "
                             f"{n}, before the record above it ({self.n}): records are in the "
                             "order they happened")
        self.n = n
        if kind == "cp":
            if n <= self.cp:
                raise TraceError(f"corrupt trace {self.path}: line {number}: a second "
                                 f"checkpoint at observation {n}")
            self.cp = n
        elif kind == "step":
            index = record["index"]
            if not self.step < index < self.steps:
                raise TraceError(f"corrupt trace {self.path}: line {number}: script step "
                                 f"{index} is not the next of the header's {self.steps} steps")
            self.step = index


# --- reading: the header ------------------------------------------------------------------------
def _check_header(path: str, header: dict) -> None:
    if header.get("type") != "header" or header.get("format") != FORMAT:
        raise TraceError(f"{path} is not a vmm trace (no '{FORMAT}' header on its first line)")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise TraceError(f"{path}: the header has no version number")
    if version not in READABLE_VERSIONS:
        *most, last = READABLE_VERSIONS
        readable = ", ".join(str(v) for v in most) + f" and {last}"
        raise TraceError(f"{path} is trace format version {version}; this vmm reads versions "
                         f"{readable} only" + (" (upgrade vmm)" if version > VERSION else ""))
    bad = f"corrupt trace {path}: the header's"
    machine = header.get("machine")
    if not isinstance(machine, dict) or header.get("clock") not in ("real", "virtual"):
        raise TraceError(f"{bad} machine or clock entry is missing")
    _check_machine(path, machine)
    guest = header.get("guest")
    if not isinstance(guest, dict) or not all(
            isinstance(guest.get(k), t) for k, t in (("name", str), ("size", int),
                                                     ("sha256", str), ("data", str))):
        raise TraceError(f"{bad} guest entry is incomplete")
    if len(guest["name"]) > 4096 or not isinstance(guest.get("path", ""), str):
        raise TraceError(f"{bad} guest entry is malformed")
    size, ram = guest["size"], _ram(machine)
    total = size + _modules_size(path, machine)
    if not 0 <= size or total > MAX_GUEST_BYTES or ram is not None and total > ram:
        raise TraceError(f"{path}: refused: the embedded guest (with its modules) is {total} "
                         f"bytes; a trace's guest is at most {MAX_GUEST_BYTES >> 20} MiB and no "
                         "more than its RAM")
    if len(guest["data"]) != (size + 2) // 3 * 4:          # checked before decoding
        raise TraceError(f"corrupt trace {path}: the embedded guest does not match its recorded "
                         "size and sha256")
    try:
        data = base64.b64decode(guest["data"], validate=True)
    except ValueError:
        raise TraceError(f"corrupt trace {path}: the embedded guest is not valid base64") from None
    if len(data) != size or hashlib.sha256(data).hexdigest() != guest["sha256"]:
        raise TraceError(f"corrupt trace {path}: the embedded guest does not match its recorded "
                         "size and sha256")
    script = header.get("script")
    if script is not None and (not isinstance(script, list) or len(script) > MAX_SCRIPT_STEPS
                               or not all(isinstance(s, dict) for s in script)):
        raise TraceError(f"{bad} script is not a list of at most {MAX_SCRIPT_STEPS} steps")


def _modules_size(path: str, machine: dict) -> int:
    """The multiboot modules' bytes (machine.boot.modules), checked before anything decodes
    them: at most MAX_MODULES, each with a size and base64 data of the matching length."""
    boot = machine.get("boot")
    modules = boot.get("modules") if isinstance(boot, dict) else None
    if modules is None:
        return 0
    if not isinstance(modules, list) or len(modules) > MAX_MODULES or not all(
            isinstance(m, dict) and _whole(m.get("size")) and isinstance(m.get("data"), str)
            and len(m["data"]) == (m["size"] + 2) // 3 * 4 for m in modules):
        raise TraceError(f"corrupt trace {path}: the header's multiboot modules are malformed "
                         f"(at most {MAX_MODULES}, each with its size and data)")
    return sum(m["size"] for m in modules)


def make_header_check(guest_bytes: bytes, machine: dict) -> None:
    """What a trace may embed (MAX_GUEST_BYTES): a recording that replay would refuse is not
    started."""
    from .errors import GuestImageError
    try:
        modules = _modules_size("", machine)
    except TraceError:
        modules = 0
    if len(guest_bytes) + modules > MAX_GUEST_BYTES:
        raise GuestImageError(f"the guest (with its modules) is {len(guest_bytes) + modules} "
                              f"bytes: a trace embeds at most {MAX_GUEST_BYTES >> 20} MiB, so "
                              "this run cannot be recorded")


def _ram(machine: dict) -> int | None:
    boot = machine.get("boot")
    mem = boot.get("mem") if isinstance(boot, dict) else None
    return mem if mem is not None else machine.get("mem")


SCREEN_ROWS, SCREEN_COLS = 25, 80


def _check_screen(path: str, number: int, record: dict, version: int) -> None:
    """A screen record: the rows that changed, each [row, text, attributes] (vmm.screenlog)."""
    where = f"corrupt trace {path}: line {number} (screen)"
    if version < 4:
        raise TraceError(f"{where}: screen records need trace format version 4, the header "
                         f"says {version}")
    rows = record["rows"]
    if not 0 < len(rows) <= SCREEN_ROWS:
        raise TraceError(f"{where}: expected 1 to {SCREEN_ROWS} rows")
    for entry in rows:
        if not (isinstance(entry, list) and len(entry) == 3
                and isinstance(entry[0], int) and not isinstance(entry[0], bool)
                and 0 <= entry[0] < SCREEN_ROWS and isinstance(entry[1], str)
                and len(entry[1]) <= SCREEN_COLS and isinstance(entry[2], str)
                and len(entry[2]) <= 6 * SCREEN_COLS):
            raise TraceError(f"{where}: a row is not [row 0-24, text of at most 80 characters, "
                             "attributes]")


def _check_machine(path: str, machine: dict) -> None:
    """The machine configuration's entries that are present: their types and vmm's limits
    (replay refuses missing ones where it needs them)."""
    from .boot import MAX_MEM, MIN_MEM
    bad = f"corrupt trace {path}: the header's machine"
    boot = machine.get("boot")
    if boot is not None and not isinstance(boot, dict):
        raise TraceError(f"{bad} boot entry is not an object")
    for where, value in (("mem", machine.get("mem")),
                         ("boot.mem", (boot or {}).get("mem"))):
        if value is None and where == "boot.mem":
            continue
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise TraceError(f"{bad} {where} is not a number of bytes")
        if not MIN_MEM <= value <= MAX_MEM:
            raise TraceError(f"{path}: refused: the trace asks for {value} bytes of RAM "
                             f"({where}); a guest has {MIN_MEM >> 10} KiB to {MAX_MEM >> 30} GiB")
    if boot is not None:
        from .boot import MODES
        entry = boot.get("entry")
        if boot.get("mode") not in (None, *MODES) \
                or not (entry in (None, "reset") or _whole(entry)) \
                or not all(boot.get(k) is None or _whole(boot[k]) for k in ("load", "stack")):
            raise TraceError(f"{bad} boot options are malformed")
    for name, limit, fields, top in (("cpuid", MAX_CPUID_ENTRIES, ("function", "index", "flags",
                                                                  "eax", "ebx", "ecx", "edx"), 32),
                                     ("load_map", MAX_LOAD_MAP, ("addr", "size"), 64),
                                     ("devices", MAX_DEVICES, ("port", "length"), 64)):
        table = machine.get(name)
        if table is None:
            continue
        if not isinstance(table, list) or not all(isinstance(e, dict) for e in table):
            raise TraceError(f"{bad} {name} entry is not a list of objects")
        if len(table) > limit:
            raise TraceError(f"{path}: refused: the trace's {name} table has {len(table)} "
                             f"entries; at most {limit} are allowed")
        for entry in table:
            for key in fields:
                value = entry.get(key)
                if value is not None and not (_whole(value) and value < 1 << top):
                    raise TraceError(f"{bad} {name} entry has an invalid '{key}'")
    for name in ("max_output", "checkpoint_every", "max_time_ns", "max_observations", "max_exits",
                 "max_instructions"):
        value = machine.get(name)
        if value is not None and not _whole(value):
            raise TraceError(f"{bad} '{name}' is not a whole number")
    icount = machine.get("icount_ns")
    if icount is not None and not (_whole(icount) and 1 <= icount <= MAX_ICOUNT_NS):
        raise TraceError(f"{bad} 'icount_ns' is not 1 to {MAX_ICOUNT_NS} ns per instruction")
    for name in ("entry", "feeds"):
        if machine.get(name) is not None and not isinstance(machine[name], dict):
            raise TraceError(f"{bad} '{name}' entry is not an object")


# --- reading: whole files -----------------------------------------------------------------------
def _open_lines(path: str) -> tuple[_Lines, dict]:
    """A trace's lines, positioned after its checked header."""
    lines = _Lines(path)
    try:
        first = lines.next_line(MAX_HEADER_LINE)
        if first is None:
            raise TraceError(f"{path} is empty: not a vmm trace")
        try:
            header = _parse_line(path, 1, first[0], last=not first[1])
        except TraceError:
            raise TraceError(f"{path} is not a vmm trace (its first line is not a JSON header)") \
                from None
        del first
        if header is None:
            raise TraceError(f"{path}: the header line is cut short: not a usable trace")
        _check_header(path, header)
    except BaseException:
        lines.close()
        raise
    return lines, header


def record_line_limit(header: dict) -> int:
    """The longest line a record may be: MAX_RECORD_LINE, and more for an end record whose
    message quotes the script (an expect's text), as JSON escapes can make it (6 bytes per
    character)."""
    script = header.get("script")
    if not isinstance(script, list):
        return MAX_RECORD_LINE
    quoted = sum(len(v) for step in script for k, v in step.items()
                 if k in ("text", "regex") and isinstance(v, str))
    return MAX_RECORD_LINE + 6 * quoted


class TraceFile:
    """A trace read as a stream (open_trace): the header and end record, whether it is
    truncated, how many records of each kind it holds and its last stamp, all from one checked
    pass over the file; then any number of further passes (`cursor()`, `iter_records()`), each
    holding one record at a time. The whole file is never in memory: only a small trace's
    records (at most KEEP_RECORDS, from at most KEEP_BYTES of lines: some tens of megabytes
    at worst) are kept from the checked pass, so that its later passes parse nothing again
    (a replay of a minute of a 100 Hz tick kernel: 18,000 records)."""

    def __init__(self, path: str):
        self.path = path
        lines, self.header = _open_lines(path)
        self._body = (lines.offset, lines.number)
        self.version = self.header["version"]
        script = self.header.get("script")
        self.end: dict | None = None
        self.truncated = False
        self.counts = dict.fromkeys(RECORD_FIELDS, 0)
        self.last_stamp = 0
        self.records_count = 0
        order = _Order(path, len(script) if isinstance(script, list) else 0)
        self.line_limit = record_line_limit(self.header)
        cache: dict = {}
        counts = self.counts
        self._kept: list | None = []     # the records so far, while the trace is small
        kept_bytes = 0
        try:
            for number, batch, complete in lines.batches(self.line_limit):
                if self._kept is not None:
                    kept_bytes += sum(map(len, batch))
                    # (a line is at most one record, and one of them may be the end record)
                    if kept_bytes > KEEP_BYTES or \
                            len(self._kept) + len(batch) > KEEP_RECORDS + 1:
                        self._kept = None
                if complete and self._few_lines(cache, order, number, batch):
                    continue
                # A run of identical lines (a flooding guest, a gzip bomb) is checked once:
                # only its first two records can differ in what the order checks say.
                for line, run in itertools.groupby(batch):
                    record = _cached_record(cache, path, number, line, complete, self.version)
                    if record is None:         # a last line cut off mid-write: truncated
                        self.truncated = True
                        break
                    repeat = len(list(run))
                    for extra in range(min(repeat, 2)):
                        if self.end is not None:
                            raise TraceError(f"{path}: line {number + extra}: a record after "
                                             "the end record")
                        order.check(number + extra, record)
                        if record["type"] == "end":
                            self.end = record
                    number += repeat
                    counts[record["type"]] += repeat
                    if record is not self.end:
                        self.records_count += repeat
                        self.last_stamp = record["n"]
                        if self._kept is not None:
                            self._kept.extend(itertools.repeat(record, repeat))
                if self.truncated:
                    break
            if self.end is None or lines.cut:
                self.truncated = True
        finally:
            lines.close()
        self.counts.pop("end")
        self._guest: bytes | None = None

    def _few_lines(self, cache: dict, order: "_Order", number: int, batch: list[bytes]) -> bool:
        """A batch made of a few distinct lines, all stamped alike and none of the kinds whose
        records must differ (checkpoints, steps, the end), is checked line by distinct line and
        counted in C: repetitive data costs little to check, whatever its pattern. False: the
        batch is not like that (checked line by line instead)."""
        distinct = set(batch)
        if len(distinct) > _SEEN or self.end is not None:
            return False
        try:
            records = {line: _cached_record(cache, self.path, number, line, True, self.version)
                       for line in distinct}
        except TraceError:
            return False                 # line by line, for the message to name the line
        first = records[batch[0]]
        if any(r["n"] != first["n"] or r["type"] in ("cp", "step", "end")
               for r in records.values()):
            return False
        order.check(number, first)
        for line, count in collections.Counter(batch).items():
            self.counts[records[line]["type"]] += count
        self.records_count += len(batch)
        if self._kept is not None:
            self._kept.extend(map(records.__getitem__, batch))
        self.last_stamp = first["n"]
        return True

    @property
    def guest_bytes(self) -> bytes:
        if self._guest is None:
            self._guest = base64.b64decode(self.header["guest"]["data"])
        return self._guest

    def cursor(self) -> "FileCursor | ListCursor":
        """A new pass over the records: over the kept ones (a small trace), else the file's
        lines again, parsed and checked once more as they come."""
        if self._kept is not None:
            return ListCursor(self._kept)
        return FileCursor(self)

    def iter_records(self):
        """The records (not the end record) in order, one at a time."""
        cursor = self.cursor()
        try:
            while (record := cursor.next()) is not None:
                yield record
        finally:
            cursor.close()


class FileCursor:
    """A pass over a TraceFile's records: `next()` (None after the last), and `tell()` /
    `seek(position)` to come back to a place (a debugger's snapshot does). Seeking back in a
    gzip trace decompresses it again from the start (without parsing)."""

    def __init__(self, trace: TraceFile):
        self.trace = trace
        self._lines = _Lines(trace.path)
        self._cache: dict = {}
        self.seek((*trace._body, 0))

    def next(self) -> dict | None:
        if self.index >= self.trace.records_count:
            return None
        if self._at >= len(self._batch):
            try:
                self._number, self._batch, self._complete = next(self._batches)
            except StopIteration:
                self._batch = []
            self._at = 0
            if not self._batch:
                raise TraceError(f"{self.trace.path} changed while it was read")
        line = self._batch[self._at]
        self._at += 1
        record = _cached_record(self._cache, self.trace.path, self._number, line,
                                self._complete, self.trace.version)
        if record is None or record["type"] == "end":
            raise TraceError(f"{self.trace.path} changed while it was read")
        self._offset += len(line) + 1
        self._number += 1
        self.index += 1
        return record

    def tell(self) -> tuple[int, int, int]:
        return (self._offset, self._number, self.index)

    def seek(self, position: tuple[int, int, int]) -> None:
        self._offset, self._number, self.index = position
        self._lines.seek(self._offset, self._number)
        self._batches = self._lines.batches(self.trace.line_limit)
        self._batch, self._at, self._complete = [], 0, True

    def close(self) -> None:
        self._lines.close()


class ListCursor:
    """The same for a Trace in memory."""

    def __init__(self, records: list[dict]):
        self.records = records
        self.index = 0

    def next(self) -> dict | None:
        if self.index >= len(self.records):
            return None
        self.index += 1
        return self.records[self.index - 1]

    def tell(self) -> int:
        return self.index

    def seek(self, position: int) -> None:
        self.index = position

    def close(self) -> None:
        pass


def open_trace(path: str) -> TraceFile:
    """Read and check a whole trace in one streaming pass (bounded memory and time); the
    records are read again, one at a time, by the TraceFile's cursors."""
    return TraceFile(path)


def read_trace(path: str) -> Trace:
    """A whole trace in memory (for small traces: tools and tests; replay streams)."""
    trace = open_trace(path)
    return Trace(header=trace.header, records=list(trace.iter_records()), end=trace.end,
                 truncated=trace.truncated, path=path)


# --- replaying: the records each consumer of a replay takes, in order ---------------------------
INPUT, OUTPUT, SCREEN, CHECKPOINT, IRQ = "input", "out", "screen", "cp", "irq"
GROUPS = {"key": INPUT, "timer": INPUT, "fetch": INPUT, "time": INPUT, "edge": INPUT,
          "icount": INPUT,
          "out": OUTPUT, "screen": SCREEN, "cp": CHECKPOINT, "irq": IRQ}
MAX_LOOKAHEAD = 4096     # records read ahead of a consumer before a replay is called diverged


class ReplayStream:
    """One pass over a trace's records for a replay's consumers: the input source takes the
    inputs, the verifier the outputs and checkpoints. A faithful replay takes the records in
    the order they were written, so each consumer's queue of records read ahead holds one or
    two; a replay that has left the recording shows as a queue growing past MAX_LOOKAHEAD,
    and is stopped as diverged. Stamps never decrease (the reader checks), so `peek(group,
    before=n)` stops reading at the first record stamped n or later."""

    def __init__(self, trace, groups=(INPUT, OUTPUT, SCREEN, CHECKPOINT, IRQ)):
        self.trace = trace
        self.cursor = trace.cursor()
        self.groups = frozenset(groups)
        self.queues = {g: collections.deque() for g in (INPUT, OUTPUT, SCREEN, CHECKPOINT, IRQ)}
        self.frontier = -1           # the stamp of the last record read
        self.taken = dict.fromkeys(self.queues, 0)

    def peek(self, group: str, before: int | None = None) -> dict | None:
        """The next record of `group`; None if there is none (stamped below `before`)."""
        queue = self.queues[group]
        if queue:
            return queue[0]
        if before is not None and self.frontier >= before:
            return None
        while True:
            record = self.cursor.next()
            if record is None:
                return None
            self.frontier = record["n"]
            g = GROUPS.get(record["type"])
            if g not in self.groups:
                continue
            q = self.queues[g]
            q.append(record)
            if g == group:
                return record
            if len(q) > MAX_LOOKAHEAD:
                self._overflow(g)
            if before is not None and record["n"] >= before:
                return None

    def pop(self, group: str) -> dict:
        """Take the next record of `group` (IndexError if there is none)."""
        queue = self.queues[group]
        if not queue:
            self.peek(group)
        record = queue.popleft()
        self.taken[group] += 1
        return record

    def _overflow(self, group: str) -> None:
        from .outcome import StopRun
        if group == CHECKPOINT:          # a checkpoint nobody compares is only a check less
            self.queues[group].popleft()
            return
        e = self.queues[group][0]
        what = {OUTPUT: "output line", SCREEN: "screen change",
                IRQ: "interrupt"}.get(group, "input")
        raise StopRun("diverged", f"the replay went more than {MAX_LOOKAHEAD} records past the "
                                  f"recording's {what} at observation {e['n']} without taking it")

    def save(self):
        return (self.cursor.tell(), self.frontier, dict(self.taken),
                {g: list(q) for g, q in self.queues.items()})

    def restore(self, state) -> None:
        position, self.frontier, taken, queues = state
        self.cursor.seek(position)
        self.taken.update(taken)
        for g, records in queues.items():
            self.queues[g].clear()           # the same deques: consumers keep references
            self.queues[g].extend(records)

    def close(self) -> None:
        self.cursor.close()


PAGE = 4096
_ZERO_PAGE = bytes(PAGE)


def memory_digest(memory, resident: bytes | None = None) -> str:
    """A digest of guest RAM: CRC-32 over (page number, contents) of every non-zero page.

    CRC-32 only has to notice that a replay differs (nobody is kept from forging a trace), and
    is three times faster than SHA-256 here. `resident` (one byte per page, from mincore) lets
    it skip pages the guest never touched — they are zero — without faulting them in; pages
    that are resident but zero (say, the rest of a transparent huge page) count as zero too,
    so the digest does not depend on how the host happened to back the memory."""
    crc = 0
    pages = len(memory) // PAGE
    if resident is None:
        indices = range(pages)
    else:                         # the resident ones, found by bytes.find, not one at a time
        marks = resident[:pages].translate(_RESIDENT_BIT)
        indices, index = [], marks.find(1)
        while index >= 0:
            indices.append(index)
            index = marks.find(1, index + 1)
    for index in indices:
        page = memory[index * PAGE:(index + 1) * PAGE]
        if page != _ZERO_PAGE:
            crc = zlib.crc32(page, zlib.crc32(index.to_bytes(4, "little"), crc))
    return f"crc32:{crc:08x}"


_RESIDENT_BIT = bytes(b & 1 for b in range(256))      # mincore's byte -> 1 if resident


def default_trace_path(guest: str) -> str:
    return os.path.splitext(os.path.basename(guest))[0] + ".trace"
