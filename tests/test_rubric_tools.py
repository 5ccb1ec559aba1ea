"""`vmm grade rubric --public` (students reproduce the visible scores) and `vmm grade diff`."""

from __future__ import annotations

import json
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import GUESTS, ROOT
from harness.grader import grade
from harness.rubric_tools import dumps

pytestmark = pytest.mark.kvm

EXAMPLE = ROOT / "examples" / "rubrics" / "echo.toml"


@pytest.fixture
def rubric(tmp_path):
    path = tmp_path / "echo.toml"
    path.write_text(EXAMPLE.read_text().replace('wall_time = "5s"', 'wall_time = "1s"'))
    return path


def test_students_get_the_graders_scores_for_the_visible_scenarios(tmp_path, rubric, vmm):
    r = vmm("grade", "rubric", "--public", rubric)
    assert r.returncode == 0, r
    public = tmp_path / "public.toml"
    public.write_text(r.stdout)
    data = tomllib.loads(r.stdout)
    assert [s.get("visibility", "visible") for s in data["scenario"]] == ["visible"] * 5
    assert "line-buffered console output" not in r.stdout      # the after_due_date scenario
    subs = [str(GUESTS / "echo.bin"), str(GUESTS / "mutants" / "echo-one_line.bin"),
            str(GUESTS / "mutants" / "echo-drop_last.bin")]
    staff = grade(subs, str(rubric), str(tmp_path / "staff"))
    student = grade(subs, str(public), str(tmp_path / "student"))
    for a, b in zip(staff["submissions"], student["submissions"]):
        visible = {sc["name"]: sc["score"] for sc in a["scenarios"]
                   if sc["visibility"] == "visible"}
        assert {sc["name"]: sc["score"] for sc in b["scenarios"]} == visible


def test_a_rubric_with_nothing_visible_has_no_public_form(tmp_path, vmm):
    path = tmp_path / "r.toml"
    path.write_text("title = 't'\n[[scenario]]\nname = 'a'\npoints = 1\nvisibility = 'hidden'\n"
                    "[[scenario.check]]\ncontains = 'x'\n")
    r = vmm("grade", "rubric", "--public", path)
    assert r.returncode == 2 and "no visible scenario" in r.stderr
    r = vmm("grade", "rubric", tmp_path / "missing.toml")
    assert r.returncode == 2 and "rubric not found" in r.stderr


text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
scalar = st.one_of(text, st.integers(-2**63, 2**63 - 1), st.booleans(),
                   st.floats(allow_nan=False, allow_infinity=False))
table = st.dictionaries(text, st.one_of(scalar, st.lists(text, max_size=3)), max_size=4)


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({"title": text, "boot": table,
                              "scenario": st.lists(st.fixed_dictionaries(
                                  {"name": text, "script": text,
                                   "check": st.lists(table, min_size=1, max_size=2)}),
                                  min_size=1, max_size=3)}))
def test_the_toml_writer_round_trips(data):
    assert tomllib.loads(dumps(data)) == data


def test_grade_diff_shows_what_changed(tmp_path, rubric, vmm):
    subs = [str(GUESTS / "echo.bin"), str(GUESTS / "mutants" / "echo-one_line.bin")]
    grade(subs, str(rubric), str(tmp_path / "a"))
    grade(subs, str(rubric), str(tmp_path / "b"))
    r = vmm("grade", "diff", tmp_path / "a", tmp_path / "b")
    assert r.returncode == 0 and r.stdout == "" and "the same scores" in r.stderr, r
    changed = tmp_path / "changed.toml"
    changed.write_text(rubric.read_text().replace("points = 25", "points = 30", 1))
    grade([subs[0], str(GUESTS / "mutants" / "echo-drop_last.bin")], str(changed),
          str(tmp_path / "c"))
    r = vmm("grade", "diff", tmp_path / "a", tmp_path / "c")
    assert r.returncode == 1, r
    assert r.lines[0].startswith("rubric: echo.toml (")
    assert "echo.bin: 100/100 -> 105/105 (+5)" in r.lines
    assert "echo-one_line.bin: gone (was 83.33/100)" in r.lines
    assert any(line.startswith("echo-drop_last.bin: new, ") and line.endswith("/105")
               for line in r.lines), r.lines
    r = vmm("grade", "diff", tmp_path / "a", tmp_path / "nothing")
    assert r.returncode == 2 and "no report.json" in r.stderr
    json.loads((tmp_path / "a" / "report.json").read_text())
