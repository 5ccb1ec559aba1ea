"""The build sandbox: unpack and build one submission where it can reach nothing of the grader's.

Built on bubblewrap (Debian's `bubblewrap`, what Flatpak uses), a small setuid-free tool that
does one thing: start a process in fresh namespaces with a filesystem made of the binds it is
told. The sandbox starts from nothing and adds (the list is `bwrap_arguments()`):

- new user, PID, mount, network, IPC, UTS and cgroup namespaces, no capabilities, its own
  session, and it dies with the grader (`--die-with-parent`);
- as root, it runs as the unprivileged `nobody` (uid 65534); otherwise as the grader's user,
  still without capabilities in any namespace but its own;
- read-only: /usr (the toolchain) and the /bin, /lib* links or binds beside it, a minimal /etc;
  its own /proc, a /dev with null, zero, full, random and urandom only, and one writable place:
  a size-limited tmpfs at /tmp that holds the unpacked submission. The rubric, `--out`, other
  submissions and the grader's files are not there at all.

The submission goes in as a tar stream on stdin (a tarball as it is; a directory turned into
one here, without following links); harness/sandbox_init.py unpacks it inside, runs the
build, and hands back the guest on a pipe, as a regular file no larger than the guest's RAM.
When the build ends, by itself, by a limit or because the grader is stopped, the PID
namespace ends and with it every process the build started; only then does the grader write
anything. Limits: see BuildLimits and harness.limits.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import stat
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vmm.errors import UsageError

from .limits import Cgroup, Limits, apply_rlimits

SANDBOX_UID = SANDBOX_GID = 65534      # nobody, when the grader runs as root
SANDBOX_PYTHON = "/usr/bin/python3"    # the sandbox's own Python, under the read-only /usr
MAX_LOG = 1 << 20                      # build output kept in build.log; the rest is counted
MAX_RESULT_HEADER = 1 << 16
DEV_NODES = ("null", "zero", "full", "random", "urandom")
INSTALL_HINT = ("install bubblewrap (apt-get install bubblewrap) and allow user namespaces "
                "(sysctl kernel.unprivileged_userns_clone=1 where it exists, "
                "user.max_user_namespaces > 0), or grade trusted code with --no-sandbox")


@dataclass
class BuildLimits:
    """The rubric's [build] limits, with their defaults (docs/grading.md's threat table)."""
    timeout_s: float = 120.0           # wall time
    memory: int = 1 << 30              # all of the build's processes together
    processes: int = 256
    cpu_s: int = 120                   # CPU seconds per process
    file_size: int = 64 << 20          # the largest file a build may write
    open_files: int = 1024
    disk: int = 512 << 20              # the tmpfs holding the submission and /tmp
    files: int = 10_000                # tar members (a directory: its files and folders)

    def describe(self, limit: str) -> str:
        return {"time": f"its wall-time limit ({self.timeout_s:g}s)",
                "memory": f"its memory limit ({_size(self.memory)})",
                "processes": f"its process limit ({self.processes})",
                "cpu": f"its CPU-time limit ({self.cpu_s}s)",
                "file-size": f"its file-size limit ({_size(self.file_size)})",
                "open-files": f"its open-files limit ({self.open_files})",
                "disk": f"its disk limit ({_size(self.disk)})",
                "files": f"its limit on the number of files ({self.files})"}[limit]


def _size(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n} bytes"


@dataclass
class BuildOutcome:
    guest: bytes | None                # the built guest; None when there is none
    log: bytes                         # what the build printed (capped at MAX_LOG)
    problem: str                       # one line; "" when the guest was built
    limit: str | None = None           # which limit ended the build, if one did
    settings: str | dict | None = None  # the submission's vmm.toml: text, {"problem": ...}, None


class SandboxUnavailable(UsageError):
    """bubblewrap is missing or cannot make its namespaces here; the message says what to do."""


_checked: dict[str, str | None] = {}


def unavailable_reason() -> str | None:
    """Why the sandbox cannot run on this host (None when it can). Checked once per process by
    starting a real sandbox."""
    if "reason" not in _checked:
        _checked["reason"] = _probe()
    return _checked["reason"]


def _probe() -> str | None:
    from shutil import which
    if not which("bwrap"):
        return "the build sandbox needs bubblewrap, which is not installed: " + INSTALL_HINT
    if not os.access(SANDBOX_PYTHON, os.X_OK):
        return f"the build sandbox needs {SANDBOX_PYTHON}, which is missing"
    try:
        proc = subprocess.run(bwrap_arguments(_SandboxShape(disk=1 << 20)) +
                              [SANDBOX_PYTHON, "-I", "-S", "-c", "pass"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                              preexec_fn=_drop_privileges)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"the build sandbox cannot start bubblewrap ({e}): " + INSTALL_HINT
    if proc.returncode != 0:
        why = proc.stderr.decode(errors="replace").strip().splitlines()
        return (f"the build sandbox cannot start here ({why[-1] if why else 'bwrap failed'}): "
                + INSTALL_HINT)
    return None


@dataclass
class _SandboxShape:
    disk: int


def _top_level(name: str) -> list[str]:
    """Bind or link a top-level folder (/bin, /lib64, ...) as it is on this host."""
    path = "/" + name
    if os.path.islink(path):
        return ["--symlink", os.readlink(path), path]
    if os.path.isdir(path):
        return ["--ro-bind", path, path]
    return []


def bwrap_arguments(shape: _SandboxShape) -> list[str]:
    """bubblewrap's command line: what exists inside the sandbox, and nothing else."""
    args = [
        "bwrap",
        "--unshare-all", "--unshare-user",    # user, pid, net, ipc, uts, cgroup namespaces
        "--die-with-parent",                   # the grader's end is the sandbox's end
        "--new-session",                       # no TIOCSTI into the grader's terminal
        "--cap-drop", "ALL",
        "--hostname", "sandbox",
        "--clearenv",                          # nothing of the grader's environment
        "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
        "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp", "--setenv", "LC_ALL", "C",
        "--ro-bind", "/usr", "/usr",           # the toolchain
    ]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        args += _top_level(name)
    args += ["--dir", "/etc"]                  # a minimal /etc: what compilers and ld.so read
    for name in ("alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d"):
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    args += ["--proc", "/proc",                # this PID namespace's own processes only
             "--size", str(64 << 10), "--tmpfs", "/dev"]
    for node in DEV_NODES:
        args += ["--dev-bind", f"/dev/{node}", f"/dev/{node}"]
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        args += ["--symlink", f"/proc/self/fd/{i}", f"/dev/{name}"]
    args += ["--symlink", "/proc/self/fd", "/dev/fd",
             "--symlink", "/tmp", "/dev/shm",
             "--remount-ro", "/dev",
             "--size", str(shape.disk), "--tmpfs", "/tmp",   # the one writable place
             "--remount-ro", "/",
             "--chdir", "/tmp",
             "--"]
    return args


