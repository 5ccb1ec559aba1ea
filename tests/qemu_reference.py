"""QEMU as the reference for the pc board: boot a kernel under `qemu-system-i386 -kernel` (or,
for multiboot2, under GRUB from a small ISO made at test time) and collect what it printed on
COM1 and the 0xE9 debug console, the final VGA text screen and its exit status; and the same
under vmm (`run_vmm`), in the same shape, so that tests compare the two.

How the screen is read from QEMU: isa-debug-exit ends QEMU with exit(), before anything could
read guest memory, so every kernel is booted twice.
  1. With `-device isa-debug-exit,iobase=0xf4`: the exit status, COM1 and 0xE9.
  2. Without it: the kernel's OUT to 0xF4 goes nowhere and it falls through to its `cli; hlt`.
     The harness polls QEMU's QMP monitor (`info registers`) until the CPU is halted with
     interrupts off (HLT=1, IF=0: nothing can wake it), saves 0xB8000 with `pmemsave`, and
     quits QEMU. Its COM1 and 0xE9 output must equal run 1's (the kernels are deterministic).
A kernel that halts without writing to 0xF4 is read the same way in run 1 (exit_status None).

Both runs copy the kernel and its modules into a work directory and pass them by their bare
names, so the command line QEMU builds (`NAME APPEND`: its multiboot loader puts the kernel's
name first) and the module strings (`FILE ARGS`) do not depend on where the files live.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

QEMU_I386 = "qemu-system-i386"      # `-kernel` (multiboot1): the reference
QEMU_X86_64 = "qemu-system-x86_64"  # GRUB + multiboot2: the kernel switches to long mode
QEMU_MEM = "128"                    # MiB: QEMU's default, and the pc board's
VGA_TEXT, VGA_BYTES, VGA_COLS, VGA_ROWS = 0xB8000, 80 * 25 * 2, 80, 25
EXIT_PORT = 0xF4

MB1_MAGIC, MB2_MAGIC = 0x1BADB002, 0xE85250D6


class QemuError(Exception):
    """QEMU could not boot the kernel as asked, or behaved differently between the two runs."""


@dataclass
class Module:
    """A multiboot module: the file, and the arguments after its name in the module's string
    (QEMU's `-initrd "FILE ARGS"`: the string is `FILE ARGS`, or `FILE` without arguments)."""
    path: Path
    args: str = ""

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def string(self) -> str:
        return f"{self.name} {self.args}" if self.args else self.name


@dataclass
class BootResult:
    """What a kernel showed. serial and debugcon are the bytes as sent (Latin-1), except that
    vmm reports lines without the `\\r` QEMU's file keeps; compare `*_lines`."""
    serial: str
    debugcon: str
    screen_rows: list[str]              # `--screen final` form: trailing blanks and rows dropped
    exit_status: int | None             # the process status: (v << 1) | 1 for OUT v to 0xF4
    screen_cells: bytes | None = None   # the raw 4000 bytes of 0xB8000 (character, attribute)
    extra: dict = field(default_factory=dict)   # for failure messages: stderr, commands

    @property
    def serial_lines(self) -> list[str]:
        return text_lines(self.serial)

    @property
    def debugcon_lines(self) -> list[str]:
        return text_lines(self.debugcon)

    def attr(self, row: int, col: int) -> int:
        """The attribute byte of a screen cell (QEMU only: vmm's text screen has no colours)."""
        assert self.screen_cells is not None, "no raw screen cells in this result"
        return self.screen_cells[(row * VGA_COLS + col) * 2 + 1]


QemuResult = BootResult


def text_lines(text: str) -> list[str]:
    """Lines of console text, `\\r` dropped; a last line without `\\n` is kept."""
    lines = text.replace("\r", "").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def screen_rows(cells: bytes) -> list[str]:
    """The text of a VGA text buffer as `vmm run --screen final` prints it: code page 437,
    NUL shown as a blank, trailing blanks trimmed, trailing empty rows dropped."""
    rows = []
    for r in range(VGA_ROWS):
        chars = bytes(cells[(r * VGA_COLS + c) * 2] or 0x20 for c in range(VGA_COLS))
        rows.append(chars.decode("cp437").rstrip(" "))
    while rows and not rows[-1]:
        rows.pop()
    return rows


# ---- can QEMU run here? ------------------------------------------------------------------------

def _runs(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{cmd[0]} cannot run: {e}"
    if proc.returncode != 0:
        return f"`{' '.join(cmd)}` failed: {proc.stderr.decode(errors='replace').strip()[:200]}"
    return None


def qemu_unusable(binary: str = QEMU_I386) -> str | None:
    """None where QEMU can run here, else why not (a skip reason)."""
    if shutil.which(binary) is None:
        return (f"{binary} is not installed (Debian package qemu-system-x86; "
                f"`make check-tools` installs it)")
    return _runs([binary, "--version"])


def grub_unusable() -> str | None:
    """None where a multiboot2 kernel can be booted under GRUB in QEMU, else why not. QEMU's
    `-kernel` loads multiboot1 only (hw/i386/multiboot.c), so multiboot2 needs a boot loader."""
    reason = qemu_unusable(QEMU_X86_64)
    if reason:
        return reason
    for tool, package in (("grub-mkrescue", "grub-common"), ("xorriso", "xorriso"),
                          ("mformat", "mtools")):
        if shutil.which(tool) is None:
            return (f"{tool} is not installed (Debian package {package}): it builds the GRUB "
                    f"ISO that boots multiboot2 kernels under QEMU")
    if not Path("/usr/lib/grub/i386-pc/multiboot2.mod").exists():
        return ("GRUB's BIOS modules (/usr/lib/grub/i386-pc, Debian package grub-pc-bin) are "
                "not installed: grub-mkrescue cannot make a BIOS-bootable ISO")
    return None


def multiboot_version(kernel: Path) -> int | None:
    """1 or 2 for the multiboot header found (first 8 KiB, 4-aligned / first 32 KiB, 8-aligned,
    with a valid checksum), else None. Version 1 wins when both are present, as under QEMU."""
    data = Path(kernel).read_bytes()[:32768]
    for off in range(0, min(len(data), 8192) - 11, 4):
        magic, flags, check = struct.unpack_from("<III", data, off)
        if magic == MB1_MAGIC and (magic + flags + check) & 0xFFFFFFFF == 0:
            return 1
    for off in range(0, len(data) - 15, 8):
        magic, arch, length, check = struct.unpack_from("<IIII", data, off)
        if magic == MB2_MAGIC and (magic + arch + length + check) & 0xFFFFFFFF == 0:
            return 2
    return None


# ---- QMP ---------------------------------------------------------------------------------------

class _Qmp:
    """A minimal QMP client over a unix socket: commands in, their `return` out, events
    skipped."""

    def __init__(self, path: Path, deadline: float):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                self.sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise QemuError(f"QEMU's QMP socket {path} never appeared")
                time.sleep(0.01)
        self.sock.settimeout(max(deadline - time.monotonic(), 0.1))
        self.buf = b""
        self._message()                             # the greeting
        self.command("qmp_capabilities")

    def _message(self) -> dict:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("QMP closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def command(self, name: str, **arguments):
        msg = {"execute": name}
        if arguments:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._message()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise QemuError(f"QMP {name}: {reply['error'].get('desc')}")

    def close(self):
        self.sock.close()


_HALTED = re.compile(r"\bHLT=1\b")
_EFLAGS = re.compile(r"\b[ER]FL=([0-9a-f]+)")      # EFL= in 32-bit modes, RFL= in long mode


def _halted_for_good(registers: str) -> bool:
    """HLT with IF clear: the kernel's final `cli; hlt` (SeaBIOS and GRUB halt with IF set)."""
    m = _EFLAGS.search(registers)
    return bool(_HALTED.search(registers)) and m is not None and not int(m.group(1), 16) & 0x200


# ---- booting under QEMU ------------------------------------------------------------------------

def _make_grub_iso(work: Path, kernel_name: str, append: str | None,
                   modules: list[Module], timeout: float) -> Path:
    iso_root = work / "iso"
    (iso_root / "boot" / "grub").mkdir(parents=True, exist_ok=True)
    shutil.copy(work / kernel_name, iso_root / "boot" / kernel_name)
    lines = ["set timeout=0", "set default=0", 'menuentry "kernel" {',
             f"  multiboot2 /boot/{kernel_name}" + (f" {append}" if append else "")]
    for m in modules:
        shutil.copy(work / m.name, iso_root / "boot" / m.name)
        lines.append(f"  module2 /boot/{m.name}" + (f" {m.args}" if m.args else ""))
    lines += ["  boot", "}", ""]
    (iso_root / "boot" / "grub" / "grub.cfg").write_text("\n".join(lines))
    iso = work / "boot.iso"
    proc = subprocess.run(["grub-mkrescue", "-o", str(iso), str(iso_root)],
                          capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise QemuError("grub-mkrescue failed: "
                        + proc.stderr.decode(errors="replace").strip()[-500:])
    return iso


def _boot_once(cmd: list[str], work: Path, tag: str, exit_device: bool,
               timeout: float) -> tuple[str, str, bytes | None, int | None, str]:
    serial, debugcon = work / f"{tag}-serial.out", work / f"{tag}-debugcon.out"
    qmp_path, screen = work / f"{tag}.qmp", work / f"{tag}-screen.bin"
    for p in (serial, debugcon, qmp_path, screen):
        p.unlink(missing_ok=True)
    full = cmd + ["-display", "none", "-no-reboot", "-m", QEMU_MEM,
                  "-serial", f"file:{serial}", "-debugcon", f"file:{debugcon}",
                  "-qmp", f"unix:{qmp_path},server=on,wait=off", "-monitor", "none"]
    if exit_device:
        full += ["-device", f"isa-debug-exit,iobase={EXIT_PORT:#x},iosize=0x04"]
    deadline = time.monotonic() + timeout
    proc = subprocess.Popen(full, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    cells = None
    status = None
    try:
        qmp = None
        try:
            qmp = _Qmp(qmp_path, deadline)
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise QemuError(f"the kernel neither exited nor halted within {timeout} s "
                                    f"under `{' '.join(full)}`")
                regs = qmp.command("human-monitor-command", **{"command-line": "info registers"})
                if _halted_for_good(regs):
                    qmp.command("pmemsave", val=VGA_TEXT, size=VGA_BYTES, filename=str(screen))
                    cells = screen.read_bytes()
                    try:
                        qmp.command("quit")
                    except (ConnectionError, OSError):
                        pass
                    break
                time.sleep(0.01)
        except (ConnectionError, OSError):
            pass                                    # QEMU exited (isa-debug-exit) under us
        finally:
            if qmp is not None:
                qmp.close()
        try:
            code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            raise QemuError(f"QEMU did not quit within {timeout} s")
        if cells is None:
            status = code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    text = lambda p: p.read_bytes().decode("latin-1") if p.exists() else ""
    return text(serial), text(debugcon), cells, status, err


def run_qemu(kernel: Path | str, *, modules: list[Module] = (), append: str | None = None,
             timeout: float = 20.0, loader: str = "auto", workdir: Path | None = None,
             accel: str | None = None, extra_args: tuple[str, ...] = ()) -> BootResult:
    """Boot `kernel` under QEMU and return what it showed (see the module docstring).

    loader: "kernel" (`qemu-system-i386 -kernel`, multiboot1), "grub" (`qemu-system-x86_64
    -cdrom` of a GRUB ISO with `multiboot2`), or "auto" (by the kernel's multiboot header).
    append: QEMU's -append (the kernel sees `NAME APPEND` under -kernel, `APPEND` under GRUB).
    accel: None (QEMU's default, TCG) or e.g. "kvm". extra_args: more QEMU options (such as
    `-rtc base=...`, so that both boots see the same date). Raises QemuError when QEMU cannot boot it;
    callers skip on `qemu_unusable()` / `grub_unusable()` first."""
    kernel = Path(kernel)
    modules = [m if isinstance(m, Module) else Module(Path(m)) for m in modules]
    if loader == "auto":
        loader = "grub" if multiboot_version(kernel) == 2 else "kernel"
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="qemu-ref-")) if own else Path(workdir)
    try:
        work.mkdir(parents=True, exist_ok=True)
        shutil.copy(kernel, work / kernel.name)
        for m in modules:
            shutil.copy(m.path, work / m.name)
        if loader == "kernel":
            cmd = [QEMU_I386, "-kernel", kernel.name]
            if modules:
                cmd += ["-initrd", ",".join(m.string for m in modules)]
            if append is not None:
                cmd += ["-append", append]
        elif loader == "grub":
            iso = _make_grub_iso(work, kernel.name, append, modules, timeout)
            cmd = [QEMU_X86_64, "-cdrom", iso.name, "-boot", "d"]
        else:
            raise ValueError(f"loader {loader!r}")
        if accel:
            cmd += ["-accel", accel]
        cmd += list(extra_args)
        serial, debugcon, cells, status, err = _boot_once(cmd, work, "exit", True, timeout)
        if cells is None:
            if status is None or status % 2 == 0:
                raise QemuError(f"QEMU ended with status {status}, not through isa-debug-exit: "
                                f"{err.strip()[-500:]}")
            serial2, debugcon2, cells, _, err2 = _boot_once(cmd, work, "screen", False, timeout)
            if cells is None:
                raise QemuError(f"without isa-debug-exit the kernel did not halt: "
                                f"{err2.strip()[-500:]}")
            if (serial2, debugcon2) != (serial, debugcon):
                raise QemuError("the kernel printed differently in the screen run:\n"
                                f"serial {serial!r} vs {serial2!r}\n"
                                f"debugcon {debugcon!r} vs {debugcon2!r}")
        return BootResult(serial=serial, debugcon=debugcon, screen_rows=screen_rows(cells),
                          exit_status=status, screen_cells=cells,
                          extra={"command": cmd, "stderr": err})
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


# ---- the same under vmm ------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def run_vmm(kernel: Path | str, backend: str, *, modules: list[Module] = (),
            append: str | None = None, timeout: float = 60.0, workdir: Path,
            board: str | None = "pc", screen: bool = True, vmm_timeout: str = "10s",
            extra_args: tuple[str, ...] = ()) -> BootResult:
    """Run `kernel` under `vmm record --board pc --screen final` on `backend` and return the
    same shape as run_qemu (board None: vmm's default board; screen False: no --screen, and
    no screen_rows). A guest still running after vmm_timeout is stopped by vmm (status 28).

    The one place that knows how vmm reports a run (adjust here when that changes):
    - COM1 and 0xE9 come from the trace's `out` records (dev `com1`, `debugcon`): stdout
      interleaves every device's lines without saying whose they are;
    - the screen comes from the trace's `screen` records (the rows as the run left them), and
      `--screen final` must have printed the same text as stdout's last lines;
    - `--cmdline APPEND`: vmm builds the multiboot1 command line as QEMU's -kernel does,
      `NAME APPEND` (`NAME ` without --cmdline), and gives multiboot2 kernels APPEND alone, as
      GRUB's `multiboot2 FILE APPEND` does;
    - `--module FILE=STRING` with QEMU's module string `FILE ARGS` (the string is STRING as
      given; `FILE` alone without arguments).
    """
    from vmm.trace import read_trace

    kernel = Path(kernel).resolve()
    modules = [m if isinstance(m, Module) else Module(Path(m)) for m in modules]
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    trace = work / f"{kernel.name}.{backend}.trace"
    cmd = [sys.executable, "-m", "vmm", "record", str(kernel), "-o", str(trace),
           "--backend", backend, "--timeout", vmm_timeout, *extra_args]
    if board is not None:
        cmd += ["--board", board]
    if screen:
        cmd += ["--screen", "final"]
    if append is not None:
        cmd += ["--cmdline", append]
    for m in modules:
        if Path(m.path).resolve() != (work / m.name).resolve():
            shutil.copy(m.path, work / m.name)
        cmd += ["--module", f"{m.name}={m.string}"]
    env = dict(os.environ, VMM_BACKEND=backend)
    try:
        proc = subprocess.run(cmd, cwd=work, capture_output=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"`{' '.join(cmd)}` did not end within {timeout} s; its output: "
                             f"{(e.stdout or b'')[-500:]!r}") from None
    stdout = proc.stdout.decode("latin-1")
    stderr = proc.stderr.decode(errors="replace")
    if "Traceback" in stderr or not trace.exists():
        raise AssertionError(f"`{' '.join(cmd)}` failed (status {proc.returncode}):\n{stderr}")
    streams: dict[str, list[tuple[str, bool]]] = {}
    for rec in read_trace(str(trace)).records:
        if rec.get("type") == "out":
            streams.setdefault(rec["dev"], []).append((rec["text"], bool(rec.get("partial"))))

    def joined(dev: str) -> str:
        return "".join(text + ("" if partial else "\n") for text, partial in streams.get(dev, []))

    rows: list[str] = []
    if screen:
        from vmm.screenlog import replay_rows, screen_text
        text = screen_text(replay_rows(read_trace(str(trace)).screens()))
        assert stdout.endswith(text), (f"--screen final did not print the final screen last on "
                                       f"stdout: {stdout[-300:]!r}")
        rows = text.splitlines()
    return BootResult(serial=joined("com1"), debugcon=joined("debugcon"),
                      screen_rows=rows, exit_status=proc.returncode,
                      extra={"command": cmd, "stdout": stdout, "stderr": stderr})


def vmm_has_pc_board() -> bool:
    """Whether this vmm has the pc board and --screen (issue 14)."""
    proc = subprocess.run([sys.executable, "-m", "vmm", "run", "--help"], capture_output=True,
                          cwd=ROOT, timeout=60)
    text = proc.stdout.decode(errors="replace")
    return "--board" in text and "--screen" in text
