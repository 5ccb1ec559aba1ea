"""The example submissions the README grades: what they score, and that they stay the echo
guest's own source (the reference and mutants of it, as directories and as a tarball)."""

from __future__ import annotations

import re
import tarfile

import pytest

from conftest import ROOT

pytestmark = pytest.mark.kvm

SUBMISSIONS = ROOT / "examples" / "submissions"
RUBRIC = ROOT / "examples" / "rubrics" / "echo.toml"
SCORES = {"alice": 100, "bob": 83.33, "carol": 56.25, "dave": 10, "erin": 22.92}
SOURCES = {"echo.s": ROOT / "guests" / "echo.s",
           "ports.inc": ROOT / "guests" / "include" / "ports.inc"}


def test_the_readme_grading_command_scores_every_example(tmp_path, vmm):
    r = vmm("grade", "--rubric", RUBRIC, "--out", tmp_path / "results", "-j", "2",
            *sorted(SUBMISSIONS.iterdir()))
    assert r.returncode == 0, r
    assert r.lines == [f"{name}: {score:g}/100" for name, score in SCORES.items()]


def test_the_examples_are_plain_copies_of_the_echo_guest():
    folders = sorted(p for p in SUBMISSIONS.iterdir() if p.is_dir())
    assert [p.name for p in folders] + ["erin"] == list(SCORES)
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == ["Makefile", "echo.s", "ports.inc"]
        for name, original in SOURCES.items():
            assert (folder / name).read_bytes() == original.read_bytes(), (folder, name)
    with tarfile.open(SUBMISSIONS / "erin.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["erin", "erin/Makefile", "erin/echo.s",
                                          "erin/ports.inc"]
        for name, original in SOURCES.items():
            assert tar.extractfile(f"erin/{name}").read() == original.read_bytes(), name


def test_every_example_path_the_readme_names_exists():
    text = (ROOT / "README.md").read_text()
    paths = set(re.findall(r"\bexamples/[\w./-]*\w", text))
    assert "examples/submissions" in {p.rstrip("/*") for p in paths} or any(
        p.startswith("examples/submissions") for p in paths)
    for path in paths:
        assert (ROOT / path).exists(), path
