"""Multiboot 1 and 2 (vmm.boot.multiboot), vmm's structures moving out of a guest's way, ELF
guests in real mode, and toolchain leftovers (note segments far beyond RAM).

The layout tests need no KVM: they build headers and ELF files with struct, lay them out, and
decode the boot information back out of the chunks the way a kernel reads it. The memory map
and information fields expected here are what `qemu-system-i386 -kernel` gave a kernel that
printed them (QEMU 8, SeaBIOS, -m 128 and -m 7). The end-to-end tests at the bottom assemble
tiny kernels with GNU as and run them on every usable backend.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess

import pytest

from conftest import test_backends
from vmm import __version__, boot
from vmm.boot import (BootModule, BootOptions, build_boot_image, detect_protocol,
                      read_module_file, stub_vector)
from vmm.boot.multiboot import mmap_entries
from vmm.errors import GuestImageError, UsageError

KiB, MiB = 1 << 10, 1 << 20
MB1, MB2 = 0x1BADB002, 0xE85250D6
HLT = b"\xf4"


# --- building kernels ---------------------------------------------------------------------------
def mb1_header(flags: int = 0, *fields: int, checksum: int | None = None) -> bytes:
    if checksum is None:
        checksum = -(MB1 + flags) & 0xFFFFFFFF
    return struct.pack("<III", MB1, flags, checksum) + struct.pack(f"<{len(fields)}I", *fields)


def aout_kernel(load: int = 0x100000, code: bytes = HLT, flags: int = 0, bss: int = 0,
                pad: int = 0, video: tuple = ()) -> bytes:
    """A flat binary with the a.out kludge: `pad` bytes, the header, then the code; loaded
    from its first byte at `load`, entry at the code."""
    header_addr = load + pad
    size = 12 + 20 + 4 * len(video)
    entry = header_addr + size
    end = load + pad + size + len(code)
    header = mb1_header(flags | 1 << 16 | (4 if video else 0), header_addr, load, 0,
                        end + bss if bss else 0, entry, *video)
    return bytes(pad) + header + code


def make_elf(bits: int = 32, segments=(), entry: int = 0x100000, machine: int | None = None,
             header_in: int | None = None, header: bytes = b"") -> bytes:
    """An executable ELF file. Segments: dicts of paddr, data, and optionally memsz, vaddr,
    type (1 PT_LOAD, 4 PT_NOTE), flags, offset (of another segment's body: {"same_as": i}).
    `header` (a multiboot header) is put at the start of segment `header_in`'s body."""
    machine = machine if machine is not None else (3 if bits == 32 else 62)
    ehsize, phentsize = (52, 32) if bits == 32 else (64, 56)
    bodies, offsets = b"", []
    base = -(-(ehsize + phentsize * len(segments)) // 8) * 8     # bodies 8-aligned in the file
    for i, seg in enumerate(segments):
        data = (header if i == header_in else b"") + seg.get("data", b"")
        if "same_as" in seg:
            offsets.append(offsets[seg["same_as"]])
            continue
        offsets.append(base + len(bodies))
        bodies += data
    phdrs = b""
    for i, seg in enumerate(segments):
        data = (header if i == header_in else b"") + seg.get("data", b"")
        if "same_as" in seg:
            data = segments[seg["same_as"]].get("data", b"")
        filesz, memsz = len(data), seg.get("memsz", len(data))
        paddr, vaddr = seg["paddr"], seg.get("vaddr", seg["paddr"])
        ptype, pflags = seg.get("type", 1), seg.get("flags", 5)
        if bits == 32:
            phdrs += struct.pack("<IIIIIIII", ptype, offsets[i], vaddr, paddr, filesz, memsz,
                                 pflags, 0x1000)
        else:
            phdrs += struct.pack("<IIQQQQQQ", ptype, pflags, offsets[i], vaddr, paddr, filesz,
                                 memsz, 0x1000)
    ident = b"\x7fELF" + bytes([1 if bits == 32 else 2, 1, 1]) + bytes(9)
    fmt = "<HHIIIIIHHHHHH" if bits == 32 else "<HHIQQQIHHHHHH"
    head = ident + struct.pack(fmt, 2, machine, 1, entry, ehsize, 0, 0, ehsize, phentsize,
                               len(segments), 40 if bits == 32 else 64, 0, 0)
    return (head + phdrs).ljust(base, b"\0") + bodies


def mb1_elf(flags: int = 3, bits: int = 32, segments=None, entry: int = 0x100000) -> bytes:
    segments = segments or [dict(paddr=0x100000, data=HLT * 16)]
    return make_elf(bits, segments, entry, header_in=0, header=mb1_header(flags))


def tag(type_: int, body: bytes = b"", optional: bool = False) -> bytes:
    raw = struct.pack("<HHI", type_, int(optional), 8 + len(body)) + body
    return raw.ljust(-(-len(raw) // 8) * 8, b"\0")


def mb2_header(*tags: bytes, arch: int = 0) -> bytes:
    body = b"".join(tags) + tag(0)
    length = 16 + len(body)
    return struct.pack("<IIII", MB2, arch, length, -(MB2 + arch + length) & 0xFFFFFFFF) + body


def mb2_elf(*tags: bytes, bits: int = 32, entry: int = 0x100000, segments=None) -> bytes:
    segments = segments or [dict(paddr=0x100000, data=HLT * 16)]
    # the header first in the segment body, 8-aligned in the file: pad the offset
    return make_elf(bits, segments, entry, header_in=0, header=mb2_header(*tags))


def build(data: bytes, name: str = "k.bin", **opts) -> boot.BootImage:
    opts.setdefault("mem", 128 * MiB)
    return build_boot_image(name, data, BootOptions(**opts))


# --- reading RAM back ---------------------------------------------------------------------------
def peek(image, address: int, length: int) -> bytes:
    out = bytearray(length)
    covered = 0
    for start, data in image.chunks:
        lo, hi = max(start, address), min(start + len(data), address + length)
        if lo < hi:
            out[lo - address:hi - address] = data[lo - start:hi - start]
            covered += hi - lo
    assert covered >= length, f"{address:#x}+{length} is not written by the chunks"
    return bytes(out)


def u32(image, address: int) -> int:
    return struct.unpack("<I", peek(image, address, 4))[0]


def cstring(image, address: int) -> str:
    for start, data in image.chunks:
        if start <= address < start + len(data):
            end = data.index(b"\0", address - start)
            return data[address - start:end].decode()
    raise AssertionError(f"no chunk holds {address:#x}")


def what_at(image, address: int) -> str:
    for m in image.load_map:
        if m["addr"] <= address < m["addr"] + max(m["size"], 1):
            return m["what"]
    raise AssertionError(f"nothing at {address:#x}")


def decode_mb1(image) -> dict:
    mbi = image.entry.rbx
    fields = struct.unpack("<IIIIIII", peek(image, mbi, 28))
    info = dict(zip(("flags", "mem_lower", "mem_upper", "boot_device", "cmdline", "mods_count",
                     "mods_addr"), fields))
    info["mmap_length"], info["mmap_addr"] = struct.unpack("<II", peek(image, mbi + 44, 8))
    info["cmdline_text"] = cstring(image, info["cmdline"])
    info["loader"] = cstring(image, u32(image, mbi + 64))
    raw = peek(image, info["mmap_addr"], info["mmap_length"])
    mmap, at = [], 0
    while at < len(raw):
        size, base, length, type_ = struct.unpack_from("<IQQI", raw, at)
        mmap.append((base, length, type_))
        at += size + 4
    info["mmap"] = mmap
    mods = []
    for i in range(info["mods_count"]):
        start, end, string, _ = struct.unpack("<IIII", peek(image, info["mods_addr"] + 16 * i, 16))
        mods.append((start, end, cstring(image, string), peek(image, start, end - start)))
    info["mods"] = mods
    info["framebuffer"] = struct.unpack("<QIIIBB", peek(image, mbi + 88, 22))
    return info


def decode_mb2(image) -> list[tuple[int, bytes]]:
    mbi = image.entry.rbx
    assert mbi % 8 == 0
    total, reserved = struct.unpack("<II", peek(image, mbi, 8))
    assert reserved == 0
    raw = peek(image, mbi, total)
    tags, at = [], 8
    while True:
        assert at % 8 == 0
        type_, size = struct.unpack_from("<II", raw, at)
        tags.append((type_, raw[at + 8:at + size]))
        at += -(-size // 8) * 8
        if type_ == 0:
            assert size == 8 and at == total
            return tags


def assert_layout_sound(image) -> None:
    """Every chunk described, none overlapping another, all inside RAM."""
    assert len(image.chunks) == len(image.load_map)
    spans = []
    for (address, data), m in zip(image.chunks, image.load_map):
        assert m["addr"] == address and m["size"] == len(data) and m["what"]
        assert address + len(data) <= image.mem_size
        if data:
            spans.append((address, address + len(data), m["what"]))
    spans.sort()
    for (a, b, w1), (c, d, w2) in zip(spans, spans[1:]):
        assert b <= c, f"{w1} and {w2} overlap"


def one_line(exc_type, fn, *args, match: str, **kw) -> str:
    with pytest.raises(exc_type, match=match) as info:
        fn(*args, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


QEMU_MMAP_128M = [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2),
                  (0x100000, 0x7EE0000, 1), (0x7FE0000, 0x20000, 2), (0xFFFC0000, 0x40000, 2)]


# --- detecting the protocol ---------------------------------------------------------------------
def test_detects_multiboot1_at_a_4_byte_boundary_in_the_first_8k():
    assert detect_protocol(bytes(8192 - 12) + mb1_header(0)) == "multiboot1"
    assert detect_protocol(bytes(8192 - 8) + mb1_header(0)) is None        # not wholly inside
    assert detect_protocol(bytes(6) + mb1_header(0) + bytes(64)) is None   # not 4-aligned


def test_multiboot1_needs_its_checksum():
    assert detect_protocol(mb1_header(0, checksum=0)) is None


def test_detects_multiboot2_at_an_8_byte_boundary_in_the_first_32k():
    assert detect_protocol(bytes(32768 - 24) + mb2_header()) == "multiboot2"
    assert detect_protocol(bytes(32768) + mb2_header()) is None
    assert detect_protocol(bytes(4) + mb2_header()) is None                # 4- but not 8-aligned
    bad = bytearray(mb2_header())
    bad[12] ^= 1
    assert detect_protocol(bytes(bad)) is None


def test_the_quick_look_before_loading_the_multiboot_module_misses_no_header():
    """vmm.boot looks for either magic number in the first 32 KiB before it imports
    vmm.boot.multiboot (start-up): it must say "none" only where the full search does too."""
    from vmm.boot import multiboot
    assert boot._MB1_MAGIC == struct.pack("<I", multiboot.MB1_MAGIC)
    assert boot._MB2_MAGIC == struct.pack("<I", multiboot.MB2_MAGIC)
    for size, header in ((8192, mb1_header(0)), (32768, mb2_header())):
        for at in range(size - 32, size + 8, 4):
            data = bytes(at) + header + bytes(64)
            assert detect_protocol(data) == multiboot.detect_protocol(data), at
        assert detect_protocol(bytes(size - 32) + header) is not None


def test_a_kernel_with_both_headers_boots_as_multiboot1_as_under_qemu():
    assert detect_protocol(mb1_header(0) + bytes(4) + mb2_header()) == "multiboot1"


def test_other_files_have_no_protocol():
    assert detect_protocol(HLT) is None
    assert detect_protocol(make_elf(32, [dict(paddr=0x100000, data=HLT)])) is None
    assert build_boot_image("g", HLT, BootOptions()).protocol is None


# --- multiboot 1: entry state and the information structure -------------------------------------
def test_multiboot1_entry_state():
    image = build(aout_kernel(code=HLT * 4))
    e = image.entry
    assert image.protocol == "multiboot1" and image.kind == "raw"
    assert e.mode == "protected" and e.rax == 0x2BADB002 and e.rbx == 0x9500
    assert e.rip == 0x100000 + 32
    assert e.cr0 == 0x11 and e.cr4 == 0 and e.efer == 0 and e.rflags == 0x2     # PE, ET; IF=0
    for seg in (e.cs, e.ds, e.ss):
        assert (seg.base, seg.limit, seg.g, seg.db) == (0, 0xFFFFFFFF, 1, 1)
    assert (e.cs.selector, e.ds.selector, e.cs.type) == (0x08, 0x10, 0xB)
    assert e.to_dict()["rax"] == 0x2BADB002 and e.to_dict()["rbx"] == 0x9500


@pytest.mark.parametrize("mem, upper", [(128 * MiB, 0x1FB80), (7 * MiB, 0x5E0000 // KiB),
                                        (16 * MiB, 15 * 1024 - 128)])
def test_multiboot1_information_as_qemu_gives_it(mem, upper):
    image = build(aout_kernel(), name="kernel.bin", mem=mem, cmdline="root=/dev/x quiet")
    info = decode_mb1(image)
    assert info["flags"] == 0x24F           # memory, boot device, cmdline, modules, mmap, name
    assert info["mem_lower"] == 639
    assert info["mem_upper"] == (mem - MiB - 128 * KiB) // KiB == upper
    assert info["boot_device"] == 0x8000FFFF
    assert info["cmdline_text"] == "kernel.bin root=/dev/x quiet"
    assert info["loader"] == f"vmm {__version__}"
    assert info["mods_count"] == 0 and info["mods_addr"] == 0x101000   # the page after the kernel
    assert (info["mmap_addr"], info["mmap_length"]) == (0x9000, 24 * 6)
    assert info["mmap"][3] == (0x100000, mem - MiB - 128 * KiB, 1)
    assert info["framebuffer"] == (0, 0, 0, 0, 0, 0)
    assert_layout_sound(image)


def test_multiboot1_memory_map_is_qemus():
    info = decode_mb1(build(aout_kernel()))
    assert info["mmap"] == QEMU_MMAP_128M == mmap_entries(128 * MiB)


def test_multiboot1_cmdline_without_text_is_the_name_and_a_space_as_qemu():
    assert decode_mb1(build(aout_kernel(), name="k.elf"))["cmdline_text"] == "k.elf "


def test_multiboot1_information_lives_where_qemu_puts_it_and_is_in_the_load_map():
    image = build(aout_kernel(), modules=(BootModule("m", "m", b"xyz"),))
    assert what_at(image, 0x9000) == "multiboot memory map"
    assert what_at(image, 0x9500) == "multiboot information structure"
    assert what_at(image, 0x101000) == "multiboot module list and strings"
    assert what_at(image, 0x102000) == "multiboot module 0 (m)"
    assert what_at(image, 0x600) == "vmm GDT"


def test_multiboot1_modules_are_page_aligned_with_their_strings():
    mods = (BootModule("a.bin", "a.bin arg1", b"A" * 5000), BootModule("e", "empty", b""),
            BootModule("c", "third", b"CCC"))
    image = build(aout_kernel(code=HLT * 5000, flags=1), modules=mods, cmdline="x")
    info = decode_mb1(image)
    assert info["mods_count"] == 3
    assert [(m[2], m[3]) for m in info["mods"]] == [("a.bin arg1", b"A" * 5000), ("empty", b""),
                                                   ("third", b"CCC")]
    starts = [m[0] for m in info["mods"]]
    assert all(s % 4096 == 0 for s in starts)
    assert starts[0] >= 0x100000 + 5000 + 32 and starts[0] < starts[1] < starts[2]
    assert info["mods_addr"] == 0x102000          # page-aligned end of a 5 KiB kernel
    assert_layout_sound(image)


def test_module_option_reads_the_file_and_defaults_the_string(tmp_path):
    path = tmp_path / "initrd.img"
    path.write_bytes(b"data")
    assert read_module_file(str(path)) == BootModule(str(path), str(path), b"data")
    assert read_module_file(f"{path}=initrd with args").string == "initrd with args"
    one_line(GuestImageError, read_module_file, str(tmp_path / "nope"), match="module file not found")
    one_line(UsageError, read_module_file, "=x", match="--module")


def test_multiboot1_video_text_mode_gives_the_ega_framebuffer():
    image = build(aout_kernel(video=(1, 80, 25, 0)))
    info = decode_mb1(image)
    assert info["flags"] == 0x24F | 1 << 12
    assert info["framebuffer"] == (0xB8000, 160, 80, 25, 16, 2)


def test_multiboot1_graphics_mode_is_refused():
    one_line(GuestImageError, build, aout_kernel(video=(0, 1024, 768, 32)),
             match="graphics video mode .*1024x768x32.*text")


@pytest.mark.parametrize("bit", [3, 7, 15])
def test_multiboot1_unknown_required_flags_are_refused(bit):
    one_line(GuestImageError, build, aout_kernel(flags=1 << bit), match=f"bit {bit}")


def test_multiboot1_unknown_optional_flags_are_ignored():
    assert build(aout_kernel(flags=1 << 20)).protocol == "multiboot1"


# --- multiboot 1: the a.out kludge --------------------------------------------------------------
def test_aout_kludge_loads_from_the_header_offset_and_zeroes_the_bss():
    data = aout_kernel(load=0x200000, code=b"\x90" * 10 + HLT, pad=64, bss=0x3000)
    image = build(data)
    address, body = image.chunks[0]
    assert (address, image.load_map[0]["what"]) == (0x200000, "multiboot kernel")
    assert body[:len(data)] == data and body[len(data):] == bytes(0x3000)
    assert image.entry.rip == 0x200000 + 64 + 32


def test_aout_kludge_with_a_header_deep_in_the_file_loads_from_load_addr():
    # The header at file offset 0x400, saying header_addr = load_addr + 0x100: load from 0x300.
    header = mb1_header(1 << 16, 0x100100, 0x100000, 0x100000 + 0x200, 0, 0x100180)
    data = bytes(0x400) + header + bytes(0x400)
    address, body = build(data).chunks[0]
    assert address == 0x100000 and body == data[0x300:0x500]


def test_aout_kludge_in_an_elf_file_wins_over_its_program_headers():
    elf = make_elf(32, [dict(paddr=0x300000, data=HLT * 64)])
    at = len(elf)
    data = elf + mb1_header(1 << 16, 0x100000 + at, 0x100000, 0, 0, 0x100000)
    image = build(data)
    assert image.chunks[0][0] == 0x100000 and image.kind == "elf32"
    assert image.chunks[0][1] == data


@pytest.mark.parametrize("fields, match", [
    ((0x100000, 0x100010, 0, 0, 0x100000), "header_addr .* is below load_addr"),
    ((0x200000, 0x100000, 0, 0, 0x100000), "before the beginning of the file"),
    ((0x100000, 0x100000, 0xFFFFF, 0, 0x100000), "load_end_addr .* is below load_addr"),
    ((0x100000, 0x100000, 0x100000 + 4096, 0, 0x100000), "but the file is"),
    ((0x100000, 0x100000, 0, 0x100004, 0x100000), "bss_end_addr .* is below"),
])
def test_aout_kludge_inconsistent_addresses_are_refused(fields, match):
    one_line(GuestImageError, build, mb1_header(1 << 16, *fields) + HLT * 8, match=match)


def test_aout_kludge_header_cut_short_is_refused():
    one_line(GuestImageError, build, bytes(8) + mb1_header(1 << 16, 0x100000), match="cut short")


def test_aout_kernel_beyond_ram_gets_mem_advice():
    one_line(GuestImageError, build, aout_kernel(load=0x7FF0000, bss=0x100000),
             match="give at least --mem 129M")


def test_flat_multiboot1_without_the_kludge_is_refused():
    one_line(GuestImageError, build, mb1_header(3) + HLT, match="not an ELF file .*bit 16")


# --- multiboot 1: ELF kernels -------------------------------------------------------------------
def test_multiboot1_elf_loads_by_paddr_and_starts_at_e_entry():
    image = build(mb1_elf(segments=[dict(paddr=0x100000, data=HLT * 32),
                                    dict(paddr=0x104000, data=b"", memsz=0x2000, flags=6)],
                          entry=0x10000C))
    assert image.kind == "elf32" and image.entry.rip == 0x10000C
    assert [m["what"] for m in image.load_map[:2]] == ["ELF segment", "ELF segment"]
    assert peek(image, 0x104000, 0x2000) == bytes(0x2000)
    assert decode_mb1(image)["mods_addr"] == 0x106000        # after the bss
    assert_layout_sound(image)


def test_higher_half_elf_entry_is_translated_to_its_physical_address():
    data = mb1_elf(segments=[dict(paddr=0x100000, vaddr=0xC0100000, data=HLT * 32)],
                   entry=0xC0100010)
    assert build(data).entry.rip == 0x100010


def test_multiboot1_elf64_starts_in_protected_mode():
    image = build(mb1_elf(bits=64))
    assert image.kind == "elf64" and image.entry.mode == "protected"
    assert image.entry.rax == 0x2BADB002


def test_note_segment_far_beyond_ram_is_skipped():
    note = b"\x04\0\0\0\x10\0\0\0\x05\0\0\0GNU\0" + bytes(16)
    data = mb1_elf(segments=[dict(paddr=0x100000, data=HLT * 16),
                             dict(paddr=0x080480D4, data=note, flags=4),
                             dict(paddr=0x080480D4, type=4, same_as=1)])
    image = build(data, mem=16 * MiB)
    assert [m["what"] for m in image.load_map].count("ELF segment") == 1
    assert all(m["addr"] < 16 * MiB for m in image.load_map)
    # and a plain ELF guest with the same leftovers loads too
    plain = make_elf(32, [dict(paddr=0x100000, data=HLT), dict(paddr=0x080480D4, data=note),
                          dict(paddr=0x080480D4, type=4, same_as=1)])
    assert len(build_boot_image("g", plain, BootOptions()).chunks) == 4


def test_headers_only_segment_far_beyond_ram_is_skipped():
    data = make_elf(32, [dict(paddr=0x08048000, data=b"", offset=0),
                         dict(paddr=0x100000, data=HLT * 8)])
    # segment 0 covers the ELF and program headers (offset 0, their size)
    fixed = bytearray(data)
    struct.pack_into("<II", fixed, 52 + 4, 0, 0x08048000)
    struct.pack_into("<II", fixed, 52 + 16, 52 + 64, 52 + 64)
    image = build_boot_image("g", bytes(fixed), BootOptions())
    assert [c[0] for c in image.chunks][0] == 0x100000


def test_code_segment_beyond_ram_still_gets_mem_advice():
    data = mb1_elf(segments=[dict(paddr=0x100000, data=HLT * 16),
                             dict(paddr=0x08048000, data=b"\x90" * 16)])
    one_line(GuestImageError, build, data, match="does not fit .*give at least --mem 129M")


def test_zero_sized_segments_are_ignored_anywhere():
    data = mb1_elf(segments=[dict(paddr=0x100000, data=HLT * 16),
                             dict(paddr=0xF0000000, data=b"", memsz=0)])
    assert build(data).protocol == "multiboot1"


# --- options that do not apply ------------------------------------------------------------------
@pytest.mark.parametrize("opts, exc, match", [
    (dict(load=0x100000), UsageError, "--load does not apply"),
    (dict(entry=0x100000), UsageError, "--entry does not apply"),
    (dict(mode="real"), UsageError, "drop --mode real"),
    (dict(mode="long"), UsageError, "drop --mode long"),
    (dict(cmdline="a\0b"), UsageError, "NUL"),
])
def test_options_a_multiboot_kernel_refuses(opts, exc, match):
    one_line(exc, build, aout_kernel(), match=match, **opts)


def test_mode_protected_is_accepted_for_a_multiboot_kernel():
    assert build(aout_kernel(), mode="protected").entry.rax == 0x2BADB002


@pytest.mark.parametrize("opts", [dict(cmdline="x"), dict(modules=(BootModule("m", "m", b""),))])
def test_cmdline_and_modules_need_a_multiboot_kernel(opts):
    one_line(UsageError, build_boot_image, "g.bin", HLT, BootOptions(**opts),
             match="multiboot kernels; g.bin has no multiboot header")


# --- where vmm's structures go ------------------------------------------------------------------
def test_multiboot1_kernel_over_0x9000_moves_the_information():
    image = build(aout_kernel(load=0x8000, code=HLT * 0x3000))
    mbi = image.entry.rbx
    assert mbi == 0x9E000 + 0x500                       # the highest free page below 0x9F000
    assert decode_mb1(image)["mmap_addr"] == 0x9E000
    assert_layout_sound(image)


def test_multiboot1_kernel_at_0_moves_gdt_idt_and_stubs():
    image = build(aout_kernel(load=0, code=HLT * 0x200))
    assert image.stub_base == 0x9E500 and image.entry.gdt[0] == 0x9E600
    assert image.entry.rbx == 0x9500                    # QEMU's place is still free
    assert_layout_sound(image)


def test_raw_protected_guest_linked_at_0_runs_with_moved_structures():
    image = build_boot_image("g", b"\x90" * 0x2000, BootOptions(mode="protected", load=0))
    block = 0x9E000
    assert image.stub_base == block + 0x500
    assert image.entry.gdt == (block + 0x600, 31) and image.entry.idt == (block + 0x800, 2047)
    assert image.entry.rip == 0
    gate = struct.unpack("<HHBBH", peek(image, block + 0x800 + 8 * 13, 8))
    assert gate[0] | gate[4] << 16 == block + 0x500 + 13
    assert peek(image, block + 0x500, 256) == HLT * 256
    assert stub_vector(block + 0x500 + 14, image.stub_base) == 13
    assert stub_vector(0x500 + 14) == 13 and stub_vector(0x500 + 14, image.stub_base) is None
    assert_layout_sound(image)


def test_guest_filling_conventional_memory_pushes_structures_above_1m():
    image = build_boot_image("g", b"\x90" * 0x9F000, BootOptions(mode="protected", load=0,
                                                                 mem=4 * MiB))
    assert image.stub_base == 4 * MiB - 4096 + 0x500
    assert_layout_sound(image)


def test_no_room_for_vmms_structures_is_refused_and_says_so():
    one_line(GuestImageError, build_boot_image, "g", b"\x90" * (64 * KiB),
             BootOptions(mode="protected", load=0, mem=64 * KiB),
             match="no free 4K range .* for vmm's GDT, IDT and handler stubs")


def test_old_layout_is_kept_when_nothing_collides():
    image = build_boot_image("g", HLT, BootOptions(mode="long", load=0x100000))
    assert image.stub_base == 0x500 and image.entry.gdt[0] == 0x600
    assert image.entry.cr3 == 16 * MiB - 3 * 4096 == image.entry.rsp


# --- ELF guests in real mode --------------------------------------------------------------------
@pytest.mark.parametrize("entry, cs, ip", [(0x7C00, 0, 0x7C00), (0x12345, 0x1000, 0x2345)])
def test_elf_with_16_bit_entry_starts_in_real_mode(entry, cs, ip):
    data = make_elf(32, [dict(paddr=entry, data=HLT * 4)], entry=entry)
    image = build_boot_image("g.elf", data, BootOptions(mode="real"))
    e = image.entry
    assert e.mode == "real" and (e.cs.selector, e.cs.base, e.rip) == (cs, cs << 4, ip)
    assert image.kind == "elf32" and image.load_map[0]["addr"] == entry
    assert what_at(image, 0) == "vmm real-mode IVT"


def test_elf_in_real_mode_overlapping_the_ivt_is_refused():
    data = make_elf(32, [dict(paddr=0x100, data=HLT * 4)], entry=0x100)
    one_line(GuestImageError, build_boot_image, "g", data, BootOptions(mode="real"),
             match="overlaps vmm's boot structures")


# --- multiboot 2 --------------------------------------------------------------------------------
def test_multiboot2_elf_entry_and_information_tags():
    mods = (BootModule("m1", "first module", b"hello"), BootModule("m2", "two", b"x" * 5000))
    image = build(mb2_elf(), cmdline="console=ttyS0", modules=mods)
    e = image.entry
    assert image.protocol == "multiboot2" and e.mode == "protected"
    assert e.rax == 0x36D76289 and e.rbx == 0x9000 and e.rip == 0x100000 and e.cr0 == 0x11
    tags = decode_mb2(image)
    types = [t for t, _ in tags]
    assert types == [1, 2, 3, 3, 4, 6, 21, 0]
    body = dict(tags[:2])
    assert body[1] == b"console=ttyS0\0" and body[2] == f"vmm {__version__}\0".encode()
    for (_, raw), m in zip(tags[2:4], mods):
        start, end = struct.unpack_from("<II", raw)
        assert raw[8:] == m.string.encode() + b"\0"
        assert start % 4096 == 0 and peek(image, start, end - start) == m.data
    assert struct.unpack("<II", tags[4][1]) == (639, 0x1FB80)
    mmap = tags[5][1]
    assert struct.unpack_from("<II", mmap) == (24, 0)
    entries = [struct.unpack_from("<QQII", mmap, 8 + 24 * i) for i in range((len(mmap) - 8) // 24)]
    assert [(b, n, t) for b, n, t, _ in entries] == QEMU_MMAP_128M
    assert struct.unpack("<I", tags[6][1]) == (0x100000,)
    assert what_at(image, 0x9000) == "multiboot2 information structure"
    assert_layout_sound(image)


def test_multiboot2_elf64_starts_at_its_32_bit_entry_in_protected_mode():
    image = build(mb2_elf(bits=64, entry=0x100008))
    assert image.kind == "elf64" and image.entry.mode == "protected"
    assert image.entry.rip == 0x100008 and image.entry.efer == 0 and image.entry.cr3 == 0


def test_multiboot2_address_and_entry_tags_load_a_flat_binary():
    header_len = 16 + 24 + 16 + 8
    hdr = mb2_header(tag(2, struct.pack("<IIII", 0x200000, 0x200000, 0, 0x201000 + 0x2000)),
                     tag(3, struct.pack("<I", 0x200000 + header_len)))
    assert len(hdr) == header_len
    data = hdr + HLT * 8
    image = build(data)
    assert image.chunks[0][0] == 0x200000 and image.chunks[0][1][:len(data)] == data
    assert len(image.chunks[0][1]) == 0x3000
    assert image.entry.rip == 0x200000 + header_len and image.kind == "raw"


def test_multiboot2_address_tag_load_addr_minus_1_loads_the_whole_file():
    hdr = mb2_header(tag(2, struct.pack("<IIII", 0x200010, 0xFFFFFFFF, 0, 0)),
                     tag(3, struct.pack("<I", 0x200000)))
    data = bytes(16) + hdr + HLT
    image = build(data)
    assert image.chunks[0] == (0x200000, data)


def test_multiboot2_address_tag_without_entry_on_a_flat_binary_is_refused():
    hdr = mb2_header(tag(2, struct.pack("<IIII", 0x200000, 0x200000, 0, 0)))
    one_line(GuestImageError, build, hdr + HLT, match="no entry address tag")


def test_multiboot2_flat_binary_without_address_tag_is_refused():
    one_line(GuestImageError, build, mb2_header() + HLT, match="not an ELF file .*address tag")


def test_multiboot2_entry_tag_overrides_e_entry():
    assert build(mb2_elf(tag(3, struct.pack("<I", 0x100004)))).entry.rip == 0x100004


@pytest.mark.parametrize("optional", [False, True])
def test_multiboot2_info_request_for_what_vmm_gives(optional):
    image = build(mb2_elf(tag(1, struct.pack("<6I", 1, 2, 3, 4, 6, 8), optional=optional)))
    fb = dict(decode_mb2(image))[8]
    assert struct.unpack("<QIIIBBH", fb) == (0xB8000, 160, 80, 25, 16, 2, 0)


def test_multiboot2_required_request_vmm_cannot_answer_is_refused():
    one_line(GuestImageError, build, mb2_elf(tag(1, struct.pack("<3I", 1, 9, 14))),
             match=r"tag 9 \(ELF sections\), 14 \(ACPI 1.0 RSDP\)")


def test_multiboot2_optional_request_vmm_cannot_answer_is_ignored():
    tags = decode_mb2(build(mb2_elf(tag(1, struct.pack("<2I", 9, 14), optional=True))))
    assert 9 not in dict(tags) and 14 not in dict(tags)


def test_multiboot2_required_graphics_framebuffer_is_refused():
    one_line(GuestImageError, build, mb2_elf(tag(5, struct.pack("<III", 1024, 768, 32))),
             match="requires a graphics framebuffer .*1024x768x32")


def test_multiboot2_optional_framebuffer_gets_ega_text():
    image = build(mb2_elf(tag(5, struct.pack("<III", 1024, 768, 32), optional=True)))
    assert struct.unpack("<QIIIBBH", dict(decode_mb2(image))[8])[-2] == 2


def test_multiboot2_console_tags():
    assert 8 in dict(decode_mb2(build(mb2_elf(tag(4, struct.pack("<I", 3))))))
    one_line(GuestImageError, build, mb2_elf(tag(4, struct.pack("<I", 1))),
             match="console other than EGA text")


def test_multiboot2_module_align_efi_and_unknown_optional_tags_are_accepted():
    image = build(mb2_elf(tag(6), tag(7, optional=True), tag(8, b"\0" * 4, optional=True),
                          tag(42, b"\0" * 8, optional=True)), modules=(BootModule("m", "m", b"z"),))
    start = struct.unpack_from("<I", dict(decode_mb2(image))[3])[0]
    assert start % 4096 == 0


def test_multiboot2_unknown_required_tag_is_refused():
    one_line(GuestImageError, build, mb2_elf(tag(42)), match="unknown type 42")


def test_multiboot2_other_architecture_is_refused():
    data = mb2_header(arch=4) + HLT
    one_line(GuestImageError, build, data, match=r"architecture 4 \(MIPS\)")


@pytest.mark.parametrize("corrupt, match", [
    (lambda h: h[:16] + struct.pack("<HHI", 3, 0, 4) + h[24:], "has size 4"),
    (lambda h: h[:16] + struct.pack("<HHI", 3, 0, 4096) + h[24:], "has size 4096"),
])
def test_multiboot2_malformed_tags_are_refused(corrupt, match):
    header = mb2_header(tag(3, struct.pack("<I", 0x100000)))
    one_line(GuestImageError, build, corrupt(header) + HLT * 16, match=match)


def test_multiboot2_tag_too_small_for_its_fields_is_refused():
    one_line(GuestImageError, build, mb2_elf(tag(2, struct.pack("<I", 0x100000))),
             match="tag type 2 has size 12, too small")


def test_modules_too_big_for_ram_get_mem_advice():
    big = BootModule("big", "big", bytes(4 * MiB))
    one_line(GuestImageError, build, aout_kernel(), mem=2 * MiB, modules=(big,),
             match="multiboot module 0 \\(big\\).*give at least --mem 6M")


def test_multiboot2_header_length_past_the_file_is_refused():
    length = 4096
    hdr = struct.pack("<IIII", MB2, 0, length, -(MB2 + length) & 0xFFFFFFFF) + tag(0)
    one_line(GuestImageError, build, hdr, match="runs past the end of the file")


def test_multiboot2_header_too_short_for_its_end_tag_is_refused():
    hdr = struct.pack("<IIII", MB2, 0, 16, -(MB2 + 16) & 0xFFFFFFFF)
    one_line(GuestImageError, build, hdr + HLT * 16, match="no room for its end tag")


def test_multiboot2_tags_without_an_end_tag_are_refused():
    body = tag(6)
    length = 16 + len(body)
    hdr = struct.pack("<IIII", MB2, 0, length, -(MB2 + length) & 0xFFFFFFFF) + body
    one_line(GuestImageError, build, hdr + HLT * 16, match="without an end tag")


def test_multiboot_entry_beyond_4g_is_refused():
    data = mb2_elf(bits=64, entry=0x1_0000_0000)
    one_line(GuestImageError, build, data, match="beyond 4 GiB")


def test_multiboot2_relocatable_kernel_loads_at_its_link_address():
    reloc = tag(10, struct.pack("<IIII", 0x100000, 0x1000000, 0x1000, 1))
    assert dict(decode_mb2(build(mb2_elf(reloc))))[21] == struct.pack("<I", 0x100000)
    bad = tag(10, struct.pack("<IIII", 0x200000, 0x1000000, 0x1000, 1))
    one_line(GuestImageError, build, mb2_elf(bad), match="relocatable tag allows")


# --- boot options in trace headers --------------------------------------------------------------
def test_boot_options_without_multiboot_keep_the_old_header():
    assert BootOptions(mem=1 << 20).to_dict() == {"mode": None, "load": None, "entry": None,
                                                 "mem": 1 << 20, "stack": None}


def test_boot_options_round_trip_with_cmdline_and_modules():
    opts = BootOptions(mem=128 * MiB, cmdline="a b", modules=(BootModule("f", "f x", b"\0\1\2"),
                                                              BootModule("g", "g", b"")))
    d = opts.to_dict()
    assert d["modules"][0]["data"] == "AAEC" and d["modules"][0]["size"] == 3
    assert BootOptions.from_dict(d) == opts


def test_boot_options_with_a_tampered_module_are_refused():
    d = BootOptions(cmdline="", modules=(BootModule("f", "f", b"abc"),)).to_dict()
    d["modules"][0]["data"] = "YWJk"
    with pytest.raises(ValueError):
        BootOptions.from_dict(d)


# --- end to end, on every backend ---------------------------------------------------------------
BACKENDS = test_backends() or ["none"]
needs_binutils = pytest.mark.skipif(not (shutil.which("as") and shutil.which("ld")),
                                    reason="GNU as and ld are needed to assemble the kernels")

HEX_AND_PUTS = r"""
hex:                      # EAX as 8 hex digits and a space, on port 0xE9
    mov %eax, %edx
    mov $8, %ecx
1:  rol $4, %edx
    mov %edx, %eax
    and $0xf, %eax
    mov digits(%eax), %al
    out %al, $0xe9
    loop 1b
    mov $' ', %al
    out %al, $0xe9
    ret
puts:                     # the string at ESI
2:  lodsb
    test %al, %al
    jz 3f
    out %al, $0xe9
    jmp 2b
3:  ret
digits: .ascii "0123456789abcdef"
"""

MB1_KERNEL = r"""
    .text
    .globl _start
    .align 4
    .long 0x1BADB002, 3, -(0x1BADB002 + 3)
_start:
    mov %ebx, %edi
    call hex                  # EAX: the magic
    mov 8(%edi), %eax
    call hex                  # mem_upper
    mov 16(%edi), %esi
    call puts                 # the command line
    mov $' ', %al
    out %al, $0xe9
    cmpl $0, 20(%edi)
    je 4f
    mov 24(%edi), %ebx        # the first module: its string, then its bytes
    mov 8(%ebx), %esi
    call puts
    mov $'=', %al
    out %al, $0xe9
    mov 0(%ebx), %esi
5:  cmp 4(%ebx), %esi
    jae 4f
    lodsb
    out %al, $0xe9
    jmp 5b
4:  mov $'\n', %al
    out %al, $0xe9
    cli
    hlt
""" + HEX_AND_PUTS

MB2_KERNEL64 = r"""
    .text
    .code32
    .globl _start
    .align 8
header:
    .long 0xE85250D6, 0, header_end - header, -(0xE85250D6 + (header_end - header))
    .word 1, 0
    .long 16, 1, 6            # information request: command line, memory map
    .word 0, 0
    .long 8
header_end:
_start:
    mov %ebx, %edi
    call hex                  # EAX: the magic
    lea 8(%edi), %ebx         # walk the tags to the command line (type 1)
6:  cmpl $1, (%ebx)
    je 7f
    mov 4(%ebx), %eax
    add $7, %eax
    and $~7, %eax
    add %eax, %ebx
    jmp 6b
7:  lea 8(%ebx), %esi
    call puts
    mov $'\n', %al
    out %al, $0xe9
    cli
    hlt
""" + HEX_AND_PUTS

FLAT_AT_0 = r"""
    .text
    .code32
    mov $msg, %esi
1:  lodsb
    test %al, %al
    jz 2f
    out %al, $0xe9
    jmp 1b
2:  ud2                       # no handler: vmm's stub names the exception
msg: .asciz "linked at 0\n"
"""

REAL_ELF = r"""
    .text
    .code16
    .globl _start
_start:
    mov $msg, %si
1:  lodsb
    test %al, %al
    jz 2f
    out %al, $0xe9
    jmp 1b
2:  cli
    hlt
msg: .asciz "16-bit entry\n"
"""


# What QEMU gives a multiboot 1 kernel, printed field by field (all but the boot loader's name,
# which is "qemu" there), then the memory map; it ends through the isa-debug-exit port 0xF4.
MB1_DUMP = r"""
    .text
    .globl _start
    .align 4
    .long 0x1BADB002, 3, -(0x1BADB002 + 3)
_start:
    mov %ebx, %edi
    call hex                  # magic
    mov %edi, %eax
    call hex                  # the information's address
    xor %ebp, %ebp
8:  mov (%edi,%ebp,4), %eax   # flags .. mods_addr
    call hex
    inc %ebp
    cmp $7, %ebp
    jb 8b
    mov 44(%edi), %eax
    call hex                  # mmap_length
    mov 48(%edi), %eax
    call hex                  # mmap_addr
    mov 16(%edi), %esi
    call puts                 # the command line
    mov $'|', %al
    out %al, $0xe9
    mov 24(%edi), %ebx        # the module: start, end, string, contents
    mov 0(%ebx), %eax
    call hex
    mov 4(%ebx), %eax
    call hex
    mov 8(%ebx), %esi
    call puts
    mov $'=', %al
    out %al, $0xe9
    mov 0(%ebx), %esi
5:  cmp 4(%ebx), %esi
    jae 4f
    lodsb
    out %al, $0xe9
    jmp 5b
4:  mov $'\n', %al
    out %al, $0xe9
    mov 48(%edi), %esi        # the memory map, an entry a line
    mov 44(%edi), %ebp
    add %esi, %ebp
6:  cmp %ebp, %esi
    jae 7f
    mov 0(%esi), %eax
    call hex
    mov 4(%esi), %eax
    call hex
    mov 12(%esi), %eax
    call hex
    mov 20(%esi), %eax
    call hex
    mov $'\n', %al
    out %al, $0xe9
    add 0(%esi), %esi
    add $4, %esi
    jmp 6b
7:  mov $0, %al
    out %al, $0xf4            # exit: status 1 under both
    cli
    hlt
""" + HEX_AND_PUTS


def assemble(tmp_path, name: str, source: str, *, bits: int = 32, text: int = 0x100000,
             flat: bool = False) -> str:
    src, obj, out = tmp_path / f"{name}.s", tmp_path / f"{name}.o", tmp_path / name
    src.write_text(source)
    subprocess.run(["as", f"--{bits}", "-o", str(obj), str(src)], check=True)
    emulation = "elf_i386" if bits == 32 else "elf_x86_64"
    subprocess.run(["ld", "-m", emulation, "-Ttext", hex(text), "-e", hex(text) if flat else
                    "_start", *(["--oformat", "binary"] if flat else []), "-o", str(out),
                    str(obj)], check=True, capture_output=True)
    return str(out)


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "none":
        pytest.skip("no CPU backend is usable here (neither /dev/kvm nor unicorn)")
    return request.param


@needs_binutils
def test_multiboot1_kernel_reads_magic_memory_cmdline_and_module(vmm, tmp_path, backend):
    kernel = assemble(tmp_path, "mb1.elf", MB1_KERNEL)
    (tmp_path / "mod.txt").write_bytes(b"payload")
    r = vmm("run", kernel, "--backend", backend, "--mem", "128M", "--cmdline", "hello world",
            "--module", f"{tmp_path / 'mod.txt'}=first")
    assert r.returncode == 0, r
    assert r.lines == ["2badb002 0001fb80 mb1.elf hello world first=payload"], r


@needs_binutils
def test_multiboot1_trace_holds_cmdline_and_module_and_replays_without_them(vmm, tmp_path,
                                                                             backend):
    kernel = assemble(tmp_path, "mb1.elf", MB1_KERNEL)
    module = tmp_path / "mod.txt"
    module.write_bytes(b"abc")
    trace = tmp_path / "run.trace"
    r = vmm("record", kernel, "-o", trace, "--backend", backend, "--mem", "32M",
            "--cmdline", "x", "--module", module)
    assert r.returncode == 0 and r.lines == [f"2badb002 00007b80 mb1.elf x {module}=abc"], r
    module.unlink()
    r = vmm("replay", trace, "--backend", backend)
    assert r.returncode == 0, r
    assert r.lines == [f"2badb002 00007b80 mb1.elf x {module}=abc"], r
    r = vmm("inspect", trace, "--json")
    boot_options = json.loads(r.stdout)["machine"]["boot"]
    assert boot_options["cmdline"] == "x"
    assert boot_options["modules"] == [{"name": str(module), "string": str(module), "size": 3,
                                        "sha256": hashlib.sha256(b"abc").hexdigest()}]


@needs_binutils
def test_multiboot2_elf64_kernel_starts_at_its_32_bit_entry(vmm, tmp_path, backend):
    kernel = assemble(tmp_path, "mb2.elf", MB2_KERNEL64, bits=64)
    r = vmm("run", kernel, "--backend", backend, "--mem", "64M", "--cmdline", "two")
    assert r.returncode == 0, r
    assert r.lines == ["36d76289 two"], r


@needs_binutils
def test_flat_protected_guest_linked_at_0_runs_and_its_fault_is_named(vmm, tmp_path, backend):
    guest = assemble(tmp_path, "flat0.bin", FLAT_AT_0, text=0, flat=True)
    r = vmm("run", guest, "--backend", backend, "--mode", "protected", "--load", "0")
    assert r.lines == ["linked at 0"], r
    assert r.returncode == 22 and "#UD invalid opcode" in r.stderr, r


@needs_binutils
def test_elf_with_a_16_bit_entry_runs_in_real_mode(vmm, tmp_path, backend):
    guest = assemble(tmp_path, "real.elf", REAL_ELF, text=0x7C00)
    r = vmm("run", guest, "--backend", backend, "--mode", "real")
    assert r.returncode == 0 and r.lines == ["16-bit entry"], r


QEMU = shutil.which("qemu-system-i386")


@needs_binutils
@pytest.mark.skipif(QEMU is None, reason="qemu-system-i386 is not installed: the multiboot "
                                         "information cannot be compared with QEMU's")
def test_multiboot1_information_is_what_qemu_gives(vmm, tmp_path, backend):
    kernel = assemble(tmp_path, "dump.elf", MB1_DUMP)
    (tmp_path / "mod.txt").write_bytes(b"module bytes")
    try:
        qemu = subprocess.run(
            [QEMU, "-kernel", "dump.elf", "-append", "hello world", "-initrd", "mod.txt arg",
             "-m", "128", "-display", "none", "-serial", "none", "-monitor", "none",
             "-debugcon", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
             "-no-reboot"], cwd=tmp_path, capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.skip("qemu-system-i386 did not finish within 60 s here")
    if qemu.returncode != 1:
        pytest.skip(f"qemu-system-i386 cannot run here (exit {qemu.returncode}: "
                    f"{qemu.stderr.decode(errors='replace').strip()[:200]})")
    r = vmm("run", kernel, "--backend", backend, "--mem", "128M", "--cmdline", "hello world",
            "--module", f"{tmp_path / 'mod.txt'}=mod.txt arg")
    assert r.returncode == 1, r
    assert r.stdout == qemu.stdout.decode(), r
    assert r.lines[0].startswith("2badb002 00009500 0000024f 0000027f 0001fb80 8000ffff")
    assert "hello world|00102000 0010200c mod.txt arg=module bytes" in r.lines[0]


@pytest.mark.parametrize("args, code, match", [
    (["--cmdline", "x"], 2, "multiboot kernels"),
    (["--module", "/nonexistent/m"], 10, "module file not found"),
])
def test_cli_refusals_are_one_line(vmm, tmp_path, args, code, match):
    guest = tmp_path / "g.bin"
    guest.write_bytes(HLT)
    r = vmm("run", guest, *args)
    assert r.returncode == code and match in r.stderr and len(r.stderr.splitlines()) == 1, r


def test_cli_graphics_kernel_is_refused_with_exit_10(vmm, tmp_path):
    kernel = tmp_path / "gfx.bin"
    kernel.write_bytes(aout_kernel(video=(0, 1024, 768, 32)))
    r = vmm("run", kernel, "--mem", "128M")
    assert r.returncode == 10 and "graphics video mode" in r.stderr, r
    assert len(r.stderr.splitlines()) == 1
