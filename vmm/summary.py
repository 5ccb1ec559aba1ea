"""`vmm inspect`: a readable summary of a trace, and the same as JSON for machines."""

from __future__ import annotations

import json

from .screenlog import replay_rows, screen_text
from .trace import Trace, TraceFile


def _seconds(ns) -> float | None:
    return None if not isinstance(ns, int) else round(ns / 1e9, 6)


def _describe(record: dict) -> str:
    kind = record["type"]
    if kind == "key":
        b = record["byte"]
        shown = repr(chr(b)) if 0x20 <= b < 0x7F else f"0x{b:02x}"
        return f"key {shown} -> {record['dev']}"
    if kind == "timer":
        return "timer fired" + (f" x{record['count']}" if record["count"] != 1 else "")
    if kind == "out":
        return f"{record['dev']}: {record['text']}" + (" (partial)" if record.get("partial") else "")
    if kind == "step":
        return f"script step {record['index'] + 1} done"
    if kind == "cp":
        return f"checkpoint {record['regs']}"
    if kind == "fetch":
        return f"fetch {record['dev']}: {record['text']}"
    if kind == "screen":
        return "screen " + ", ".join(f"row {row}: {text!r}" for row, text, _ in record["rows"])
    point = f" ({record['point']})" if isinstance(record.get("point"), str) else ""
    if kind == "irq":
        return f"interrupt vector {record['vector']:#x}{point}"
    if kind == "edge":
        return f"IRQ {record['line']} edge" + (f" x{record['count']}" if record["count"] != 1
                                               else "") + point
    if kind == "icount":
        return f"instruction point at instruction {record['count']}"
    if kind == "time":
        return "device time shown"
    return kind


def _boot_summary(boot):
    """The boot options, with each multiboot module's contents (base64) left out: its name,
    string, size and sha256 say which it was."""
    if not isinstance(boot, dict) or not isinstance(boot.get("modules"), list):
        return boot
    return dict(boot, modules=[{k: v for k, v in m.items() if k != "data"}
                               if isinstance(m, dict) else m for m in boot["modules"]])


def timeline(trace: Trace | TraceFile):
    """The trace's events but checkpoints, one at a time, as the summary shows them."""
    for r in trace.iter_records():
        if r["type"] != "cp":
            yield {"n": r["n"], "at_s": _seconds(r.get("at")), "what": _describe(r)}


def summarize(trace: Trace | TraceFile, limit: int = 40, *, with_timeline: bool = True) -> dict:
    """The summary; its timeline holds the first `limit` events (all if limit <= 0).
    `with_timeline=False` leaves it empty, for write_summary to stream."""
    h, end = trace.header, trace.end
    counts = trace.counts
    events = sum(counts.values()) - counts.get("cp", 0)
    shown = []
    if with_timeline:
        for entry in timeline(trace):
            if 0 < limit <= len(shown):
                break
            shown.append(entry)
    machine = h["machine"]
    end_info = (end or {}).get("info")
    end_info = end_info if isinstance(end_info, dict) else {}
    info = h.get("info") if isinstance(h.get("info"), dict) else {}
    return {
        "path": trace.path,
        "format": f"{h['format']} v{h['version']}",
        "recorded_by": f"vmm {h.get('vmm')}",
        "info": info,
        "guest": {k: h["guest"][k] for k in ("name", "size", "sha256")},
        "machine": {"board": machine.get("board", "p3"),
                    "kind": machine.get("kind"), "mode": machine.get("mode"),
                    "mem": machine.get("mem"), "boot": _boot_summary(machine.get("boot")),
                    "load_map": machine.get("load_map"), "devices": machine.get("devices"),
                    "feeds": machine.get("feeds") if isinstance(machine.get("feeds"), dict)
                    else None,
                    "cpuid_leaves": len(machine.get("cpuid") or []) if isinstance(
                        machine.get("cpuid"), list) else 0},
        "clock": h["clock"],
        "icount_ns": machine.get("icount_ns"),
        "script_steps": len(h["script"]) if isinstance(h.get("script"), list) else None,
        "counts": {"keys": counts.get("key", 0), "timer_firings": counts.get("timer", 0),
                   "output_lines": counts.get("out", 0), "checkpoints": counts.get("cp", 0),
                   "script_steps_done": counts.get("step", 0), "fetches": counts.get("fetch", 0),
                   "screen_changes": counts.get("screen", 0),
                   "interrupts": counts.get("irq", 0),
                   "instruction_points": counts.get("icount", 0)},
        "screen": (replay_rows(r for r in trace.iter_records() if r["type"] == "screen")
                   if machine.get("board") == "pc" or counts.get("screen") else None),
        "truncated": trace.truncated,
        "end": None if end is None else {
            "reason": end["reason"], "exit_code": end["exit_code"],
            "message": end.get("message"), "observations": end["n"],
            "guest_time_s": _seconds(end.get("at")),
            "wall_time_s": _seconds(end_info.get("wall_ns")),
            "digests": {k: end.get(k) for k in ("regs", "mem", "output")}},
        "timeline": shown,
        "timeline_omitted": events - (len(shown) if with_timeline else
                                      events if limit <= 0 else min(limit, events)),
    }


