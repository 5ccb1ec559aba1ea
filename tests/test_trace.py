"""Trace files (vmm.trace, docs/trace-format.md): writing, reading, and refusing bad input.

A trace is untrusted: every malformed file must give a one-line TraceError that names the file,
never another exception and never half-read records.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmm.errors import TraceError
from vmm.trace import VERSION, Trace, TraceWriter, encode, make_header, read_trace

GUEST = b"\xfa\xf4guest bytes\x00\xff"
MACHINE = {"kind": "raw", "mode": "real", "mem": 1 << 20, "devices": []}
SCRIPT = [{"op": "send", "data": "hi\n"}, {"op": "expect", "text": "hi", "timeout_ns": 10**9}]


def header(**changes) -> dict:
    h = make_header(guest_name="echo.bin", guest_bytes=GUEST, machine=MACHINE,
                    clock="virtual", script=SCRIPT, info={"host": "test"},
                    vmm_version="0.1.0")
    h.update(changes)
    return h


KEY = {"type": "key", "n": 1, "at": 0, "dev": "keyboard", "byte": 104}
TIMER = {"type": "timer", "n": 3, "at": 500_000_000, "count": 1}
OUT = {"type": "out", "n": 3, "dev": "console", "text": "hello"}
OUT_PARTIAL = {"type": "out", "n": 4, "dev": "console", "text": "$ ", "partial": True}
CP = {"type": "cp", "n": 4, "regs": "d4bf2e7196bb4f82"}
STEP = {"type": "step", "n": 4, "at": 500_000_000, "index": 1}
RECORDS = [KEY, TIMER, OUT, OUT_PARTIAL, CP, STEP]
END = {"type": "end", "n": 5, "at": 10**9, "at_read": True, "reason": "script-end",
       "exit_code": 0, "message": "done", "regs": "0" * 16, "mem": "1" * 16,
       "output": "2" * 16, "info": {"exits": 7}}

# The fields each record type must carry (docs/trace-format.md), and their kinds.
REQUIRED = {
    "key": {"n": int, "at": int, "dev": str, "byte": int},
    "timer": {"n": int, "at": int, "count": int},
    "out": {"n": int, "dev": str, "text": str},
    "cp": {"n": int, "regs": str},
    "step": {"n": int, "at": int, "index": int},
    "end": {"n": int, "reason": str, "exit_code": int},
}
SAMPLE = {"key": KEY, "timer": TIMER, "out": OUT, "cp": CP, "step": STEP, "end": END}


def write_trace(path, records=RECORDS, end=END, head=None) -> None:
    w = TraceWriter(str(path))
    try:
        w.write(head if head is not None else header())
        for r in records:
            w.write(r)
        if end is not None:
            w.write(end)
    finally:
        w.close()


def write_lines(path, *lines) -> str:
    """A plain trace file from dicts (encoded) and raw byte strings (written as they are)."""
    with open(path, "wb") as f:
        for line in lines:
            f.write(encode(line) if isinstance(line, dict) else line)
    return str(path)


def trace_error(path) -> str:
    """read_trace must refuse the file with a one-line message naming it; returns the message."""
    with pytest.raises(TraceError) as info:
        read_trace(str(path))
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


# --- round trips --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["t.trace", "t.trace.gz"])
def test_round_trip_of_header_records_and_end(tmp_path, name):
    path = tmp_path / name
    write_trace(path)
    t = read_trace(str(path))
    assert t.header == header()
    assert t.records == RECORDS
    assert t.end == END
    assert t.truncated is False
    assert t.path == str(path)
    assert t.guest_bytes == GUEST


def test_gz_name_writes_gzip(tmp_path):
    path = tmp_path / "t.trace.gz"
    write_trace(path)
    raw = path.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert gzip.decompress(raw).splitlines()[1] == encode(KEY).rstrip(b"\n")


def test_plain_name_writes_json_lines(tmp_path):
    path = tmp_path / "t.trace"
    write_trace(path)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert [json.loads(x) for x in lines[:-1]] == [header(), *RECORDS, END]


def test_gzip_detected_by_magic_without_gz_name(tmp_path):
    gz = tmp_path / "t.trace.gz"
    write_trace(gz)
    renamed = tmp_path / "renamed.trace"
    os.rename(gz, renamed)
    t = read_trace(str(renamed))
    assert t.records == RECORDS and t.end == END and not t.truncated


def test_header_without_script_has_no_script_key():
    h = make_header(guest_name="g", guest_bytes=b"x", machine={}, clock="real", script=None,
                    info={}, vmm_version="0")
    assert "script" not in h
    assert h["guest"]["size"] == 1


# --- flushing and truncation --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["t.trace", "t.trace.gz"])
def test_records_readable_while_writer_is_open(tmp_path, name):
    # The pause lets a writer that batches its flushes over a few milliseconds flush too.
    path = str(tmp_path / name)
    w = TraceWriter(path)
    try:
        w.write(header())
        w.write(KEY)
        time.sleep(0.05)
        w.write(OUT)
        t = read_trace(path)
        assert t.records == [KEY, OUT]
        assert t.end is None
        assert t.truncated is True
        time.sleep(0.05)
        w.write(TIMER)
        assert read_trace(path).records == [KEY, OUT, TIMER]
    finally:
        w.close()


def test_trace_without_end_record_is_truncated(tmp_path):
    path = tmp_path / "t.trace"
    write_trace(path, end=None)
    t = read_trace(str(path))
    assert t.records == RECORDS and t.end is None and t.truncated


def test_header_only_trace_is_truncated_with_no_records(tmp_path):
    path = write_lines(tmp_path / "t.trace", header())
    t = read_trace(path)
    assert t.records == [] and t.truncated


def test_last_line_cut_mid_write_is_truncated_not_error(tmp_path):
    whole = encode(header()) + encode(KEY) + encode(OUT)
    path = write_lines(tmp_path / "t.trace", whole + encode(TIMER)[:-7])
    t = read_trace(path)
    assert t.records == [KEY, OUT]
    assert t.truncated and t.end is None


def test_end_record_cut_mid_write_is_truncated(tmp_path):
    path = write_lines(tmp_path / "t.trace", header(), KEY, encode(END)[:20])
    t = read_trace(path)
    assert t.records == [KEY] and t.end is None and t.truncated


def test_header_line_cut_short_is_an_error(tmp_path):
    path = write_lines(tmp_path / "t.trace", encode(header())[:40])
    assert "cut short" in trace_error(path)


def _cut_results(tmp_path, data: bytes, name: str):
    """read_trace of every proper prefix of data: (cut, Trace or None for a TraceError)."""
    results = []
    path = tmp_path / name
    for cut in range(1, len(data)):
        path.write_bytes(data[:cut])
        try:
            results.append((cut, read_trace(str(path))))
        except TraceError as e:
            assert "\n" not in str(e) and str(path) in str(e)
            results.append((cut, None))
    return results


@pytest.mark.parametrize("name", ["cut.trace", "cut.trace.gz"])
def test_file_cut_at_every_offset_gives_error_or_record_prefix(tmp_path, name):
    full = tmp_path / ("full" + name)
    write_trace(full)
    data = full.read_bytes()
    if not name.endswith(".gz"):
        data = data[:-1]        # without its final newline the end record is still whole
    results = _cut_results(tmp_path, data, name)
    readable = [(cut, t) for cut, t in results if t is not None]
    # Errors only for cuts inside the header: once a prefix reads, every longer one does.
    first_ok = readable[0][0]
    assert all(t is not None for cut, t in results if cut >= first_ok)
    previous = 0
    for cut, t in readable:
        assert t.truncated, cut
        assert t.header == header(), cut
        assert t.records == RECORDS[:len(t.records)], cut
        assert len(t.records) >= previous, cut
        previous = len(t.records)
    # The cuts see every stage: the header alone, some records, all records.
    counts = {len(t.records) for _, t in readable}
    assert {0, len(RECORDS)} <= counts and len(counts) > 2


def test_plain_trace_without_final_newline_is_complete(tmp_path):
    path = tmp_path / "t.trace"
    write_trace(path)
    path.write_bytes(path.read_bytes()[:-1])
    t = read_trace(str(path))
    assert t.records == RECORDS and t.end == END and not t.truncated


def test_gzip_cut_in_trailer_keeps_all_records_but_is_truncated(tmp_path):
    path = tmp_path / "t.trace.gz"
    write_trace(path)
    path.write_bytes(path.read_bytes()[:-4])      # lose the ISIZE of the gzip trailer
    t = read_trace(str(path))
    assert t.records == RECORDS and t.end == END and t.truncated


def test_gzip_cut_inside_gzip_header_is_an_error(tmp_path):
    path = tmp_path / "t.trace.gz"
    write_trace(path)
    path.write_bytes(path.read_bytes()[:6])
    trace_error(path)


def test_gzip_garbage_is_an_error(tmp_path):
    path = tmp_path / "t.trace"
    path.write_bytes(b"\x1f\x8b" + b"\xff" * 40)
    assert "gzip" in trace_error(path)


# --- malformed lines ----------------------------------------------------------------------------
def test_bad_json_in_the_middle_names_the_line(tmp_path):
    path = write_lines(tmp_path / "t.trace", header(), KEY, b'{"type": "key", oops\n', OUT, END)
    message = trace_error(path)
    assert "line 3" in message and "JSON" in message


def test_blank_line_in_the_middle_is_an_error(tmp_path):
    path = write_lines(tmp_path / "t.trace", header(), b"\n", KEY, END)
    assert "line 2" in trace_error(path)


def test_line_not_a_json_object(tmp_path):
    path = write_lines(tmp_path / "t.trace", header(), b"[1, 2]\n", END)
    message = trace_error(path)
    assert "line 2" in message and "not a JSON object" in message


def test_header_line_not_a_json_object(tmp_path):
    path = write_lines(tmp_path / "t.trace", b'"vmm-trace"\n', END)
    assert "is not a vmm trace (its first line is not a JSON header)" in trace_error(path)


def test_deeply_nested_line_is_a_trace_error(tmp_path):
    path = write_lines(tmp_path / "t.trace", header(), b"[" * 100_000 + b"\n", END)
    trace_error(path)


# --- the header -------------------------------------------------------------------------------
def test_first_line_not_a_header(tmp_path):
    path = write_lines(tmp_path / "t.trace", KEY, END)
    assert "not a vmm trace" in trace_error(path)


def test_wrong_format_name(tmp_path):
    path = write_lines(tmp_path / "t.trace", header(format="other-trace"), END)
    assert "not a vmm trace" in trace_error(path)


def test_newer_version_says_upgrade_vmm(tmp_path):
    path = write_lines(tmp_path / "t.trace", header(version=VERSION + 1), END)
    message = trace_error(path)
    assert f"version {VERSION + 1}" in message and "upgrade vmm" in message


@pytest.mark.parametrize("version", [0, -1])
def test_older_version_is_refused_without_upgrade_hint(tmp_path, version):
    path = write_lines(tmp_path / "t.trace", header(version=version), END)
    message = trace_error(path)
    assert f"version {version}" in message and "upgrade" not in message


@pytest.mark.parametrize("version", [None, "1", 1.0])
def test_missing_or_non_integer_version(tmp_path, version):
    h = header(version=version)
    if version is None:
        del h["version"]
    path = write_lines(tmp_path / "t.trace", h, END)
    assert "version" in trace_error(path)


def test_boolean_version_is_refused(tmp_path):
    path = write_lines(tmp_path / "t.trace", header(version=True), END)
    trace_error(path)


@pytest.mark.parametrize("key", ["name", "size", "sha256", "data"])
def test_guest_entry_missing_a_field(tmp_path, key):
    h = header()
    del h["guest"][key]
    path = write_lines(tmp_path / "t.trace", h, END)
    assert "guest entry" in trace_error(path)


@pytest.mark.parametrize("guest", [None, "echo.bin", ["echo.bin"]])
def test_guest_entry_not_an_object(tmp_path, guest):
    path = write_lines(tmp_path / "t.trace", header(guest=guest), END)
    assert "guest entry" in trace_error(path)


@pytest.mark.parametrize("data", ["!!!not base64!!!", "QUJD=", "é"])
def test_guest_bad_base64(tmp_path, data):
    h = header()
    h["guest"]["data"] = data
    path = write_lines(tmp_path / "t.trace", h, END)
    assert "base64" in trace_error(path)


@pytest.mark.parametrize("change", [{"size": len(GUEST) + 1}, {"sha256": "0" * 64}])
def test_guest_size_or_sha256_mismatch(tmp_path, change):
    h = header()
    h["guest"].update(change)
    path = write_lines(tmp_path / "t.trace", h, END)
    assert "size and sha256" in trace_error(path)


@pytest.mark.parametrize("change", [{"machine": None}, {"machine": []}, {"clock": None},
                                    {"clock": "fast"}])
def test_machine_or_clock_missing_or_wrong(tmp_path, change):
    h = header(**change)
    for k, v in change.items():
        if v is None:
            del h[k]
    path = write_lines(tmp_path / "t.trace", h, END)
    assert "machine or clock" in trace_error(path)


@pytest.mark.parametrize("clock", ["real", "virtual"])
def test_both_clocks_accepted(tmp_path, clock):
    path = write_lines(tmp_path / "t.trace", header(clock=clock), END)
    assert read_trace(path).header["clock"] == clock


# --- records ------------------------------------------------------------------------------------
FIELD_CASES = [(kind, name) for kind, fields in REQUIRED.items() for name in fields]


def _bad_record_file(tmp_path, record) -> str:
    lines = [header(), KEY, record] + ([END] if record.get("type") != "end" else [])
    return write_lines(tmp_path / "t.trace", *lines)


@pytest.mark.parametrize("kind, name", FIELD_CASES)
def test_record_missing_a_required_field(tmp_path, kind, name):
    record = dict(SAMPLE[kind])
    del record[name]
    message = trace_error(_bad_record_file(tmp_path, record))
    assert "line 3" in message and repr(name) in message


@pytest.mark.parametrize("kind, name", FIELD_CASES)
def test_record_field_of_the_wrong_type(tmp_path, kind, name):
    record = dict(SAMPLE[kind])
    record[name] = "7" if REQUIRED[kind][name] is int else 7
    message = trace_error(_bad_record_file(tmp_path, record))
    assert "line 3" in message and repr(name) in message


@pytest.mark.parametrize("kind, name",
                         [(k, n) for k, n in FIELD_CASES if REQUIRED[k][n] is int])
def test_record_bool_where_an_int_is_needed(tmp_path, kind, name):
    record = dict(SAMPLE[kind])
    record[name] = True
    message = trace_error(_bad_record_file(tmp_path, record))
    assert "line 3" in message and repr(name) in message


@pytest.mark.parametrize("kind, name",
                         [(k, n) for k, n in FIELD_CASES if REQUIRED[k][n] is int])
def test_record_float_where_an_int_is_needed(tmp_path, kind, name):
    record = dict(SAMPLE[kind])
    record[name] = 1.0
    assert "line 3" in trace_error(_bad_record_file(tmp_path, record))


@pytest.mark.parametrize("kind", sorted(REQUIRED))
def test_record_negative_n(tmp_path, kind):
    record = dict(SAMPLE[kind], n=-1)
    message = trace_error(_bad_record_file(tmp_path, record))
    assert "line 3" in message and "out of range" in message


@pytest.mark.parametrize("byte", [-1, 256, 1000])
def test_key_byte_out_of_range(tmp_path, byte):
    message = trace_error(_bad_record_file(tmp_path, dict(KEY, byte=byte)))
    assert "line 3" in message and "out of range" in message


@pytest.mark.parametrize("byte", [0, 255])
def test_key_byte_range_ends_accepted(tmp_path, byte):
    path = write_lines(tmp_path / "t.trace", header(), dict(KEY, byte=byte), END)
    assert read_trace(path).records[0]["byte"] == byte


@pytest.mark.parametrize("kind", ["mouse", None, 5])
def test_unknown_record_type(tmp_path, kind):
    record = dict(KEY, type=kind)
    if kind is None:
        del record["type"]
    message = trace_error(_bad_record_file(tmp_path, record))
    assert "line 3" in message and "unknown record type" in message


def test_a_second_header_is_an_unknown_record(tmp_path):
    path = write_lines(tmp_path / "t.trace", header(), header(), END)
    assert "line 2" in trace_error(path)


def test_record_after_end_record(tmp_path):
    path = write_lines(tmp_path / "t.trace", header(), KEY, END, OUT)
    message = trace_error(path)
    assert "line 4" in message and "after the end record" in message


def test_record_after_end_record_even_if_last_line_is_cut(tmp_path):
    path = write_lines(tmp_path / "t.trace", header(), END, OUT, encode(OUT)[:10])
    assert "after the end record" in trace_error(path)


# --- files --------------------------------------------------------------------------------------
def test_empty_file(tmp_path):
    path = tmp_path / "t.trace"
    path.write_bytes(b"")
    assert "empty" in trace_error(path)


def test_empty_gzip_file(tmp_path):
    path = tmp_path / "t.trace.gz"
    path.write_bytes(gzip.compress(b""))
    assert "empty" in trace_error(path)


def test_missing_file(tmp_path):
    assert "not found" in trace_error(tmp_path / "nope.trace")


def test_directory(tmp_path):
    assert "directory" in trace_error(tmp_path)


def test_writer_to_missing_directory_is_a_trace_error(tmp_path):
    path = tmp_path / "no" / "such" / "t.trace"
    with pytest.raises(TraceError) as info:
        TraceWriter(str(path))
    assert str(path) in str(info.value)


# --- arbitrary damage -------------------------------------------------------------------------
def _valid_trace_bytes(gz: bool) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.trace.gz" if gz else "t.trace")
        write_trace(path)
        with open(path, "rb") as f:
            return f.read()


VALID_PLAIN = _valid_trace_bytes(gz=False)
VALID_GZ = _valid_trace_bytes(gz=True)


@pytest.mark.parametrize("valid", [VALID_PLAIN, VALID_GZ], ids=["plain", "gz"])
@settings(max_examples=200, deadline=None)
@given(junk=st.binary(min_size=1, max_size=64), where=st.floats(0, 1),
       replace=st.booleans())
def test_damaged_trace_parses_or_raises_trace_error(valid, junk, where, replace):
    at = int(where * len(valid))
    damaged = valid[:at] + junk + valid[at + (len(junk) if replace else 0):]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.trace")
        with open(path, "wb") as f:
            f.write(damaged)
        try:
            t = read_trace(path)
        except TraceError as e:
            assert "\n" not in str(e) and path in str(e)
            return
    assert isinstance(t, Trace)
    for r in t.records:
        assert r["type"] in REQUIRED and r["type"] != "end"


@settings(max_examples=200, deadline=None)
@given(junk=st.binary(min_size=1, max_size=64))
def test_junk_appended_to_trace_parses_or_raises_trace_error(junk):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.trace")
        with open(path, "wb") as f:
            f.write(VALID_PLAIN + junk)
        try:
            t = read_trace(path)
        except TraceError as e:
            assert "\n" not in str(e)
            return
    # Whatever was appended, what was read is the original trace.
    assert t.records == RECORDS and t.end == END


# --- Trace helpers and encode -------------------------------------------------------------------
def test_inputs_are_keys_and_timers_in_order():
    t = Trace(header=header(), records=RECORDS, end=END)
    assert t.inputs() == [KEY, TIMER]


def test_outputs_are_out_records_in_order():
    t = Trace(header=header(), records=RECORDS, end=END)
    assert t.outputs() == [OUT, OUT_PARTIAL]


def test_checkpoints_are_cp_records():
    t = Trace(header=header(), records=RECORDS + [dict(CP, n=9)], end=END)
    assert t.checkpoints() == [CP, dict(CP, n=9)]


def test_filters_on_empty_trace():
    t = Trace(header=header())
    assert t.inputs() == t.outputs() == t.checkpoints() == []


def test_encode_is_ascii_with_one_trailing_newline():
    data = encode({"type": "out", "n": 1, "dev": "console", "text": "caf\u00e9\n\u20ac\x00"})
    data.decode("ascii")
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert json.loads(data)["text"] == "caf\u00e9\n\u20ac\x00"


def test_encode_is_deterministic():
    record = {"type": "key", "n": 1, "at": 0, "dev": "keyboard", "byte": 104}
    assert encode(record) == encode(dict(record))
    assert encode(record) == b'{"type":"key","n":1,"at":0,"dev":"keyboard","byte":104}\n'


def test_gzip_writer_is_deterministic(tmp_path):
    a, b = tmp_path / "a.trace.gz", tmp_path / "b.trace.gz"
    write_trace(a)
    write_trace(b)
    assert a.read_bytes() == b.read_bytes()
