"""Untrusted traces in bounded memory and time (docs/trace-format.md, "Bounds"): gzip bombs,
huge embedded guests, long lines, out-of-range machines and tables, type confusion, and a
trace of a million events, each refused (exit 14, one line) or replayed, measured in a child
process: its peak RSS and CPU time."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import zlib

import pytest

from conftest import ROOT, kvm_usable, test_backends, vmm_command
from vmm.errors import TraceError
from vmm.inputs import ReplayInput
from vmm.outcome import StopRun
from vmm.summary import format_summary, summarize, write_summary
from vmm.trace import (INPUT, MAX_CPUID_ENTRIES, MAX_GUEST_BYTES, MAX_LOOKAHEAD, MAX_RECORD_LINE,
                       OUTPUT, ReplayStream, Trace, encode, open_trace, read_trace)
import vmm.trace as trace_module

GOLDEN = ROOT / "traces" / "test_goldens" / "test_echo_two_lines.trace"
MiB, GiB = 1 << 20, 1 << 30
RSS_LIMIT_KB = 256 * 1024          # the target for every case here
CPU_LIMIT_S = 5.0                  # CPU seconds (the machine may be shared: not wall time)

_MEASURE = ("import resource, subprocess, sys, json\n"
            "p = subprocess.run(sys.argv[1:], capture_output=True)\n"
            "r = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
            "print(json.dumps([p.returncode, p.stdout.decode('ascii', 'replace')[-2000:],\n"
            "                  p.stderr.decode('ascii', 'replace'), r.ru_maxrss,\n"
            "                  r.ru_utime + r.ru_stime]))\n")


def measured(*args, timeout: float = 300):
    """Run `vmm ARGS` in a child; (status, stdout tail, stderr, peak RSS in KiB, CPU s, wall s)."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *vmm_command(*map(str, args))],
                          capture_output=True, timeout=timeout, cwd=ROOT, check=True)
    status, out, err, rss, cpu = json.loads(proc.stdout)
    return status, out, err, rss, cpu, time.monotonic() - start


def assert_refused(result, *words):
    status, _, err, rss, cpu, wall = result
    assert status == 14, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    for word in words:
        assert word in err, err
    assert rss < RSS_LIMIT_KB, f"{rss} KiB"
    assert cpu < CPU_LIMIT_S, f"{cpu:.1f} s of CPU"
    assert wall < 60


def golden_lines() -> list[dict]:
    return [json.loads(line) for line in GOLDEN.read_bytes().splitlines()]


def golden_header(**machine) -> dict:
    header = golden_lines()[0]
    header["machine"].update(machine)
    return header


def write(path, *lines) -> str:
    with open(path, "wb") as f:
        for line in lines:
            f.write(encode(line) if isinstance(line, dict) else line)
    return str(path)


