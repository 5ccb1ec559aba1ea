"""Shared test fixtures: where the guests are, how to run `vmm` as a user would, backend
detection. The key integration modules (BACKEND_MODULES) run once per usable CPU backend: on KVM
and on the emulator where /dev/kvm exists, on the emulator alone where it does not; setting
VMM_BACKEND=kvm or =emu runs everything on that backend only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vmm.trace import read_trace

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
GUESTS = ROOT / "guests" / "build"


# Integration modules whose tests run on every usable backend (parametrized as [kvm], [emu]).
BACKEND_MODULES = {"test_run_guests", "test_run_failures", "test_record_replay", "test_goldens",
                   "test_irq_kernels"}


def kvm_usable() -> bool:
    try:
        os.close(os.open(os.environ.get("VMM_KVM_PATH", "/dev/kvm"), os.O_RDWR | os.O_CLOEXEC))
        return True
    except OSError:
        return False


def emu_usable() -> bool:
    import importlib.util
    return importlib.util.find_spec("unicorn") is not None


def test_backends() -> list[str]:
    """The backends integration tests run on here."""
    chosen = os.environ.get("VMM_BACKEND")
    if chosen == "kvm":
        return ["kvm"] if kvm_usable() else []
    if chosen == "emu":
        return ["emu"] if emu_usable() else []
    return [name for name, usable in (("kvm", kvm_usable()), ("emu", emu_usable())) if usable]


def current_backend() -> str:
    """The backend a test runs on now ($VMM_BACKEND, as the vmm_backend fixture sets it, or
    what auto picks)."""
    chosen = os.environ.get("VMM_BACKEND")
    if chosen in ("kvm", "emu"):
        return chosen
    return "kvm" if kvm_usable() else "emu"


test_backends.__test__ = False          # not a test, despite its name


@pytest.hookimpl(trylast=True)         # after the tests' own parametrization: ids end in -kvm
def pytest_generate_tests(metafunc):
    if metafunc.module.__name__.rpartition(".")[2] in BACKEND_MODULES \
            and "vmm_backend" in metafunc.fixturenames:
        metafunc.parametrize("vmm_backend", test_backends() or ["none"], indirect=True)


@pytest.fixture(autouse=True)
def vmm_backend(request, monkeypatch):
    """In BACKEND_MODULES, the backend the test runs on (every run of vmm follows
    $VMM_BACKEND: subprocesses, live_run, replay_trace and GuestSession alike)."""
    name = getattr(request, "param", None)
    if name == "none":
        pytest.skip("no CPU backend is usable here (neither /dev/kvm nor unicorn)")
    if name is not None:
        monkeypatch.setenv("VMM_BACKEND", name)
    return name


def pytest_collection_modifyitems(config, items):
    if test_backends():
        return
    skip = pytest.mark.skip(reason="needs /dev/kvm or the emulator (unicorn), and this host "
                                   "has neither")
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


def records_without_info(path) -> list[dict]:
    """Every record of a trace, minus the fields DESIGN §6 allows to differ (under `info`)."""
    trace = read_trace(str(path))
    out = []
    for record in [trace.header, *trace.records, trace.end]:
        record = dict(record)
        record.pop("info", None)
        out.append(record)
    return out


# The echo guest handed in as source: what a student's directory submission looks like.
ECHO_BUILD = ("echo.bin: echo.s ports.inc\n"
              "\tas --32 -o echo.o echo.s\n"
              "\tld -m elf_i386 -Ttext 0x1000 --oformat binary -o echo.bin echo.o\n")


def echo_source_files(makefile: str | None = None) -> dict[str, bytes]:
    """The echo guest's source and a Makefile producing echo.bin, as {name: bytes}."""
    return {"echo.s": (ROOT / "guests" / "echo.s").read_bytes(),
            "ports.inc": (ROOT / "guests" / "include" / "ports.inc").read_bytes(),
            "Makefile": (makefile or ECHO_BUILD).encode()}


def make_source_submission(folder: Path, makefile: str | None = None,
                           extra: dict[str, str] | None = None) -> Path:
    """A student's hand-in: the echo guest's source and a Makefile (by default one producing
    echo.bin) in a new folder, with `extra` files beside them."""
    folder.mkdir(parents=True)
    for name, data in echo_source_files(makefile).items():
        (folder / name).write_bytes(data)
    for name, text in (extra or {}).items():
        (folder / name).write_text(text)
    return folder