def _kib(mem) -> str:
    return f"{mem // 1024} KiB" if isinstance(mem, int) and not isinstance(mem, bool) else "? KiB"


def write_summary(trace: Trace | TraceFile, limit: int, as_json: bool, out) -> None:
    """What `vmm inspect` prints: the summary, its timeline streamed from the trace, so that
    memory stays small however many events it has. The same text as format_summary (or
    json.dumps(indent=2)) of summarize(trace, limit)."""
    s = summarize(trace, limit, with_timeline=False)
    shown = (min(limit, sum(trace.counts.values()) - trace.counts.get("cp", 0)) if limit > 0
             else None)
    entries = timeline(trace)
    if shown is not None:
        entries = (e for _, e in zip(range(shown), entries))
    if not as_json:
        head = format_summary(s).split("\n")
        cut = head.index("timeline  (observation, clock time, event)") + 1
        out.write("\n".join(head[:cut]) + "\n")
        for e in entries:
            out.write(_timeline_line(e) + "\n")
        if s["timeline_omitted"]:
            out.write(f"  ... {s['timeline_omitted']} more (--limit 0 shows all)\n")
        return
    out.write("{")
    for i, (key, value) in enumerate(s.items()):
        out.write(("," if i else "") + f"\n  {json.dumps(key)}: ")
        if key != "timeline":
            out.write(json.dumps(value, indent=2).replace("\n", "\n  "))
            continue
        first = True
        for e in entries:
            out.write(("[" if first else ",") + "\n    " +
                      json.dumps(e, indent=2).replace("\n", "\n    "))
            first = False
        out.write("[]" if first else "\n  ]")
    out.write("\n}\n")


def _timeline_line(e: dict) -> str:
    at = f"{e['at_s']:.3f}s" if e["at_s"] is not None else "      "
    return f"  {e['n']:>8}  {at:>10}  {e['what']}"


def format_summary(s: dict) -> str:
    g, m, c, end = s["guest"], s["machine"], s["counts"], s["end"]
    lines = [
        f"trace     {s['path']} ({s['format']}, {s['recorded_by']})",
        f"guest     {g['name']}  {g['size']} bytes  sha256 {g['sha256'][:16]}...",
        f"machine   {m['board']} board, {m['kind']} guest, {m['mode']} mode, {_kib(m['mem'])} RAM, "
        f"{len(m['devices'] or [])} devices, {m['cpuid_leaves']} CPUID leaves",
        f"clock     {s['clock']}"
        + (f", instruction count: {s['icount_ns']} ns per instruction (--icount)"
           if s.get("icount_ns") else "")
        + (f", script of {s['script_steps']} steps" if s["script_steps"] is not None else ""),
        f"recorded  {s['info'].get('created', '?')} on {s['info'].get('host', '?')} "
        f"({s['info'].get('backend', '?')})",
        f"counts    {c['keys']} keys, {c['timer_firings']} timer firings, "
        f"{c['output_lines']} output lines, {c['checkpoints']} checkpoints"
        + (f", {c['fetches']} web fetches" if c["fetches"] else "")
        + (f", {c['screen_changes']} screen changes" if c.get("screen_changes") else "")
        + (f", {c['interrupts']} interrupts" if c.get("interrupts") else "")
        + (f", {c['instruction_points']} instruction points"
           if c.get("instruction_points") else ""),
    ]
    feeds = m.get("feeds")
    if feeds is not None:
        digest = feeds.get("sha256")
        lines.append(f"feeds     {feeds.get('file') or 'built-in'}"
                     + (f"  sha256 {digest[:16]}..." if isinstance(digest, str) else "")
                     + (", offline" if feeds.get("offline") is True else ""))
    if end is None:
        lines.append("end       none: the trace is truncated (the recording was cut short)")
    else:
        wall = end["wall_time_s"]
        lines.append(f"end       {end['reason']} (exit status {end['exit_code']}) after "
                     f"{end['observations']} observations, {end['guest_time_s']}s of guest time"
                     + (f", {wall}s wall" if wall is not None else ""))
        lines.append(f"          {end['message']}")
    if s.get("screen") is not None:
        text = screen_text(s["screen"])
        lines.append("screen    at the end of the run" + ("" if text else ": blank"))
        lines += [f"  |{row}" for row in text.splitlines()]
    lines.append("timeline  (observation, clock time, event)")
    for e in s["timeline"]:
        lines.append(_timeline_line(e))
    if s["timeline_omitted"]:
        lines.append(f"  ... {s['timeline_omitted']} more (--limit 0 shows all)")
    return "\n".join(lines)
