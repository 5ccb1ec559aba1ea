"""Hypothesis strategies for guest input: keys, lines, delays, and whole input scripts.

    from hypothesis import given
    from harness.strategies import input_scripts, play

    @given(input_scripts())
    def test_echo_never_faults(vm, actions):
        s = vm("guests/build/echo.bin")
        last = play(s, actions)              # send keys and lines, wait, in guest time
        ...

An action is ("key", bytes), ("line", str) or ("wait", seconds). `play` sends them to a
GuestSession; `to_script` turns them into the text of a `--script` file.
"""

from __future__ import annotations

try:
    from hypothesis import strategies as st
except ImportError:
    raise ImportError("harness.strategies needs Hypothesis, which is not installed: "
                      "pip install 'vmm[pytest]' (or pip install hypothesis)") from None

PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))
BACKSPACES = ("\x08", "\x7f")


def lines(alphabet: str = PRINTABLE, max_size: int = 40) -> st.SearchStrategy[str]:
    """A line of text, without its newline."""
    return st.text(alphabet=alphabet, max_size=max_size)


def keys(alphabet: str = PRINTABLE, backspace: bool = True) -> st.SearchStrategy[bytes]:
    """A single key press (one byte), printable or (optionally) a backspace."""
    choices = st.sampled_from(list(alphabet) + (list(BACKSPACES) if backspace else []))
    return choices.map(lambda c: c.encode("latin-1"))


def delays(min_seconds: float = 0.0, max_seconds: float = 2.0) -> st.SearchStrategy[float]:
    """A pause in guest time, in whole milliseconds."""
    return st.integers(int(min_seconds * 1000), int(max_seconds * 1000)).map(lambda ms: ms / 1000)


def actions(alphabet: str = PRINTABLE, max_line: int = 40,
            max_delay: float = 2.0) -> st.SearchStrategy[tuple]:
    return st.one_of(st.tuples(st.just("key"), keys(alphabet)),
                     st.tuples(st.just("line"), lines(alphabet, max_line)),
                     st.tuples(st.just("wait"), delays(0.0, max_delay)))


def input_scripts(max_steps: int = 8, **kwargs) -> st.SearchStrategy[list[tuple]]:
    """A list of actions: keys, lines and delays."""
    return st.lists(actions(**kwargs), max_size=max_steps)


def play(session, script: list[tuple]) -> str | None:
    """Send a list of actions to a GuestSession; return the last complete line sent, if any."""
    last = None
    for kind, value in script:
        if kind == "key":
            session.send(value)
        elif kind == "line":
            session.sendline(value)
            last = value
        else:
            session.wait(value)
    return last


def to_script(script: list[tuple]) -> str:
    """The same actions as the text of a vmm script file (docs/scripts.md)."""
    out = []
    for kind, value in script:
        if kind == "key":
            out.append('send "\\x%02x"' % value[0])
        elif kind == "line":
            out.append('send "%s\\n"' % "".join("\\x%02x" % ord(c) for c in value))
        else:
            out.append(f"wait {int(round(value * 1000))}ms")
    return "\n".join(out) + "\n"
