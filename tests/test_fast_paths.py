"""Fast paths give the same results as the general code they stand in for (no KVM needed)."""

from __future__ import annotations

import struct

from hypothesis import given, settings, strategies as st

from vmm.cpu import kvm, kvm_backend
from vmm.record import TraceRecorder
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


def test_one_call_decodes_the_exit_reason_and_the_io_member():
    area = bytearray(64)
    struct.pack_into("<I", area, kvm.RUN_EXIT_REASON, kvm.KVM_EXIT_IO)
    io = kvm.kvm_run_io(direction=kvm.KVM_EXIT_IO_OUT, size=2, port=0x3F8, count=3,
                        data_offset=0x1000)
    area[kvm.RUN_EXIT_INFO:kvm.RUN_EXIT_INFO + 16] = bytes(io)
    assert kvm_backend._exit_io(area, kvm.RUN_EXIT_REASON) == (
        kvm.KVM_EXIT_IO, kvm.KVM_EXIT_IO_OUT, 2, 0x3F8, 3, 0x1000)
