"""Trace mutation fuzzing: real traces recorded from the bundled guests, damaged the ways an
attacker or a bad disk would (byte flips, truncation, a field given another type, huge numbers,
deep nesting, lines dropped or repeated, gzip or not), must each be refused with a one-line
TraceError (exit 14) or replay to a verdict, never a traceback, in bounded time.

`make test` runs a few dozen examples; `make fuzz` runs many more (VMM_FUZZ_EXAMPLES)."""

from __future__ import annotations

import gzip
import io
import json
import os
import tempfile
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import GUESTS, ROOT, test_backends
from vmm.boot import BootOptions
from vmm.errors import TraceError
from vmm.runner import LiveRun, live_run, replay_trace
from vmm.script import parse_script
from vmm.summary import write_summary
from vmm.trace import open_trace

pytestmark = pytest.mark.kvm

EXAMPLES = int(os.environ.get("VMM_FUZZ_EXAMPLES", "40"))
EXAMPLE_SECONDS = 20        # one example: read, inspect and replay (replays are cut at 5 s)
GOLDEN = ROOT / "traces" / "test_goldens" / "test_echo_two_lines.trace"

_BASES: list[bytes] = []


def bases() -> list[bytes]:
    """Real traces (uncompressed bytes): two fresh recordings of bundled guests, one golden."""
    if not _BASES:
        with tempfile.TemporaryDirectory() as d:
            for guest, script in (("echo.bin", 'sendline "hi"\nexpect "hi"\nwait 1s\n'),
                                  ("monitor.bin", 'send "1h"\nwait 1s\n')):
                path = os.path.join(d, guest + ".trace")
                live_run(LiveRun(guest=str(GUESTS / guest), boot=BootOptions(),
                                 script=parse_script(script), trace_path=path))
                with open(path, "rb") as f:
                    _BASES.append(f.read())
        _BASES.append(GOLDEN.read_bytes())
    return _BASES


# Values a field may be swapped for: every JSON type, out-of-range numbers, deep nesting.
DEEP = object()
VALUES = st.one_of(st.sampled_from([None, True, False, 0, -1, 1.5, 1e308, 2 ** 64, 10 ** 40,
                                    -(2 ** 63), "", "x" * 5000, [], {}, [1, 2], {"a": 1},
                                    ["key"], {"type": "key"}, DEEP]),
                   st.integers(), st.text(max_size=20))


def _swap(lines: list[bytes], index: int, choose, value) -> list[bytes] | None:
    """Line `index` with one of its fields (at any depth of the header) set to `value`."""
    try:
        record = json.loads(lines[index])
    except (ValueError, RecursionError):          # a line an earlier mutation made deep
        return None
    target = record
    while True:                       # walk down into objects, choosing a key each time
        if not isinstance(target, dict) or not target:
            return None
        key = choose(sorted(target))
        if isinstance(target[key], dict) and target[key] and choose([True, False]):
            target = target[key]
            continue
        if isinstance(target[key], list) and target[key] and isinstance(target[key][0], dict) \
                and choose([True, False]):
            target = target[key][0]
            continue
        break
    target[key] = "@@DEEP@@" if value is DEEP else value
    text = json.dumps(record, separators=(",", ":"))
    text = text.replace('"@@DEEP@@"', "[" * 100_000 + "]" * 100_000)
    return lines[:index] + [text.encode()] + lines[index + 1:]


@st.composite
def mutated(draw) -> tuple[bytes, bool]:
    data = draw(st.sampled_from(bases()))
    lines = data.split(b"\n")[:-1]
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["flip", "cut", "swap", "swap", "swap", "drop", "repeat",
                                    "number"]))
        if how == "swap":
            index = draw(st.sampled_from(range(len(lines))))
            swapped = _swap(lines, index, lambda xs: draw(st.sampled_from(xs)), draw(VALUES))
            lines = swapped if swapped is not None else lines
        elif how == "number":          # a huge or negative number where a number was
            index = draw(st.sampled_from(range(len(lines))))
            digits = draw(st.sampled_from([b"99999999999999999999999", b"-5", b"1e999",
                                           b"9" * 5000]))
            lines[index] = lines[index].replace(b":0", b":" + digits, 1)
        elif how in ("drop", "repeat") and len(lines) > 1:
            index = draw(st.sampled_from(range(1, len(lines))))
            lines = (lines[:index] + lines[index + 1:] if how == "drop"
                     else lines[:index] + [lines[index]] * draw(st.integers(2, 50)) + lines[index:])
    data = b"\n".join(lines) + b"\n"
    body = min(len(lines[0]) + 1, len(data) - 1)      # most damage goes past the header line
    where = lambda: draw(st.integers(0, len(data) - 1) if draw(st.integers(0, 4)) == 0  # noqa
                         else st.integers(body, len(data) - 1))
    if draw(st.booleans()):
        data = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            data[where()] = draw(st.integers(0, 255))
        data = bytes(data)
    if draw(st.booleans()):
        data = data[:where()]
    compress = draw(st.booleans())
    if compress and draw(st.booleans()):
        packed = gzip.compress(data)
        return packed[:draw(st.integers(1, len(packed)))], False    # a cut gzip stream
    return data, compress


@pytest.mark.skipif(not test_backends(), reason="needs a CPU backend")
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.large_base_example])
@given(case=mutated())
def test_a_mutated_trace_is_refused_or_replayed_never_a_traceback(case):
    data, compress = case
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.trace.gz" if compress else "t.trace")
        with (gzip.open if compress else open)(path, "wb") as f:
            f.write(data)
        start = time.monotonic()
        try:
            trace = open_trace(path)
            write_summary(trace, 0, False, io.StringIO())
            write_summary(trace, 5, True, io.StringIO())
            result = replay_trace(path, timeout_ns=5_000_000_000)
        except TraceError as e:
            message = str(e)
            assert "\n" not in message and message, message
            return
        finally:
            assert time.monotonic() - start < EXAMPLE_SECONDS
    assert isinstance(result.exit_code, int) and result.report
