"""Where input is taken at an interrupt point (no /dev/kvm needed): one observation has several
points (the IN's, then each HLT until the next IN), so edges and the keys a device takes by
itself there carry the point's kind, and a replay takes them at that kind only (found by
tests/test_irq_kernels.py's Hypothesis test: an edge taken at the IN before the HLT merged with
the interrupt still pending). COM1 takes no input at a point unless its receive interrupt is on,
so that the keyboard, which shares the stream, gets every key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmm.devices.serial import Serial16550
from vmm.inputs import LiveInput, NullFeed, ReplayInput, VirtualClock
from vmm.trace import TraceError, read_trace

IER, MCR = 1, 4
GOLDEN = (Path(__file__).resolve().parent.parent / "traces" / "test_irq_kernels"
          / "test_tick_real_without_keys.trace")


class Recorder:
    def __init__(self):
        self.records = []

    def key(self, n, at, device, byte):
        self.records.append(("key", n, device, byte, None))

    def key_at(self, n, at, device, byte, point):
        self.records.append(("key", n, device, byte, point))

    def edge(self, n, at, line, count, point):
        self.records.append(("edge", n, line, count, point))


class Pit:
    """An edge source with `edges` rising edges waiting."""
    def __init__(self, edges=0):
        self.edges = edges

    def take_edges(self, now):
        count, self.edges = self.edges, 0
        return count


def live(keys=b""):
    rec = Recorder()
    inputs = LiveInput(NullFeed(), VirtualClock(), record=rec)
    inputs.pending.extend((b, 0) for b in keys)
    return inputs, rec


def test_a_key_taken_at_an_interrupt_point_is_recorded_with_the_point():
    inputs, rec = live(b"ab")
    assert inputs.key("keyboard") == ord("a")          # at a read: no point
    inputs.point = "idle"
    assert inputs.key("keyboard") == ord("b")
    assert rec.records == [("key", 0, "keyboard", ord("a"), None),
                           ("key", 0, "keyboard", ord("b"), "idle")]


def test_an_edge_is_recorded_with_the_point_it_was_seen_at():
    inputs, rec = live()
    assert inputs.irq_edges(0, Pit(2), "hlt") == 2
    assert inputs.irq_edges(0, Pit(0), "in") == 0       # none: no record
    assert rec.records == [("edge", 0, 0, 2, "hlt")]


def replay(records):
    return ReplayInput(records, None, None)


def test_a_replay_takes_an_edge_only_at_a_point_of_its_kind():
    inputs = replay([{"type": "edge", "n": 3, "at": 10, "line": 0, "count": 1,
                      "point": "idle"}])
    for _ in range(3):
        inputs.observe()
    pit = Pit()
    assert inputs.irq_edges(0, pit, "in") == 0          # the IN before the HLT: not yet
    assert inputs.irq_edges(0, pit, "hlt") == 0         # the HLT's first look: not yet
    assert inputs.irq_edges(0, pit, "idle") == 1
    assert inputs.now() == 10


def test_an_edge_without_a_point_is_taken_at_the_first_point_of_its_observation():
    inputs = replay([{"type": "edge", "n": 1, "at": 5, "line": 0, "count": 1}])
    inputs.observe()
    assert inputs.irq_edges(0, Pit(), "in") == 1        # early version 4 traces, as before


def test_a_replay_gives_a_polled_key_only_at_a_point_of_its_kind():
    inputs = replay([{"type": "key", "n": 1, "at": 0, "dev": "keyboard", "byte": 0x61,
                      "point": "hlt"},
                     {"type": "key", "n": 1, "at": 0, "dev": "keyboard", "byte": 0x62}])
    inputs.observe()
    assert inputs.key("keyboard") is None               # a read: the key came at the HLT
    inputs.point = "in"
    assert inputs.key("keyboard") is None
    inputs.point = "hlt"
    assert inputs.key("keyboard") == 0x61
    inputs.point = None
    assert inputs.key("keyboard") == 0x62               # no point: taken where asked


def test_com1_takes_input_at_an_interrupt_point_only_with_its_receive_interrupt_on():
    inputs, rec = live(b"k")
    com = Serial16550(inputs, lambda *a: None, waiting_rbr=False)
    assert not com.poll_line() and inputs.pending       # IER 0: the key stays for the keyboard
    com.write(IER, 1, 0x01)                              # received-data interrupt
    com.write(MCR, 1, 0x08)                              # OUT2: the UART drives its IRQ line
    assert com.poll_line() and com.rx_fifo == [ord("k")] and com.irq_pending()


@pytest.mark.parametrize("kind,extra", [("edge", {"line": 0, "count": 1}),
                                        ("key", {"dev": "keyboard", "byte": 1})])
def test_a_trace_with_an_unknown_point_is_refused(tmp_path, kind, extra):
    path = tmp_path / "t.trace"
    lines = GOLDEN.read_text().splitlines()            # a version 4 header
    good = dict({"type": kind, "n": 1, "at": 0, "point": "hlt"}, **extra)
    bad = dict(good, point="whenever")
    path.write_text("\n".join([lines[0], json.dumps(good, separators=(",", ":"))]) + "\n")
    assert [r["point"] for r in read_trace(str(path)).records if r["type"] == kind] == ["hlt"]
    path.write_text("\n".join([lines[0], json.dumps(bad, separators=(",", ":"))]) + "\n")
    with pytest.raises(TraceError, match="out of range"):
        read_trace(str(path))
