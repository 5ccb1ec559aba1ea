"""The golden suite of the bundled guests: each scenario's console transcript must match its
golden trace in traces/test_goldens/ (create or update them with pytest --update-goldens)."""

import pexpect
import pytest
from hypothesis import HealthCheck, given, settings

from harness.strategies import input_scripts, play

pytestmark = pytest.mark.kvm

ECHO, ECHO_ELF = "guests/build/echo.bin", "guests/build/echo.elf"


@pytest.mark.parametrize("guest", [ECHO, ECHO_ELF])
def test_echo_one_line(vm, golden, guest):
    s = vm(guest)
    s.sendline("hello, kernel")
    s.expect("hello, kernel", timeout=1)
    s.wait(2)
    assert s == golden


def test_echo_two_lines(vm, golden):
    s = vm(ECHO)
    s.sendline("first")
    s.expect("first", timeout=1)
    s.sendline("second")
    s.expect("second", timeout=1)
    s.wait(1)
    assert s == golden


def test_echo_line_replaced_mid_stream(vm, golden):
    s = vm(ECHO)
    s.sendline("old")
    s.wait(1.2)                         # echoed at 0.5 s and 1.0 s
    s.send("ne")                        # typing a new line does not stop the old echo...
    s.wait(0.5)
    s.sendline("w")                     # ...until Enter
    s.wait(1.1)
    assert s.lines == ["old", "old", "old", "new", "new"]
    assert s == golden


def test_echo_long_line(vm, golden):
    s = vm(ECHO)
    s.sendline("x" * 250)               # the guest keeps 200 characters
    s.expect("x" * 200 + "\n", timeout=1)
    assert s == golden


def test_echo_backspace(vm, golden):
    s = vm(ECHO)
    s.sendline("heXX\x7f\x08llo")     # two characters typed, rubbed out by DEL and BS
    s.expect("hello", timeout=1)
    assert s == golden


def test_echo_nothing_before_enter(vm, golden):
    s = vm(ECHO)
    s.send("no enter")
    assert s.expect([pexpect.TIMEOUT, "no enter"], timeout=3) == 0
    assert s == golden


@pytest.mark.parametrize("key, expected", [("1", r"Stepping: \d+"), ("x", "Invalid choice: x"),
                                           ("h", "Halted.")])
def test_monitor_menu_entry(vm, golden, key, expected):
    s = vm("guests/build/monitor.bin")
    s.expect("Choice: ")
    s.send(key)
    s.expect(expected)
    if key == "h":
        s.expect(pexpect.EOF)
        assert s.reason == "halt"
    assert s == golden


CLASSROOM_FEEDS = "tests/data/classroom-feeds.toml"


@pytest.mark.parametrize("keys, expected", [("2", "released"), ("33", "London: 21.5 C"),
                                            ("46", "New York: PM2.5"), ("39", "Invalid city: 9")])
def test_monitor_web_entry(vm, golden, keys, expected):
    s = vm("guests/build/monitor.bin", feeds=CLASSROOM_FEEDS)
    for key, prompt in zip(keys, ["Choice: ", "City: "]):
        s.expect(prompt)
        s.send(key)
    s.expect(expected)
    s.expect("Choice: ")
    assert s == golden


def test_monitor_web_entry_offline(vm, golden):
    s = vm("guests/build/monitor.bin")              # no feeds: a session is offline
    s.expect("Choice: ")
    s.send("2")
    s.expect("headline unavailable: offline")
    assert s == golden


@pytest.mark.parametrize("guest", ["guests/build/reset-hello.bin",
                                   "guests/build/reset-hello-rep.bin"])
def test_reset_vector_greeting(vm, golden, guest):
    s = vm(guest, entry="reset")
    s.expect(pexpect.EOF)
    assert s.lines == ["Hello from the reset vector!"] and s.reason == "halt"
    assert s == golden


def test_long_mode_guest(vm, golden):
    s = vm("guests/build/longmode.elf")
    s.expect("Hello from long mode!")
    s.sendline("abc")
    s.expect("you typed: abc")
    s.sendline("halt")
    s.expect(pexpect.EOF)
    assert s.reason == "halt"
    assert s == golden


def edited_line(actions, then: str) -> str:
    """What the echo guest holds after these keys and lines, then `then` and Enter: its line
    editing (backspace and DEL rub out; at most 200 characters kept)."""
    line = ""
    for kind, value in actions:
        typed = value.decode("latin-1") if kind == "key" else value + "\n" if kind == "line" else ""
        for c in typed:
            if c == "\n":
                line = ""
            elif c in "\x08\x7f":
                line = line[:-1]
            elif len(line) < 200:
                line += c
    for c in then:
        line = line + c if len(line) < 200 else line
    return line


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(input_scripts(max_steps=6, alphabet="abc xyz"))
def test_whatever_is_typed_echo_never_faults_and_echoes_the_last_line(vm, actions):
    s = vm(ECHO)
    play(s, actions)
    expected = edited_line(actions, "final")
    s.sendline("final")
    s.expect("final\n", timeout=1)
    s.wait(0.6)
    assert s.end is None                                  # still running: no fault
    assert s.lines[-1] == expected
