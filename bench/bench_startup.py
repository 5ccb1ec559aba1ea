"""Row 3, start-up: whole-process wall time of `vmm run` on the reset-vector greeting guest.

Held against three baselines, each a whole process too (fork, exec, run, exit, as the shell
sees it):
- the interpreter floor: `python -c pass` on the same interpreter (sys.executable, never a
  version-manager shim, which costs tens of ms by itself); target: vmm within 25 ms of it;
- the C loop on the same guest;
- QEMU (`qemu-system-x86_64 -accel kvm`) on an equivalent 64 KiB image (bench/guests/
  hello-exit.s: the greeting on its debug console, then its isa-debug-exit device), when QEMU
  is installed. As root on a Debian-like host the bench installs it (qemu-system-x86) unless
  --no-install is given; otherwise the row is skipped with a note.

`python -X importtime` shows what the run path imports; the heaviest are listed in the row.
vmm's modules are byte-compiled first (as `pip install` does), so that no run compiles them.
"""

from __future__ import annotations

import compileall
import os
import shutil
import subprocess
import sys

from common import GUESTS, ROOT, Row, Tools, summary, wall

TARGET_OVER_FLOOR_MS = 25.0
GREETING = b"Hello from the reset vector!\n"
QEMU = "qemu-system-x86_64"


def vmm_argv(guest) -> list[str]:
    return [sys.executable, "-m", "vmm", "run", str(guest), "--entry", "reset"]


def find_qemu(install: bool) -> tuple[str | None, str]:
    """The QEMU binary, installing it if allowed; or None and why not."""
    path = shutil.which(QEMU)
    if path:
        return path, ""
    if not install:
        return None, f"{QEMU} is not installed (--no-install)"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, f"{QEMU} is not installed, and apt-get as root is not available"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "qemu-system-x86"]
    for attempt in range(2):
        try:
            proc = subprocess.run(command, capture_output=True, env=env, timeout=900)
        except subprocess.TimeoutExpired:
            return None, "installing qemu-system-x86 took too long"
        if proc.returncode == 0 and shutil.which(QEMU):
            return shutil.which(QEMU), "installed qemu-system-x86 with apt-get"
        if attempt == 0:       # stale package lists: refresh once, then try again
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env,
                           timeout=900)
    return None, f"apt-get install qemu-system-x86 failed: {proc.stderr.decode()[-200:]}"


def qemu_argv(qemu: str, image) -> list[str]:
    return [qemu, "-accel", "kvm", "-machine", "pc", "-m", "16", "-nodefaults",
            "-display", "none", "-monitor", "none", "-serial", "none", "-no-reboot",
            "-bios", str(image), "-debugcon", "stdio",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]


def _import_tree(argv: list[str]) -> list[tuple[int, str, int, int]]:
    """`python -X importtime`: (depth, module, self us, cumulative us), parents first."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True,
                          cwd=ROOT)
    rows = []
    for line in proc.stderr.decode().splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        own, cumulative, name = line[len("import time:"):].split("|")
        if name.strip() == "imported package":
            continue
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        rows.append((depth, name.strip(), int(own), int(cumulative)))
    return rows[::-1]                       # importtime prints children before their parent


def import_profile(guest) -> dict:
    """What the run path imports beyond the interpreter's own start-up: the time in vmm's own
    modules, and the heaviest other modules they pull in (each with what it imports)."""
    floor = {name for depth, name, _, _ in _import_tree(["-c", "pass"]) if depth == 0}
    stack: list[str] = []
    own_ms, pulled = 0.0, []
    for depth, name, own, cumulative in _import_tree(vmm_argv(guest)[1:]):
        del stack[depth:]
        parent = stack[-1] if stack else None
        stack.append(name)
        if name.startswith("vmm"):
            own_ms += own / 1e3
        elif (parent is None and name not in floor) or (parent or "").startswith("vmm"):
            pulled.append((cumulative / 1e3, name))
    pulled.sort(reverse=True)
    total = own_ms + sum(ms for ms, _ in pulled)
    return {"total_ms": round(total, 1), "vmm_modules_ms": round(own_ms, 1),
            "heaviest": [f"{name} {ms:.1f} ms" for ms, name in pulled[:6]]}


def startup_rows(tools: Tools, runs: int, install_qemu: bool) -> list[Row]:
    guest = GUESTS / "build" / "reset-hello.bin"
    image = tools.guest("hello-exit.s", reset=True)
    qemu, qemu_note = find_qemu(install_qemu)
    compileall.compile_dir(str(ROOT / "vmm"), quiet=1)
    floor, vmm, c, q = [], [], [], []
    for _ in range(2):                                   # warm the page cache
        wall(vmm_argv(guest), cwd=ROOT)
        wall([sys.executable, "-c", "pass"])
    for _ in range(runs):
        seconds, _ = wall([sys.executable, "-c", "pass"])
        floor.append(seconds * 1e3)
        seconds, proc = wall(vmm_argv(guest), cwd=ROOT)
        if proc.returncode != 0 or proc.stdout != GREETING:
            raise RuntimeError(f"vmm run failed: {proc.returncode} {proc.stderr!r}")
        vmm.append(seconds * 1e3)
        seconds, proc = wall([str(tools.c_loop), str(guest), "--reset"])
        if proc.returncode != 0 or proc.stdout != GREETING:
            raise RuntimeError(f"the C loop failed: {proc.returncode} {proc.stderr!r}")
        c.append(seconds * 1e3)
        if qemu:
            seconds, proc = wall(qemu_argv(qemu, image))
            if proc.returncode != 1 or proc.stdout != GREETING:
                qemu, qemu_note = None, (f"QEMU did not run the image (status "
                                         f"{proc.returncode}): {proc.stderr.decode()[-200:]}")
            else:
                q.append(seconds * 1e3)
    profile = import_profile(guest)
    name = "`vmm run reset-hello.bin --entry reset`, whole process"
    rows = [
        Row(id="startup-floor", group="3. start-up", name=name, unit="ms", vmm=summary(vmm),
            baseline=summary(floor), baseline_name="python -c pass", compare="difference",
            target=("<=", TARGET_OVER_FLOOR_MS), paired=True,
            note=f"the median of {len(vmm)} paired differences, each run right after its "
                 f"floor; python -X importtime (inflates): {profile['total_ms']:.0f} ms of imports "
                 f"beyond the floor's, {profile['vmm_modules_ms']:.0f} ms of them in vmm's own "
                 f"modules; the heaviest others: " + ", ".join(profile["heaviest"]),
            extra={"imports": profile, "interpreter": sys.executable}),
        Row(id="startup-c", group="3. start-up", name=name, unit="ms", vmm=summary(vmm),
            baseline=summary(c), baseline_name="C loop", compare="ratio"),
    ]
    if q:
        rows.append(Row(id="startup-qemu", group="3. start-up", name=name, unit="ms",
                        vmm=summary(vmm), baseline=summary(q),
                        baseline_name="qemu-system-x86_64 -accel kvm", compare="ratio",
                        note="QEMU runs bench/guests/hello-exit.s as its -bios: the same "
                             "greeting on -debugcon, then isa-debug-exit"
                             + (f"; {qemu_note}" if qemu_note else "")))
    else:
        rows.append(Row(id="startup-qemu", group="3. start-up", name=name, unit="ms",
                        vmm=summary(vmm), baseline=None, baseline_name="qemu (skipped)",
                        note=f"skipped: {qemu_note}"))
    return rows