def _drop_privileges() -> None:
    """In the child, before exec: as root, become nobody with no supplementary groups, and die
    with the grader (PR_SET_PDEATHSIG is cleared by the change of uid, so it comes after)."""
    if os.getuid() == 0:
        os.setgroups([])
        os.setgid(SANDBOX_GID)
        os.setuid(SANDBOX_UID)
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL, 0, 0, 0)                      # PR_SET_PDEATHSIG


def _load_prctl():
    """prctl(2), loaded here: after the change of uid the child may not read the grader's
    Python installation (under /root, say) to import ctypes."""
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


# --- feeding the submission in -------------------------------------------------------------
def _feed_tarball(path: Path, pipe) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            pipe.write(chunk)


def _feed_directory(path: Path, pipe) -> None:
    """A directory as a tar stream: files and folders as they are, links as links (which the
    unpacker refuses); no link is followed and nothing but regular files is opened."""
    with tarfile.open(fileobj=pipe, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        def add(folder: Path, arcname: str) -> None:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
            for entry in entries:
                name = f"{arcname}/{entry.name}" if arcname else entry.name
                st = entry.stat(follow_symlinks=False)
                info = tarfile.TarInfo(name)
                info.mode = stat.S_IMODE(st.st_mode) & 0o755
                info.mtime = int(st.st_mtime)
                if stat.S_ISDIR(st.st_mode):
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                    add(Path(entry.path), name)
                elif stat.S_ISREG(st.st_mode):
                    info.size = st.st_size
                    with open(entry.path, "rb") as f:
                        tar.addfile(info, f)
                elif stat.S_ISLNK(st.st_mode):
                    info.type, info.linkname = tarfile.SYMTYPE, os.readlink(entry.path)
                    tar.addfile(info)
                else:
                    info.type = tarfile.FIFOTYPE
                    tar.addfile(info)
        add(path, "")


def _feeder(source: Path, pipe) -> None:
    try:
        if source.is_dir():
            _feed_directory(source, pipe)
        else:
            _feed_tarball(source, pipe)
    except (OSError, ValueError, tarfile.TarError):
        pass                          # the unpacker stopped reading (a limit): it says why
    finally:
        try:
            pipe.close()
        except OSError:
            pass


# --- one build -------------------------------------------------------------------------------
def build(source: Path, command: list[str], guest: str, limits: BuildLimits, guest_cap: int,
          cgroup_name: str) -> BuildOutcome:
    """Unpack `source` (a directory or a tarball) in a fresh sandbox, run `command` there, and
    return the guest file `guest` (relative to the build directory) it made."""
    reason = unavailable_reason()
    if reason:
        raise SandboxUnavailable(reason)
    from .sandbox_init import __file__ as init_file
    init_source = Path(init_file).read_text()
    result_r, result_w = os.pipe()
    config = {"result_fd": result_w, "command": command, "guest": guest,
              "guest_cap": guest_cap, "max_files": limits.files,
              "max_file_size": limits.file_size, "max_total": limits.disk}
    cgroup = Cgroup.create(cgroup_name, limits.memory, limits.processes)
    rlimits = Limits(memory=limits.memory, processes=limits.processes, cpu_s=limits.cpu_s,
                     file_size=limits.file_size, open_files=limits.open_files)

    def child() -> None:
        if cgroup is not None:
            cgroup.join()
        apply_rlimits(rlimits, cgroup)
        _drop_privileges()

    argv = bwrap_arguments(_SandboxShape(disk=limits.disk)) + [
        SANDBOX_PYTHON, "-I", "-S", "-c", init_source, json.dumps(config)]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, pass_fds=(result_w,),
                                preexec_fn=child)
    except OSError as e:
        os.close(result_r)
        os.close(result_w)
        if cgroup is not None:
            cgroup.remove()
        raise SandboxUnavailable(f"cannot start bubblewrap: {e.strerror}") from None
    os.close(result_w)
    feeder = threading.Thread(target=_feeder, args=(source, proc.stdin), daemon=True)
    feeder.start()
    log, result, timed_out = _collect(proc, result_r, limits.timeout_s, guest_cap)
    proc.wait()
    feeder.join(timeout=5)
    hits = set()
    if cgroup is not None:
        hits = cgroup.hits()
        _kill_leftovers(cgroup)
        cgroup.remove()
    return _outcome(log, result, timed_out, hits, limits)


