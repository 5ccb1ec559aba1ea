"""vmm grade: scores, determinism across -j, submissions built from source, reports, shards."""

from __future__ import annotations

import json
import socket
import subprocess
import tarfile
import xml.etree.ElementTree as ET

import pexpect
import pytest

from conftest import GUESTS, ROOT, make_source_submission, vmm_command
from harness.grader import grade
from vmm.trace import read_trace

pytestmark = pytest.mark.kvm

EXAMPLE_RUBRIC = ROOT / "examples" / "rubrics" / "echo.toml"
MUTANTS = GUESTS / "mutants"

# The reference guest, and correct guests with any timer period the spec allows, get full
# marks; every mutant of it loses exactly these points.
EXPECTED = {
    "echo.bin": 100, "echo.elf": 100,
    "echo-no_ack.bin": 6.67, "echo-no_timer.bin": 10, "echo-echo_once.bin": 56.25,
    "echo-drop_last.bin": 22.92, "echo-early_print.bin": 80, "echo-one_line.bin": 83.33,
    "echo-spin.bin": 10, "echo-triple_fault.bin": 10,
    "echo-127ms.bin": 100, "echo-200ms.bin": 100, "echo-5000ms.bin": 100,
}


@pytest.fixture
def rubric(tmp_path):
    """The shipped example rubric, with a short wall-time limit so the spinning mutant is
    stopped quickly (wall time only ever matters for a guest that spins without I/O)."""
    path = tmp_path / "echo.toml"
    path.write_text(EXAMPLE_RUBRIC.read_text().replace('wall_time = "5s"', 'wall_time = "1s"'))
    return path


def all_submissions() -> list[str]:
    return [str(GUESTS / "echo.bin"), str(GUESTS / "echo.elf")] + sorted(
        str(p) for p in MUTANTS.glob("echo-*.bin")) + sorted(
        str(p) for p in (GUESTS / "periods").glob("echo-*.bin"))


def scores(report: dict) -> dict:
    return {s["name"]: s["score"] for s in report["submissions"]}


