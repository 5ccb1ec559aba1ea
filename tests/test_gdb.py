"""vmm under real gdb (Debian's gdb, `gdb -batch`): registers in every CPU mode, breakpoints at
ELF symbols, stepping, watchpoints, running to the end, reverse-stepi and reverse-continue on
replays, monitor commands; on both backends, and a KVM-recorded trace debugged under the
emulator. Each session is a short gdb script against a vmm subprocess listening on a free port."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess

import pytest

from conftest import ROOT, kvm_usable, test_backends, vmm_command

GDB = shutil.which("gdb")
pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(GDB is None, reason="gdb is not installed (make checks it: "
                                                     "apt-get install gdb)")]
BACKENDS = test_backends()
SCRIPT = ROOT / "examples" / "echo.script"


class Debugged:
    """vmm ARGS --gdb 0 in the background, then one gdb -batch session against it."""

    def __init__(self, *args, gdb_flag="--gdb"):
        self.proc = subprocess.Popen(vmm_command(*map(str, args), gdb_flag, "0"), cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.banner = []
        for line in self.proc.stderr:
            line = line.decode()
            self.banner.append(line)
            found = re.search(r"waiting for gdb on 127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                break
        else:
            out, err = self.proc.communicate(timeout=30)
            raise AssertionError("vmm did not listen: " + "".join(self.banner) + err.decode())

    def gdb(self, commands: str, elf=None, timeout=120, cwd=ROOT) -> str:
        lines = ["set pagination off", "set confirm off",
                 f"target remote 127.0.0.1:{self.port}"] + commands.strip().splitlines()
        argv = [GDB, "-batch", "-nx"]
        for line in lines:
            argv += ["-ex", line.strip()]
        if elf is not None:
            argv.append(str(elf))
        gdb = subprocess.run(argv, capture_output=True, timeout=timeout, cwd=cwd)
        out, err = self.proc.communicate(timeout=timeout)
        self.stdout, self.stderr = out.decode(), "".join(self.banner) + err.decode()
        self.returncode = self.proc.returncode
        text = gdb.stdout.decode() + gdb.stderr.decode()
        assert "Traceback" not in self.stderr, self.stderr
        assert "Remote 'g' packet reply is too long" not in text, text
        return text


def register(text: str, name: str) -> int:
    return int(re.findall(rf"^{name}\s+(0x[0-9a-f]+)", text, re.M)[-1], 16)


@pytest.fixture(scope="module")
def echo_trace(tmp_path_factory, guests):
    """The C echo guest recorded with its script (on KVM where there is one)."""
    path = tmp_path_factory.mktemp("gdb") / "echo.trace"
    subprocess.run(vmm_command("record", str(guests / "echo.elf"), "--script", str(SCRIPT),
                               "-o", str(path)), check=True, capture_output=True, cwd=ROOT)
    return path


@pytest.mark.parametrize("backend", BACKENDS)
def test_live_elf_break_step_watch_to_the_end(backend, guests):
    """A live run of the C guest: break at a symbol, step, watch a variable, run to the end."""
    run = Debugged("run", guests / "echo.elf", "--script", SCRIPT, "--backend", backend)
    text = run.gdb("""
        info registers eip cs
        break main
        continue
        stepi
        info registers eip
        watch *(char*)&line
        continue
        print/c *(char*)&line
        delete
        continue
        """, elf=guests / "echo.elf")
    assert "0x00100000 in _start ()" in text                 # stopped at the first instruction
    assert "Breakpoint 1, 0x00100020 in main ()" in text
    assert "eip            0x100021" in text                # stepi: one instruction on
    assert "New value = 104 'h'" in text                     # the line buffer got the first key
    assert "$1 = 104 'h'" in text
    assert "exited normally" in text
    assert run.returncode == 0
    assert run.stdout.count("hello") == 5                   # the guest's output, once


@pytest.mark.parametrize("backend", BACKENDS)
def test_replay_reverse_stepi_and_continue(backend, guests, echo_trace):
    """On a replay: reverse-stepi restores the previous registers and memory; reverse-continue
    goes back to the last breakpoint hit, and to the write a watchpoint catches; monitor
    obs and seek move by observations."""
    run = Debugged("replay", echo_trace, "--backend", backend)
    text = run.gdb("""
        break main
        continue
        delete
        watch *(char*)&line
        continue
        info registers eip esp
        print/c *(char*)&line
        reverse-stepi
        info registers eip esp
        print/c *(char*)&line
        stepi
        print/c *(char*)&line
        delete
        break main
        continue
        reverse-continue
        monitor obs
        delete
        monitor seek 17
        maint flush register-cache
        monitor obs
        monitor trace
        reverse-continue
        continue
        """, elf=guests / "echo.elf")
    hit = text.index("New value = 104 'h'")
    after = text[hit:]
    eips = re.findall(r"^eip\s+(0x[0-9a-f]+)", after, re.M)
    assert len(eips) == 2 and int(eips[1], 16) < int(eips[0], 16)      # one instruction back
    assert re.findall(r"^\$\d+ = (.*)$", after, re.M)[:3] == ["104 'h'", "0 '\\000'", "104 'h'"]
    assert "No more reverse-execution history." in text                # the end, then back
    assert "Breakpoint 3, 0x00100020 in main ()" in text               # reverse-continue
    assert re.search(r"observation 0 \+ \d+ instructions", text)
    assert re.search(r"observation 17 \+ 0 instructions", text)
    assert "observation 18: timer fires" in text
    assert run.returncode == 0
    assert "replay identical" in run.stderr


@pytest.fixture(scope="module")
def average_trace(tmp_path_factory, guests):
    """The buggy C guest (guests/elf/average.c) recorded: it dies of a divide error."""
    path = tmp_path_factory.mktemp("gdb") / "average.trace"
    subprocess.run(vmm_command("record", str(guests / "average.elf"), "-o", str(path)),
                   capture_output=True, cwd=ROOT)
    return path


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "emu"])
def test_walkthrough_back_from_the_crash_to_the_write(backend, average_trace):
    """docs/debugging.md's walkthrough: run to the crash, step back to the faulting
    instruction, watch the divisor and run back to the write that zeroed it, then
    reverse-finish out of that function and reverse-next over the line before."""
    run = Debugged("replay", average_trace, "--backend", backend)
    text = run.gdb("""
        continue
        reverse-stepi
        reverse-stepi
        x/i $pc
        print stats.divisor
        watch stats.divisor
        reverse-continue
        backtrace
        print i
        reverse-finish
        reverse-next
        info line *$pc
        next
        """, cwd=ROOT / "guests")
    assert "divide error" in text
    assert re.search(r"=> 0x[0-9a-f]+ <average\+\d+>:\s+div", text)
    assert "$1 = 0" in text
    back = text.index("Old value = 0\nNew value = 8")
    assert "in fill (count=8) at elf/average.c:36" in text[back:]
    assert "#1  0x" in text and "in main () at elf/average.c:50" in text
    assert "$2 = 8" in text                                  # i: one past the table
    after = text[text.index("$2 = 8"):]
    assert re.search(r"in main \(\) at elf/average.c:50\n50\t    fill\(NUM_SAMPLES\);", after)
    assert "Old value = 8\nNew value = 0" in text           # forwards again: the write
    assert run.returncode == 0 and "replay identical" in run.stderr


@pytest.mark.skipif(not kvm_usable() or "emu" not in BACKENDS, reason="needs KVM and the emulator")
def test_kvm_trace_debugged_backwards_on_the_emulator(guests, echo_trace):
    run = Debugged("replay", echo_trace, "--backend", "emu")
    text = run.gdb("""
        watch *(char*)&line
        continue
        continue
        reverse-continue
        monitor obs
        """, elf=guests / "echo.elf")
    assert text.count("Hardware watchpoint 1") >= 2
    assert re.search(r"observation 1[0-9] \+ \d+ instructions", text)
    assert run.returncode == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_registers_across_real_protected_and_long_mode(backend, guests):
    """A guest that goes from real to protected to long mode: gdb gets the i8086, i386 and
    x86-64 descriptions (one per connection: vmm tells gdb to reconnect after a switch), the
    registers read right in each mode, and no 'g' reply is ever too long for gdb."""
    run = Debugged("run", guests / "modeswitch.bin", "--backend", backend)
    text = run.gdb("""
        show architecture
        info registers eip cs
        x/2i $pc
        hbreak *0x1042
        hbreak *0x10c7
        continue
        info registers eip cs
        disconnect
        target remote 127.0.0.1:{port}
        show architecture
        info registers eip cs
        continue
        disconnect
        target remote 127.0.0.1:{port}
        show architecture
        stepi 11
        p/x $rax
        info registers rip cs
        x/i $pc
        continue
        """.replace("{port}", str(run.port)))
    modes = re.findall(r'currently "([^"]+)"', text)
    assert modes == ["i8086", "i386", "i386:x86-64"], text
    assert "cli" in text                                    # 16-bit code at 0x1000
    assert "the guest switched to i386 mode" in text
    assert "the guest switched to x86-64 mode" in text
    assert re.findall(r"^cs\s+(0x[0-9a-f]+)", text, re.M) == ["0x0", "0x8", "0x8", "0x18"]
    assert "$1 = 0x123456789" in text                      # a 64-bit register, whole
    assert "hlt" in text and "exited normally" in text
    assert run.stdout.splitlines() == ["real", "protected", "long"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_mode_elf(backend, guests):
    run = Debugged("run", guests / "longmode.elf", "--script", SCRIPT, "--backend", backend)
    text = run.gdb("""
        show architecture
        info registers rip
        stepi
        info registers rip
        detach
        """, elf=guests / "longmode.elf")
    assert 'currently "i386:x86-64"' in text
    rips = re.findall(r"^rip\s+(0x[0-9a-f]+)", text, re.M)
    assert len(rips) == 2 and int(rips[1], 16) != int(rips[0], 16)
    assert run.returncode == 0


def test_port_in_use_is_one_line(vmm, guests):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        result = vmm("run", guests / "echo.bin", "--gdb", str(port), "--backend", "emu")
    assert result.returncode == 16, result
    assert result.stderr.strip() == (f"vmm: error: cannot listen for gdb on 127.0.0.1:{port}: "
                                     "the port is in use")


def test_bad_gdb_address(vmm, guests):
    result = vmm("run", guests / "echo.bin", "--gdb", "localhost:http", "--backend", "emu")
    assert result.returncode == 2 and "bad --gdb" in result.stderr


def test_garbage_then_disconnect_then_gdb_again(guests, echo_trace):
    """A client that sends garbage and an oversized packet and drops the connection leaves
    the replay stopped; gdb connects again, writes a register, detaches, and the end is
    reported as diverged by the debugger."""
    run = Debugged("replay", echo_trace, "--backend", "emu")
    with socket.create_connection(("127.0.0.1", run.port)) as raw:
        raw.sendall(b"+$qSupported#37$zz#00garbage$" + b"A" * 100_000 + b"#00$?#3f")
        raw.settimeout(10)
        seen = b""
        while b"T05" not in seen:
            seen += raw.recv(4096)
        assert b"PacketSize=" in seen and b"ReverseStep+" in seen
    text = run.gdb("""
        set $eax = 42
        detach
        """)
    assert "Detaching" in text or "detached" in text
    assert "connect again" in run.stderr
    assert "diverged by the debugger" in run.stderr
    assert run.returncode == 44


def test_stop_at_prints_the_state(vmm, echo_trace):
    result = vmm("replay", echo_trace, "--stop-at", "17", "--backend", "emu")
    assert result.returncode == 0, result
    out = result.stdout
    assert "observation 17 + 0 instructions" in out
    assert "registers (i386):" in out and "eip=0x" in out
    assert "keyboard" in out and "timer" in out
    assert "observation 18: timer fires" in out
    past = vmm("replay", echo_trace, "--stop-at", "100000", "--backend", "emu")
    assert past.returncode == 46 and "ended before observation 100000" in past.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_stops_a_guest_that_never_exits(backend, guests):
    """gdb's Ctrl-C (a 0x03 byte while the guest runs) stops even a guest in `jmp .` with no
    exit at all (gdb -batch cannot wait for that stop, so the client here is a raw socket)."""
    run = Debugged("run", guests / "faults" / "spin.bin", "--backend", backend)
    with socket.create_connection(("127.0.0.1", run.port)) as raw:
        raw.settimeout(10)
        raw.sendall(b"$c#63")
        assert raw.recv(1) == b"+"
        raw.sendall(b"\x03")
        seen = b""
        while b"#" not in seen:
            seen += raw.recv(4096)
        assert seen.startswith(b"$T02thread:1;")
        raw.sendall(b"$k#6b")
    out, err = run.proc.communicate(timeout=30)
    assert run.proc.returncode == 130 and b"gdb killed the run" in err


@pytest.mark.parametrize("backend", BACKENDS)
def test_writes_change_a_live_run(backend, guests):
    """On a live run a register write is the user's to make: the echo guest's timer period
    (AX before its OUT to port 0x46) set from 500 to 1000 ms halves the echoes."""
    run = Debugged("run", guests / "echo.bin", "--script", SCRIPT, "--backend", backend)
    text = run.gdb("""
        hbreak *0x1020
        continue
        print $eax
        set $eax = 1000
        delete
        continue
        """)
    assert "$1 = 500" in text and "exited normally" in text
    assert 1 <= run.stdout.count("hello") <= 3          # every 1000 ms in ~2.5 s, not 500
    assert "left its trace" not in run.stderr


def test_sigterm_ends_a_session_gdb_holds(echo_trace):
    """SIGTERM to vmm while gdb has the guest stopped (after it has run) ends the session at
    once, with the run's usual end and status, not after gdb's next command."""
    run = Debugged("replay", echo_trace, "--backend", "emu")
    with socket.create_connection(("127.0.0.1", run.port)) as raw:
        raw.settimeout(10)
        raw.sendall(b"$vCont;s:1#23")
        seen = b""
        while b"T05" not in seen:
            seen += raw.recv(4096)
        run.proc.terminate()
        out, err = run.proc.communicate(timeout=10)
    assert run.proc.returncode == 143
    assert b"terminated (SIGTERM): the debugging session ends" in err
    assert b"Traceback" not in err
