"""Fast paths give the same results as the general code they stand in for (no KVM needed)."""

from __future__ import annotations

import struct

from hypothesis import given, settings, strategies as st

from vmm.cpu import kvm, kvm_backend
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
    st.tuples(st.just("timer"), st.integers(0, 3), st.integers(1, 3)),
    st.tuples(st.just("tick")))


@settings(max_examples=150, deadline=None)
@given(st.lists(_EVENT, max_size=600))
def test_batched_output_records_and_digest_are_those_of_one_record_at_a_time(tmp_path_factory,
                                                                            events):
    """Runs of output records (one observation, device and partial flag) are encoded and
    digested together: the trace bytes, in order with the other records, and the output digest
    are those of encoding and digesting each line by itself."""
    recorder = TraceRecorder(str(tmp_path_factory.mktemp("rec") / "t.trace"))
    lines = []
    recorder.writer.write_lines = lines.extend
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
