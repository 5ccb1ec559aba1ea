"""Batched output (coalesced PIO), without KVM: the ring, bulk device writes, and the machine.

- `drain_ring` on fake rings laid out as the kernel's (header {u32 first, last}, 24-byte
  entries {u64 addr; u32 len; u32 pio; u8 data[8]}).
- `LineOutput.put_bytes` and `Serial16550.write_bytes` do exactly what byte-at-a-time writes do.
- The machine with a scripted fake backend that batches OUTs the way KVM does (a bounded ring,
  a write that finds it full exits as an ordinary OUT, the ring drained before every exit is
  returned): output, stamps and end state are the same batched and unbatched.
"""

from __future__ import annotations

import ctypes
import struct

import pytest
from hypothesis import given, settings, strategies as st

from vmm import machine as machine_mod
from vmm.cpu import coalesced, kvm
from vmm.cpu.backend import (GPR_NAMES, HALT, CpuBackend, CpuState, IoIn, IoOut)
from vmm.boot import BootOptions, build_boot_image
from vmm.devices import LineOutput, Serial16550
from vmm.inputs import LiveInput, NullFeed, VirtualClock
from vmm.machine import Machine, Observer, RunConfig

PAGE = 4096
MAX = coalesced.ring_max(PAGE)


def fake_ring(entries, first: int = 0, page: int = PAGE, base: int = 0) -> bytearray:
    """A ring page with `entries` ((port, data) pairs) stored from slot `first` on, wrapping."""
    buf = bytearray(base + page)
    slots = coalesced.ring_max(page)
    for i, (port, data) in enumerate(entries):
        slot = (first + i) % slots
        coalesced.ENTRY.pack_into(buf, base + 8 + slot * 24, port, len(data), 1, data)
    coalesced.HEADER.pack_into(buf, base, first, (first + len(entries)) % slots)
    return buf


def header(buf, base: int = 0) -> tuple[int, int]:
    return coalesced.HEADER.unpack_from(buf, base)


# --- the ring layout --------------------------------------------------------------------------
def test_ring_layout_matches_the_kernel_structures():
    assert ctypes.sizeof(kvm.kvm_coalesced_mmio) == coalesced.ENTRY_SIZE == 24
    assert kvm.kvm_coalesced_mmio.len.offset == coalesced.LEN_OFFSET == 8
    assert kvm.kvm_coalesced_mmio.pio.offset == 12
    assert kvm.kvm_coalesced_mmio.data.offset == coalesced.DATA_OFFSET == 16
    assert ctypes.sizeof(kvm.kvm_coalesced_mmio_ring) == coalesced.HEADER.size == 8
    assert kvm.KVM_COALESCED_MMIO_PAGE_OFFSET == coalesced.PAGE_OFFSET == 2
    assert MAX == 170                        # KVM_COALESCED_MMIO_MAX with 4 KiB pages


def test_unregister_request_number():
    assert kvm.KVM_UNREGISTER_COALESCED_MMIO == 0x4010AE68
    assert kvm.KVM_REGISTER_COALESCED_MMIO == 0x4010AE67


# --- draining ---------------------------------------------------------------------------------
def test_empty_ring_gives_nothing_and_is_left_alone():
    buf = fake_ring([], first=7)
    assert coalesced.drain_ring(buf, 0, MAX) == []
    assert header(buf) == (7, 7)


def test_bytes_to_one_port_come_back_as_one_run_and_the_ring_is_emptied():
    buf = fake_ring([(0xE9, bytes([b])) for b in b"hello\n"])
    assert coalesced.drain_ring(buf, 0, MAX) == [(0xE9, 1, b"hello\n")]
    assert header(buf) == (6, 6)
    assert coalesced.drain_ring(buf, 0, MAX) == []


def test_writes_to_several_ports_keep_their_order():
    writes = [(0x42, b"a"), (0x42, b"b"), (0x3F8, b"x"), (0x42, b"c"), (0xF1, b"\n")]
    assert coalesced.drain_ring(fake_ring(writes), 0, MAX) == [
        (0x42, 1, b"ab"), (0x3F8, 1, b"x"), (0x42, 1, b"c"), (0xF1, 1, b"\n")]


def test_ports_are_16_bit_and_differ_in_the_high_byte():
    writes = [(0x1F8, b"a"), (0x3F8, b"b"), (0x3F8, b"c")]
    assert coalesced.drain_ring(fake_ring(writes), 0, MAX) == [(0x1F8, 1, b"a"),
                                                                (0x3F8, 1, b"bc")]