def _collect(proc, result_r: int, timeout_s: float, guest_cap: int):
    """Read the log and the result until both end or the wall-time limit; then kill."""
    deadline = time.monotonic() + timeout_s
    log, log_dropped, result = bytearray(), 0, bytearray()
    result_cap = MAX_RESULT_HEADER + guest_cap
    sel = selectors.DefaultSelector()
    out_fd = proc.stdout.fileno()
    sel.register(out_fd, selectors.EVENT_READ)
    sel.register(result_r, selectors.EVENT_READ)
    open_fds, timed_out = {out_fd, result_r}, False
    try:
        while open_fds:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=min(left, 1.0)):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fd)
                    open_fds.discard(key.fd)
                elif key.fd == out_fd:
                    room = MAX_LOG - len(log)
                    log += chunk[:room]
                    log_dropped += max(0, len(chunk) - room)
                elif len(result) < result_cap:
                    result += chunk[:result_cap - len(result)]
    finally:
        if timed_out or open_fds:
            try:
                proc.kill()           # bwrap; --die-with-parent takes the sandbox with it
            except OSError:
                pass
        sel.close()
        os.close(result_r)
        proc.stdout.close()
    if log_dropped:
        log += f"\n[vmm: {log_dropped} more bytes of build output not kept]\n".encode()
    return bytes(log), bytes(result), timed_out


