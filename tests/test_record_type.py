"""vmm.record_type.Record: the plain records on `vmm run`'s path behave as the dataclasses
they replace (init by position or keyword, defaults, per-instance factories, eq, repr, frozen)."""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys

import pytest

from conftest import ROOT
from vmm.record_type import Record, factory


class Point(Record):
    x: int
    y: int = 0
    tags: list = factory(list)


class Frozen(Record, frozen=True):
    a: int
    b: str = "b"


def test_positional_keyword_and_default_fields():
    assert Point(1).__dict__ == {"x": 1, "y": 0, "tags": []}
    assert Point(1, 2, ["t"]) == Point(x=1, tags=["t"], y=2)
    assert Point(1).tags is not Point(1).tags          # a factory default per instance


def test_wrong_arguments_are_type_errors():
    with pytest.raises(TypeError, match="missing required argument 'x'"):
        Point()
    with pytest.raises(TypeError, match="unexpected or repeated argument 'z'"):
        Point(1, z=2)
    with pytest.raises(TypeError, match="unexpected or repeated argument 'x'"):
        Point(1, x=2)
    with pytest.raises(TypeError, match="takes 3 arguments, 4 given"):
        Point(1, 2, [], 4)


def test_a_field_without_a_default_may_not_follow_one_with():
    with pytest.raises(TypeError, match="field 'b' without a default follows"):
        class Bad(Record):
            a: int = 0
            b: int


def test_eq_repr_and_hash():
    assert repr(Point(1, 2)) == "Point(x=1, y=2, tags=[])"
    assert Point(1) != Point(2) and Point(1) != (1, 0, [])
    with pytest.raises(TypeError):
        hash(Point(1))                                  # mutable: unhashable, as a dataclass
    assert hash(Frozen(1)) == hash(Frozen(1)) and {Frozen(1), Frozen(1)} == {Frozen(1)}


def test_frozen_records_refuse_assignment_and_still_pickle():
    f = Frozen(1)
    with pytest.raises(AttributeError, match="cannot assign to field 'a' of a frozen Frozen"):
        f.a = 2
    with pytest.raises(AttributeError):
        del f.b
    assert pickle.loads(pickle.dumps(f)) == f


def _modules_a_run_loads(names: tuple[str, ...]) -> list[str]:
    """Which of `names` a `vmm run` of the reset-vector greeting (p3 board, KVM) imports."""
    import os
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("the KVM run path needs /dev/kvm")
    # Not measured by coverage, which (patch = subprocess) starts itself in child processes
    # and imports what this test looks for.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    env["VMM_BACKEND"] = "kvm"
    code = ("import sys, runpy; sys.argv = ['vmm', 'run', 'guests/build/reset-hello.bin', "
            "'--entry', 'reset']\ntry:\n    runpy.run_module('vmm', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            f"print(sorted(m for m in {names!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, env=env)
    assert out.stdout.startswith("Hello from the reset vector!"), out
    return ast.literal_eval(out.stdout.splitlines()[-1])


def test_vmm_run_does_not_import_dataclasses():
    """Start-up (bench row 3): the run path keeps off dataclasses (inspect, ast, dis, ...) and
    shutil. On KVM: the emulator's own imports are unicorn's business."""
    assert _modules_a_run_loads(("dataclasses", "inspect", "shutil")) == []


def test_vmm_run_on_the_p3_board_imports_only_what_it_uses():
    """Start-up (bench row 3): typing (~3 ms), hashlib (OpenSSL), base64, datetime, shlex,
    scripts, the text screen, the multiboot loader, the pc board's devices and the recorder are
    all for other runs: each is imported where it is used. (The 8259 pair is p3's too: its
    optional controller, dormant until the guest initialises it.)"""
    off_path = ("typing", "hashlib", "_hashlib", "base64", "datetime", "shlex", "json", "gzip",
                "vmm.screen", "vmm.screenlog", "vmm.script", "vmm.boot.multiboot", "vmm.trace",
                "vmm.record", "vmm.devices.pit", "vmm.devices.ps2", "vmm.devices.port92")
    assert _modules_a_run_loads(off_path) == []
