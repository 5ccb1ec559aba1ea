"""Grading reports: Gradescope results.json, JUnit XML, a JSON report, a Markdown summary, and
the HTML class report (harness/html_report.py).

The JSON report (`report.json`) is the source of the others and of `vmm grade merge`. Fields
that depend on the machine or the moment (execution times, creation date, host) live under
`info` or are named `execution_time`: two gradings of the same submissions give reports
identical apart from those.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

from vmm import __version__
from vmm.errors import UsageError

from .html_report import ended_by

REPORT_FORMAT, REPORT_VERSION = "vmm-grade-report", 1


def build_report(rubric, results, shard_label: str, wall_s: float) -> dict:
    return {
        "format": REPORT_FORMAT, "version": REPORT_VERSION,
        "rubric": {"title": rubric.title, "path": os.path.basename(rubric.path),
                   "sha256": rubric.sha256, "max_score": rubric.max_score,
                   "scenarios": [{"name": s.name, "points": s.points, "visibility": s.visibility}
                                 for s in rubric.scenarios]},
        "shard": shard_label,
        "submissions": [r.to_dict() for r in results],
        "info": {"created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                 "host": socket.gethostname(), "vmm": __version__, "wall_s": round(wall_s, 3)},
    }


def write_reports(report: dict, out: str) -> None:
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    (root / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    for sub in report["submissions"]:
        folder = root / sub["name"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(gradescope(sub), indent=2) + "\n")
    (root / "junit.xml").write_bytes(junit(report))
    (root / "summary.md").write_text(markdown(report))
    from .html_report import write_html
    write_html(report, out)


# --- Gradescope ---------------------------------------------------------------------------------
def gradescope(sub: dict) -> dict:
    """Gradescope's results.json for one submission (score, execution_time, output, tests[])."""
    lines = [f"Graded by vmm {__version__}: {sub['score']:g} / {sub['max_score']:g} points."]
    if sub["problem"]:
        lines.append(sub["problem"])
    lines.append("Each test's trace is in traces/: replay exactly what the grader saw with "
                 "`vmm replay traces/<test>.trace`.")
    tests = []
    for sc in sub["scenarios"]:
        out = []
        for c in sc["checks"]:
            mark = "PASS" if c["passed"] else "FAIL"
            out.append(f"[{mark}] {c['description']} ({c['score']:g}/{c['max_score']:g})"
                       + (f": {c['detail']}" if c["detail"] and not c["passed"] else ""))
        if sc["reason"]:
            out.append(f"Why points were lost: {sc['reason']}")
        out.append(ended_by(sc))
        if sc["trace"]:
            out.append(f"Replay it: vmm replay {os.path.relpath(sc['trace'], sub['name'])}")
        tests.append({"name": sc["name"], "score": sc["score"], "max_score": sc["max_score"],
                      "status": "passed" if sc["score"] >= sc["max_score"] else "failed",
                      "output": "\n".join(out), "visibility": sc["visibility"]})
    return {"score": sub["score"], "execution_time": round(sub["execution_time"]),
            "output": "\n".join(lines), "tests": tests}


# --- JUnit XML ----------------------------------------------------------------------------------
def junit(report: dict) -> bytes:
    suites = ET.Element("testsuites", name=report["rubric"]["title"])
    for sub in report["submissions"]:
        failures = sum(1 for sc in sub["scenarios"] if sc["score"] < sc["max_score"])
        suite = ET.SubElement(suites, "testsuite", name=sub["name"],
                              tests=str(len(sub["scenarios"])), failures=str(failures),
                              time=f"{sub['execution_time']:.3f}")
        for sc in sub["scenarios"]:
            case = ET.SubElement(suite, "testcase", classname=sub["name"], name=sc["name"],
                                 time=f"{sc['execution_time']:.3f}")
            ET.SubElement(case, "properties")
            if sc["score"] < sc["max_score"]:
                failure = ET.SubElement(case, "failure",
                                        message=f"{sc['score']:g}/{sc['max_score']:g}: "
                                                f"{sc['reason']}"[:500])
                failure.text = "\n".join(
                    f"{'PASS' if c['passed'] else 'FAIL'} {c['description']}"
                    + (f": {c['detail']}" if c["detail"] else "") for c in sc["checks"])
            if sc["output"]:
                ET.SubElement(case, "system-out").text = sc["output"]
    ET.indent(suites)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True) + b"\n"


