"""Each scenario's VMM runs in a process of its own with memory and CPU limits ([limits]
memory and cpu_time): a pathological guest or a VMM bug costs that scenario, never the run."""

from __future__ import annotations

import json
import os
import struct

import pytest

from conftest import GUESTS, ROOT
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


def test_a_spinning_guest_is_stopped_by_the_vmm_cpu_limit(tmp_path):
    path = rubric(tmp_path, **{'wall_time = "5s"': 'wall_time = "30s"\ncpu_time = "1s"'})
    report = grade([str(GUESTS / "mutants" / "echo-spin.bin")], path, str(tmp_path / "out"))
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
