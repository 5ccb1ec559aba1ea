"""`vmm inspect`'s summary of a trace (vmm.summary) on synthetic traces."""

from __future__ import annotations

import json

import pytest

from vmm.summary import format_summary, summarize
from vmm.trace import VERSION, Trace, TraceWriter, make_header, read_trace

GUEST = b"\xfa\xf4" * 50
MACHINE = {"kind": "raw", "mode": "real", "mem": 1 << 20,
           "boot": {"mode": None, "load": None, "entry": "reset", "mem": 1 << 20, "stack": None},
           "load_map": [{"addr": 0x7C00, "size": 100, "what": "guest"}],
           "devices": [{"name": "console", "port": 0x3F8, "length": 1},
                       {"name": "keyboard", "port": 0x60, "length": 1}],
           "cpuid": [{"function": 0}, {"function": 1}, {"function": 7}]}
INFO = {"created": "2026-01-02T03:04:05Z", "host": "testhost", "backend": "kvm"}
SCRIPT = [{"op": "send", "data": "h"}, {"op": "idle"}]

RECORDS = [
    {"type": "step", "n": 0, "at": 0, "index": 0},
    {"type": "key", "n": 1, "at": 0, "dev": "keyboard", "byte": ord("h")},
    {"type": "key", "n": 2, "at": 250_000_000, "dev": "com1", "byte": 10},
    {"type": "cp", "n": 2, "regs": "abcdef0123456789"},
    {"type": "timer", "n": 3, "at": 500_000_000, "count": 1},
    {"type": "timer", "n": 4, "at": 2_000_000_000, "count": 3},
    {"type": "out", "n": 4, "dev": "console", "text": "hello"},
    {"type": "out", "n": 5, "dev": "serial", "text": "$ ", "partial": True},
]
END = {"type": "end", "n": 27, "at": 2_500_000_000, "at_read": True, "reason": "script-end",
       "exit_code": 0, "message": "the script's last step is done and the guest is idle",
       "regs": "d4bf2e7196bb4f82", "mem": "7ea90980b08421ce", "output": "ac45203ab94cb4e5",
       "info": {"exits": 70, "wall_ns": 8_129_060}}


def header(**changes) -> dict:
    h = make_header(guest_name="echo.bin", guest_bytes=GUEST, machine=MACHINE, clock="virtual",
                    script=SCRIPT, info=INFO, vmm_version="0.1.0")
    h.update(changes)
    return h


def complete() -> Trace:
    return Trace(header=header(), records=list(RECORDS), end=dict(END), path="echo.trace")


def truncated() -> Trace:
    return Trace(header=header(), records=list(RECORDS[:3]), end=None, truncated=True,
                 path="cut.trace")


def whats(summary: dict) -> list[str]:
    return [e["what"] for e in summary["timeline"]]


# --- summarize ----------------------------------------------------------------------------------
def test_counts():
    assert summarize(complete())["counts"] == {
        "keys": 2, "timer_firings": 2, "output_lines": 2, "checkpoints": 1,
        "script_steps_done": 1, "fetches": 0, "screen_changes": 0, "interrupts": 0,
        "instruction_points": 0}


def test_header_fields():
    s = summarize(complete())
    assert s["path"] == "echo.trace"
    assert s["format"] == f"vmm-trace v{VERSION}"
    assert s["recorded_by"] == "vmm 0.1.0"
    assert s["guest"] == {"name": "echo.bin", "size": 100, "sha256": header()["guest"]["sha256"]}
    assert s["clock"] == "virtual"
    assert s["script_steps"] == 2
    assert s["machine"]["cpuid_leaves"] == 3
    assert s["info"] == INFO


def test_no_script_steps_when_unscripted():
    t = complete()
    del t.header["script"]
    assert summarize(t)["script_steps"] is None


def test_end_summary():
    end = summarize(complete())["end"]
    assert end["reason"] == "script-end" and end["exit_code"] == 0
    assert end["observations"] == 27
    assert end["guest_time_s"] == 2.5
    assert end["wall_time_s"] == 0.008129
    assert end["digests"] == {"regs": "d4bf2e7196bb4f82", "mem": "7ea90980b08421ce",
                              "output": "ac45203ab94cb4e5"}
    assert summarize(complete())["truncated"] is False


def test_truncated_trace_has_no_end():
    s = summarize(truncated())
    assert s["end"] is None and s["truncated"] is True
    assert s["counts"]["keys"] == 2


def test_timeline_descriptions_in_order_without_checkpoints():
    assert whats(summarize(complete())) == [
        "script step 1 done",
        "key 'h' -> keyboard",
        "key 0x0a -> com1",
        "timer fired",
        "timer fired x3",
        "console: hello",
        "serial: $  (partial)",
    ]


def test_timeline_stamps_and_clock_times():
    timeline = summarize(complete())["timeline"]
    assert [e["n"] for e in timeline] == [0, 1, 2, 3, 4, 4, 5]
    assert [e["at_s"] for e in timeline] == [0.0, 0.0, 0.25, 0.5, 2.0, None, None]


