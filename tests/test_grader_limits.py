"""Each scenario's VMM runs in a process of its own with memory and CPU limits ([limits]
memory and cpu_time): a pathological guest or a VMM bug costs that scenario, never the run."""

from __future__ import annotations

import json
import os
import struct

import pytest

from conftest import GUESTS, ROOT, make_source_submission
from harness.grader import grade

pytestmark = pytest.mark.kvm

EXAMPLE = (ROOT / "examples" / "rubrics" / "echo.toml").read_text()


def rubric(tmp_path, **replace) -> str:
    text = EXAMPLE
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "rubric.toml"
    path.write_text(text)
    return str(path)


def elf32(data: bytes, address: int = 0x100000) -> bytes:
    """A minimal ELF32 executable: one PT_LOAD of `data` at `address`, entered at its start."""
    header = struct.pack("<4sBBBB8xHHIIIIIHHHHHH", b"\x7fELF", 1, 1, 1, 0, 2, 3, 1, address,
                         52, 0, 0, 52, 32, 1, 0, 0, 0)
    segment = struct.pack("<IIIIIIII", 1, 84, address, address, len(data), len(data), 7, 4)
    return header + segment + data


def test_a_guest_that_makes_the_vmm_too_big_costs_its_scenarios_only(tmp_path):
    big = tmp_path / "big.elf"                        # 40 MB of guest to hold in 32M of VMM
    big.write_bytes(elf32(os.urandom(40_000_000)))
    path = rubric(tmp_path, **{'wall_time = "5s"': 'wall_time = "10s"\nmemory = "32M"',
                               'mem = "16M"': 'mem = "64M"'})
    report = grade([str(big), str(GUESTS / "echo.bin")], path, str(tmp_path / "out"))
    big_result, echo = report["submissions"]
    assert big_result["score"] == 0
    for scenario in big_result["scenarios"]:
        assert scenario["end_reason"] == "vmm-limit"
        assert scenario["reason"] in ("the VMM went over its memory limit (32M)",
                                      "the VMM did not finish and was killed")
    assert echo["score"] == 100
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [s["score"] for s in saved["submissions"]] == [0, 100]


def test_a_guest_computing_forever_is_stopped_by_the_vmm_cpu_limit(tmp_path):
    # (without the instruction budget, which would end it first: tests/test_budgets.py)
    path = rubric(tmp_path, **{'wall_time = "5s"': 'wall_time = "30s"\ncpu_time = "1s"',
                               'max_instructions = "2M"': 'max_instructions = "none"'})
    report = grade([str(GUESTS / "faults" / "busy.bin")], path, str(tmp_path / "out"))
    spun = [sc for sc in report["submissions"][0]["scenarios"] if sc["end_reason"] == "vmm-limit"]
    assert spun, report["submissions"][0]["scenarios"]
    assert all(sc["reason"] == "the VMM went over its CPU-time limit (1s)" for sc in spun)


@pytest.mark.parametrize("text, message", [
    ('[limits]\nmemory = "0"\n', "limits.memory: must be more than 0"),
    ('[limits]\ncpu_time = "10ms"\n', "limits.cpu_time: must be at least 1s"),
    ('[build]\nprocesses = 0\n', "build.processes: must be at least 1"),
    ('[build]\nguest = "../x.bin"\n', "build.guest: expected a path inside the submission"),
    ('[build]\ndisk = "lots"\n', "build.disk"),
    ('[build]\nnetwork = true\n', "build: unknown key 'network'"),
])
def test_limit_errors_are_one_line(tmp_path, vmm, text, message):
    bad = tmp_path / "bad.toml"
    bad.write_text("title = 't'\n" + text + "[[scenario]]\nname = 'a'\npoints = 1\n"
                   "[[scenario.check]]\ncontains = 'x'\n")
    r = vmm("grade", "--rubric", bad, "--out", tmp_path / "o", GUESTS / "echo.bin")
    assert r.returncode == 2, r
    assert message in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


# --- gates and per-submission settings ------------------------------------------------------
GATED = '''title = "gated"
[boot]
mode = "protected"       # wrong for echo.bin: a submission must say how it starts
load = 0x1000
mem = "16M"
per_submission = ["mode", "load"]
[build]
guest = "echo.bin"
[[scenario]]
name = "echo"
points = 10
script = \'\'\'
sendline "hi"
wait 1200ms
\'\'\'
  [[scenario.check]]
  end_reason = "script-end"
  gate = true
  description = "it did not crash"
  [[scenario.check]]
  contains = "hi"
'''


def echo_source(folder, vmm_toml: str | None = None) -> str:
    extra = {"vmm.toml": vmm_toml} if vmm_toml is not None else None
    return str(make_source_submission(folder, extra=extra))


def test_a_failed_gate_takes_every_point_of_its_scenario(tmp_path):
    (tmp_path / "r.toml").write_text(GATED.replace('mode = "protected"', 'mode = "real"'))
    report = grade([str(GUESTS / "echo.bin"), str(GUESTS / "mutants" / "echo-triple_fault.bin")],
                   str(tmp_path / "r.toml"), str(tmp_path / "out"))
    good, crash = report["submissions"]
    assert good["score"] == 10
    assert crash["score"] == 0
    scenario = crash["scenarios"][0]
    assert 'no points: the gate "it did not crash" failed' in scenario["reason"]
    assert [c["score"] for c in scenario["checks"]] == [0, 0]


def test_a_submission_carries_its_own_boot_settings_within_the_rubric(tmp_path, vmm):
    (tmp_path / "r.toml").write_text(GATED)
    subs = tmp_path / "subs"
    right = echo_source(subs / "right", "[boot]\nmode = \"real\"\n")
    plain = echo_source(subs / "plain")
    greedy = echo_source(subs / "greedy", "[boot]\nmode = \"real\"\nmem = \"64M\"\n")
    broken = echo_source(subs / "broken", "[boot\nload = 1\n")
    report = grade([right, plain, greedy, broken], str(tmp_path / "r.toml"),
                   str(tmp_path / "out"), overrides={"plain": {"mode": "real"}})
    by_name = {s["name"]: s for s in report["submissions"]}
    assert by_name["right"]["score"] == 10
    assert by_name["right"]["settings"] == {"mode": "real", "load": "0x1000", "mem": 16 << 20}
    assert by_name["plain"]["score"] == 10                 # the staff's override
    assert by_name["greedy"]["score"] == 0
    assert by_name["greedy"]["problem"] == ("vmm.toml [boot]: the rubric does not let a "
                                            "submission set 'mem' (it allows mode, load)")
    assert by_name["broken"]["score"] == 0
    assert by_name["broken"]["problem"].startswith("vmm.toml is not valid TOML")
    alone = grade([plain], str(tmp_path / "r.toml"), str(tmp_path / "alone"))
    assert alone["submissions"][0]["score"] == 0           # started in protected mode: no echo
    bad = tmp_path / "overrides.toml"
    bad.write_text("[nobody]\nload = 4096\n")
    r = vmm("grade", "--rubric", tmp_path / "r.toml", "--out", tmp_path / "o", "--overrides",
            bad, plain)
    assert r.returncode == 2 and "--overrides names 'nobody'" in r.stderr, r
    bad.write_text("[plain]\nboard = 'pc9801'\n")
    r = vmm("grade", "--rubric", tmp_path / "r.toml", "--out", tmp_path / "o", "--overrides",
            bad, plain)
    assert r.returncode == 2 and "[plain].board: expected one of p3, pc, got 'pc9801'" in r.stderr, r
