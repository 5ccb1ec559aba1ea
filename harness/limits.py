"""Resource limits for what the grader runs: cgroups where the host offers them, rlimits always.

A build in the sandbox (harness.sandbox) and each scenario's VMM process (harness.grader) run
under limits, so that one submission costs at most what its limits allow. Two layers:

- a **cgroup** per build or scenario, when this process may create one (cgroup v1 with the
  `memory` and `pids` controllers writable, as root usually is; or a cgroup v2 subtree that has
  both controllers enabled): it bounds the memory of all processes together, tmpfs pages
  included, and the number of processes, and its counters say afterwards which limit was hit;
- **rlimits** on every process (setrlimit in the child before exec): CPU seconds, file size,
  open files, and, where no cgroup bounds them, address space and the process count.

Sources: cgroup v1 memory.txt and pids.txt, cgroup-v2.rst, setrlimit(2).
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

CGROUP_ROOT = "/sys/fs/cgroup"


@dataclass
class Limits:
    """What one build (or one VMM process) may use; None means "not limited here"."""
    memory: int | None = None          # bytes, all processes together (cgroup) or each (RLIMIT_AS)
    processes: int | None = None       # processes and threads at once
    cpu_s: int | None = None           # CPU seconds, per process (RLIMIT_CPU)
    file_size: int | None = None       # bytes, the largest file a process may write (RLIMIT_FSIZE)
    open_files: int | None = None      # file descriptors per process (RLIMIT_NOFILE)


class Cgroup:
    """A fresh cgroup with memory and process limits; `join()` from the child, `hits()` and
    `remove()` from the parent. `Cgroup.create()` returns None where the host offers none."""

    def __init__(self, dirs: dict[str, str], v2: bool):
        self.dirs, self.v2 = dirs, v2          # controller -> directory ("unified" on v2)

    @classmethod
    def create(cls, name: str, memory: int | None, processes: int | None) -> Cgroup | None:
        try:
            own = _own_cgroups()
        except OSError:
            return None
        group = None
        try:
            if "memory" in own and "pids" in own:                   # cgroup v1
                dirs = {c: os.path.join(CGROUP_ROOT, c, own[c].lstrip("/"), name)
                        for c in ("memory", "pids")}
                group = cls({}, v2=False)
                for controller, path in dirs.items():
                    os.mkdir(path)
                    group.dirs[controller] = path
                if memory is not None:
                    group._write("memory", "memory.limit_in_bytes", memory)
                    if os.path.exists(os.path.join(dirs["memory"], "memory.memsw.limit_in_bytes")):
                        group._write("memory", "memory.memsw.limit_in_bytes", memory)
                if processes is not None:
                    group._write("pids", "pids.max", processes)
                return group
            if "" in own:                                           # cgroup v2
                path = os.path.join(CGROUP_ROOT, own[""].lstrip("/"), name)
                os.mkdir(path)
                group = cls({"memory": path, "pids": path}, v2=True)
                if not (os.path.exists(os.path.join(path, "memory.max"))
                        and os.path.exists(os.path.join(path, "pids.max"))):
                    group.remove()
                    return None
                if memory is not None:
                    group._write("memory", "memory.max", memory)
                    group._write("memory", "memory.swap.max", 0, missing_ok=True)
                if processes is not None:
                    group._write("pids", "pids.max", processes)
                return group
        except OSError:
            if group is not None:
                group.remove()
        return None

    def _write(self, controller: str, name: str, value, missing_ok: bool = False) -> None:
        try:
            with open(os.path.join(self.dirs[controller], name), "w") as f:
                f.write(str(value))
        except FileNotFoundError:
            if not missing_ok:
                raise

    def _read(self, controller: str, name: str) -> str:
        try:
            with open(os.path.join(self.dirs[controller], name)) as f:
                return f.read()
        except OSError:
            return ""

    def join(self) -> None:
        """Move the calling process into the cgroup (call it in the child, before exec)."""
        pid = str(os.getpid())
        for path in dict.fromkeys(self.dirs.values()):
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(pid)

    def hits(self) -> set[str]:
        """Which of the cgroup's limits were reached: {"memory", "processes"}."""
        hit = set()
        if self.v2:
            if _field(self._read("memory", "memory.events"), "oom_kill") or \
                    _field(self._read("memory", "memory.events"), "max"):
                hit.add("memory")
            if _field(self._read("pids", "pids.events"), "max"):
                hit.add("processes")
        else:
            if _field(self._read("memory", "memory.oom_control"), "oom_kill") or \
                    _number(self._read("memory", "memory.failcnt")):
                hit.add("memory")
            if _field(self._read("pids", "pids.events"), "max"):
                hit.add("processes")
        return hit

    def empty(self) -> bool:
        return all(not self._read(c, "cgroup.procs").strip() for c in self.dirs)

    def remove(self) -> None:
        for path in dict.fromkeys(self.dirs.values()):
            try:
                os.rmdir(path)
            except OSError:
                pass


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup per controller ("" for the v2 hierarchy), from /proc/self/cgroup."""
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) != 3:
                continue
            for controller in parts[1].split(","):
                own[controller] = parts[2]
    if own.get("") is not None and not os.path.exists(os.path.join(CGROUP_ROOT,
                                                                    "cgroup.controllers")):
        del own[""]                          # a v1 host's empty "0::/" line
    return own


def _field(text: str, key: str) -> int:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return _number(parts[1])
    return 0


def _number(text: str) -> int:
    try:
        return int(text.strip() or 0)
    except ValueError:
        return 0


def apply_rlimits(limits: Limits, cgroup: Cgroup | None) -> None:
    """Set this process's rlimits (call it in the child). With a cgroup, memory and processes
    are its business; without one, RLIMIT_AS and RLIMIT_NPROC stand in for it."""
    def cap(which, value, grace=0):
        if value is None:
            return
        soft, hard = resource.getrlimit(which)
        top = value + grace if hard == resource.RLIM_INFINITY else min(value + grace, hard)
        resource.setrlimit(which, (min(value, top), top))
    cap(resource.RLIMIT_CPU, limits.cpu_s, grace=1)     # SIGXCPU first: it names the cause
    cap(resource.RLIMIT_FSIZE, limits.file_size)
    cap(resource.RLIMIT_NOFILE, limits.open_files)
    cap(resource.RLIMIT_CORE, 0)
    if cgroup is None:
        cap(resource.RLIMIT_AS, limits.memory)
        cap(resource.RLIMIT_NPROC, limits.processes)   # counts all of the uid's processes
