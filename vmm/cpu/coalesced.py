"""The coalesced-I/O ring: where KVM batches OUTs to registered ports instead of exiting.

Source: Documentation/virt/kvm/api.rst (KVM_REGISTER_COALESCED_MMIO, KVM_CAP_COALESCED_PIO),
include/uapi/linux/kvm.h (struct kvm_coalesced_mmio_ring) and virt/kvm/coalesced_mmio.c.

The ring is one page of the vCPU's mmap (page KVM_COALESCED_MMIO_PAGE_OFFSET = 2): a header
`{u32 first, last}`, then RING_MAX 24-byte entries `{u64 addr; u32 len; u32 pio; u8 data[8]}`.
The kernel appends at `last`; the VMM consumes from `first` and moves it on. The kernel keeps
one slot free, so the ring holds at most RING_MAX - 1 writes; a write that finds it full exits
to the VMM as an ordinary I/O exit, which is why the ring must be drained at every return from
KVM_RUN before the exit is handled: the batched writes come first.

`drain_ring` works on any buffer laid out that way (the vCPU mmap, or a bytearray in a test).
"""

from __future__ import annotations

import struct

PAGE_OFFSET = 2                      # KVM_COALESCED_MMIO_PAGE_OFFSET (x86)
HEADER = struct.Struct("<II")        # first, last
ENTRY = struct.Struct("<QII8s")      # addr (the port), len, pio, data
ENTRY_SIZE = ENTRY.size              # 24
DATA_OFFSET = 16                     # offsetof(struct kvm_coalesced_mmio, data)
LEN_OFFSET = 8


def ring_max(page_size: int) -> int:
    """KVM_COALESCED_MMIO_MAX: entries in a ring page (170 with 4 KiB pages)."""
    return (page_size - HEADER.size) // ENTRY_SIZE


def drain_ring(buf, base: int, max_entries: int) -> list[tuple[int, int, bytes]]:
    """Take every write out of the ring at `buf[base:]` and mark it empty.

    Returns the writes in the order the guest made them, consecutive writes of one size to one
    port merged into a run: `(port, size, data)` with `data` their bytes, `size * count` long
    (the shape of a string OUT). The ring is emptied before anything is returned, so a caller
    that stops half-way through the runs never sees the rest again.
    """
    first, last = HEADER.unpack_from(buf, base)
    if first == last:
        return []
    if first >= max_entries or last >= max_entries:
        raise ValueError(f"corrupt coalesced ring: first={first} last={last} max={max_entries}")
    spans = [(first, last)] if first < last else [(first, max_entries), (0, last)]
    struct.pack_into("<I", buf, base, last)          # consumed: first = last
    runs: list[tuple[int, int, bytes]] = []
    for start, stop in spans:
        if start < stop:
            _take(buf, base + HEADER.size + start * ENTRY_SIZE, stop - start, runs)
    return runs


def _take(buf, at: int, count: int, runs: list) -> None:
    """Append the `count` entries starting at byte `at` to `runs`, merging as drain_ring says."""
    end = at + count * ENTRY_SIZE
    lens = buf[at + LEN_OFFSET:end:ENTRY_SIZE]
    port_lo = buf[at:end:ENTRY_SIZE]
    port_hi = buf[at + 1:end:ENTRY_SIZE]
    if lens == b"\x01" * count:
        # The common case, byte-wide OUTs: one strided slice holds every data byte.
        data = buf[at + DATA_OFFSET:end:ENTRY_SIZE]
        if port_lo.count(port_lo[0]) == count and port_hi.count(port_hi[0]) == count:
            _append(runs, port_lo[0] | port_hi[0] << 8, 1, data)
            return
        for i in range(count):
            _append(runs, port_lo[i] | port_hi[i] << 8, 1, data[i:i + 1])
        return
    for addr, length, _pio, data in ENTRY.iter_unpack(buf[at:end]):
        length = min(length, 8)
        if length:
            _append(runs, addr & 0xFFFF, length, data[:length])


def _append(runs: list, port: int, size: int, data) -> None:
    data = bytes(data)
    if runs and runs[-1][0] == port and runs[-1][1] == size:
        runs[-1] = (port, size, runs[-1][2] + data)
    else:
        runs.append((port, size, data))