def without_timing(value):
    """A report with its timing and informational fields removed."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items()
                if k not in ("execution_time", "info")}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def test_reference_gets_full_marks_and_every_mutant_its_known_score(tmp_path, rubric):
    report = grade(all_submissions(), str(rubric), str(tmp_path / "out"))
    assert scores(report) == EXPECTED
    by_name = {s["name"]: s for s in report["submissions"]}
    spin = {sc["name"]: sc for sc in by_name["echo-spin.bin"]["scenarios"]}
    assert spin["echo on every timer event, period honoured"]["end_reason"] == "spin"
    triple = by_name["echo-triple_fault.bin"]["scenarios"][1]
    assert triple["end_reason"] == "triple-fault" and "triple-faulted" in triple["reason"]


def test_j1_and_j2_give_identical_reports_and_traces(tmp_path, rubric):
    subs = all_submissions()
    one = grade(subs, str(rubric), str(tmp_path / "j1"), jobs=1)
    two = grade(subs, str(rubric), str(tmp_path / "j2"), jobs=2)
    assert without_timing(one) == without_timing(two)
    traces = sorted(p.relative_to(tmp_path / "j1") for p in (tmp_path / "j1").rglob("*.trace"))
    assert len(traces) == len(subs) * 6
    for rel in traces:
        a, b = read_trace(str(tmp_path / "j1" / rel)), read_trace(str(tmp_path / "j2" / rel))
        strip = lambda t: [t.header | {"info": None}, *t.records, t.end | {"info": None}]  # noqa
        assert strip(a) == strip(b), rel


def test_every_scenario_trace_replays_exactly(tmp_path, rubric, vmm):
    grade([str(GUESTS / "echo.bin"), str(MUTANTS / "echo-triple_fault.bin")], str(rubric),
          str(tmp_path / "out"))
    for trace in (tmp_path / "out").rglob("*.trace"):
        r = vmm("replay", "-q", trace)
        assert r.returncode == 0, (trace, r)


# --- submissions built from source ----------------------------------------------------------
def test_directory_and_tarball_submissions_are_built_and_graded(tmp_path, rubric):
    src = make_source_submission(tmp_path / "alice")
    with tarfile.open(tmp_path / "bob.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="bob-echo")
    report = grade([str(src), str(tmp_path / "bob.tar.gz")], str(rubric), str(tmp_path / "out"))
    assert scores(report) == {"alice": 100, "bob": 100}
    for name in ("alice", "bob"):
        sub = next(s for s in report["submissions"] if s["name"] == name)
        assert sub["build_status"] == "ok"
        assert "as --32" in (tmp_path / "out" / name / "build.log").read_text()


def test_a_failing_build_scores_zero_with_its_log(tmp_path, rubric):
    src = make_source_submission(tmp_path / "carol", "echo.bin:\n\tas --32 -o x.o nosuch.s\n")
    report = grade([str(src)], str(rubric), str(tmp_path / "out"))
    sub = report["submissions"][0]
    assert sub["score"] == 0 and sub["build_status"] == "failed"
    assert "the build failed" in sub["problem"] and sub["build_log"] == "carol/build.log"
    assert "nosuch.s" in (tmp_path / "out" / "carol" / "build.log").read_text()
    assert all(sc["reason"] == sub["problem"] for sc in sub["scenarios"])


def test_a_build_that_hangs_is_stopped(tmp_path, rubric):
    rubric.write_text(rubric.read_text().replace('timeout = "60s"', 'timeout = "1s"'))
    src = make_source_submission(tmp_path / "dave", "echo.bin:\n\tsleep 30\n")
    sub = grade([str(src)], str(rubric), str(tmp_path / "out"))["submissions"][0]
    assert sub["score"] == 0 and "longer than 1s" in sub["problem"]


def test_a_submission_without_a_makefile_scores_zero(tmp_path, rubric):
    (tmp_path / "erin").mkdir()
    report = grade([str(tmp_path / "erin")], str(rubric), str(tmp_path / "out"))
    assert report["submissions"][0]["problem"] == "the submission has no Makefile"
    assert report["submissions"][0]["score"] == 0


def test_a_path_that_does_not_exist_is_refused_before_grading(tmp_path, rubric, vmm):
    r = vmm("grade", "--rubric", rubric, "--out", tmp_path / "o", GUESTS / "echo.bin",
            tmp_path / "nobody.bin")
    assert r.returncode == 2 and "submission not found:" in r.stderr and r.stdout == ""


def test_builds_have_no_network(tmp_path, rubric):
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("this host cannot make network namespaces (unshare -n)")
    # A listening socket completes a connection in the kernel, without accept(): no thread
    # is needed (one blocked in accept() outlived this test and failed in a later one).
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    probe = (f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 2)\""
             " && echo NETWORK-REACHED || echo NETWORK-BLOCKED")
    src = make_source_submission(tmp_path / "frank")
    (src / "Makefile").write_text((src / "Makefile").read_text().replace(
        "echo.bin: echo.s ports.inc\n", f"echo.bin: echo.s ports.inc\n\t{probe}\n"))
    try:
        grade([str(src)], str(rubric), str(tmp_path / "out"))
    finally:
        server.close()
    log = (tmp_path / "out" / "frank" / "build.log").read_text()
    lines = log.splitlines()                      # (make echoes the command line itself)
    assert "NETWORK-BLOCKED" in lines and "NETWORK-REACHED" not in lines


# --- reports ---------------------------------------------------------------------------------
def test_reports_gradescope_junit_json_markdown(tmp_path, rubric):
    subs = [str(GUESTS / "echo.bin"), str(MUTANTS / "echo-one_line.bin")]
    grade(subs, str(rubric), str(tmp_path / "out"))
    out = tmp_path / "out"
    results = json.loads((out / "echo-one_line.bin" / "results.json").read_text())
    assert set(results) == {"score", "execution_time", "output", "tests"}
    assert results["score"] == 83.33
    for test in results["tests"]:
        assert set(test) == {"name", "score", "max_score", "status", "output", "visibility"}
        assert test["status"] in ("passed", "failed")
    lost = next(t for t in results["tests"] if t["name"] == "a new line replaces the old")
    assert lost["status"] == "failed" and "Replay it: vmm replay traces/" in lost["output"]
    assert next(t for t in results["tests"]
                if t["name"] == "line-buffered console output")["visibility"] == "after_due_date"
    suites = ET.parse(out / "junit.xml").getroot()
    assert [s.get("name") for s in suites] == ["echo.bin", "echo-one_line.bin"]
    assert suites[1].get("failures") == "1" and suites[0].get("failures") == "0"
    summary = (out / "summary.md").read_text()
    assert "| echo-one_line.bin | 83.33/100 |" in summary
    assert "### echo-one_line.bin (83.33/100)" in summary
    report = json.loads((out / "report.json").read_text())
    assert report["format"] == "vmm-grade-report" and report["rubric"]["max_score"] == 100


def test_shards_merge_into_the_unsharded_report(tmp_path, rubric, vmm):
    subs = all_submissions()[:5]
    whole = grade(subs, str(rubric), str(tmp_path / "whole"))
    for k in (1, 2):
        r = vmm("grade", "--rubric", rubric, "--out", tmp_path / f"s{k}", "--shard", f"{k}/2",
                *subs)
        assert r.returncode == 0, r
    r = vmm("grade", "merge", "--out", tmp_path / "merged", tmp_path / "s1", tmp_path / "s2")
    assert r.returncode == 0, r
    merged = json.loads((tmp_path / "merged" / "report.json").read_text())
    assert sorted(scores(merged).items()) == sorted(scores(whole).items())
    assert (tmp_path / "merged" / "echo.bin" / "traces").is_dir()
    assert (tmp_path / "merged" / "summary.md").exists()


# --- the command line ------------------------------------------------------------------------
def test_cli_prints_scores(tmp_path, rubric, vmm):
    r = vmm("grade", "--rubric", rubric, "--out", tmp_path / "out", GUESTS / "echo.bin",
            MUTANTS / "echo-no_timer.bin")
    assert r.returncode == 0, r
    assert r.lines == ["echo.bin: 100/100", "echo-no_timer.bin: 10/100"]
    # Not on a terminal: a line per submission on stderr as each is graded, then the total.
    progress = [line for line in r.stderr.splitlines() if line.startswith("vmm: graded ")]
    assert [line.split(" (")[0] for line in progress] == [
        "vmm: graded 1/2 echo.bin", "vmm: graded 2/2 echo-no_timer.bin",
        f"vmm: graded 2 submissions; reports in {tmp_path / 'out' / 'summary.md'}, report.json, "
        "junit.xml"]


def test_cli_says_one_submission(tmp_path, rubric, vmm):
    r = vmm("grade", "--rubric", rubric, "--out", tmp_path / "out", GUESTS / "echo.bin")
    assert r.returncode == 0, r
    assert r.stderr.splitlines()[-1].startswith("vmm: graded 1 submission; reports in")


@pytest.mark.parametrize("args, message", [
    (["--shard", "3/2"], "bad --shard '3/2'"),
    (["--shard", "x"], "bad --shard 'x'"),
])
def test_cli_bad_usage(tmp_path, rubric, vmm, args, message):
    r = vmm("grade", "--rubric", rubric, "--out", tmp_path / "o", *args, GUESTS / "echo.bin")
    assert r.returncode == 2 and message in r.stderr


@pytest.mark.parametrize("text, message", [
    ("title = 'x'\n", "'scenario' is required"),
    ("title = 1\n[[scenario]]\n", "title: expected str"),
    ("title='t'\n[[scenario]]\nname='a'\npoints=1\n[[scenario.check]]\ncontains='x'\nlines=[]\n",
     "give exactly one of"),
    ("title='t'\n[[scenario]]\nname='a'\npoints=1\nscript='wait 5'\n[[scenario.check]]\n"
     "contains='x'\n", "write a number with a unit"),
    ("title='t'\n[[scenario]]\nname='a'\npoints=1\n[[scenario.check]]\nend_reason='boom'\n",
     "end_reason: expected one or more of"),
    ("title='t'\n[[scenario]]\nname='a'\npoints=1\nvisibility='secret'\n"
     "[[scenario.check]]\ncontains='x'\n", "visibility: expected one of"),
    ("title='t'\nbogus=1\n", "unknown key 'bogus'"),
    ("not toml at all [", "is not valid TOML"),
])
def test_rubric_errors_are_one_line(tmp_path, vmm, text, message):
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    r = vmm("grade", "--rubric", bad, "--out", tmp_path / "o", GUESTS / "echo.bin")
    assert r.returncode == 2, r
    assert message in r.stderr and len(r.stderr.splitlines()) == 1


def test_missing_rubric(tmp_path, vmm):
    r = vmm("grade", "--rubric", tmp_path / "none.toml", "--out", tmp_path / "o", "x.bin")
    assert r.returncode == 2 and "rubric not found" in r.stderr


def test_merge_of_something_that_is_not_a_report(tmp_path, vmm):
    r = vmm("grade", "merge", "--out", tmp_path / "m", tmp_path)
    assert r.returncode == 2 and "no report.json" in r.stderr


def test_progress_bar_on_a_terminal(tmp_path, rubric):
    child = pexpect.spawn(vmm_command()[0], vmm_command("grade", "--rubric", str(rubric),
                          "--out", str(tmp_path / "o"), str(GUESTS / "echo.bin"),
                          str(MUTANTS / "echo-one_line.bin"))[1:], cwd=str(ROOT),
                          encoding="ascii", timeout=60)
    child.expect(r"\[#+\.*\] 1/2 graded, +\d+s left")
    child.expect(r"\[#+\] 2/2 graded")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


# --- what the guest did to its devices ---------------------------------------------------------
DEVICE_RUBRIC = '''title = "devices"
[boot]
mode = "real"
load = 0x1000
[limits]
max_time = "60s"
[[scenario]]
name = "s"
points = 40
script = \'\'\'
sendline "go"
wait 3 ticks within 30s
\'\'\'
  [[scenario.check]]
  timer_period_ms = [100, 1000]
  [[scenario.check]]
  keyboard_acked = true
  [[scenario.check]]
  echo_per_tick = "go"
  [[scenario.check]]
  max_lost_firings = 0
'''


def test_device_aware_checks(tmp_path):
    (tmp_path / "r.toml").write_text(DEVICE_RUBRIC)
    subs = [GUESTS / "echo.bin", GUESTS / "periods" / "echo-127ms.bin",
            GUESTS / "periods" / "echo-5000ms.bin", MUTANTS / "echo-no_ack.bin",
            MUTANTS / "echo-echo_once.bin"]
    report = grade([str(s) for s in subs], str(tmp_path / "r.toml"), str(tmp_path / "out"))
    details = {s["name"]: {c["description"]: (c["passed"], c["detail"])
                           for c in s["scenarios"][0]["checks"]} for s in report["submissions"]}
    period, acked, echo, lost = ("the timer period is 100-1000 ms", "every key is acknowledged",
                                 "one echo of 'go' per timer firing after it is entered",
                                 "at most 0 timer firings lost")
    assert all(passed for passed, _ in details["echo.bin"].values())
    assert details["echo-127ms.bin"][period] == (True, "")
    assert details["echo-5000ms.bin"][period] == (False, "it programmed 5000 ms, outside "
                                                         "100-1000 ms")
    assert details["echo-5000ms.bin"][echo] == (True, "")          # 3 ticks of 5 s each
    assert details["echo-no_ack.bin"][acked] == (False, "it acknowledged 0 of the 1 keys it "
                                                        "was given")
    assert details["echo-no_ack.bin"][echo] == (False, "'go' was never entered")
    assert details["echo-echo_once.bin"][echo] == (
        False, "4 timer firings after 'go' was entered, 1 echo of it")
    assert details["echo-echo_once.bin"][lost] == (True, "")
