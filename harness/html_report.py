"""The HTML class report: OUT/report.html and a page per submission, OUT/<name>/index.html.

Self-contained and offline: charts are inline SVG, the table sorts with a few lines of inline
JavaScript, there is no CDN, font or external file; every link is relative, so the folder can be
opened from disk, zipped, or served as it is. Built from report.json alone (plus each
scenario's trace, for its timeline), so `vmm grade merge` writes it too.

- report.html: the score histogram, pass rates per scenario and per check, and a table of the
  submissions, sortable by any column (click a heading; `report.html#sort=score-desc` opens it
  sorted).
- <name>/index.html: the submission's score, what stopped it, its build log, and for each
  scenario its checks, the output, a timeline of the trace (keys, timer firings, output lines,
  script steps over guest time), and the command that replays it.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

BINS = 10
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#222}
h1,h2,h3{font-weight:600}table{border-collapse:collapse;width:100%;margin:1em 0}
th,td{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4;cursor:pointer;user-select:none}td.n,th.n{text-align:right}
.pass{color:#1a7f37}.fail{color:#cf222e}.muted{color:#666}
pre{background:#f6f8fa;padding:.6em;overflow:auto;max-height:24em;white-space:pre-wrap}
code{background:#f6f8fa;padding:0 .25em}.charts{display:flex;flex-wrap:wrap;gap:2em}
svg text{font:11px system-ui,sans-serif;fill:#333}
"""
SORT_SCRIPT = """
(function(){
  var table=document.getElementById('submissions');if(!table)return;
  var body=table.tBodies[0],heads=table.tHead.rows[0].cells,state={col:-1,dir:1};
  function key(row,col){var c=row.cells[col];var v=c.getAttribute('data-value');
    return v!==null?parseFloat(v):c.textContent.trim().toLowerCase();}
  function sort(col,dir){var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){var x=key(a,col),y=key(b,col);return x<y?-dir:x>y?dir:0;});
    rows.forEach(function(r){body.appendChild(r);});state={col:col,dir:dir};
    table.setAttribute('data-sorted',heads[col].getAttribute('data-key')+(dir>0?'-asc':'-desc'));}
  Array.prototype.forEach.call(heads,function(h,i){h.addEventListener('click',function(){
    sort(i,state.col===i?-state.dir:1);});});
  var m=/sort=([a-z_]+)-(asc|desc)/.exec(location.hash);
  if(m){for(var i=0;i<heads.length;i++){if(heads[i].getAttribute('data-key')===m[1]){
    sort(i,m[2]==='asc'?1:-1);}}}
  table.setAttribute('data-ready','yes');
})();
"""


def ended_by(sc: dict) -> str:
    """One line: how the scenario ended, the limit that ended it, and the guest work it took."""
    work = sc.get("work") or {}
    took = ", ".join(f"{work[k]} {label}" for k, label in (("observations", "reads"),
                     ("exits", "exits"), ("instructions", "instructions")) if k in work)
    limit = f" (the [limits] {sc['limit']} limit)" if sc.get("limit") else ""
    return f"Ended by {sc['end_reason']}{limit}" + (f"; the guest took {took}" if took else "")


def e(text) -> str:
    return html.escape(str(text), quote=True)


def _page(title: str, body: str, script: str = "") -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\">"
            f"<title>{e(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n"
            + (f"<script>{script}</script>\n" if script else "") + "</body></html>\n")


# --- charts -------------------------------------------------------------------------------------
def histogram_svg(scores: list[float], max_score: float) -> str:
    """Submissions per tenth of the maximum score, as bars."""
    counts = [0] * BINS
    for score in scores:
        fraction = score / max_score if max_score else 1.0
        counts[min(BINS - 1, max(0, int(fraction * BINS)))] += 1
    width, height, pad = 420, 180, 28
    bar = (width - pad) / BINS
    top = max(counts) or 1
    parts = [f'<svg id="histogram" role="img" aria-label="score histogram" width="{width}" '
             f'height="{height + 30}" viewBox="0 0 {width} {height + 30}">',
             f'<line x1="{pad}" y1="{height}" x2="{width}" y2="{height}" stroke="#999"/>']
    for i, count in enumerate(counts):
        h = (height - 20) * count / top
        x = pad + i * bar
        parts.append(f'<rect class="bar" x="{x + 2:.1f}" y="{height - h:.1f}" '
                     f'width="{bar - 4:.1f}" height="{h:.1f}" fill="#2f81f7">'
                     f'<title>{count} with {i * 10}-{i * 10 + 10}%</title></rect>')
        if count:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{height - h - 4:.1f}" '
                         f'text-anchor="middle">{count}</text>')
        parts.append(f'<text x="{x + bar / 2:.1f}" y="{height + 14}" '
                     f'text-anchor="middle">{i * 10}%</text>')
    parts.append(f'<text x="{pad}" y="{height + 28}">score, as a share of '
                 f'{max_score:g} points</text></svg>')
    return "".join(parts)