def test_a_ring_that_wraps_is_read_from_first_to_the_end_then_from_the_start():
    data = bytes(range(0x41, 0x41 + 20))
    buf = fake_ring([(0x42, bytes([b])) for b in data], first=MAX - 5)
    assert header(buf) == (MAX - 5, 15)
    assert coalesced.drain_ring(buf, 0, MAX) == [(0x42, 1, data)]
    assert header(buf) == (15, 15)


def test_a_full_ring_holds_max_minus_one_writes():
    data = bytes(i % 251 for i in range(MAX - 1))
    buf = fake_ring([(0x42, bytes([b])) for b in data], first=3)
    assert coalesced.drain_ring(buf, 0, MAX) == [(0x42, 1, data)]


def test_wider_writes_take_the_general_path_with_their_size():
    writes = [(0x42, b"\x01\x02"), (0x42, b"\x03\x04"), (0x42, b"z"), (0xE9, b"\x05\x06\x07\x08")]
    assert coalesced.drain_ring(fake_ring(writes), 0, MAX) == [
        (0x42, 2, b"\x01\x02\x03\x04"), (0x42, 1, b"z"), (0xE9, 4, b"\x05\x06\x07\x08")]


def test_the_ring_may_sit_at_an_offset_in_a_bigger_buffer():
    base = 2 * PAGE                            # as in the vCPU mmap: page 2
    buf = fake_ring([(0x42, b"o"), (0x42, b"k")], base=base)
    assert coalesced.drain_ring(buf, base, MAX) == [(0x42, 1, b"ok")]
    assert header(buf, base) == (2, 2)


def test_corrupt_indices_are_refused():
    buf = bytearray(PAGE)
    coalesced.HEADER.pack_into(buf, 0, 0, MAX + 3)
    with pytest.raises(ValueError, match="corrupt coalesced ring"):
        coalesced.drain_ring(buf, 0, MAX)


def test_a_consumer_that_stops_half_way_never_sees_the_rest_again():
    buf = fake_ring([(0x42, b"a"), (0xE9, b"b")])
    runs = coalesced.drain_ring(buf, 0, MAX)
    assert runs[0] == (0x42, 1, b"a")         # ... and the consumer stops here
    assert coalesced.drain_ring(buf, 0, MAX) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0x42, 0xE9, 0xF1, 0x3F8]),
                          st.binary(min_size=1, max_size=1)), max_size=MAX - 1),
       st.integers(0, MAX - 1))
def test_draining_gives_back_every_write_in_order(writes, first):
    runs = coalesced.drain_ring(fake_ring(writes, first=first), 0, MAX)
    flat = [(port, bytes([b])) for port, size, data in runs for b in data]
    assert flat == writes
    assert all(a[0] != b[0] for a, b in zip(runs, runs[1:]))   # runs are maximal


# --- bulk writes to the devices -----------------------------------------------------------------
def _line_device(nonprintable: str, drop_cr: bool, max_line: int):
    lines = []
    device = LineOutput("dev", lambda dev, text, partial: lines.append((text, partial)),
                        nonprintable=nonprintable, drop_cr=drop_cr, max_line=max_line)
    return device, lines


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=40) | st.text("ab \t\n", max_size=40).map(str.encode),
                max_size=6),
       st.sampled_from(["drop", "dot"]), st.booleans(), st.integers(1, 12))
def test_put_bytes_is_put_of_each_byte(chunks, nonprintable, drop_cr, max_line):
    bulk, bulk_lines = _line_device(nonprintable, drop_cr, max_line)
    single, single_lines = _line_device(nonprintable, drop_cr, max_line)
    for chunk in chunks:
        bulk.write_bytes(0, chunk)
        for byte in chunk:
            single.write(0, 1, byte)
    bulk.finish()
    single.finish()
    assert bulk_lines == single_lines
    assert bulk.stats() == single.stats()


def test_put_bytes_emits_a_long_line_at_max_line_like_put():
    device, lines = _line_device("drop", False, 4)
    device.put_bytes(b"abcdefghij\nxy")
    device.finish()
    assert lines == [("abcd", False), ("efgh", False), ("ij", False), ("xy", True)]


@pytest.mark.parametrize("lcr", [0x03, 0x83])
def test_serial_write_bytes_honours_dlab(lcr):
    out_bulk, out_single = [], []
    bulk = Serial16550(None, lambda *a: out_bulk.append(a))
    single = Serial16550(None, lambda *a: out_single.append(a))
    for com in (bulk, single):
        com.write(3, 1, lcr)
    bulk.write_bytes(0, b"hi\n\x0c")
    for byte in b"hi\n\x0c":
        single.write(0, 1, byte)
    assert (out_bulk, bulk.divisor, bulk.stats()) == (out_single, single.divisor, single.stats())
    if lcr & 0x80:
        assert out_bulk == [] and bulk.divisor == 0x0C