def gzip_bomb(path, unit: bytes, total: int) -> str:
    """A real header, then `total` bytes of `unit` repeated: gzip members of 16 MiB each,
    compressed once and written again and again (so that making it takes no time)."""
    block = unit * ((16 * MiB) // len(unit))
    c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    member = c.compress(block) + c.flush()
    with open(path, "wb") as f:
        f.write(gzip.compress(encode(golden_header())))
        for _ in range(total // len(block)):
            f.write(member)
    return str(path)


FLOOD_LINE = encode({"type": "out", "n": 0, "dev": "console", "text": "flood " * 8})
CYCLE = b"".join(encode({"type": "timer", "n": 5, "at": i, "count": 1}) for i in range(7))


# --- gzip bombs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["inspect", "replay"])
def test_gzip_bomb_of_1_gib_is_refused_quickly_in_small_memory(tmp_path, command):
    path = gzip_bomb(tmp_path / "bomb.trace.gz", FLOOD_LINE, 1 * GiB)
    assert os.path.getsize(path) < 8 * MiB             # the issue's: 3.6 MB
    assert_refused(measured(command, path), "refused", "256 MiB")


def test_gzip_bomb_of_4_5_gib_is_refused_quickly_in_small_memory(tmp_path):
    path = gzip_bomb(tmp_path / "bomb.trace.gz", FLOOD_LINE, int(4.5 * GiB))
    assert_refused(measured("replay", path), "refused")


def test_gzip_bomb_of_a_cycle_of_lines_is_refused_quickly(tmp_path):
    # Not one line repeated but a few, in turn: still checked once each.
    path = gzip_bomb(tmp_path / "bomb.trace.gz", CYCLE, 1 * GiB)
    assert_refused(measured("inspect", path), "refused")


def test_bomb_of_one_endless_line_is_cut_at_the_line_limit(tmp_path):
    path = gzip_bomb(tmp_path / "bomb.trace.gz", b"\0" * 4096, 1 * GiB)
    assert_refused(measured("replay", path), "line 2 is longer than")


# --- the embedded guest ---------------------------------------------------------------------------
def test_512_mib_zero_guest_is_refused_in_small_memory(tmp_path):
    """A valid trace (the right size and sha256) whose guest is 512 MiB of zeros: 700 MB of
    base64 that compresses to well under a megabyte. The guest limit (16 MiB, and never more
    than the RAM) cuts the header line off long before it is read whole."""
    size = 512 * MiB
    digest = hashlib.sha256()
    zeros = bytes(MiB)
    for _ in range(size // MiB):
        digest.update(zeros)
    header = golden_header(mem=GiB)
    header["machine"]["boot"]["mem"] = GiB
    header["guest"].update(size=size, sha256=digest.hexdigest(), data="@")
    head, tail = encode(header).split(b'"@"')
    chunk = b"A" * (4 * MiB)                   # base64 of 3 MiB of zeros
    path = tmp_path / "big-guest.trace.gz"
    with gzip.open(path, "wb", compresslevel=6) as f:
        f.write(head + b'"')
        for _ in range(size * 4 // 3 // len(chunk)):
            f.write(chunk)
        f.write(b'"' + tail)
        for record in golden_lines()[1:]:
            f.write(encode(record))
    assert os.path.getsize(path) < 2 * MiB
    assert_refused(measured("replay", path), "the header line is longer than",
                   f"{MAX_GUEST_BYTES >> 20} MiB")
    assert_refused(measured("inspect", path), "the header line is longer than")


def test_guest_larger_than_its_ram_is_refused(tmp_path):
    guest = b"\xf4" * (MiB + 1)
    header = golden_header(mem=MiB)
    header["machine"]["boot"]["mem"] = MiB
    header["guest"].update(size=len(guest), sha256=hashlib.sha256(guest).hexdigest(),
                           data=base64.b64encode(guest).decode("ascii"))
    path = write(tmp_path / "t.trace", header, *golden_lines()[1:])
    with pytest.raises(TraceError, match="no more than its RAM"):
        open_trace(path)


def test_guest_data_of_the_wrong_length_is_refused_before_decoding(tmp_path):
    header = golden_header()
    header["guest"]["data"] += "AAAA"
    path = write(tmp_path / "t.trace", header, *golden_lines()[1:])
    with pytest.raises(TraceError, match="does not match its recorded size"):
        open_trace(path)


# --- lines ----------------------------------------------------------------------------------------
def test_a_record_line_longer_than_the_limit_is_refused(tmp_path):
    long = encode({"type": "out", "n": 1, "dev": "console", "text": "x" * MAX_RECORD_LINE})
    path = write(tmp_path / "t.trace", golden_header(), long, golden_lines()[-1])
    assert_refused(measured("inspect", path), "line 2 is longer than")
    assert_refused(measured("replay", path), "line 2 is longer than")


def test_an_output_line_longer_than_a_device_emits_is_refused(tmp_path):
    out = {"type": "out", "n": 1, "dev": "console", "text": "x" * 4097}
    path = write(tmp_path / "t.trace", golden_header(), out, golden_lines()[-1])
    with pytest.raises(TraceError, match="too long"):
        open_trace(path)


def test_a_header_line_past_its_limit_is_refused_without_reading_on(tmp_path):
    path = tmp_path / "t.trace"
    path.write_bytes(b'{"type":"header","x":"' + b"y" * (30 * MiB))
    assert_refused(measured("inspect", path), "the header line is longer than")


# --- the machine ----------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["mem", "boot"])
def test_64_gib_of_ram_is_a_bad_trace_not_a_bad_flag(tmp_path, where):
    header = golden_header()
    if where == "mem":
        header["machine"]["mem"] = 64 * GiB
    else:
        header["machine"]["boot"]["mem"] = 64 * GiB
    path = write(tmp_path / "t.trace", header, *golden_lines()[1:])
    assert_refused(measured("replay", path), "refused", "RAM")
    assert_refused(measured("inspect", path), "refused", "RAM")


@pytest.mark.parametrize("backend", ["kvm", "emu"])
def test_more_cpuid_entries_than_kvm_takes_is_refused_on_every_backend(tmp_path, backend):
    if backend not in test_backends():
        pytest.skip(f"the {backend} backend is not usable here")
    header = golden_header()
    entry = dict(header["machine"]["cpuid"][0])
    header["machine"]["cpuid"] = [dict(entry, index=i) for i in range(MAX_CPUID_ENTRIES + 1)]
    path = write(tmp_path / "t.trace", header, *golden_lines()[1:])
    assert_refused(measured("replay", "--backend", backend, path), "cpuid", "256")


@pytest.mark.skipif(not kvm_usable(), reason="needs /dev/kvm")
def test_kvm_backend_refuses_a_cpuid_table_it_cannot_take():
    from vmm.cpu.kvm_backend import KVM_MAX_CPUID_ENTRIES, KvmBackend
    backend = KvmBackend(1 << 20)
    try:
        entries = backend.supported_cpuid()[:1] * (KVM_MAX_CPUID_ENTRIES + 1)
        with pytest.raises(TraceError, match="at most 256"):
            backend.set_cpuid(entries)
    finally:
        backend.close()


@pytest.mark.parametrize("table,value", [("load_map", [{"addr": 0, "size": 1}] * 257),
                                         ("devices", [{"port": 1, "length": 1}] * 257),
                                         ("cpuid", [{"function": 1 << 32}]),
                                         ("load_map", "not a list"),
                                         ("checkpoint_every", -1),
                                         ("max_output", "10M")])
def test_machine_tables_are_bounded_and_typed(tmp_path, table, value):
    path = write(tmp_path / "t.trace", golden_header(**{table: value}), *golden_lines()[1:])
    with pytest.raises(TraceError):
        open_trace(path)


def test_script_steps_are_bounded(tmp_path):
    header = golden_header()
    header["script"] = [{"op": "idle"}] * 100_001
    path = write(tmp_path / "t.trace", header, *golden_lines()[1:])
    with pytest.raises(TraceError, match="script"):
        open_trace(path)


# --- records: type confusion and order --------------------------------------------------------------
@pytest.mark.parametrize("kind", [[1], {"a": 1}, ["key"], 7, None, True])
def test_a_record_type_of_the_wrong_type_is_refused_not_a_traceback(tmp_path, kind):
    bad = {"type": kind, "n": 1, "at": 0, "dev": "keyboard", "byte": 1}
    path = write(tmp_path / "t.trace", golden_header(), bad, golden_lines()[-1])
    with pytest.raises(TraceError, match="unknown record type"):
        read_trace(path)
    assert_refused(measured("replay", path), "unknown record type")


@pytest.mark.parametrize("change", [{"n": [1]}, {"n": {"x": 1}}, {"n": 2 ** 64}, {"n": -1},
                                    {"n": 1.5}, {"dev": ["keyboard"]}, {"byte": 256},
                                    {"at": "0"}, {"dev": "k" * 65}])
def test_every_field_type_and_range_is_checked(tmp_path, change):
    key = dict({"type": "key", "n": 1, "at": 0, "dev": "keyboard", "byte": 1}, **change)
    path = write(tmp_path / "t.trace", golden_header(), key, golden_lines()[-1])
    with pytest.raises(TraceError):
        open_trace(path)


@pytest.mark.parametrize("change", [{"partial": "yes"}, {"text": 5}])
def test_optional_fields_are_typed_too(tmp_path, change):
    out = dict({"type": "out", "n": 1, "dev": "console", "text": "x"}, **change)
    path = write(tmp_path / "t.trace", golden_header(), out, golden_lines()[-1])
    with pytest.raises(TraceError):
        open_trace(path)


def test_records_stamped_out_of_order_are_refused(tmp_path):
    lines = [golden_header(), {"type": "timer", "n": 5, "at": 0, "count": 1},
             {"type": "timer", "n": 4, "at": 0, "count": 1}, golden_lines()[-1]]
    with pytest.raises(TraceError, match="order they happened"):
        open_trace(write(tmp_path / "t.trace", *lines))


def test_two_checkpoints_at_one_observation_are_refused(tmp_path):
    cp = {"type": "cp", "n": 3, "regs": "0123456789abcdef"}
    with pytest.raises(TraceError, match="second checkpoint"):
        open_trace(write(tmp_path / "t.trace", golden_header(), cp, cp, golden_lines()[-1]))


def test_step_records_are_bounded_by_the_script(tmp_path):
    header = golden_header()
    steps = len(header.get("script") or [])
    step = {"type": "step", "n": 0, "at": 0, "index": steps}
    with pytest.raises(TraceError, match="script step"):
        open_trace(write(tmp_path / "t.trace", header, step, golden_lines()[-1]))


# --- a million events -------------------------------------------------------------------------------
NEWLINES_GUEST = (bytes.fromhex("BE0E10" "B90010" "BA4200" "FC" "F36E" "EBF2")   # real mode, 0x1000:
                  + b"\n" * 4096)  # mov si,buf; mov cx,4096; mov dx,0x42; cld; rep outsb; jmp


@pytest.mark.kvm
def test_replay_of_a_million_events_runs_in_bounded_memory(tmp_path):
    """A guest printing empty lines with `rep outsb` until --max-output: a million output
    records, replayed (each one compared) in a few tens of MB, not ~700 B per event."""
    guest = tmp_path / "newlines.bin"
    guest.write_bytes(NEWLINES_GUEST)
    trace = tmp_path / "newlines.trace.gz"
    subprocess.run(vmm_command("record", "--max-output", "1000000", "-o", str(trace),
                               str(guest)), capture_output=True, cwd=ROOT, timeout=300)
    assert open_trace(str(trace)).counts["out"] == 1_000_001
    status, _, err, rss, _, _ = measured("replay", "--quiet", trace)
    assert status == 0 and "replay identical: 1000001 output lines" in err, err
    assert rss < 128 * 1024, f"{rss} KiB"


def _million_event_trace(path) -> str:
    """Keys, outputs and timer firings, every one different (nothing to share)."""
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(encode(golden_header()))
        for i in range(1_000_000):
            kind = i % 3
            f.write(b'{"type":"key","n":%d,"at":%d,"dev":"keyboard","byte":%d}\n'
                    % (i, i * 1000, i % 256) if kind == 0 else
                    b'{"type":"out","n":%d,"dev":"console","text":"line %d"}\n' % (i, i)
                    if kind == 1 else b'{"type":"timer","n":%d,"at":%d,"count":1}\n'
                    % (i, i * 1000))
        f.write(encode(dict(golden_lines()[-1], n=1_000_000)))
    return str(path)


def test_inspect_of_a_million_events_runs_in_bounded_memory(tmp_path):
    path = _million_event_trace(tmp_path / "million.trace.gz")
    status, out, err, rss, _, _ = measured("inspect", "--limit", "0", path)
    assert status == 0, err
    assert out.endswith("  999999      1.000s  key '?' -> keyboard\n")   # all of them
    assert rss < 64 * 1024, f"{rss} KiB"
    status, _, err, rss, _, _ = measured("replay", path)       # diverges at once: the echo
    assert status == 40 and rss < 64 * 1024, (err, rss)        # guest reads no key at 0


# --- the streaming reader's API ----------------------------------------------------------------------
@pytest.mark.parametrize("keep", [True, False], ids=["kept", "streamed"])
@pytest.mark.parametrize("name", ["t.trace", "t.trace.gz"])
def test_cursor_tell_and_seek_come_back_to_the_same_records(tmp_path, name, keep, monkeypatch):
    if not keep:
        monkeypatch.setattr(trace_module, "KEEP_RECORDS", 0)
    lines = golden_lines()
    path = tmp_path / name
    with (gzip.open if name.endswith(".gz") else open)(path, "wb") as f:
        for line in lines:
            f.write(encode(line))
    trace = open_trace(str(path))
    assert trace.counts["out"] == sum(r["type"] == "out" for r in lines)
    cursor = trace.cursor()
    first = [cursor.next() for _ in range(5)]
    place = cursor.tell()
    rest = []
    while (record := cursor.next()) is not None:
        rest.append(record)
    assert first + rest == lines[1:-1]
    cursor.seek(place)
    assert [cursor.next() for _ in range(len(rest))] == rest and cursor.next() is None
    fresh = trace.cursor()                      # a new cursor sent forward (a snapshot restore)
    fresh.seek(place)
    assert fresh.next() == rest[0]


def _mixed_trace(path, count: int) -> list[dict]:
    """`count` records of every shape the checked pass reads differently: distinct lines,
    runs of one repeated line, and batches of a few distinct lines all stamped alike."""
    records = []
    n = 0
    while len(records) < count:
        n += 1
        records.append({"type": "time", "n": n, "at": n * 1000})
        records.extend([{"type": "out", "n": n, "dev": "console", "text": "again"}] * 7)
        records.append({"type": "key", "n": n, "at": n * 1000, "dev": "keyboard",
                        "byte": n % 256})
    lines = golden_lines()
    with open(path, "wb") as f:
        f.write(encode(dict(lines[0], version=trace_module.VERSION)))
        for record in records:
            f.write(encode(record))
        f.write(encode(dict(lines[-1], n=n)))
    return records


@pytest.mark.parametrize("count", [2_000, 80_000])
def test_a_kept_pass_and_a_streamed_pass_give_the_same_records(tmp_path, count, monkeypatch):
    """A small trace's records are kept from the checked pass (read once); a larger one is
    read again from the file: the same records either way."""
    path = tmp_path / "t.trace"
    records = _mixed_trace(path, count)
    kept = open_trace(str(path))
    assert (kept._kept is not None) == (count < trace_module.KEEP_RECORDS)
    assert list(kept.iter_records()) == records
    monkeypatch.setattr(trace_module, "KEEP_RECORDS", 0)
    streamed = open_trace(str(path))
    assert streamed._kept is None and list(streamed.iter_records()) == records
    assert streamed.counts == kept.counts and streamed.last_stamp == kept.last_stamp


def test_a_flood_of_alike_lines_is_kept_only_up_to_keep_records(tmp_path, monkeypatch):
    """A recording cut short in a flood of alike lines (checked a distinct line at a time):
    the bound on kept records holds there too. Found in review."""
    monkeypatch.setattr(trace_module, "KEEP_RECORDS", 1_000)
    lines = golden_lines()
    path = tmp_path / "t.trace"
    with open(path, "wb") as f:
        f.write(encode(dict(lines[0], version=trace_module.VERSION)))
        for _ in range(5_000):
            f.write(encode({"type": "out", "n": 1, "dev": "console", "text": "x"}))
    trace = open_trace(str(path))
    assert trace.truncated and trace.records_count == 5_000
    assert trace._kept is None and sum(1 for _ in trace.iter_records()) == 5_000


def test_a_trace_of_many_bytes_is_not_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(trace_module, "KEEP_BYTES", 10_000)
    path = tmp_path / "t.trace"
    records = _mixed_trace(path, 2_000)
    trace = open_trace(str(path))
    assert trace._kept is None and list(trace.iter_records()) == records


def test_replay_stream_save_and_restore(tmp_path):
    trace = open_trace(str(GOLDEN))
    stream = ReplayStream(trace)
    inputs = ReplayInput(stream, None, None)
    assert stream.peek(INPUT) is not None
    saved = stream.save()
    taken = [stream.pop(INPUT) for _ in range(3)]
    upcoming = inputs.upcoming(4)
    assert inputs.upcoming(4) == upcoming          # looking ahead moves nothing
    stream.restore(saved)
    assert [stream.pop(INPUT) for _ in range(3)] == taken
    assert [stream.pop(INPUT) for _ in range(4)] == upcoming


def test_a_replay_far_behind_the_recording_is_diverged_not_a_growing_queue():
    records = [{"type": "out", "n": 0, "dev": "console", "text": "x"}] * (MAX_LOOKAHEAD + 2) \
        + [{"type": "key", "n": 0, "at": 0, "dev": "keyboard", "byte": 1}]
    stream = ReplayStream(Trace(header={}, records=records), groups=(INPUT, OUTPUT))
    with pytest.raises(StopRun) as info:
        stream.peek(INPUT)
    assert info.value.reason == "diverged"


@pytest.mark.parametrize("limit", [0, 3, 100])
@pytest.mark.parametrize("as_json", [False, True])
def test_write_summary_streams_what_summarize_gives(tmp_path, limit, as_json):
    trace = open_trace(str(GOLDEN))
    out = io.StringIO()
    write_summary(trace, limit, as_json, out)
    summary = summarize(read_trace(str(GOLDEN)), limit)
    assert summarize(trace, limit) == summary
    assert out.getvalue() == (json.dumps(summary, indent=2) if as_json
                              else format_summary(summary)) + "\n"


def test_a_guest_too_large_to_embed_is_not_recorded(tmp_path):
    guest = tmp_path / "big.bin"
    guest.write_bytes(b"\xf4" + bytes(MAX_GUEST_BYTES))
    trace = tmp_path / "big.trace"
    proc = subprocess.run(vmm_command("record", "--mode", "protected", "--load", "0x100000",
                                      "--mem", "64M", "-o", str(trace), str(guest)),
                          capture_output=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 10 and b"a trace embeds at most 16 MiB" in proc.stderr
    assert not trace.exists()                   # refused before the file is made


@pytest.mark.parametrize("modules", ["x", [1], [{"size": 3, "data": "AAAAAAAA"}],
                                     [{"size": MAX_GUEST_BYTES, "data": "A" * 8}],
                                     [{"size": 0, "data": ""}] * 65])
def test_multiboot_modules_are_bounded_before_decoding(tmp_path, modules):
    header = golden_header()
    header["machine"]["boot"]["modules"] = modules
    with pytest.raises(TraceError):
        open_trace(write(tmp_path / "t.trace", header, *golden_lines()[1:]))


# --- the fast parse of interrupt records agrees with the JSON path -----------------------------
@pytest.mark.parametrize("line", [
    b'{"type":"time","n":1,"at":10000}',
    b'{"type":"edge","n":8,"at":10000989,"line":0,"count":1,"point":"idle"}',
    b'{"type":"edge","n":8,"at":5,"line":15,"count":3}',
    b'{"type":"irq","n":0,"at":10000989,"vector":32,"point":"spin"}',
])
def test_interrupt_records_parse_the_same_fast_and_slow(line):
    from vmm.trace import _check_record, _record
    slow = json.loads(line)
    _check_record("t", 1, slow)
    assert _record("t", 1, line, True, 4) == slow


@pytest.mark.parametrize("line, version", [
    (b'{"type":"edge","n":8,"at":5,"line":16,"count":3}', 4),        # no IRQ line 16
    (b'{"type":"irq","n":0,"at":1,"vector":256,"point":"in"}', 4),   # no vector 256
    (b'{"type":"irq","n":0,"at":1,"vector":32,"point":"idle"}', 4),  # never injected at idle
    (b'{"type":"edge","n":0,"at":1,"line":0,"count":1,"point":"nap"}', 4),
    (b'{"type":"time","n":1,"at":10000}', 3),                        # before version 4
])
def test_interrupt_records_out_of_range_are_refused_on_the_fast_path_too(line, version):
    from vmm.errors import TraceError
    from vmm.trace import _record
    with pytest.raises(TraceError):
        _record("t", 1, line, True, version)
