"""The interactive terminal path, for real: pexpect runs `vmm run` under a pty, types keys, reads
the echo, and checks the terminal settings are restored on every way out."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

import pexpect
import pytest

from conftest import ROOT

pytestmark = pytest.mark.kvm


def spawn_in_shell(guest_args: str, command: str = "run") -> pexpect.spawn:
    """bash prints the terminal settings (stty -g) before and after vmm, and vmm's status."""
    vmm = f"{shlex.quote(sys.executable)} -m vmm {command} {guest_args}"
    script = f"stty -g; echo BEFORE-DONE; {vmm}; echo \"rc=$?\"; stty -g; echo AFTER-DONE"
    return pexpect.spawn("bash", ["--norc", "--noprofile", "-c", script], cwd=str(ROOT),
                         timeout=30, encoding="ascii", codec_errors="replace",
                         env=dict(os.environ, TERM="dumb"))


def settings_and_status(child: pexpect.spawn, before: str) -> tuple[str, int, str]:
    child.expect(r"rc=(\d+)\r\n")
    rc = int(child.match.group(1))
    child.expect(r"(\S+)\r\nAFTER-DONE")
    after = child.match.group(1)
    child.expect(pexpect.EOF)
    return before, rc, after


def start(guest_args: str, command: str = "run") -> tuple[pexpect.spawn, str]:
    child = spawn_in_shell(guest_args, command)
    child.expect(r"(\S+)\r\nBEFORE-DONE\r\n")
    before = child.match.group(1)
    child.expect_exact("press Ctrl-] to quit")
    return child, before


def test_keys_reach_the_guest_and_the_quit_key_restores_the_terminal(guests):
    child, before = start("guests/build/echo.bin")
    child.send("hi there\r")                      # raw mode: Enter arrives as '\r'
    child.expect_exact("hi there\r\n")
    child.expect_exact("hi there\r\n")            # again at the next timer period
    child.send("\x1d")                            # Ctrl-]
    child.expect_exact("vmm: quit key (Ctrl-]) pressed")
    before, rc, after = settings_and_status(child, before)
    assert rc == 36                               # not 0: that is the guest's HLT
    assert after == before


def test_typed_keys_are_not_echoed_by_the_terminal(guests):
    child, before = start("guests/build/longmode.elf")
    child.expect_exact("Hello from long mode!")
    child.send("secret")
    with pytest.raises(pexpect.TIMEOUT):
        child.expect_exact("secret", timeout=0.5)  # raw mode: no terminal echo
    child.send("\r")
    child.expect_exact("you typed: secret")
    child.send("halt\r")
    child.expect_exact("bye")
    before, rc, after = settings_and_status(child, before)
    assert rc == 0 and after == before


def test_local_echo_shows_typed_keys_the_guest_does_not_echo(guests):
    child, before = start("guests/build/longmode.elf --local-echo")
    child.expect_exact("Hello from long mode!")
    child.send("secret")
    child.expect_exact("secret", timeout=5)        # shown by vmm as it is sent
    child.send("\x7f")                             # a backspace rubs out on the screen too
    child.expect_exact("\b \b")
    child.send("\r")
    child.expect_exact("you typed: secre\r\n")     # the guest got the same keys (its 0x7f too)
    child.send("halt\r")
    child.expect_exact("bye")
    before, rc, after = settings_and_status(child, before)
    assert rc == 0 and after == before


def test_ctrl_c_ends_the_run_and_restores_the_terminal(guests):
    child, before = start("guests/build/echo.bin")
    child.send("\x03")
    before, rc, after = settings_and_status(child, before)
    assert rc == 130
    assert after == before


def test_guest_crash_restores_the_terminal(guests):
    child, before = start("guests/build/faults/garbage.bin")
    child.expect_exact("#UD invalid opcode")
    before, rc, after = settings_and_status(child, before)
    assert rc == 22
    assert after == before


def test_quit_key_works_while_the_guest_spins_without_exits(guests):
    child, before = start("guests/build/faults/busy.bin")
    time.sleep(0.3)
    child.send("\x1d")
    before, rc, after = settings_and_status(child, before)
    assert rc == 36 and after == before


def _vmm_child_of(shell_pid: int) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(f"/proc/{shell_pid}/task/{shell_pid}/children") as f:
            children = f.read().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError("vmm did not start")


def test_sigterm_restores_the_terminal(guests):
    child, before = start("guests/build/echo.bin")
    os.kill(_vmm_child_of(child.pid), signal.SIGTERM)
    before, rc, after = settings_and_status(child, before)
    assert rc == 143
    assert after == before


def test_recording_on_a_terminal_replays_identically(guests, tmp_path):
    trace = tmp_path / "tty.trace"
    child, before = start(f"guests/build/echo.bin -o {trace}", command="record")
    child.send("typed live\r")
    child.expect_exact("typed live\r\n")
    child.send("\x1d")
    before, rc, after = settings_and_status(child, before)
    assert rc == 36 and after == before
    replay = subprocess.run([sys.executable, "-m", "vmm", "replay", "-q", str(trace)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert replay.returncode == 0, replay.stderr
    assert "replay identical" in replay.stderr