# --- the machine with a backend that batches like KVM ------------------------------------------
class ScriptedBackend(CpuBackend):
    """Runs a list of port operations instead of a CPU: ("out", port, byte), ("out2", port,
    value) for a 16-bit OUT, ("in", port) and ("hlt",). With `coalesce`, one-byte OUTs to
    registered ports go to a ring of `ring` slots (at most ring - 1 writes, as KVM's); a write
    that finds it full exits. The ring is drained before every exit is returned. `rip` is the
    index of the next operation, so a test can see where the guest stopped."""

    name = "scripted"

    def __init__(self, program, coalesce: bool, ring: int = 6):
        self.program, self.coalesce, self.ring = program, coalesce, ring
        self.memory = memoryview(bytearray(1 << 20))
        self.pc = 0
        self.pending: list[tuple[int, int]] = []
        self.zones: set[int] = set()
        self.reads: list[tuple[int, int, bytes]] = []
        self.exits = 0

    def set_cpuid(self, entries):
        pass

    def set_entry_state(self, state):
        pass

    def register_coalesced_pio(self, port: int, size: int = 1) -> bool:
        if not self.coalesce:
            return super().register_coalesced_pio(port, size)
        self.zones.add(port)
        return True

    def unregister_coalesced_pio(self, port: int, size: int = 1) -> None:
        self.zones.discard(port)

    def drain_coalesced(self) -> None:
        pending, self.pending = self.pending, []
        for port, byte in pending:
            self.coalesced_sink(port, 1, bytes([byte]))

    def run(self):
        while True:
            op = self.program[self.pc] if self.pc < len(self.program) else ("hlt",)
            self.pc += 1
            if (op[0] == "out" and op[1] in self.zones
                    and len(self.pending) < self.ring - 1):
                self.pending.append((op[1], op[2]))
                continue
            self.drain_coalesced()
            self.exits += 1
            if op[0] == "out":
                return IoOut(op[1], 1, bytes([op[2]]))
            if op[0] == "out2":
                return IoOut(op[1], 2, op[2].to_bytes(2, "little"))
            if op[0] == "in":
                self._in = (self.pc, op[1])
                return IoIn(op[1], 1, 1)
            self.pc -= 1
            return HALT

    def complete_in(self, data: bytes) -> None:
        self.reads.append((*self._in, data))

    def cpu_state(self) -> CpuState:
        regs = dict.fromkeys(GPR_NAMES, 0)
        regs["rip"] = 0x10000 + self.pc
        return CpuState(regs=regs)

    def kick(self) -> None:
        pass

    def close(self) -> None:
        pass


class Recorder(Observer):
    def __init__(self):
        self.records = []

    def on_output(self, n, device, text, partial):
        self.records.append((n, device, text, partial))


def run_program(program, coalesce: bool, max_output: int | None = None, ring: int = 6,
                keys: bytes = b""):
    image = build_boot_image("scripted", b"\xf4", BootOptions(mem=1 << 20))
    backend = ScriptedBackend(program, coalesce, ring)
    script = [{"op": "send", "data": keys.decode("latin-1")}] if keys else None
    inputs = LiveInput(NullFeed(), VirtualClock(), script=script, max_time_ns=10**9)
    lines, recorder = [], Recorder()
    config = RunConfig(max_output=max_output, coalesce_after=0 if coalesce else None)
    m = Machine(image, backend, inputs, lambda *line: lines.append(line), lambda text: None,
                config, observer=recorder)
    end = m.run(signals=False)
    return {"lines": lines, "records": recorder.records, "reads": backend.reads,
            "reason": end.reason, "rip": end.cpu.rip, "observation": end.observation,
            "divisor": m.devices["com1"].divisor, "devices": end.stats["devices"],
            "output_bytes": end.stats["output_bytes"]}, backend, m


def out(port: int, text: bytes) -> list[tuple]:
    return [("out", port, b) for b in text]


