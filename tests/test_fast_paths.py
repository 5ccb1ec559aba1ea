"""Fast paths give the same results as the general code they stand in for (no KVM needed)."""

from __future__ import annotations

import ctypes
import struct

import pytest
from hypothesis import example, given, settings, strategies as st

from conftest import kvm_usable

from vmm.cpu import kvm, kvm_backend
from vmm.inputs import LiveInput, NullFeed, VirtualClock
from vmm.record import OutputDigest, TraceRecorder
from vmm.trace import encode


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**40), st.sampled_from(["console", "debugcon", "serial", "com1"]),
       st.text(max_size=60), st.booleans())
def test_hand_formatted_output_records_are_the_bytes_encode_writes(tmp_path_factory, n, device,
                                                                    text, partial):
    recorder = TraceRecorder(str(tmp_path_factory.mktemp("rec") / "t.trace"))
    lines = []
    recorder.writer.write_lines = lines.extend
    recorder.on_output(n, device, text, partial)
    recorder.tick()                                    # hand the batch over
    record = {"type": "out", "n": n, "dev": device, "text": text}
    if partial:
        record["partial"] = True
    assert lines == [encode(record)]
    recorder.close()


_EVENT = st.one_of(
    st.tuples(st.just("out"), st.integers(0, 3), st.sampled_from(["console", "com1", 'd"v']),
              st.sampled_from(["", "flood flood", 'a "quote"', "back\\slash", "\x00\x1f\x7f",
                               "caf\u00e9 \U0001f600", "\\u0000"]) | st.text(max_size=20),
              st.booleans()),
    st.tuples(st.just("key"), st.integers(0, 3), st.integers(0, 255)),
    st.tuples(st.just("read"), st.integers(0, 3), st.integers(0, 255), st.sampled_from(
        [None, "in", "hlt"])),
    st.tuples(st.just("timer"), st.integers(0, 3), st.integers(1, 3)),
    st.tuples(st.just("cp"), st.integers(0, 3)),
    st.tuples(st.just("tick")))


class _Backend:
    def register_digest(self, legacy=False):
        return "0123456789abcdef"


_OUT_A, _OUT_B = ("out", 0, "console", "a", False), ("out", 1, "console", "b", False)


@settings(max_examples=150, deadline=None)
@given(st.lists(_EVENT, max_size=600))
@example([_OUT_A, ("tick",), _OUT_A, _OUT_B])            # a run goes on past a hand-over
@example([_OUT_A, ("read", 0, 7, None), _OUT_A, ("timer", 0, 1), _OUT_A, _OUT_B])
@example([_OUT_A] * 300 + [_OUT_B] + [("read", 1, 9, None)] * 300 + [_OUT_B])  # past BATCH
def test_batched_output_records_and_digest_are_those_of_one_record_at_a_time(tmp_path_factory,
                                                                            events):
    """Records are held and encoded a batch at a time (keys a device reads appended by the input
    source itself; runs of output records of one observation, device and partial flag encoded
    and digested together): the trace bytes, in order, and the output digest are those of
    encoding and digesting each record by itself, whatever lies between the runs' texts and
    wherever the batches end."""
    recorder = TraceRecorder(str(tmp_path_factory.mktemp("rec") / "t.trace"))
    lines = []
    recorder.writer.write_lines = lines.extend
    inputs = LiveInput(NullFeed(), VirtualClock(), record=recorder)   # keys a device reads
    expected, digest = [], OutputDigest()
    for event in events:
        if event[0] == "out":
            _, n, device, text, partial = event
            recorder.on_output(n, device, text, partial)
            record = {"type": "out", "n": n, "dev": device, "text": text}
            if partial:
                record["partial"] = True
            expected.append(encode(record))
            digest.add(device, text, partial)
        elif event[0] == "key":
            recorder.key(event[1], 7, "keyboard", event[2])
            expected.append(encode({"type": "key", "n": event[1], "at": 7, "dev": "keyboard",
                                    "byte": event[2]}))
        elif event[0] == "read":
            _, inputs.obs, byte, inputs.point = event
            inputs.pending.append((byte, 5))
            assert inputs.key("com1") == byte
            record = {"type": "key", "n": inputs.obs, "at": 5, "dev": "com1", "byte": byte}
            if inputs.point is not None:
                record["point"] = inputs.point
            expected.append(encode(record))
        elif event[0] == "cp":
            recorder.on_checkpoint(event[1], _Backend())
            expected.append(encode({"type": "cp", "n": event[1], "regs": "0123456789abcdef"}))
        elif event[0] == "timer":
            recorder.timer(event[1], 9, event[2])
            expected.append(encode({"type": "timer", "n": event[1], "at": 9, "count": event[2]}))
        else:
            recorder.tick()
    recorder.tick()
    assert b"".join(lines) == b"".join(expected)
    assert recorder.outputs.hexdigest() == digest.hexdigest()
    recorder.close()


def test_one_call_decodes_the_exit_reason_and_the_io_member():
    area = bytearray(64)
    struct.pack_into("<I", area, kvm.RUN_EXIT_REASON, kvm.KVM_EXIT_IO)
    io = kvm.kvm_run_io(direction=kvm.KVM_EXIT_IO_OUT, size=2, port=0x3F8, count=3,
                        data_offset=0x1000)
    area[kvm.RUN_EXIT_INFO:kvm.RUN_EXIT_INFO + 16] = bytes(io)
    assert kvm_backend._exit_io(area, kvm.RUN_EXIT_REASON) == (
        kvm.KVM_EXIT_IO, kvm.KVM_EXIT_IO_OUT, 2, 0x3F8, 3, 0x1000)