def rates_svg(svg_id: str, rows: list[tuple[str, float]]) -> str:
    """Horizontal bars: the share of submissions that passed each row."""
    width, line, label = 520, 20, 260
    height = line * len(rows) + 10
    parts = [f'<svg id="{e(svg_id)}" role="img" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}">']
    for i, (name, rate) in enumerate(rows):
        y = 5 + i * line
        shown = name if len(name) <= 42 else name[:40] + "..."
        parts.append(f'<text x="0" y="{y + 13}">{e(shown)}<title>{e(name)}</title></text>'
                     f'<rect x="{label}" y="{y + 2}" width="{(width - label - 50) * rate:.1f}" '
                     f'height="{line - 6}" fill="#1a7f37"/>'
                     f'<text x="{width - 45}" y="{y + 13}">{rate * 100:.0f}%</text>')
    parts.append("</svg>")
    return "".join(parts)


def timeline_svg(trace_path: Path) -> str:
    """Keys, timer firings, output lines and script steps of a trace over guest time."""
    from vmm.errors import TraceError
    from vmm.trace import read_trace
    try:
        trace = read_trace(str(trace_path))
    except (TraceError, OSError):
        return '<p class="muted">(no readable trace)</p>'
    lanes = {"key": [], "timer": [], "out": [], "step": []}
    last_at, end_at = 0, (trace.end or {}).get("at")
    for record in trace.records:
        kind = record.get("type")
        at = record.get("at")
        if isinstance(at, int):
            last_at = at
        if kind in lanes:
            lanes[kind].append(last_at)
    span = max(end_at if isinstance(end_at, int) else 0, last_at, 1)
    width, lane, label = 560, 18, 60
    names = {"key": "keys", "timer": "timer", "out": "output", "step": "steps"}
    colours = {"key": "#8250df", "timer": "#bf8700", "out": "#2f81f7", "step": "#1a7f37"}
    height = lane * len(lanes) + 24
    parts = [f'<svg class="timeline" role="img" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}">']
    for i, (kind, times) in enumerate(lanes.items()):
        y = 4 + i * lane
        parts.append(f'<text x="0" y="{y + 12}">{names[kind]} ({len(times)})</text>')
        for at in times[:2000]:
            x = label + (width - label - 10) * at / span
            parts.append(f'<rect x="{x:.1f}" y="{y + 2}" width="2" height="{lane - 6}" '
                         f'fill="{colours[kind]}"/>')
    parts.append(f'<text x="{label}" y="{height - 4}">0 s</text>'
                 f'<text x="{width - 10}" y="{height - 4}" text-anchor="end">'
                 f'{span / 1e9:.3g} s of guest time</text></svg>')
    return "".join(parts)