@pytest.mark.parametrize("byte, shown", [(0x20, "' '"), (0x7E, "'~'"), (0x7F, "0x7f"),
                                         (0x1F, "0x1f"), (0xFF, "0xff"), (0x00, "0x00")])
def test_key_description_shows_printable_bytes_as_characters(byte, shown):
    t = Trace(header=header(), records=[{"type": "key", "n": 1, "at": 0, "dev": "keyboard",
                                         "byte": byte}])
    assert whats(summarize(t)) == [f"key {shown} -> keyboard"]


def test_limit_cuts_the_timeline():
    s = summarize(complete(), limit=3)
    assert whats(s) == ["script step 1 done", "key 'h' -> keyboard", "key 0x0a -> com1"]
    assert s["timeline_omitted"] == 4


@pytest.mark.parametrize("limit", [0, -1, 7, 100])
def test_limit_zero_or_enough_shows_everything(limit):
    s = summarize(complete(), limit=limit)
    assert len(s["timeline"]) == 7 and s["timeline_omitted"] == 0


def test_summary_is_json_serializable():
    for t in (complete(), truncated()):
        s = summarize(t)
        assert json.loads(json.dumps(s)) == s


# --- format_summary ------------------------------------------------------------------------------
def test_format_header_lines():
    text = format_summary(summarize(complete()))
    lines = text.splitlines()
    assert lines[0] == f"trace     echo.trace (vmm-trace v{VERSION}, vmm 0.1.0)"
    assert lines[1].startswith("guest     echo.bin  100 bytes  sha256 ")
    assert lines[2] == ("machine   p3 board, raw guest, real mode, 1024 KiB RAM, 2 devices, "
                        "3 CPUID leaves")
    assert lines[3] == "clock     virtual, script of 2 steps"
    assert lines[4] == "recorded  2026-01-02T03:04:05Z on testhost (kvm)"
    assert lines[5] == ("counts    2 keys, 2 timer firings, 2 output lines, 1 checkpoints")


def test_format_end_line():
    lines = format_summary(summarize(complete())).splitlines()
    assert ("end       script-end (exit status 0) after 27 observations, 2.5s of guest time, "
            "0.008129s wall") in lines
    assert "          the script's last step is done and the guest is idle" in lines


def test_format_end_line_without_wall_time():
    t = complete()
    del t.end["info"]
    lines = format_summary(summarize(t)).splitlines()
    assert ("end       script-end (exit status 0) after 27 observations, 2.5s of guest time"
            in lines)


def test_format_truncated_end_line():
    text = format_summary(summarize(truncated()))
    assert "end       none: the trace is truncated (the recording was cut short)" in text


def test_format_timeline_entries():
    lines = format_summary(summarize(complete())).splitlines()
    start = lines.index("timeline  (observation, clock time, event)")
    entries = lines[start + 1:]
    assert len(entries) == 7
    assert entries[1].split() == ["1", "0.000s", "key", "'h'", "->", "keyboard"]
    assert entries[3].split() == ["3", "0.500s", "timer", "fired"]
    assert entries[5].split() == ["4", "console:", "hello"]
    assert entries[5].endswith("console: hello")


def test_format_limit_says_how_many_more():
    text = format_summary(summarize(complete(), limit=2))
    assert text.splitlines()[-1] == "  ... 5 more (--limit 0 shows all)"


def test_format_no_more_line_when_all_shown():
    assert "more (--limit 0 shows all)" not in format_summary(summarize(complete(), limit=0))


def test_format_unscripted_clock_line():
    t = complete()
    del t.header["script"]
    assert "clock     virtual\n" in format_summary(summarize(t))


def test_format_missing_info_shows_question_marks():
    t = complete()
    t.header["info"] = {}
    assert "recorded  ? on ? (?)" in format_summary(summarize(t))


# --- traces that read_trace accepts must summarise without a traceback -------------------------
def _read_back(tmp_path, head: dict, end: dict | None = END) -> Trace:
    path = str(tmp_path / "t.trace")
    w = TraceWriter(path)
    w.write(head)
    for r in RECORDS:
        w.write(r)
    if end is not None:
        w.write(end)
    w.close()
    return read_trace(path)


def test_inspect_of_written_and_read_trace(tmp_path):
    s = summarize(_read_back(tmp_path, header()))
    assert s["counts"]["keys"] == 2 and s["end"]["reason"] == "script-end"
    assert "console: hello" in format_summary(s)


def test_format_machine_without_mem(tmp_path):
    text = format_summary(summarize(_read_back(tmp_path, header(machine={}))))
    assert text.splitlines()[2].startswith("machine")


def test_summarize_end_info_not_an_object(tmp_path):
    s = summarize(_read_back(tmp_path, header(), end=dict(END, info="x")))
    assert s["end"]["wall_time_s"] is None