# --- a checkpoint's register digest, read from KVM's run area ----------------------------------
def test_the_run_area_digest_reads_the_fields_cpu_state_digests():
    """Vcpu.synced_digest_values reads the run area's kvm_regs and kvm_sregs at their offsets:
    the digest is that of the CpuState built from the two whole structures."""
    from vmm.cpu.backend import CpuState, GPR_NAMES, register_digest
    regs = kvm.kvm_regs(*[0x1111_0000_0000_0000 * (i % 15 + 1) + i for i in range(18)])
    sregs = kvm.kvm_sregs()
    sregs.cs.base, sregs.cs.selector, sregs.cs.limit = 0xFEDC_BA98_7654_3210, 0xF000, 0xFFFF
    sregs.ds.base = 0x5555
    sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4 = 0x8000_0011, 0xDEAD, 0x1000, 0x20
    sregs.cr8, sregs.efer, sregs.apic_base = 7, 0x500, 0xFEE0_0000

    class Area:
        run_area = bytearray(kvm.RUN_SYNC_SREGS + ctypes.sizeof(kvm.kvm_sregs))
    Area.run_area[kvm.RUN_SYNC_REGS:kvm.RUN_SYNC_SREGS] = bytes(regs)
    Area.run_area[kvm.RUN_SYNC_SREGS:] = bytes(sregs)
    state = CpuState(regs={name: getattr(regs, name) for name in GPR_NAMES},
                     cs_base=sregs.cs.base, cs_selector=sregs.cs.selector, cr0=sregs.cr0,
                     cr2=sregs.cr2, cr3=sregs.cr3, cr4=sregs.cr4, efer=sregs.efer)
    for legacy in (False, True):
        assert register_digest(*kvm.Vcpu.synced_digest_values(Area), legacy) == \
            state.digest(legacy)
    assert state.digest() != state.digest(legacy=True)          # RFLAGS' ignored bits are set


@pytest.mark.kvm
@pytest.mark.skipif(not kvm_usable(), reason="needs /dev/kvm")
def test_kvm_register_digest_from_the_run_area_is_that_of_cpu_state():
    """A checkpoint's digest as the KVM backend computes it from the run area is
    cpu_state().digest(), after a guest set registers and flags."""
    from vmm.boot import BootOptions, build_boot_image
    from vmm.cpu.backend import Halt
    from vmm.cpu.kvm_backend import KvmBackend
    # mov eax, 0x12345678; mov ebx, 0x9abcdef0; mov si, 0x4242; stc; std; hlt
    code = bytes.fromhex("66b878563412" "66bbf0debc9a" "be4242" "f9" "fd" "f4")
    image = build_boot_image("regs", code, BootOptions(mem=1 << 20))
    backend = KvmBackend(image.mem_size)
    try:
        for address, data in image.chunks:
            backend.memory[address:address + len(data)] = data
        backend.set_entry_state(image.entry)
        if not backend._synced:
            pytest.skip("this host's KVM has no KVM_CAP_SYNC_REGS: digests come from ioctls")
        assert isinstance(backend.run(), Halt)
        state = backend.cpu_state()
        assert state.regs["rax"] & 0xFFFFFFFF == 0x12345678
        for legacy in (False, True):
            assert backend.register_digest(legacy) == state.digest(legacy)
    finally:
        backend.close()


def test_a_hand_over_that_fails_to_write_digests_its_output_once(tmp_path):
    """Output lines enter the output digest when their batch is encoded, once: a write that
    fails (a full disk) and the close that follows do not count them again."""
    recorder = TraceRecorder(str(tmp_path / "t.trace"))
    writes = []

    def write_lines(lines):
        if not writes:
            writes.append("failed")
            raise OSError(28, "No space left on device")
        writes.append(lines)
    recorder.writer.write_lines = write_lines
    recorder.on_output(1, "console", "first", False)
    try:
        recorder.tick()
    except OSError:
        pass
    recorder.on_output(2, "console", "second", False)
    recorder.close()
    expected = OutputDigest()
    expected.add("console", "first", False)
    expected.add("console", "second", False)
    assert recorder.outputs.hexdigest() == expected.hexdigest()
    assert writes[1] == [encode({"type": "out", "n": 2, "dev": "console", "text": "second"})]


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 24), st.data())
def test_the_memory_digest_of_the_resident_pages_is_that_of_all_pages(pages, data):
    """memory_digest looks only at the pages mincore says are resident (any byte with bit 0
    set, whatever its other bits): since never-touched pages are zero, that is the digest of
    every page, resident-but-zero pages included."""
    from vmm.trace import PAGE, memory_digest
    memory = bytearray(pages * PAGE)
    dirty = data.draw(st.sets(st.integers(0, max(pages - 1, 0)))) if pages else set()
    for page in dirty:
        memory[page * PAGE + data.draw(st.integers(0, PAGE - 1))] = data.draw(st.integers(1, 255))
    resident = bytes(data.draw(st.integers(0, 127)) * 2 + (1 if page in dirty
                                                              else data.draw(st.integers(0, 1)))
                     for page in range(pages))
    assert memory_digest(memoryview(memory), resident) == memory_digest(memoryview(memory))
    if dirty:                       # and it does look at them: a page left out changes it
        missing = min(dirty)
        assert memory_digest(memoryview(memory), resident[:missing] + b"\x00"
                             + resident[missing + 1:]) != memory_digest(memoryview(memory))