# --- pages --------------------------------------------------------------------------------------
def class_page(report: dict) -> str:
    rubric, subs = report["rubric"], report["submissions"]
    max_score = rubric["max_score"]
    scores = [s["score"] for s in subs]
    scenario_names = [s["name"] for s in rubric["scenarios"]]
    scenario_rates, check_rates = [], {}
    for name in scenario_names:
        results = [sc for s in subs for sc in s["scenarios"] if sc["name"] == name]
        passed = sum(1 for sc in results if sc["score"] >= sc["max_score"])
        scenario_rates.append((name, passed / len(results) if results else 0.0))
        for sc in results:
            for check in sc["checks"]:
                key = f"{name}: {check['description']}"
                total, ok = check_rates.get(key, (0, 0))
                check_rates[key] = (total + 1, ok + (1 if check["passed"] else 0))
    mean = sum(scores) / len(scores) if scores else 0
    body = [f"<h1>{e(rubric['title'])}</h1>",
            f"<p>{len(subs)} submission{'s' * (len(subs) != 1)}, graded against "
            f"<code>{e(rubric['path'])}</code> (max {max_score:g} points, shard "
            f"{e(report['shard'])}). Mean {mean:.2f}; full marks "
            f"{sum(1 for s in scores if s >= max_score)}.</p>",
            '<div class="charts"><section><h2>Scores</h2>', histogram_svg(scores, max_score),
            "</section><section><h2>Passed, per scenario</h2>",
            rates_svg("scenario-rates", scenario_rates), "</section></div>",
            "<h2>Passed, per check</h2>",
            rates_svg("check-rates", [(k, ok / total) for k, (total, ok) in
                                      check_rates.items()]),
            "<h2>Submissions</h2>", '<table id="submissions"><thead><tr>'
            '<th data-key="name">submission</th><th class="n" data-key="score">score</th>']
    body += [f'<th class="n" data-key="s{i}">{e(name)}</th>'
             for i, name in enumerate(scenario_names)]
    body.append('<th data-key="problem">problem</th></tr></thead><tbody>')
    for sub in subs:
        by_name = {sc["name"]: sc for sc in sub["scenarios"]}
        cells = [f'<td><a href="{e(_href(sub["name"], "index.html"))}">{e(sub["name"])}</a></td>',
                 f'<td class="n" data-value="{sub["score"]}">{sub["score"]:g}</td>']
        for name in scenario_names:
            sc = by_name.get(name)
            if sc is None:
                cells.append('<td class="n" data-value="-1">-</td>')
            else:
                mark = "pass" if sc["score"] >= sc["max_score"] else "fail"
                cells.append(f'<td class="n {mark}" data-value="{sc["score"]}">'
                             f'{sc["score"]:g}/{sc["max_score"]:g}</td>')
        cells.append(f"<td>{e(sub['problem'])}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    body.append("</tbody></table>")
    body.append('<p class="muted">Also here: <a href="report.json">report.json</a>, '
                '<a href="summary.md">summary.md</a>, <a href="junit.xml">junit.xml</a>.</p>')
    return _page(rubric["title"], "\n".join(body), SORT_SCRIPT)


def _href(*parts: str) -> str:
    from urllib.parse import quote
    return "/".join(quote(p) for p in parts)


def screen_png(trace_path: Path, png_path: Path) -> bool:
    """The screen a scenario's trace ends with, as a PNG next to it (boards with a text
    screen); False when the trace has none or cannot be read."""
    from vmm.errors import TraceError
    from vmm.screen import apply_rows, render_png
    from vmm.trace import read_trace
    try:
        trace = read_trace(str(trace_path))
        records = trace.screens()
        if not records and trace.header["machine"].get("board", "p3") != "pc":
            return False
        screen = apply_rows(None, [])
        for record in records:
            screen = apply_rows(screen, record["rows"])
        render_png(screen, png_path)
        return True
    except (TraceError, OSError, ValueError, KeyError, TypeError):
        return False


def submission_page(report: dict, sub: dict, out: Path) -> str:
    body = ['<p><a href="../report.html">&larr; the class</a></p>',
            f"<h1>{e(sub['name'])}: {sub['score']:g} / {sub['max_score']:g}</h1>",
            f"<p class=\"muted\">{e(report['rubric']['title'])}; handed in as "
            f"<code>{e(sub['source'])}</code>.</p>"]
    if sub["problem"]:
        body.append(f'<p class="fail"><strong>{e(sub["problem"])}</strong></p>')
    if sub.get("build_log"):
        body.append(f'<p>Build log: <a href="{_href(os.path.basename(sub["build_log"]))}">'
                    f"{e(os.path.basename(sub['build_log']))}</a></p>")
    for sc in sub["scenarios"]:
        mark = "pass" if sc["score"] >= sc["max_score"] else "fail"
        body.append(f'<h2 class="{mark}">{e(sc["name"])}: {sc["score"]:g} / '
                    f'{sc["max_score"]:g}</h2>')
        if sc["reason"]:
            body.append(f"<p>Why points were lost: {e(sc['reason'])}</p>")
        body.append(f"<p>{e(ended_by(sc))}</p>")
        body.append("<table><thead><tr><th>check</th><th class=\"n\">points</th>"
                    "<th>detail</th></tr></thead><tbody>")
        for check in sc["checks"]:
            cls = "pass" if check["passed"] else "fail"
            body.append(f'<tr><td class="{cls}">{"PASS" if check["passed"] else "FAIL"} '
                        f'{e(check["description"])}</td><td class="n">{check["score"]:g}/'
                        f'{check["max_score"]:g}</td><td>{e(check["detail"])}</td></tr>')
        body.append("</tbody></table>")
        body.append(f"<h3>Output</h3><pre>{e(sc['output']) or '(nothing)'}</pre>")
        if sc["trace"]:
            rel = os.path.relpath(sc["trace"], sub["name"])
            png = Path(sc["trace"]).with_suffix(".screen.png")
            if screen_png(out / sc["trace"], out / png):
                body.append(f'<h3>Screen at the end</h3><p><img class="screen" '
                            f'src="{_href(*Path(os.path.relpath(png, sub["name"])).parts)}" '
                            f'width="640" height="325" alt="the text screen when the run '
                            f'ended"></p>')
            body.append("<h3>Timeline</h3>" + timeline_svg(out / sc["trace"]))
            body.append(f'<p>Replay exactly what the grader saw: <code>vmm replay '
                        f'{e(rel)}</code> (<a href="{_href(*Path(rel).parts)}">the trace</a>)'
                        f"</p>")
    return _page(f"{sub['name']}: {report['rubric']['title']}", "\n".join(body))


def write_html(report: dict, out: str) -> None:
    root = Path(out)
    (root / "report.html").write_text(class_page(report))
    for sub in report["submissions"]:
        folder = root / sub["name"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "index.html").write_text(submission_page(report, sub, root))