# Reads that never find "nothing new" (which would be an idle point and end a scripted run):
# the keyboard's status and data with a key waiting, and COM1's scratch register.
SESSION = (out(0xE9, b"before a read\n") + [("in", 0x3FF)]
           + out(0x42, b"hello ") + [("in", 0x45)] + out(0x42, b"world\n")
           + out(0xE9, b"debug\n") + out(0x3F8, b"com1 ")
           + [("out", 0x3FB, 0x83)]            # LCR: DLAB set
           + [("out", 0x3F8, 0x0C), ("out", 0x3F9, 0x00)]   # divisor latch: 9600 baud
           + [("out", 0x3FB, 0x03)]            # LCR: DLAB clear, 8N1
           + out(0x3F8, b"after dlab\n") + [("in", 0x44), ("in", 0x3FF)]
           + out(0xF1, b"pseudo serial\n") + [("out2", 0x42, 0x0A41)]
           + out(0x42, b"long " * 20 + b"\n"))


def test_batched_and_unbatched_sessions_are_identical():
    plain, plain_backend, _ = run_program(SESSION, coalesce=False, keys=b"k")
    batched, batched_backend, m = run_program(SESSION, coalesce=True, keys=b"k")
    assert batched == plain
    assert plain["reason"] == "halt" and plain["divisor"] == 0x0C
    assert ("com1", "com1 after dlab", False) in plain["lines"]
    assert batched_backend.exits < plain_backend.exits / 3     # it did batch
    assert m.coalesced_writes > 0 and m.coalesced_ports == list(m.board.batched_ports)


def test_output_is_stamped_with_the_observation_it_was_made_at():
    batched, _, _ = run_program(SESSION, coalesce=True, keys=b"k")
    stamps = {text: n for n, device, text, partial in batched["records"]}
    assert stamps["before a read"] == 0        # batched, and delivered before the read
    assert stamps["hello world"] == 2          # finished after the second read
    assert stamps["debug"] == 2
    assert stamps["pseudo serial"] == 4


def test_a_backend_that_cannot_batch_runs_every_out_as_an_exit():
    plain, backend, m = run_program(SESSION, coalesce=False, keys=b"k")
    assert m.coalesced_ports == [] and m.coalesced_writes == 0
    assert backend.exits == len(SESSION) + 1


def test_near_max_output_outs_exit_one_by_one_so_the_run_stops_at_the_same_out(monkeypatch):
    monkeypatch.setattr(machine_mod, "COALESCE_MARGIN", 300)
    flood = out(0x42, b"x" * 63 + b"\n") * 50
    plain, _, _ = run_program(flood, coalesce=False, max_output=1000, ring=40)
    batched, _, m = run_program(flood, coalesce=True, max_output=1000, ring=40)
    assert plain["reason"] == "output-flood"
    assert batched == plain                    # the same rip: the same OUT stopped the run
    assert m.coalesced_ports == []             # batching was switched off near the limit


def test_without_the_margin_a_batched_flood_would_stop_later(monkeypatch):
    # The control for the test above: batching up to the limit runs the guest past the OUT
    # that crossed it, so the registers at the end would differ.
    monkeypatch.setattr(machine_mod, "COALESCE_MARGIN", 0)
    flood = out(0x42, b"x" * 63 + b"\n") * 50
    plain, _, _ = run_program(flood, coalesce=False, max_output=1000, ring=40)
    batched, _, _ = run_program(flood, coalesce=True, max_output=1000, ring=40)
    assert batched["lines"] == plain["lines"] and batched["rip"] > plain["rip"]


def test_batching_starts_only_after_coalesce_after_bytes_of_output():
    image = build_boot_image("scripted", b"\xf4", BootOptions(mem=1 << 20))
    program = out(0x42, b"a" * 99 + b"\n") * 5
    backend = ScriptedBackend(program, coalesce=True)
    m = Machine(image, backend, LiveInput(NullFeed(), VirtualClock(), max_time_ns=10**9),
                lambda *a: None, lambda text: None, RunConfig(coalesce_after=250))
    assert m.coalesced_ports == []
    m.run(signals=False)
    assert m.coalesced_ports                    # after the third line: 300 exits first
    assert backend.exits >= 300 and 0 < m.coalesced_writes <= 200


def test_a_short_run_never_registers_a_port():
    image = build_boot_image("scripted", b"\xf4", BootOptions(mem=1 << 20))
    backend = ScriptedBackend(out(0x42, b"hi\n"), coalesce=True)
    m = Machine(image, backend, LiveInput(NullFeed(), VirtualClock(), max_time_ns=10**9),
                lambda *a: None, lambda text: None, RunConfig())
    m.run(signals=False)
    assert backend.zones == set() and m.coalesced_writes == 0


def test_the_default_backend_interface_does_not_batch():
    assert CpuBackend().register_coalesced_pio(0x42) is False
    CpuBackend().unregister_coalesced_pio(0x42)
    CpuBackend().drain_coalesced()
    assert struct.calcsize("<QII8s") == coalesced.ENTRY_SIZE
