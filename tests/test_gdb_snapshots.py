"""Snapshots and positions, on both backends: going to a position through a snapshot gives the
same registers, memory and devices as re-executing from the start; a replay continued from a
snapshot still ends identical to its recording; device state records round-trip."""

from __future__ import annotations

import subprocess

import pytest

from conftest import ROOT, test_backends, vmm_command

pytestmark = [pytest.mark.kvm]
BACKENDS = test_backends()


class _Quiet:
    def interrupt_requested(self) -> bool:
        return False

    def console(self, text: str) -> None:
        pass


@pytest.fixture(scope="module", params=BACKENDS)
def trace(request, tmp_path_factory, guests):
    """The C echo guest recorded on, and replayed on, each backend."""
    path = tmp_path_factory.mktemp("snap") / "echo.trace"
    subprocess.run(vmm_command("record", str(guests / "echo.elf"), "--script",
                               str(ROOT / "examples" / "echo.script"), "-o", str(path),
                               "--backend", request.param), check=True, capture_output=True,
                   cwd=ROOT)
    return str(path), request.param


def target(trace, every: int):
    from vmm.gdb.session import replay_spec
    from vmm.gdb.target import MachineTarget
    path, backend = trace
    spec, _ = replay_spec(path, backend, lambda text: None)
    t = MachineTarget(spec)
    t.snapshots.every = every
    return t


def state(t) -> tuple:
    ex = t.ex
    devices = [d.state() for _, _, d in ex.machine.bus.devices]
    return (ex.debug.steps, ex.position, t.read_registers(), ex.backend.memory_digest(),
            devices, ex.machine.inputs.obs, ex.machine.inputs.index)


def test_positions_through_snapshots_equal_re_execution(trace):
    snapped, plain = target(trace, 20), target(trace, 1 << 62)
    try:
        snapped.resume("continue", _Quiet())
        assert snapped.ended and snapped.snapshots.taken >= 5     # at reads, 20 steps apart
        end_steps = snapped.ex.debug.steps
        first_read = snapped.ex.reads[1]
        for goal in (end_steps - 1, end_steps - 150, first_read + 10, first_read - 5, 1):
            snapped.go_to(goal)
            plain.go_to(goal)
            assert snapped.ex.debug.steps == goal
            assert state(snapped) == state(plain)
        # from a snapshot to the end: the replay is still identical to its recording
        snapped.go_to(end_steps - 150)
        assert snapped.snapshots.before(end_steps - 150) is not None
        snapped.resume("continue", _Quiet())
        assert any("replay identical" in line for line in snapped.finished), snapped.finished
    finally:
        snapped.ex.close()
        plain.ex.close()


def test_reverse_continue_across_snapshots(trace):
    t = target(trace, 200)
    try:
        t.insert(0, 0x100020, 1)                       # main: hit once, early
        t.resume("continue", _Quiet())
        t.remove(0, 0x100020, 1)
        first = t.ex.debug.steps
        t.resume("continue", _Quiet())                 # to the end, snapshots on the way
        t.insert(0, 0x100020, 1)
        stop = t.continue_back()
        assert stop.breakpoint == "sw" and t.ex.debug.steps == first
        assert t.read_registers()["rip"] == 0x100020
    finally:
        t.ex.close()


def test_device_state_round_trips():
    from vmm.devices import IntervalTimer, Serial16550

    class Inputs:
        def now(self):
            return 0

        def key(self, device):
            return None

        def timer_fired(self, deadline, period):
            return 0

    lines = []
    serial = Serial16550(Inputs(), lambda *a: lines.append(a))
    serial.write(3, 1, 0x80)
    serial.write(0, 1, 0x34)
    serial.write(3, 1, 0x03)
    serial.write(0, 1, ord("x"))                       # a partial line in the transmitter
    saved = serial.state()
    other = Serial16550(Inputs(), lambda *a: None)
    other.from_state(saved)
    assert other.state() == saved and other.divisor == 0x34
    timer = IntervalTimer(Inputs())
    timer.write(0, 4, 500)
    timer.write(1, 1, 1)
    again = IntervalTimer(Inputs())
    again.from_state(timer.state())
    assert again.state() == timer.state() and again.period_ms == 500


@pytest.mark.skipif(not __import__("conftest").kvm_usable(), reason="needs /dev/kvm")
def test_kvm_live_breakpoints_use_the_debug_registers(guests):
    """A live run on KVM with a breakpoint runs at full speed to it (the debug registers),
    instead of single-stepping; stepping and watchpoints single-step."""
    from vmm.boot import BootOptions
    from vmm.gdb.session import live_spec
    from vmm.gdb.target import MachineTarget
    from vmm.inputs import NullFeed
    from vmm.runner import LiveRun
    spec = live_spec(LiveRun(guest=str(guests / "modeswitch.bin"), boot=BootOptions(),
                             backend="kvm"), NullFeed(), lambda text: None)
    t = MachineTarget(spec)
    try:
        t.insert(0, 0x10E5, 1)                          # the HLT in long mode
        stop = t.resume("continue", _Quiet())
        assert stop.breakpoint == "sw" and t.read_registers()["rip"] == 0x10E5
        assert t.ex.backend._debug_stepping[0] == "hw"
        assert t.ex.debug.steps < 5                     # nothing was single-stepped
        assert t.read_registers()["rax"] == 0x123456789      # everything before it ran
        t.resume("step", _Quiet())
        assert t.ex.backend._debug_stepping == ("step",)
    finally:
        t.ex.close()