def _kill_leftovers(cgroup: Cgroup) -> None:
    """Normally nothing is left once bubblewrap has exited (the PID namespace is gone); this
    is the second lock on the door."""
    for _ in range(50):
        if cgroup.empty():
            return
        for path in dict.fromkeys(cgroup.dirs.values()):
            try:
                pids = Path(path, "cgroup.procs").read_text().split()
            except OSError:
                pids = []
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
        time.sleep(0.02)


LOG_SIGNS = (                         # what a build's log says when an rlimit stopped it
    ("cpu", ("CPU time limit exceeded",)),
    ("file-size", ("File size limit exceeded",)),
    ("disk", ("No space left on device",)),
    ("processes", ("fork: Resource temporarily unavailable", "fork: retry",
                   "Cannot fork", "vfork: Resource temporarily unavailable")),
    ("memory", ("Cannot allocate memory", "virtual memory exhausted", "out of memory",
                "MemoryError")),
    ("open-files", ("Too many open files",)),
)


def _outcome(log: bytes, raw: bytes, timed_out: bool, hits: set[str],
             limits: BuildLimits) -> BuildOutcome:
    if timed_out:
        problem = f"the build took longer than {limits.timeout_s:g}s"
        hit = next((h for h in ("processes", "memory") if h in hits), None)
        if hit:      # a fork bomb waits at its process limit until the wall-time limit
            return BuildOutcome(None, log, f"{problem}, held at {limits.describe(hit)}", hit)
        return BuildOutcome(None, log, problem, "time")
    header, _, rest = raw.partition(b"\n")
    try:
        result = json.loads(header) if header else None
    except ValueError:
        result = None
    if not isinstance(result, dict) or not isinstance(result.get("stage"), str):
        limit = next(iter(sorted(hits)), None)
        why = f": stopped by {limits.describe(limit)}" if limit else ""
        return BuildOutcome(None, log, f"the build sandbox ended without a result{why}", limit)
    outcome = _stage_outcome(log, result, rest, hits, limits)
    settings = result.get("settings")
    if isinstance(settings, str) and len(settings) <= 16 << 10:
        outcome.settings = settings
    elif isinstance(settings, dict) and isinstance(settings.get("problem"), str):
        outcome.settings = {"problem": settings["problem"][:200]}
    return outcome


def _stage_outcome(log: bytes, result: dict, rest: bytes, hits: set[str],
                   limits: BuildLimits) -> BuildOutcome:
    stage = result["stage"]
    if stage == "done":
        size = result.get("size")
        if not isinstance(size, int) or size != len(rest):
            return BuildOutcome(None, log, "the build sandbox returned a damaged guest file")
        return BuildOutcome(rest, log, "")
    limit = result.get("limit") if isinstance(result.get("limit"), str) else None
    if stage == "build" and isinstance(result.get("status"), int):
        text = log.decode(errors="replace")
        if limit is None:
            limit = next((h for h in ("memory", "processes") if h in hits), None)
        if limit is None and result.get("disk_full"):
            limit = "disk"
        if limit is None and result.get("signal") in ("SIGXCPU", "SIGXFSZ"):
            limit = "cpu" if result["signal"] == "SIGXCPU" else "file-size"
        if limit is None:
            limit = next((name for name, signs in LOG_SIGNS if any(s in text for s in signs)),
                         None)
        status = result["status"]
        how = (f"killed by {result['signal']}" if isinstance(result.get("signal"), str)
               else f"exit status {status}")
        problem = f"the build failed ({how})"
        problem += f", stopped by {limits.describe(limit)}" if limit else ""
        return BuildOutcome(None, log, problem + ": see build.log", limit)
    problem = result.get("problem") if isinstance(result.get("problem"), str) else \
        "the build sandbox returned a damaged result"
    return BuildOutcome(None, log, problem[:500], limit if limit in _LIMIT_NAMES else None)


_LIMIT_NAMES = ("time", "memory", "processes", "cpu", "file-size", "open-files", "disk", "files")
