"""The vmm pytest plugin: guest sessions and golden traces as fixtures, trace files as tests.

Registered through the `pytest11` entry point, so it is active once the package is installed.
This module is thin — options, fixtures, hooks; the work is done by harness.session and
harness.golden, which never import pytest.

Fixtures:  vm (a factory of GuestSessions, closed after the test), golden (compare a session
           with traces/<module>/<test>.trace), vm_guest and vm_options (defaults to override in
           conftest.py).
Options:   --update-goldens, --vmm-goldens DIR, --vmm-artifacts DIR  (and ini keys vmm_guest,
           vmm_goldens, vmm_artifacts, vmm_trace_tests).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

try:
    import pytest
except ImportError:
    raise ImportError("harness.pytest_plugin is vmm's pytest plugin, and pytest is not "
                      "installed: pip install 'vmm[pytest]'") from None

from vmm.errors import VmmError

from .golden import compare_with_golden, safe_name, write_golden

KVM_SKIP_REASON = "vmm: needs a usable /dev/kvm, which this host does not provide"


EMU_SKIP_REASON = "vmm: needs /dev/kvm or the emulator (the unicorn package), and has neither"


def kvm_usable() -> bool:
    from vmm.runner import kvm_path
    try:
        os.close(os.open(kvm_path(), os.O_RDWR | os.O_CLOEXEC))
        return True
    except OSError:
        return False


def _emu_missing() -> bool:
    import importlib.util
    return importlib.util.find_spec("unicorn") is None


def backend_missing() -> str | None:
    """Why guests cannot run here (a skip reason), or None: the backend that $VMM_BACKEND (or
    auto) picks is usable — KVM, or else the emulator."""
    from vmm.runner import resolve_backend
    choice = resolve_backend()
    if choice != "emu" and kvm_usable():
        return None
    if choice == "kvm":
        return KVM_SKIP_REASON
    import importlib.util
    return None if importlib.util.find_spec("unicorn") is not None else EMU_SKIP_REASON


def pytest_addoption(parser):
    group = parser.getgroup("vmm", "vmm guest sessions and golden traces")
    group.addoption("--update-goldens", action="store_true", default=False,
                    help="write or rewrite the golden traces of the tests that run, instead of "
                         "comparing with them")
    group.addoption("--vmm-goldens", metavar="DIR", default=None,
                    help="directory of golden traces (default: ini vmm_goldens, or 'traces')")
    group.addoption("--vmm-artifacts", metavar="DIR", default=None,
                    help="where the actual traces of failed tests are kept (default: ini "
                         "vmm_artifacts, or '.vmm-artifacts')")
    parser.addini("vmm_guest", "default guest binary for the vm fixture", default=None)
    parser.addini("vmm_goldens", "directory of golden traces", default="traces")
    parser.addini("vmm_artifacts", "directory for the traces of failed tests",
                  default=".vmm-artifacts")
    parser.addini("vmm_trace_tests", "collect *.trace files as re-drive tests", type="bool",
                  default=True)


class VmmState:
    """What one pytest run knows about goldens: used, written, and where they live."""

    def __init__(self, config):
        root = Path(config.rootpath)
        self.root = root
        self.goldens = root / (config.getoption("vmm_goldens") or config.getini("vmm_goldens"))
        self.artifacts = root / (config.getoption("vmm_artifacts")
                                 or config.getini("vmm_artifacts"))
        self.update = config.getoption("update_goldens")
        self.used: set[str] = set()
        self.written: list[str] = []
        self.modules: set[str] = set()        # test modules that ran a golden comparison
        self.kvm_skips = 0
        self.saved_artifacts: list[str] = []
        self.scratch = Path(tempfile.mkdtemp(prefix="vmm-pytest-"))

    def golden_path(self, item) -> Path:
        module = Path(str(item.path)).stem
        return self.goldens / module / (safe_name(_golden_name(item)) + ".trace")


def _golden_name(item) -> str:
    """The test's name, without a `vmm_backend` parametrization: a test run on each CPU
    backend compares every run with the same golden."""
    callspec = getattr(item, "callspec", None)
    backend = callspec.params.get("vmm_backend") if callspec is not None else None
    ids = list(getattr(callspec, "_idlist", ()))
    if backend is None or str(backend) not in ids:
        return item.name
    del ids[len(ids) - 1 - ids[::-1].index(str(backend))]
    return item.originalname + (f"[{'-'.join(ids)}]" if ids else "")


_STATE = pytest.StashKey[VmmState]()
_SESSIONS = pytest.StashKey[list]()


def pytest_configure(config):
    config.stash[_STATE] = VmmState(config)
    config.addinivalue_line("markers", "vmm_kvm: the test runs guests on /dev/kvm")


def _state(config) -> VmmState:
    return config.stash[_STATE]


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture
def vm_guest(request):
    """The guest `vm()` starts when given none: ini `vmm_guest`, relative to the rootdir."""
    return request.config.getini("vmm_guest") or None


@pytest.fixture
def vm_options():
    """Boot options every `vm()` call starts from (mode, load, entry, mem, stack, cpuid, ...)."""
    return {}


@pytest.fixture
def vm(request, vm_guest, vm_options):
    """A factory of guest sessions: vm("guests/build/echo.bin", mode="real") -> GuestSession.
    Sessions run under the virtual clock and are closed after the test."""
    missing = backend_missing()
    if missing:
        pytest.skip(missing)
    from .session import GuestSession
    state = _state(request.config)
    sessions = request.node.stash.setdefault(_SESSIONS, [])

    def start(guest: str | None = None, **options) -> GuestSession:
        guest = guest or vm_guest
        if guest is None:
            raise ValueError("vm() needs a guest: vm('guests/build/x.bin'), or set vmm_guest in "
                             "the ini file, or override the vm_guest fixture")
        path = Path(guest)
        if not path.is_absolute():
            path = state.root / path
        if not path.is_file():
            pytest.fail(_guest_not_found(guest, path, request.config), pytrace=False)
        try:
            relative = str(path.resolve().relative_to(state.root.resolve()))
        except ValueError:
            relative = None
        trace = state.scratch / f"{safe_name(request.node.nodeid)}-{len(sessions)}.trace"
        try:
            session = GuestSession(str(path), trace=str(trace), guest_path=relative,
                                   **{**vm_options, **options})
        except VmmError as e:                # a guest that cannot boot, a bad option: one line
            pytest.fail(f"vm({str(guest)!r}): {e}", pytrace=False)
        sessions.append(session)
        return session

    yield start
    for session in sessions:
        session.close()


def _guest_not_found(guest, path: Path, config) -> str:
    where = (f"the directory of {config.inipath.name}" if config.inipath is not None else
             "no pytest configuration file was found, so it is where pytest was started or "
             "the common directory of its arguments")
    return (f"vm({str(guest)!r}): no guest file at {path}: a relative guest path is relative to "
            f"pytest's rootdir, {config.rootpath} ({where}). Give an absolute path, or put a "
            "pytest configuration file (pytest.ini, or [tool.pytest.ini_options] in "
            "pyproject.toml) at the top of your repository")


class Golden:
    """`assert session == golden`: compares (or, with --update-goldens, writes) the golden
    trace named after the test."""

    def __init__(self, path: Path, state: VmmState, artifact: Path):
        self.path, self.state, self.artifact = path, state, artifact
        self.comparison = None
        self.problem: str | None = None

    def __eq__(self, session) -> bool:
        from .session import GuestSession
        if not isinstance(session, GuestSession):
            return NotImplemented
        self.state.used.add(str(self.path))
        if self.state.update:
            write_golden(session, self.path)
            self.state.written.append(str(self.path))
            return True
        if not self.path.exists():
            session.close()
            self.problem = (f"no golden trace at {self._shown(self.path)}: run pytest with "
                            "--update-goldens to create it from this session, review it, and "
                            "commit it")
            return False
        self.comparison = compare_with_golden(session, self.path, self._shown(self.path))
        return self.comparison.ok

    __hash__ = None

    def _shown(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.state.root))
        except ValueError:
            return str(path)

    def summary(self) -> list[str]:
        """What the assertion message says: what differs, and the first difference."""
        return [self.problem] if self.problem else self.comparison.summary()

    def details(self) -> list[str]:
        """The report's 'vmm golden' section: the whole diff (pytest truncates long assertion
        messages); the summary is not repeated there, nor the kept trace (the 'vmm' section)."""
        return [] if self.problem else self.comparison.details()

    @property
    def failed(self) -> bool:
        return self.problem is not None or (self.comparison is not None
                                            and not self.comparison.ok)

    def __repr__(self) -> str:
        return f"golden({self._shown(self.path)})"


_GOLDEN = pytest.StashKey[Golden]()


@pytest.fixture
def golden(request):
    state = _state(request.config)
    state.modules.add(Path(str(request.node.path)).stem)
    path = state.golden_path(request.node)
    fixture = Golden(path, state, state.artifacts / (safe_name(request.node.nodeid) + ".trace"))
    request.node.stash[_GOLDEN] = fixture
    return fixture


def pytest_assertrepr_compare(config, op, left, right):
    for side in (left, right):
        if op == "==" and isinstance(side, Golden):
            return [f"session == {side!r}"] + side.summary() + (
                ["(the whole diff is in the 'vmm golden' section below)"] if side.details()
                else [])
    return None


# --- keeping the traces of failed tests ---------------------------------------------------------
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "setup" and report.skipped and isinstance(report.longrepr, tuple) \
            and "vmm: needs" in str(report.longrepr[2]):
        _state(item.config).kvm_skips += 1
    if report.when != "call" and not (report.when == "teardown" and report.failed):
        return
    sessions = item.stash.get(_SESSIONS, [])
    if not sessions:
        return
    state = _state(item.config)
    if report.failed:
        fixture = item.stash.get(_GOLDEN, None)
        if fixture is not None and fixture.failed and fixture.details():
            report.sections.append(("vmm golden", "\n".join(fixture.details())))
        state.artifacts.mkdir(parents=True, exist_ok=True)
        for index, session in enumerate(sessions):
            session.close()
            name = safe_name(item.nodeid) + (f"-{index}" if index else "") + ".trace"
            target = state.artifacts / name
            shutil.copyfile(session.trace_path, target)
            state.saved_artifacts.append(str(target))
            shown = _relative(target, state.root)
            report.sections.append(("vmm", f"actual trace kept: {shown}  "
                                           f"(reproduce with: vmm replay {shown})"))


# --- trace files are tests by themselves ---------------------------------------------------------
def pytest_collect_file(file_path, parent):
    if not parent.config.getini("vmm_trace_tests"):
        return None
    if file_path.name.endswith((".trace", ".trace.gz")):
        return TraceFile.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(session, config, items):
    """A golden trace is checked once: by the test that compares with it, when that test is
    collected too, and not again as a trace test of its own (`pytest traces/` still re-drives
    every trace). The trace tests left out are reported as deselected."""
    state = _state(config)
    owned = {str(state.golden_path(item)) for item in items
             if not isinstance(item, TraceItem) and "golden" in getattr(item, "fixturenames", ())}
    if not owned:
        return
    keep, dropped = [], []
    for item in items:
        (dropped if isinstance(item, TraceItem) and str(item.path) in owned else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


class TraceMismatch(Exception):
    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


class TraceFile(pytest.File):
    def collect(self):
        yield TraceItem.from_parent(self, name=self.path.name)


class TraceItem(pytest.Item):
    """Re-drive a trace's recorded inputs against the guest it names and compare output.
    Where KVM (picked by auto) stops at an instruction it cannot execute and the recording
    went on (this project's host: IRET in protected mode), the re-drive is done again on the
    emulator, as vmm's message advises; with $VMM_BACKEND=kvm, or no emulator, it is skipped."""

    def runtest(self):
        from vmm.errors import VmmError
        from vmm.runner import replay_trace, resolve_backend
        from vmm.trace import read_trace
        try:
            trace = read_trace(str(self.path))
        except VmmError as e:
            raise TraceMismatch([str(e)]) from None
        guest = trace.header["guest"].get("path")
        if not isinstance(guest, str):
            raise TraceMismatch([f"{self.path.name} does not say where its guest is built (the "
                                 "header's guest.path); record it with the vm fixture"])
        missing = backend_missing()
        if missing:
            pytest.skip(missing)
        guest_path = Path(self.config.rootpath) / guest
        if not guest_path.exists():
            raise TraceMismatch([f"the guest {guest} named by {self.path.name} does not exist: "
                                 "build it first (make guests)"])
        try:
            result = replay_trace(str(self.path), guest=str(guest_path))
            if result.end.reason == "kvm-error" and (trace.end or {}).get("reason") != "kvm-error":
                why = f"KVM cannot run {guest} where the recording went on: {result.end.message}"
                if resolve_backend() == "kvm" or _emu_missing():
                    pytest.skip(why)
                self.add_report_section("call", "vmm", f"{why}\nre-driven on the emulator")
                result = replay_trace(str(self.path), guest=str(guest_path), backend="emu")
        except VmmError as e:
            raise TraceMismatch([str(e)]) from None
        if result.exit_code != 0:
            raise TraceMismatch(result.report)

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, TraceMismatch):
            return "\n".join(excinfo.value.lines)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, 0, f"vmm trace: {self.path.name}"


