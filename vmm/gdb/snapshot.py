"""Snapshots of a run under the debugger: CPU, memory, every device, the input source and the
run's own counters, taken between two instructions, so that going back re-executes from the
nearest snapshot instead of from the start (DESIGN §11).

- CPU: the backend's `debug_save()` / `debug_restore()`: on the emulator Unicorn's whole CPU
  context plus vmm's RDTSC count; on KVM the registers, segment and control registers, FPU,
  pending events and the system-call MSRs. A backend without them is not snapshotted; going
  back there re-executes from the start.
- Memory: the pages the host has resident (mincore: never-touched pages are zero), shared with
  the previous snapshot where unchanged, so a snapshot of a small kernel costs a few hundred
  KiB at most and usually much less.
- Devices: `state()` / `from_state()`, the plain records every device has.
- The input source, the machine, the replay verifier and the output sink: their plain fields
  (numbers, strings, byte strings, lists of them), copied; the recorded events themselves are
  shared, never copied.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

PAGE = 4096
_PLAIN = (bool, int, float, str, bytes, type(None))
_ZERO = bytes(PAGE)


def plain_state(obj) -> dict:
    """An object's fields of plain types, copied (containers of plain values included)."""
    out = {}
    for name, value in vars(obj).items():
        if isinstance(value, _PLAIN):
            out[name] = value
        elif isinstance(value, bytearray):
            out[name] = bytes(value)
        elif isinstance(value, (list, tuple, collections.deque)):
            if all(isinstance(v, _PLAIN) for v in value):
                out[name] = list(value)
        elif isinstance(value, dict):
            if all(isinstance(v, _PLAIN) for v in value.values()):
                out[name] = dict(value)
    return out


def restore_plain(obj, state: dict) -> None:
    for name, value in state.items():
        current = getattr(obj, name, None)
        if isinstance(current, bytearray):
            current[:] = value
        elif isinstance(current, collections.deque):
            current.clear()
            current.extend(value)
        elif isinstance(current, list):
            current[:] = value
        elif isinstance(current, tuple):
            setattr(obj, name, tuple(value))
        elif isinstance(current, dict):
            current.clear()
            current.update(value)
        else:
            setattr(obj, name, value)


def can_snapshot(backend) -> bool:
    return hasattr(backend, "debug_save") and hasattr(backend, "resident_pages")


@dataclass
class Snapshot:
    steps: int
    cpu: dict
    pages: dict[int, bytes]
    devices: list[dict]
    machine: dict
    inputs: dict
    verifier: dict | None
    digest: object                     # the verifier's running output digest (a hash copy)
    sink: tuple
    reads: list[int]
    size: int = field(default=0)       # bytes of page data not shared with the previous one
    screen: dict | None = None         # the machine's screen log (vmm.screenlog), if it has one


def take(execution, previous: Snapshot | None) -> Snapshot:
    backend, machine = execution.backend, execution.machine
    memory = backend.memory
    resident = backend.resident_pages()
    pages, fresh = {}, 0
    old = previous.pages if previous is not None else {}
    count = len(memory) // PAGE
    indices = range(count) if resident is None else [i for i in range(count) if resident[i] & 1]
    for index in indices:
        page = bytes(memory[index * PAGE:(index + 1) * PAGE])     # bytes compare: memcmp
        before = old.get(index)
        if before is not None and page == before:
            pages[index] = before
        elif page != _ZERO:
            pages[index] = page
            fresh += PAGE
    verifier = getattr(machine, "verifier", None)
    return Snapshot(
        steps=backend.debug.steps, cpu=backend.debug_save(), pages=pages,
        devices=[device.state() for _, _, device in machine.bus.devices],
        machine=plain_state(machine), inputs=plain_state(machine.inputs),
        verifier=plain_state(verifier) if verifier is not None else None,
        digest=verifier.outputs.state() if verifier is not None else None,
        sink=(execution.sink.count, list(execution.sink.lines)),
        reads=list(execution.reads), size=fresh,
        screen=machine.screen.state() if machine.screen is not None else None)


def restore(execution, snap: Snapshot) -> None:
    """Put a freshly built execution (not yet run) into the snapshot's state."""
    backend, machine = execution.backend, execution.machine
    memory = backend.memory
    resident = backend.resident_pages()
    count = len(memory) // PAGE
    for index in range(count) if resident is None else [i for i in range(count)
                                                        if resident[i] & 1]:
        if index not in snap.pages and bytes(memory[index * PAGE:(index + 1) * PAGE]) != _ZERO:
            memory[index * PAGE:(index + 1) * PAGE] = _ZERO
    for index, page in snap.pages.items():
        memory[index * PAGE:(index + 1) * PAGE] = page
    backend.debug_restore(snap.cpu)
    for (_, _, device), state in zip(machine.bus.devices, snap.devices):
        device.from_state(state)
    restore_plain(machine, snap.machine)
    restore_plain(machine.inputs, snap.inputs)
    verifier = getattr(machine, "verifier", None)
    if verifier is not None and snap.verifier is not None:
        restore_plain(verifier, snap.verifier)
        verifier.outputs.from_state(snap.digest)
    execution.sink.count, execution.sink.lines = snap.sink[0], list(snap.sink[1])
    execution.reads = list(snap.reads)
    if snap.screen is not None:
        machine.screen.from_state(snap.screen)
