"""`vmm grade bundle`: the Gradescope autograder zip, run as Gradescope would run it, in a fake
/autograder root bind-mounted with bubblewrap on this machine: setup.sh installs vmm from the
wheel inside the zip, run_autograder grades /autograder/submission into results.json."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile

import pytest

from conftest import GUESTS, ROOT, echo_source_files

pytestmark = [pytest.mark.kvm, pytest.mark.skipif(shutil.which("bwrap") is None,
                                                  reason="needs bubblewrap (make test installs it)")]

RUBRIC = ROOT / "examples" / "rubrics" / "echo.toml"


def in_autograder(root, script: str, proc: bool = False) -> subprocess.CompletedProcess:
    """Run /autograder/source/SCRIPT with `root` mounted at /autograder (and, with `proc`, a
    fresh /proc over the host's, under which no nested sandbox can mount its own: the way a
    Docker container without user namespaces behaves)."""
    argv = ["bwrap", "--dev-bind", "/", "/", "--bind", str(root), "/autograder",
            *(["--proc", "/proc"] if proc else []), "--", "bash", f"/autograder/source/{script}"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def autograder(tmp_path_factory, vmm_module):
    tmp = tmp_path_factory.mktemp("gradescope")
    r = vmm_module("grade", "bundle", "--rubric", RUBRIC, "-o", tmp / "autograder.zip",
                   "--leaderboard")
    assert r.returncode == 0, r
    root = tmp / "autograder"
    for part in ("source", "submission", "results"):
        (root / part).mkdir(parents=True)
    with zipfile.ZipFile(tmp / "autograder.zip") as z:
        names = z.namelist()
        modes = {i.filename: i.external_attr >> 16 for i in z.infolist()}
        z.extractall(root / "source")
    for name in ("setup.sh", "run_autograder"):
        (root / "source" / name).chmod(modes[name] & 0o777)
    setup = in_autograder(root, "setup.sh")
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    return {"root": root, "names": names, "modes": modes}


@pytest.fixture(scope="module")
def vmm_module():
    from conftest import Result, vmm_command

    def run(*args):
        return Result(subprocess.run(vmm_command(*map(str, args)), capture_output=True,
                                     cwd=ROOT, timeout=60))
    return run


def submit(autograder, files: dict) -> dict:
    sub = autograder["root"] / "submission"
    shutil.rmtree(sub)
    sub.mkdir()
    for name, data in files.items():
        (sub / name).write_bytes(data)
    results = autograder["root"] / "results" / "results.json"
    results.unlink(missing_ok=True)
    return sub


def echo_source() -> dict:
    return echo_source_files()


def results(autograder) -> dict:
    return json.loads((autograder["root"] / "results" / "results.json").read_text())


def test_the_zip_has_what_gradescope_needs(autograder):
    assert {"setup.sh", "run_autograder", "rubric.toml", "bundle.json"} <= set(autograder["names"])
    assert any(n.startswith("vmm-") and n.endswith(".whl") for n in autograder["names"])
    assert autograder["modes"]["setup.sh"] & 0o111 and autograder["modes"]["run_autograder"] & 0o111


def test_a_source_submission_is_built_in_the_sandbox_and_scored(autograder):
    submit(autograder, echo_source())
    r = in_autograder(autograder["root"], "run_autograder")
    assert r.returncode == 0, r.stderr
    out = results(autograder)
    assert out["score"] == 100 and len(out["tests"]) == 6
    assert all(t["status"] == "passed" for t in out["tests"])
    assert out["leaderboard"] == [{"name": "score", "value": 100, "order": "desc"}]
    assert "Built without" not in out["output"]
    assert "vmm replay traces/" in out["tests"][0]["output"]


def test_without_user_namespaces_it_builds_unsandboxed_and_says_so(autograder):
    submit(autograder, echo_source())
    r = in_autograder(autograder["root"], "run_autograder", proc=True)
    assert r.returncode == 0, r.stderr
    out = results(autograder)
    assert out["score"] == 100 and "Built without vmm's sandbox" in out["output"]


def test_a_guest_binary_and_a_bad_hand_in(autograder):
    submit(autograder, {"kernel.bin": (GUESTS / "mutants" / "echo-one_line.bin").read_bytes()})
    assert in_autograder(autograder["root"], "run_autograder").returncode == 0
    assert results(autograder)["score"] == 83.33
    submit(autograder, {"a.txt": b"x", "b.txt": b"y"})
    assert in_autograder(autograder["root"], "run_autograder").returncode == 0
    out = results(autograder)
    assert out["score"] == 0 and "hand in either your kernel's source" in out["output"]


def test_bundle_refuses_a_bad_rubric(tmp_path, vmm):
    bad = tmp_path / "bad.toml"
    bad.write_text("title = 1\n")
    r = vmm("grade", "bundle", "--rubric", bad, "-o", tmp_path / "a.zip")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and not (tmp_path / "a.zip").exists()
