"""Shared test fixtures: where the guests are, how to run `vmm` as a user would, KVM detection."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
GUESTS = ROOT / "guests" / "build"


def kvm_usable() -> bool:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
        return True
    except OSError:
        return False


def pytest_collection_modifyitems(config, items):
    if kvm_usable():
        return
    skip = pytest.mark.skip(reason="needs /dev/kvm, which this host does not provide")
    for item in items:
        if "kvm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def guests() -> Path:
    """The built guests; built on demand so `pytest` alone works after a fresh clone."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests")], check=True)
    return GUESTS


def vmm_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "vmm", *args]


class Result:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.returncode = proc.returncode
        self.stdout = proc.stdout.decode("ascii", "replace")
        self.stderr = proc.stderr.decode("ascii", "replace")
        self.lines = self.stdout.splitlines()

    def __repr__(self) -> str:
        return f"<vmm exit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}>"


@pytest.fixture
def vmm():
    """Run `vmm ARGS...` in a subprocess, as a user would; returns a Result."""
    def run(*args: str, input: bytes | None = b"", env: dict | None = None,
            timeout: float = 60) -> Result:
        full_env = dict(os.environ, **(env or {}))
        proc = subprocess.run(vmm_command(*map(str, args)), input=input, capture_output=True,
                              cwd=ROOT, env=full_env, timeout=timeout)
        result = Result(proc)
        assert "Traceback" not in result.stderr, result
        return result
    return run


@pytest.fixture
def project(pytester, guests):
    """A pytester project holding copies of the echo guests under guests/ (so that goldens
    name them by a path relative to the project)."""
    (pytester.path / "guests").mkdir()
    for name in ("echo.bin", "echo.elf", "longmode.elf"):
        shutil.copy(GUESTS / name, pytester.path / "guests" / name)
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider\n")
    return pytester
