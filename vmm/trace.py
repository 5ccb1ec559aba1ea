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
import gzip
import hashlib
import json
import os
import time
import zlib
from dataclasses import dataclass, field

from .errors import TraceError

FORMAT = "vmm-trace"
VERSION = 4                  # 2: fetch records (web data) added; 3: register digests narrowed;
                             # 4: boards (machine.board) and screen records
READABLE_VERSIONS = (1, 2, 3, 4)  # version 1 traces are version 2 traces without fetch records
LEGACY_DIGEST_VERSIONS = (1, 2)  # their register digests cover all of RFLAGS (docs/trace-format.md)
GZIP_MAGIC = b"\x1f\x8b"

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
}
INPUT_TYPES = frozenset({"key", "timer", "fetch"})


@dataclass
class Trace:
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

    def screens(self) -> list[dict]:
        return [r for r in self.records if r["type"] == "screen"]


def encode(record: dict) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"


FLUSH_INTERVAL_NS = 20_000_000   # records reach the file at most this long after they happen


class TraceWriter:
    """Writes records as they happen. Each record reaches the file (a write syscall, and a gzip
    sync flush) within FLUSH_INTERVAL_NS when more records follow, at the next watchdog tick
    (vmm.machine.WATCHDOG_TICK) when none do, and at once when the run ends or vmm stops on a
    signal or an error; only SIGKILL or a power cut can lose the last few tens of ms."""

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


# --- reading ----------------------------------------------------------------------------------
def _read_bytes(path: str) -> tuple[bytes, bool]:
    """The decompressed bytes of a trace file, and whether a gzip stream was cut short."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise TraceError(f"trace file not found: {path}") from None
    except IsADirectoryError:
        raise TraceError(f"trace path is a directory: {path}") from None
    except OSError as e:
        raise TraceError(f"cannot read trace {path}: {e.strerror}") from None
    if not raw.startswith(GZIP_MAGIC):
        return raw, False
    out, cut = [], False
    while raw:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out.append(d.decompress(raw))
        except zlib.error:
            if not out:
                raise TraceError(f"{path} is not a readable gzip file") from None
            cut = True
            break
        if not d.eof:
            cut = True
            out.append(d.flush())
            break
        raw = d.unused_data
    return b"".join(out), cut


def read_trace(path: str) -> Trace:
    data, gzip_cut = _read_bytes(path)
    if not data:
        raise TraceError(f"{path} is empty: not a vmm trace")
    lines = data.split(b"\n")
    complete_last = lines[-1] == b""
    if complete_last:
        lines.pop()
    try:
        header = _parse_line(path, 1, lines[0], last=len(lines) == 1 and not complete_last)
    except TraceError:
        raise TraceError(f"{path} is not a vmm trace (its first line is not a JSON header)") \
            from None
    if header is None:
        raise TraceError(f"{path}: the header line is cut short: not a usable trace")
    _check_header(path, header)
    trace = Trace(header=header, path=path)
    for number, line in enumerate(lines[1:], start=2):
        is_last = number == len(lines)
        record = _parse_line(path, number, line, last=is_last and not complete_last)
        if record is None:             # a last line cut off mid-write: a truncated trace
            trace.truncated = True
            break
        _check_record(path, number, record, header["version"])
        if trace.end is not None:
            raise TraceError(f"{path}: line {number}: a record after the end record")
        if record["type"] == "end":
            trace.end = record
        else:
            trace.records.append(record)
    if trace.end is None or gzip_cut:
        trace.truncated = True
    return trace


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
    guest = header.get("guest")
    if not isinstance(guest, dict) or not all(
            isinstance(guest.get(k), t) for k, t in (("name", str), ("size", int),
                                                     ("sha256", str), ("data", str))):
        raise TraceError(f"corrupt trace {path}: the header's guest entry is incomplete")
    try:
        data = base64.b64decode(guest["data"], validate=True)
    except ValueError:
        raise TraceError(f"corrupt trace {path}: the embedded guest is not valid base64") from None
    if len(data) != guest["size"] or hashlib.sha256(data).hexdigest() != guest["sha256"]:
        raise TraceError(f"corrupt trace {path}: the embedded guest does not match its recorded "
                         "size and sha256")
    if not isinstance(header.get("machine"), dict) or header.get("clock") not in ("real", "virtual"):
        raise TraceError(f"corrupt trace {path}: the header's machine or clock entry is missing")


def _check_record(path: str, number: int, record: dict, version: int = VERSION) -> None:
    kind = record.get("type")
    fields = RECORD_FIELDS.get(kind)
    if fields is None:
        raise TraceError(f"corrupt trace {path}: line {number} has unknown record type {kind!r}")
    for name, types in fields.items():
        value = record.get(name)
        if not isinstance(value, types) or isinstance(value, bool):
            raise TraceError(f"corrupt trace {path}: line {number} ({kind}) lacks a valid "
                             f"'{name}'")
    if record["n"] < 0 or (kind == "key" and not 0 <= record["byte"] <= 255):
        raise TraceError(f"corrupt trace {path}: line {number} ({kind}) has a value out of range")
    if kind == "fetch":
        _check_fetch(path, number, record, version)
    elif kind == "screen":
        _check_screen(path, number, record, version)


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


def _check_fetch(path: str, number: int, record: dict, version: int) -> None:
    """A fetch record's text goes to the guest as is: only the web devices' names, and only
    what a live fetch can give (printable ASCII, at most MAX_TEXT characters)."""
    from .devices.web import DEVICE_NAMES, MAX_TEXT
    where = f"corrupt trace {path}: line {number} (fetch)"
    if version < 2:
        raise TraceError(f"{where}: fetch records need trace format version 2, the header "
                         f"says {version}")
    if record["dev"] not in DEVICE_NAMES:
        raise TraceError(f"{where} names no web device: {record['dev'][:40]!r}")
    text = record["text"]
    if len(text) > MAX_TEXT or not all(" " <= c <= "~" for c in text):
        raise TraceError(f"{where}: the text is not one line of at most {MAX_TEXT} printable "
                         "ASCII characters")


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
    for index in range(len(memory) // PAGE):
        if resident is not None and not resident[index] & 1:
            continue
        page = memory[index * PAGE:(index + 1) * PAGE]
        if page != _ZERO_PAGE:
            crc = zlib.crc32(page, zlib.crc32(index.to_bytes(4, "little"), crc))
    return f"crc32:{crc:08x}"


def default_trace_path(guest: str) -> str:
    return os.path.splitext(os.path.basename(guest))[0] + ".trace"