# --- Markdown -------------------------------------------------------------------------------------
def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(report: dict) -> str:
    rubric = report["rubric"]
    subs = report["submissions"]
    names = [s["name"] for s in rubric["scenarios"]]
    out = [f"# {rubric['title']}", "",
           f"{len(subs)} submissions, graded against `{rubric['path']}` "
           f"(max {rubric['max_score']:g} points, shard {report['shard']}).", ""]
    if subs:
        scores = sorted(s["score"] for s in subs)
        mean = sum(scores) / len(scores)
        out += [f"Mean {mean:.2f}, median {scores[len(scores) // 2]:g}, "
                f"full marks {sum(1 for s in subs if s['score'] >= s['max_score'])}.", ""]
    out += ["| submission | score | " + " | ".join(_cell(n) for n in names) + " |",
            "|---|---:|" + "---:|" * len(names)]
    for sub in subs:
        cells = {sc["name"]: f"{sc['score']:g}/{sc['max_score']:g}" for sc in sub["scenarios"]}
        out.append(f"| {_cell(sub['name'])} | {sub['score']:g}/{sub['max_score']:g} | "
                   + " | ".join(cells.get(n, "-") for n in names) + " |")
    out += ["", "## Why points were lost", ""]
    lost_any = False
    for sub in subs:
        lost = [sc for sc in sub["scenarios"] if sc["score"] < sc["max_score"]]
        if not lost and not sub["problem"]:
            continue
        lost_any = True
        out.append(f"### {sub['name']} ({sub['score']:g}/{sub['max_score']:g})")
        if sub["problem"]:
            out.append(f"- **{_cell(sub['problem'])}**"
                       + (f" (log: `{sub['build_log']}`)" if sub["build_log"] else ""))
        for sc in lost:
            trace = f" — `vmm replay {sc['trace']}`" if sc["trace"] else ""
            out.append(f"- {_cell(sc['name'])}: {_cell(sc['reason'])}{trace}")
        out.append("")
    if not lost_any:
        out.append("Every submission got full marks.")
    return "\n".join(out).rstrip() + "\n"


# --- merging shards -------------------------------------------------------------------------------
def read_report(folder: str) -> dict:
    path = Path(folder) / "report.json"
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"no report.json in {folder}: is it a `vmm grade --out` directory?") \
            from None
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise UsageError(f"{path} is not a vmm grade report")
    if report.get("version") != REPORT_VERSION:
        raise UsageError(f"{path} is grade report version {report.get('version')}; this vmm "
                         f"reads version {REPORT_VERSION}")
    return report


def _copy_regular_files(source: Path, target: Path, depth: int = 0) -> None:
    """Copy a submission's folder of a shard: folders and regular files only, never through a
    link (shard folders are the grader's own, but what they hold came from students)."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in os.scandir(source):
        if entry.is_symlink():
            continue
        if entry.is_dir() and depth < 4:
            _copy_regular_files(Path(entry.path), target / entry.name, depth + 1)
        elif entry.is_file():
            shutil.copyfile(entry.path, target / entry.name, follow_symlinks=False)


def merge(folders: list[str], out: str) -> dict:
    """Combine the reports of `vmm grade --shard` runs into one class report in `out`."""
    reports = [read_report(f) for f in folders]
    rubric = reports[0]["rubric"]
    for folder, report in zip(folders, reports):
        if report["rubric"]["sha256"] != rubric["sha256"]:
            raise UsageError(f"{folder} was graded with a different rubric than {folders[0]}")
    subs, seen = [], set()
    Path(out).mkdir(parents=True, exist_ok=True)
    for folder, report in zip(folders, reports):
        for sub in report["submissions"]:
            if sub["name"] in seen:
                raise UsageError(f"submission {sub['name']!r} appears in more than one shard")
            seen.add(sub["name"])
            subs.append(sub)
            source, target = Path(folder) / sub["name"], Path(out) / sub["name"]
            if source.resolve() != target.resolve() and source.is_dir() \
                    and not source.is_symlink():
                _copy_regular_files(source, target)
    subs.sort(key=lambda s: s["name"])
    shards = sorted(r["shard"] for r in reports)
    merged = {"format": REPORT_FORMAT, "version": REPORT_VERSION, "rubric": rubric,
              "shard": "merged " + ", ".join(shards), "submissions": subs,
              "info": {"created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "host": socket.gethostname(), "vmm": __version__,
                       "merged_from": list(folders)}}
    write_reports(merged, out)
    return merged
