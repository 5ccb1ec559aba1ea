"""Batched output on real KVM: the same output and the same traces with and without it.

Every session is recorded twice under the virtual clock — batched from the first byte
(`coalesce_after=0`) and unbatched (`coalesce_output=False`) — and the trace records must be
equal apart from the `info` fields (wall-clock figures, exit counts). The exit counts show that
batching really happened. The test guests in tests/data/guests are assembled on the fly.
"""

from __future__ import annotations

import functools
import json
import subprocess
import time

import pytest

from vmm import machine as machine_mod
from vmm.boot import BootOptions
from vmm.runner import LiveRun, OutputCollector, live_run, replay_trace
from vmm.script import parse_script

from conftest import ROOT

pytestmark = pytest.mark.kvm

TEST_GUESTS = ROOT / "tests" / "data" / "guests"


@pytest.fixture(scope="module")
def test_guests(tmp_path_factory, guests):
    """tests/data/guests/*.s assembled into real-mode raw binaries loaded at 0x1000."""
    out = tmp_path_factory.mktemp("test-guests")
    built = {}
    for source in TEST_GUESTS.glob("*.s"):
        obj, img, binary = (out / (source.stem + ext) for ext in (".o", ".img", ".bin"))
        subprocess.run(["as", "--32", "--fatal-warnings", "--noexecstack", "-I",
                        str(ROOT / "guests" / "include"), "-I", str(TEST_GUESTS), "-o",
                        str(obj), str(source)], check=True)
        subprocess.run(["ld", "-m", "elf_i386", "--build-id=none", "-nostdlib", "-static",
                        "-T", str(ROOT / "guests" / "raw.ld"), "-Ttext", "0x1000", "-o",
                        str(img), str(obj)], check=True)
        subprocess.run(["objcopy", "-O", "binary", str(img), str(binary)], check=True)
        built[source.stem] = binary
    return built


def records(path) -> list[dict]:
    with open(path) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "info"} for line in f]


def record_both(tmp_path, guest, **spec):
    """Record the session batched and unbatched: (records, result) for each."""
    spec.setdefault("clock", "virtual")
    runs = {}
    for name, extra in (("batched", {"coalesce_after": 0}),
                        ("unbatched", {"coalesce_output": False})):
        path = tmp_path / f"{name}.trace"
        result = live_run(LiveRun(guest=str(guest), trace_path=str(path), **spec, **extra))
        runs[name] = (records(path), result)
    return runs["batched"], runs["unbatched"]


def assert_same(batched, unbatched):
    (b_records, b_result), (u_records, u_result) = batched, unbatched
    assert b_records == u_records
    assert b_result.output.lines == u_result.output.lines
    assert b_result.end.stats["devices"] == u_result.end.stats["devices"]
    assert b_result.end.stats["coalesced_writes"] > 0
    assert b_result.end.stats["exits"] < u_result.end.stats["exits"]


def test_flood_to_max_output_gives_the_same_trace_and_stops_at_the_same_out(tmp_path, guests):
    batched, unbatched = record_both(tmp_path, guests / "faults" / "flood.bin",
                                     max_output=80_000)
    assert_same(batched, unbatched)
    end = batched[0][-1]
    assert end["reason"] == "output-flood" and end["regs"] is not None
    assert batched[1].end.stats["exits"] < unbatched[1].end.stats["exits"] / 2


@pytest.mark.parametrize("name", ["reset-hello.bin", "reset-hello-rep.bin"])
def test_reset_vector_greetings(tmp_path, guests, name):
    batched, unbatched = record_both(tmp_path, guests / name, boot=BootOptions(entry="reset"))
    assert_same(batched, unbatched)
    assert batched[1].output.text == "Hello from the reset vector!\n"
    assert batched[1].end.stats["exits"] == 1           # only the HLT exits


def test_com1_divisor_latch_writes_through_the_batched_port(tmp_path, test_guests):
    batched, unbatched = record_both(tmp_path, test_guests["com1-dlab"])
    assert_same(batched, unbatched)
    lines = batched[1].output.lines
    assert ("com1", "before dlab after dlab", False) in lines
    assert batched[1].end.stats["devices"]["com1"] == {"received": 0, "bytes": 36, "dropped": 0}
    stamps = {r["text"]: r["n"] for r in batched[0] if r["type"] == "out"}
    assert stamps == {"before dlab after dlab": 0, "after a read": 1, "console line": 1}


def test_monitor_session(tmp_path, guests):
    script = parse_script('expect "Choice: "\nsend "1"\nexpect "Choice: "\nsend "h"\n')
    batched, unbatched = record_both(tmp_path, guests / "monitor.bin", script=script)
    assert_same(batched, unbatched)
    assert batched[1].end.reason == "halt"


def test_echo_session_output_between_reads_keeps_its_stamps(tmp_path, guests):
    script = parse_script('sendline "hello"\nwait 2s\nsendline "again"\nwait 1s\n')
    batched, unbatched = record_both(tmp_path, guests / "echo.bin", script=script)
    assert_same(batched, unbatched)
    assert [r["text"] for r in batched[0] if r["type"] == "out"][:2] == ["hello", "hello"]


def test_a_trace_recorded_unbatched_replays_identically_batched(tmp_path, guests, monkeypatch):
    path = tmp_path / "flood.trace"
    live_run(LiveRun(guest=str(guests / "faults" / "flood.bin"), clock="virtual",
                     max_output=60_000, trace_path=str(path), coalesce_output=False))
    monkeypatch.setattr(machine_mod, "RunConfig",
                        functools.partial(machine_mod.RunConfig, coalesce_after=0))
    result = replay_trace(str(path))
    assert result.exit_code == 0, result.report
    assert result.end.stats["coalesced_writes"] > 0


def test_the_default_batches_a_chatty_guest_but_not_a_greeting(guests):
    flood = live_run(LiveRun(guest=str(guests / "faults" / "flood.bin"), clock="virtual",
                             max_output=100_000))
    assert flood.end.stats["coalesced_writes"] > 50_000
    hello = live_run(LiveRun(guest=str(guests / "reset-hello.bin"),
                             boot=BootOptions(entry="reset")))
    assert hello.end.stats["coalesced_writes"] == 0 and hello.end.stats["exits"] == 30


def test_output_batched_before_a_spin_shows_within_a_watchdog_tick(test_guests):
    arrived = []

    class Stamped(OutputCollector):
        def __call__(self, device, text, partial):
            arrived.append(time.monotonic())
            super().__call__(device, text, partial)

    started = time.monotonic()
    result = live_run(LiveRun(guest=str(test_guests["print-spin"]), timeout_ns=1_000_000_000,
                              coalesce_after=0), sink=Stamped())
    assert result.end.reason in ("timeout", "spin")     # `jmp .` after printing: a spin
    assert result.output.lines == [("console", "printed, now spinning", False)]
    assert arrived[0] - started < 0.7           # a tick (50 ms), not the end of the run
