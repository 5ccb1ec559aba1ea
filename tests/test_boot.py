"""Boot image layout (vmm.boot): raw and ELF guests, the three CPU modes, and every refusal.

No KVM: build_boot_image() is pure (bytes in, RAM chunks + entry state out). The tests read the
structures vmm writes back out of the chunks and decode them the way the CPU would.
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

from vmm import boot
from vmm.boot import BootOptions, build_boot_image, load_guest, read_guest_file, stub_vector
from vmm.errors import GuestImageError, UsageError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
HLT = 0xF4


# --- helpers ------------------------------------------------------------------------------------
def build(data: bytes = b"\xf4", name: str = "guest.bin", **opts) -> boot.BootImage:
    return build_boot_image(name, data, BootOptions(**opts))


def peek(image: boot.BootImage, address: int, length: int) -> bytes:
    """Read guest-physical memory from the chunks (later chunks win, as when they are copied)."""
    out = bytearray(length)
    covered = [False] * length
    for start, data in image.chunks:
        lo, hi = max(start, address), min(start + len(data), address + length)
        for a in range(lo, hi):
            out[a - address] = data[a - start]
            covered[a - address] = True
    assert all(covered), f"{address:#x}+{length} is not (entirely) written by any chunk"
    return bytes(out)


def q(image, address: int) -> int:
    return struct.unpack("<Q", peek(image, address, 8))[0]


def chunk(image, what: str) -> tuple[int, bytes]:
    matches = [(a, d) for (a, d), m in zip(image.chunks, image.load_map) if m["what"] == what]
    assert len(matches) == 1, (what, image.load_map)
    return matches[0]


def decode_descriptor(d: int) -> dict:
    return {
        "base": ((d >> 16) & 0xFFFFFF) | (((d >> 56) & 0xFF) << 24),
        "limit": (d & 0xFFFF) | (((d >> 48) & 0xF) << 16),
        "access": (d >> 40) & 0xFF,
        "g": (d >> 55) & 1, "db": (d >> 54) & 1, "l": (d >> 53) & 1,
    }


def gdt_entry(image, selector: int) -> dict:
    base, limit = image.entry.gdt
    assert selector + 7 <= limit
    return decode_descriptor(q(image, base + selector))


def real_linear_stack_top(entry) -> int:
    """Where the first push lands + 2: SS base + SP, with SP=0 meaning the top of the segment."""
    return (entry.ss.selector << 4) + (entry.rsp if entry.rsp else 0x10000)


PT_LOAD, PT_NOTE = 1, 4
EM_386, EM_X86_64, EM_ARM = 3, 62, 40


def make_elf(bits: int = 32, segments=(), entry: int = 0x100000, machine: int | None = None,
             trailer: bytes = b"") -> bytes:
    """A minimal little-endian executable: ELF header + program headers + segment bodies.

    Each segment is a dict: paddr, data (bytes), and optionally memsz, filesz, vaddr, type, offset.
    """
    if machine is None:
        machine = EM_386 if bits == 32 else EM_X86_64
    ehsize, phentsize = (52, 32) if bits == 32 else (64, 56)
    body_offset = ehsize + phentsize * len(segments)
    phdrs, bodies = b"", b""
    for seg in segments:
        data = seg.get("data", b"")
        filesz, memsz = seg.get("filesz", len(data)), seg.get("memsz", len(data))
        paddr = seg["paddr"]
        vaddr = seg.get("vaddr", paddr)
        offset = seg.get("offset", body_offset + len(bodies))
        ptype = seg.get("type", PT_LOAD)
        if bits == 32:
            phdrs += struct.pack("<IIIIIIII", ptype, offset, vaddr, paddr, filesz, memsz, 5, 0x1000)
        else:
            phdrs += struct.pack("<IIQQQQQQ", ptype, 5, offset, vaddr, paddr, filesz, memsz, 0x1000)
        bodies += data
    ident = b"\x7fELF" + bytes([1 if bits == 32 else 2, 1, 1]) + bytes(9)
    phoff = ehsize if segments else 0
    fmt = "<HHIIIIIHHHHHH" if bits == 32 else "<HHIQQQIHHHHHH"
    header = ident + struct.pack(fmt, 2, machine, 1, entry, phoff, 0, 0, ehsize, phentsize,
                                 len(segments), 40 if bits == 32 else 64, 0, 0)
    return header + phdrs + bodies + trailer


CODE = b"\xfa\xf4" * 8          # cli; hlt


def elf32(**kw) -> bytes:
    kw.setdefault("segments", [dict(paddr=0x100000, data=CODE)])
    return make_elf(32, **kw)


def elf64(**kw) -> bytes:
    kw.setdefault("segments", [dict(paddr=0x200000, data=CODE)])
    kw.setdefault("entry", 0x200000)
    return make_elf(64, **kw)


def assert_one_line_error(exc_type, fn, *args, match: str | None = None, **kw):
    with pytest.raises(exc_type) as info:
        fn(*args, **kw)
    message = str(info.value)
    assert message and "\n" not in message, message
    if match is not None:
        assert match in message, message
    return message


# --- raw binaries: defaults ---------------------------------------------------------------------
def test_raw_defaults_to_real_mode():
    image = build()
    assert image.kind == "raw"
    assert image.entry.mode == "real"
    assert image.entry.cr0 & boot.CR0_PE == 0


def test_raw_is_loaded_at_0x1000_by_default():
    image = build(b"\x90\x90\xf4")
    assert chunk(image, "image") == (0x1000, b"\x90\x90\xf4")


def test_raw_real_mode_entry_is_cs0_ip_load():
    entry = build().entry
    assert (entry.cs.selector, entry.cs.base, entry.rip) == (0, 0, 0x1000)


def test_real_mode_segments_are_16_bit_with_64k_limits():
    entry = build().entry
    for seg in (entry.cs, entry.ds, entry.ss):
        assert seg.base == seg.selector << 4
        assert seg.limit == 0xFFFF
        assert seg.db == 0 and seg.l == 0


def test_raw_real_mode_default_stack_is_below_640k():
    entry = build().entry
    assert real_linear_stack_top(entry) == 0xA0000


def test_raw_real_mode_default_stack_with_small_ram_is_top_of_ram():
    entry = build(mem=64 * KiB).entry
    assert real_linear_stack_top(entry) == 64 * KiB


def test_raw_real_mode_stack_option_16_byte_aligned():
    entry = build(stack=0x20000).entry
    assert real_linear_stack_top(entry) == 0x20000


def test_raw_real_mode_stack_option_below_64k():
    entry = build(stack=0x7C00).entry
    assert (entry.ss.selector, entry.rsp) == (0, 0x7C00)


# Regression: SS:SP used to wrap for such tops (--stack 0x10008 gave 0000:0008, in the IVT).
@pytest.mark.parametrize("top", [0x10008, 0x12345, 0x9FFFF])
def test_raw_real_mode_stack_option_not_16_byte_aligned_above_64k(top):
    entry = build(stack=top).entry
    assert real_linear_stack_top(entry) == top


@settings(max_examples=300, deadline=None)
@given(top=st.integers(1, 0x100000))
def test_raw_real_mode_stack_ss_sp_reach_exactly_the_requested_top(top):
    entry = build(stack=top, mem=2 * MiB).entry
    assert 0 <= entry.ss.selector <= 0xFFFF and 0 <= entry.rsp <= 0xFFFF
    assert entry.ss.base == entry.ss.selector << 4
    assert real_linear_stack_top(entry) == top


def test_raw_real_mode_ivt_points_every_vector_at_its_hlt_stub():
    image = build()
    ivt = peek(image, 0, 1024)
    for v in range(256):
        offset, segment = struct.unpack_from("<HH", ivt, 4 * v)
        target = (segment << 4) + offset
        assert target == boot.STUB_BASE + v
        assert peek(image, target, 1) == bytes([HLT])


def test_raw_real_mode_idt_register_is_the_ivt():
    assert build().entry.idt == (0, 0x3FF)


# --- raw binaries: --load and --entry -----------------------------------------------------------
def test_raw_load_option_moves_image_and_entry():
    image = build(b"\xf4" * 4, load=0x7C00)
    assert chunk(image, "image")[0] == 0x7C00
    assert (image.entry.cs.base + image.entry.rip) == 0x7C00


def test_raw_load_above_64k_uses_a_code_segment():
    entry = build(load=0x20000).entry
    assert entry.cs.base + entry.rip == 0x20000
    assert entry.cs.base == entry.cs.selector << 4
    assert entry.rip <= 0xFFFF


def test_raw_entry_option_sets_entry_inside_the_image():
    entry = build(b"\x90" * 0x3000, load=0x10000, entry=0x12345).entry
    assert entry.cs.base + entry.rip == 0x12345
    assert entry.rip <= 0xFFFF


def test_raw_protected_mode_entry_option():
    image = build(b"\x90" * 16, mode="protected", load=0x100000, entry=0x100008)
    assert chunk(image, "image")[0] == 0x100000
    assert image.entry.rip == 0x100008


def test_raw_real_mode_image_must_end_below_1m():
    assert_one_line_error(GuestImageError, build, b"\x90" * 0x100, load=0xFFF80, match="1 MiB")


def test_raw_real_mode_entry_must_be_below_1m():
    assert_one_line_error(GuestImageError, build, load=0x1000, entry=0x100000, match="1 MiB")


# --- the reset vector ---------------------------------------------------------------------------
def reset_image(size: int = 64 * KiB) -> bytes:
    data = bytearray(size)
    data[0xFFF0:0xFFF5] = b"\xea\x00\x00\x00\xf0"     # jmp far f000:0000
    return bytes(data[:size])


def test_reset_entry_loads_64k_image_at_0xf0000():
    data = reset_image()
    image = build(data, entry="reset")
    assert chunk(image, "image") == (0xF0000, data)


def test_reset_entry_starts_at_f000_fff0():
    entry = build(reset_image(), entry="reset").entry
    assert entry.mode == "real"
    assert (entry.cs.selector, entry.cs.base, entry.rip) == (0xF000, 0xF0000, 0xFFF0)


def test_reset_entry_image_too_large():
    assert_one_line_error(GuestImageError, build, bytes(64 * KiB + 1), entry="reset",
                          match="64 KiB")


def test_reset_entry_image_too_small_to_reach_fff0():
    assert_one_line_error(GuestImageError, build, bytes(4 * KiB), entry="reset", match="0xFFF0")


def test_reset_entry_with_load_is_a_usage_error():
    assert_one_line_error(UsageError, build, reset_image(), entry="reset", load=0x1000,
                          match="--load")


@pytest.mark.parametrize("mode", ["protected", "long"])
def test_reset_entry_with_non_real_mode_is_a_usage_error(mode):
    assert_one_line_error(UsageError, build, reset_image(), entry="reset", mode=mode,
                          match=mode)


def test_reset_entry_with_explicit_real_mode_is_fine():
    assert build(reset_image(), entry="reset", mode="real").entry.rip == 0xFFF0


def test_reset_entry_needs_1m_of_ram():
    assert_one_line_error(UsageError, build, reset_image(), entry="reset", mem=512 * KiB,
                          match="--mem")


# --- protected mode -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def protected():
    return build(b"\x90" * 32 + b"\xf4", mode="protected", load=0x100000)


def test_protected_mode_sets_cr0_pe_without_paging(protected):
    assert protected.entry.cr0 & boot.CR0_PE
    assert not protected.entry.cr0 & boot.CR0_PG
    assert protected.entry.efer == 0


def test_protected_mode_gdt_is_at_0x600_with_four_descriptors(protected):
    assert protected.entry.gdt == (0x600, 4 * 8 - 1)
    assert q(protected, 0x600) == 0                          # the null descriptor


def test_protected_mode_gdt_0x08_is_flat_32_bit_code(protected):
    d = gdt_entry(protected, 0x08)
    assert d == {"base": 0, "limit": 0xFFFFF, "access": 0x9B, "g": 1, "db": 1, "l": 0}


def test_protected_mode_gdt_0x10_is_flat_data(protected):
    d = gdt_entry(protected, 0x10)
    assert d == {"base": 0, "limit": 0xFFFFF, "access": 0x93, "g": 1, "db": 1, "l": 0}


def test_protected_mode_segment_registers_match_the_gdt(protected):
    entry = protected.entry
    for seg in (entry.cs, entry.ds, entry.ss):
        d = gdt_entry(protected, seg.selector)
        assert seg.type == d["access"] & 0xF
        assert (seg.db, seg.l, seg.g) == (d["db"], d["l"], d["g"])
        assert seg.base == d["base"]
        assert seg.limit == 0xFFFFFFFF                         # 0xFFFFF pages of 4 KiB
    assert (entry.cs.selector, entry.ds.selector, entry.ss.selector) == (0x08, 0x10, 0x10)


def test_protected_mode_idt_has_256_gates_pointing_at_hlt_stubs(protected):
    base, limit = protected.entry.idt
    assert (base, limit) == (0x800, 256 * 8 - 1)
    idt = peek(protected, base, limit + 1)
    for v in range(256):
        lo, selector, zero, type_attr, hi = struct.unpack_from("<HHBBH", idt, 8 * v)
        assert (selector, zero, type_attr) == (0x08, 0, 0x8E)   # present, DPL0, 32-bit int gate
        target = (hi << 16) | lo
        assert target == boot.STUB_BASE + v
        assert peek(protected, target, 1) == bytes([HLT])


def test_protected_mode_default_stack_is_top_of_ram(protected):
    assert protected.entry.rsp == protected.mem_size


def test_protected_mode_entry_beyond_4g_is_refused():
    assert_one_line_error(GuestImageError, build, mode="protected", entry=1 << 32, match="4 GiB")


# --- long mode ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def long_image():
    return build(b"\x90" * 32 + b"\xf4", mode="long", load=0x100000)


def walk(image, linear: int) -> int:
    """Translate through PML4 -> PDPT -> PD (2 MiB pages), as the CPU would."""
    mask = 0x000FFFFFFFFFF000
    pml4e = q(image, (image.entry.cr3 & mask) + 8 * ((linear >> 39) & 511))
    assert pml4e & 0x3 == 0x3, "PML4E not present+writable"
    pdpte = q(image, (pml4e & mask) + 8 * ((linear >> 30) & 511))
    assert pdpte & 0x3 == 0x3, "PDPTE not present+writable"
    assert not pdpte & 0x80, "unexpected 1 GiB page"
    pde = q(image, (pdpte & mask) + 8 * ((linear >> 21) & 511))
    assert pde & 0x83 == 0x83, "PDE not a present, writable 2 MiB page"
    return (pde & mask & ~(2 * MiB - 1)) | (linear & (2 * MiB - 1))


def test_long_mode_control_registers(long_image):
    e = long_image.entry
    assert e.efer & (boot.EFER_LME | boot.EFER_LMA) == boot.EFER_LME | boot.EFER_LMA
    assert e.cr4 & boot.CR4_PAE
    assert e.cr0 & (boot.CR0_PE | boot.CR0_PG) == boot.CR0_PE | boot.CR0_PG


def test_long_mode_cs_is_64_bit(long_image):
    cs = long_image.entry.cs
    assert (cs.selector, cs.l, cs.db) == (0x18, 1, 0)
    d = gdt_entry(long_image, 0x18)
    assert (d["l"], d["db"], d["access"]) == (1, 0, 0x9B)


def test_long_mode_page_tables_sit_at_top_of_ram(long_image):
    address, data = chunk(long_image, "vmm long-mode page tables")
    assert address + len(data) == long_image.mem_size
    assert long_image.entry.cr3 == address
    assert address % boot.PAGE == 0


@pytest.mark.parametrize("linear", [0, 0x1000, 0x100000, 0x200000 + 0x123, 0xABCDEF,
                                    16 * MiB - 1])
def test_long_mode_page_tables_identity_map_ram(long_image, linear):
    assert walk(long_image, linear) == linear


def test_long_mode_page_tables_map_their_own_pages(long_image):
    cr3 = long_image.entry.cr3
    assert walk(long_image, cr3) == cr3


def test_long_mode_identity_map_covers_ram_above_1g():
    image = build(mode="long", mem=GiB + 64 * KiB)
    for linear in (GiB - 1, GiB, GiB + 0x1234, image.mem_size - 1):
        assert walk(image, linear) == linear


def test_long_mode_stack_is_below_the_page_tables(long_image):
    address, _ = chunk(long_image, "vmm long-mode page tables")
    assert 0 < long_image.entry.rsp <= address


def test_long_mode_idt_has_128_16_byte_gates_pointing_at_hlt_stubs(long_image):
    base, limit = long_image.entry.idt
    assert (base, limit) == (0x800, 128 * 16 - 1)
    idt = peek(long_image, base, limit + 1)
    for v in range(128):
        lo, selector, ist, type_attr, mid, hi, reserved = struct.unpack_from("<HHBBHII", idt, 16 * v)
        assert (selector, ist, type_attr, reserved) == (0x18, 0, 0x8E, 0)
        target = lo | (mid << 16) | (hi << 32)
        assert target == boot.STUB_BASE + v
        assert peek(long_image, target, 1) == bytes([HLT])


def test_long_mode_image_at_the_top_of_ram_moves_the_page_tables_below_it():
    image = build(b"\x90" * 16, mode="long", load=16 * MiB - 0x2000)
    address, tables = chunk(image, "vmm long-mode page tables")
    assert address == 16 * MiB - 0x2000 - len(tables) and address % boot.PAGE == 0
    assert image.entry.cr3 == address
    assert image.entry.rsp == 16 * MiB       # no longer below the tables: the top of RAM
    assert q(image, address) & ~0xFFF == address + boot.PAGE    # PML4 -> PDPT, moved too


# --- layout invariants over many option combinations --------------------------------------------
@settings(max_examples=300, deadline=None)
@given(mode=st.sampled_from([None, "real", "protected", "long"]),
       mem_pages=st.integers(16, 4096),
       load=st.one_of(st.none(), st.integers(0, 32 * MiB)),
       size=st.integers(1, 256 * KiB))
def test_raw_layout_fits_ram_and_chunks_never_overlap(mode, mem_pages, load, size):
    mem = mem_pages * boot.PAGE
    try:
        image = build(b"\x90" * size, mode=mode, load=load, mem=mem)
    except (GuestImageError, UsageError) as e:
        assert "\n" not in str(e)
        return
    spans = sorted((a, a + len(d)) for a, d in image.chunks)
    for (a, b), (c, _) in zip(spans, spans[1:]):
        assert b <= c, f"chunks overlap: {spans}"
    assert spans[0][0] >= 0 and spans[-1][1] <= mem


def test_load_map_describes_every_chunk():
    image = build(mode="protected")
    assert [(m["addr"], m["size"]) for m in image.load_map] == [
        (a, len(d)) for a, d in image.chunks]


# --- option and image errors --------------------------------------------------------------------
def test_image_larger_than_ram():
    assert_one_line_error(GuestImageError, build, bytes(70_000), mode="protected",
                          mem=64 * KiB, match="--mem")


@pytest.mark.parametrize("load", [0x0, 0x500, 0xFFF])
def test_image_overlapping_reserved_low_area(load):
    assert_one_line_error(GuestImageError, build, b"\x90" * 4, load=load, match="overlaps")


def test_image_ending_just_below_reserved_end_overlaps():
    assert_one_line_error(GuestImageError, build, b"\x90" * 0x100, load=0xF00, match="overlaps")


def test_image_starting_at_0x1000_does_not_overlap():
    assert chunk(build(b"\x90", load=0x1000), "image")[0] == 0x1000


@pytest.mark.parametrize("mem", [4 * KiB, 60 * KiB, 3 * GiB])
def test_mem_out_of_range(mem):
    assert_one_line_error(UsageError, build, mem=mem, match="--mem")


def test_mem_not_multiple_of_4k():
    assert_one_line_error(UsageError, build, mem=64 * KiB + 512, match="4 KiB")


@pytest.mark.parametrize("mem", [64 * KiB, 2 * GiB])
def test_mem_limits_are_inclusive(mem):
    assert build(mode="protected", mem=mem).mem_size == mem


@pytest.mark.parametrize("stack", [0, 16 * MiB + 1, 1 << 40])
def test_stack_outside_ram(stack):
    assert_one_line_error(UsageError, build, mode="protected", stack=stack, match="--stack")


def test_real_mode_stack_above_1m():
    assert_one_line_error(UsageError, build, stack=2 * MiB, match="1 MiB")


def test_stack_option_in_protected_and_long_mode():
    assert build(mode="protected", stack=0x90000).entry.rsp == 0x90000
    assert build(mode="long", stack=0x90000).entry.rsp == 0x90000


def test_bad_mode():
    assert_one_line_error(UsageError, build, mode="v86", match="v86")


# --- ELF ----------------------------------------------------------------------------------------
def test_elf32_segment_lands_at_paddr():
    image = build(elf32(), name="k.elf")
    assert chunk(image, "ELF segment") == (0x100000, CODE)
    assert image.kind == "elf32"


def test_elf32_boots_in_protected_mode_at_e_entry():
    entry = build(elf32(entry=0x100004)).entry
    assert entry.mode == "protected"
    assert entry.rip == 0x100004


def test_elf64_boots_in_long_mode_at_e_entry():
    image = build(elf64(entry=0x200002))
    assert image.kind == "elf64"
    assert image.entry.mode == "long"
    assert image.entry.rip == 0x200002


def test_elf_uses_paddr_not_vaddr():
    data = elf64(segments=[dict(paddr=0x200000, vaddr=0xFFFFFFFF80200000, data=CODE)])
    assert chunk(build(data), "ELF segment")[0] == 0x200000


def test_elf_memsz_beyond_filesz_is_zero_filled():
    data = elf32(segments=[dict(paddr=0x100000, data=b"\xaa" * 8, memsz=0x40)])
    address, body = chunk(build(data), "ELF segment")
    assert body == b"\xaa" * 8 + bytes(0x38)


def test_elf_several_segments_all_load():
    data = elf32(segments=[dict(paddr=0x100000, data=b"\x01" * 16),
                           dict(paddr=0x180000, data=b"\x02" * 16, memsz=32)])
    image = build(data)
    assert peek(image, 0x100000, 16) == b"\x01" * 16
    assert peek(image, 0x180000, 32) == b"\x02" * 16 + bytes(16)


def test_elf_non_load_segments_are_ignored():
    data = elf32(segments=[dict(paddr=0x100000, data=CODE),
                           dict(paddr=0x0, data=b"note", type=PT_NOTE)])
    image = build(data)
    assert [a for a, m in zip(image.chunks, image.load_map) if m["what"] == "ELF segment"] == [
        (0x100000, CODE)]


def test_elf_empty_load_segments_are_ignored():
    data = elf32(segments=[dict(paddr=0x100000, data=CODE), dict(paddr=0x0, data=b"")])
    assert build(data).entry.mode == "protected"


@pytest.mark.parametrize("make, mode", [(elf32, "long"), (elf64, "protected")])
def test_elf_mode_override(make, mode):
    assert build(make(), mode=mode).entry.mode == mode


def test_elf_entry_override():
    assert build(elf32(), entry=0x100006).entry.rip == 0x100006


def test_elf64_in_protected_mode_with_entry_beyond_4g_is_refused():
    data = elf64(entry=0x1_0020_0000)
    assert_one_line_error(GuestImageError, build, data, mode="protected", match="4 GiB")


@pytest.mark.parametrize("data, match", [
    (b"\x7fELF", "malformed ELF"),                                  # magic only
    (elf32()[:16], "malformed ELF"),                                # e_ident only
    (elf32()[:40], "malformed ELF"),                                # header cut short
    (elf32()[:60], "malformed ELF"),                                # program header cut short
    (b"\x7fELF" + b"\xab" * 100, "malformed ELF"),                  # garbage after the magic
    (b"\x7fELF\x05" + elf32()[5:], "malformed ELF"),                # bad EI_CLASS
], ids=["magic-only", "ident-only", "truncated-header", "truncated-phdr", "garbage",
        "bad-class"])
def test_malformed_elf(data, match):
    assert_one_line_error(GuestImageError, build, data, name="bad.elf", match=match)


def test_elf32_segment_offset_past_end_of_file():
    data = elf32(segments=[dict(paddr=0x100000, data=b"\x90" * 8, offset=0xFFFFFF00)])
    assert_one_line_error(GuestImageError, build, data, match="past the end")


def test_elf64_with_huge_program_header_offset_is_malformed():
    data = bytearray(elf64())
    struct.pack_into("<Q", data, 32, 0xCC00000000000040)          # e_phoff
    assert_one_line_error(GuestImageError, build, bytes(data), match="malformed ELF")


def test_elf64_segment_with_huge_file_offset_is_malformed():
    data = elf64(segments=[dict(paddr=0x200000, data=CODE, offset=0x8300000000000078)])
    assert_one_line_error(GuestImageError, build, data, match="malformed ELF")


def test_elf_segment_running_past_end_of_file():
    data = elf32(segments=[dict(paddr=0x100000, data=b"\x90" * 8, filesz=100, memsz=100)])
    assert_one_line_error(GuestImageError, build, data, match="past the end")


def test_elf_segment_filesz_larger_than_memsz():
    data = elf32(segments=[dict(paddr=0x100000, data=b"\x90" * 8, memsz=4)])
    assert_one_line_error(GuestImageError, build, data, match="file size")


# Regression: the zero fill used to be allocated (bytes(p_memsz - p_filesz)) before the RAM check,
# so these raised MemoryError/OverflowError.
@pytest.mark.parametrize("memsz", [1 << 62, (1 << 64) - 1, 0xFFFFFFFF])
def test_elf_segment_with_huge_memsz_is_refused_as_not_fitting(memsz):
    data = elf64(segments=[dict(paddr=0x200000, data=CODE, memsz=memsz)])
    assert_one_line_error(GuestImageError, build, data, match="--mem")


def test_elf_for_another_machine():
    data = elf32(machine=EM_ARM)
    assert_one_line_error(GuestImageError, build, data, name="arm.elf", match="not x86")


def test_elf_without_load_segments():
    data = elf32(segments=[dict(paddr=0x100000, data=b"note", type=PT_NOTE)])
    assert_one_line_error(GuestImageError, build, data, match="PT_LOAD")


def test_elf_without_program_headers():
    assert_one_line_error(GuestImageError, build, elf32(segments=[]), match="PT_LOAD")


def test_elf_segment_outside_ram():
    data = elf32(segments=[dict(paddr=16 * MiB - 4, data=b"\x90" * 8)])
    assert_one_line_error(GuestImageError, build, data, match="does not fit")


def test_elf_segment_fits_with_more_ram():
    data = elf32(segments=[dict(paddr=16 * MiB - 4, data=b"\x90" * 8)])
    assert build(data, mem=32 * MiB).entry.mode == "protected"


@pytest.mark.parametrize("paddr", [0x0, 0x800, 0xFFF])
def test_elf_segment_in_the_low_page_moves_vmms_structures(paddr):
    image = build(elf32(segments=[dict(paddr=paddr, data=b"\x90" * 8)]))
    block = image.stub_base - boot.STUB_BASE
    assert block == boot.CONVENTIONAL_TOP - boot.PAGE       # the highest free page below 0x9F000
    assert image.entry.gdt[0] == block + boot.GDT_BASE
    assert image.entry.idt[0] == block + boot.IDT_BASE
    assert peek(image, paddr, 8) == b"\x90" * 8


def test_elf_zero_fill_in_the_low_page_counts():
    image = build(elf32(segments=[dict(paddr=0x0F00, data=b"", memsz=0x200)]))
    assert image.stub_base != boot.STUB_BASE


def test_elf64_segment_over_the_page_tables_moves_them():
    image = build(elf64(segments=[dict(paddr=16 * MiB - 0x2000, data=CODE)]))
    assert image.entry.cr3 == 16 * MiB - 0x2000 - 3 * boot.PAGE


def test_elf_with_load_option():
    assert_one_line_error(UsageError, build, elf32(), load=0x100000, match="--load")


def test_elf_with_real_mode_and_an_entry_above_1m():
    assert_one_line_error(GuestImageError, build, elf32(), mode="real", match="below 1 MiB")


def test_elf64_with_real_mode():
    assert_one_line_error(UsageError, build, elf64(), mode="real", match="ELF32 i386")


def test_elf_with_reset_entry():
    assert_one_line_error(UsageError, build, elf32(), entry="reset", match="reset")


# --- reading the guest file ---------------------------------------------------------------------
def test_read_guest_file_returns_contents(tmp_path):
    path = tmp_path / "g.bin"
    path.write_bytes(b"\x90\xf4")
    assert read_guest_file(str(path)) == b"\x90\xf4"


def test_read_guest_file_missing(tmp_path):
    path = str(tmp_path / "nope.bin")
    message = assert_one_line_error(GuestImageError, read_guest_file, path, match="not found")
    assert path in message


def test_read_guest_file_directory(tmp_path):
    assert_one_line_error(GuestImageError, read_guest_file, str(tmp_path), match="directory")


def test_read_guest_file_empty(tmp_path):
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    assert_one_line_error(GuestImageError, read_guest_file, str(path), match="empty")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a mode-000 file")
def test_read_guest_file_unreadable(tmp_path):
    path = tmp_path / "secret.bin"
    path.write_bytes(b"\xf4")
    path.chmod(0)
    assert_one_line_error(GuestImageError, read_guest_file, str(path), match="cannot read")


def test_load_guest_names_the_image_after_the_file(tmp_path):
    path = tmp_path / "hello.elf"
    path.write_bytes(elf32())
    image = load_guest(str(path), BootOptions())
    assert image.guest_name == "hello.elf"
    assert image.kind == "elf32"


# --- the HLT stubs ------------------------------------------------------------------------------
@pytest.mark.parametrize("rip_after_hlt, vector", [
    (0x501, 0), (0x50E, 13), (0x50F, 14), (0x600, 255),
    (0x500, None), (0x601, None), (0x1001, None), (0, None),
])
def test_stub_vector(rip_after_hlt, vector):
    assert stub_vector(rip_after_hlt) == vector


def test_stub_area_is_all_hlt():
    image = build(mode="protected")
    assert peek(image, boot.STUB_BASE, boot.STUB_COUNT) == bytes([HLT]) * 256
