"""Regrading the same class gives the same files: byte-identical apart from `info` and the
execution times (report.json, results.json, junit.xml) and each trace's `info` fields."""

from __future__ import annotations

import json
import re

import pytest

from conftest import GUESTS, ROOT, make_source_submission, records_without_info
from harness.grader import grade

pytestmark = pytest.mark.kvm


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in ("info", "execution_time")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def test_regrading_gives_the_same_files(tmp_path):
    rubric = tmp_path / "echo.toml"
    rubric.write_text((ROOT / "examples" / "rubrics" / "echo.toml").read_text()
                      .replace('wall_time = "5s"', 'wall_time = "1s"'))
    source = make_source_submission(tmp_path / "alice")
    subs = [str(source), str(GUESTS / "mutants" / "echo-one_line.bin"),
            str(GUESTS / "mutants" / "echo-triple_fault.bin")]
    first, second = tmp_path / "first", tmp_path / "second"
    grade(subs, str(rubric), str(first))
    grade(subs, str(rubric), str(second), jobs=2)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert len(files) > 30
    for rel in files:
        a, b = first / rel, second / rel
        if rel.suffix == ".json":
            assert _strip(json.loads(a.read_text())) == _strip(json.loads(b.read_text())), rel
        elif rel.suffix == ".xml":
            untimed = lambda p: re.sub(r' time="[0-9.]+"', "", p.read_text())  # noqa: E731
            assert untimed(a) == untimed(b), rel
        elif rel.suffix == ".trace":
            assert records_without_info(a) == records_without_info(b), rel
        else:
            assert a.read_bytes() == b.read_bytes(), rel