# --- unused goldens and the summary --------------------------------------------------------------
def pytest_sessionfinish(session, exitstatus):
    state = _state(session.config)
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:                       # an xdist worker: report to the controller
        workeroutput["vmm_used"] = sorted(state.used)
        workeroutput["vmm_modules"] = sorted(state.modules)
        workeroutput["vmm_kvm_skips"] = state.kvm_skips
        workeroutput["vmm_written"] = state.written
    shutil.rmtree(state.scratch, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    state = _state(node.config)
    out = getattr(node, "workeroutput", {}) or {}
    state.used.update(out.get("vmm_used", []))
    state.modules.update(out.get("vmm_modules", []))
    state.kvm_skips += out.get("vmm_kvm_skips", 0)
    state.written.extend(out.get("vmm_written", []))


def unused_goldens(state: VmmState) -> list[Path]:
    """Goldens of the test modules that compared goldens in this run, that no test used."""
    unused = []
    for module in sorted(state.modules):
        folder = state.goldens / module
        if folder.is_dir():
            unused += [p for p in sorted(folder.glob("*.trace")) if str(p) not in state.used]
    return unused


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if getattr(config, "workeroutput", None) is not None:
        return
    state = _state(config)
    tr = terminalreporter
    if state.kvm_skips:
        tr.write_line(f"vmm: {state.kvm_skips} tests skipped because /dev/kvm is not usable "
                      "on this host", yellow=True)
    if state.written:
        tr.write_line(f"vmm: wrote {len(state.written)} golden traces under "
                      f"{_relative(state.goldens, state.root)}")
    unused = unused_goldens(state)
    if unused:
        tr.write_line(f"vmm: {len(unused)} golden traces were not used by any test "
                      "(delete them, or rename them after their test):", yellow=True)
        for path in unused:
            tr.write_line(f"  {_relative(path, state.root)}")


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
