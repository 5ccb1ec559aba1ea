"""Turn a guest file (raw binary or ELF) plus boot options into RAM contents and an entry state.

Sources: Intel SDM vol. 3, ch. 3 (segment descriptors), 4.5 (4-level paging), 6.10-6.14 (IDT
and gate formats), 9.1 (processor state after reset), 9.8 (switching to protected mode);
ELF: the System V gABI (PT_LOAD, p_paddr). The layout of what vmm itself puts in guest RAM is
documented in docs/boot.md and is part of the machine configuration recorded in traces.

Physical layout (all modes):
    0x0000-0x03ff  real-mode IVT: every vector points at its HLT stub
    0x0500-0x05ff  256 HLT stubs, one byte each: vector v halts at 0x500 + v, so the run loop
                   can name an unhandled exception or BIOS call instead of running garbage
    0x0600-0x061f  GDT (protected and long mode)
    0x0800-0x0fff  IDT (protected mode: 256 gates; long mode: 128 gates)
    top of RAM     long mode only: identity-mapping page tables (PML4, PDPT, one PD per GiB);
                   the default stack then starts just below them
"""

from __future__ import annotations

import io
import os
import struct
from .record_type import Record, factory

from .cpu.backend import EntryState, Segment
from .errors import GuestImageError, UsageError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE = 4 * KiB

DEFAULT_MEM = 16 * MiB
MIN_MEM, MAX_MEM = 64 * KiB, 2 * GiB       # KVM's real-mode TSS sits just below 4 GiB
DEFAULT_LOAD = 0x1000                       # where most small raw guests expect to be
RESERVED_LOW_END = 0x1000                   # IVT, stubs, GDT, IDT
STUB_BASE, STUB_COUNT = 0x500, 256
GDT_BASE = 0x600
IDT_BASE = 0x800
RESET_LOAD = 0xF0000                        # the last real-mode segment
RESET_SEGMENT, RESET_IP = 0xF000, 0xFFF0    # F000:FFF0, the reset vector
RESET_MAX_SIZE = 64 * KiB
REAL_MODE_LIMIT = 1 * MiB

# GDT selectors (index * 8).
SEL_CODE32, SEL_DATA, SEL_CODE64 = 0x08, 0x10, 0x18

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_PG = 1 << 0, 1 << 1, 1 << 4, 1 << 5, 1 << 31
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 5, 1 << 9, 1 << 10   # SSE enabled: C guests use it
EFER_LME, EFER_LMA = 1 << 8, 1 << 10

MODES = ("real", "protected", "long")

EXCEPTION_NAMES = {
    0: "#DE divide error", 1: "#DB debug", 2: "NMI", 3: "#BP breakpoint", 4: "#OF overflow",
    5: "#BR bound range", 6: "#UD invalid opcode", 7: "#NM device not available",
    8: "#DF double fault", 10: "#TS invalid TSS", 11: "#NP segment not present",
    12: "#SS stack fault", 13: "#GP general protection", 14: "#PF page fault",
    16: "#MF x87 error", 17: "#AC alignment check", 18: "#MC machine check",
    19: "#XM SIMD exception", 20: "#VE virtualization exception", 21: "#CP control protection",
}
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})


class BootOptions(Record):
    mode: str | None = None          # None: real for raw binaries, from the ELF class otherwise
    load: int | None = None          # raw binaries only
    entry: int | str | None = None   # an address, "reset", or None for the default
    mem: int | None = None           # None: the board's default (vmm.boards)
    stack: int | None = None
    board: str | None = None         # None: pc for multiboot kernels, p3 for everything else

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class BootImage(Record):
    """Everything needed to start the machine: RAM contents, entry state, and a load map."""
    guest_name: str
    guest_bytes: bytes
    kind: str                        # "raw" | "elf32" | "elf64"
    mem_size: int
    entry: EntryState
    chunks: list[tuple[int, bytes]] = factory(list)
    load_map: list[dict] = factory(list)
    board: str = "p3"
    options: BootOptions | None = None   # the options it was built with, board and mem resolved

    def add(self, address: int, data: bytes, what: str) -> None:
        self.chunks.append((address, data))
        self.load_map.append({"addr": address, "size": len(data), "what": what})


def read_guest_file(path: str) -> bytes:
    """Read a guest file, refusing the ways it can be unusable with a one-line reason."""
    if not os.path.exists(path):
        raise GuestImageError(f"guest file not found: {path}")
    if os.path.isdir(path):
        raise GuestImageError(f"guest path is a directory, not a file: {path}")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size     # checked before reading: never read 2 GiB
            if size > MAX_MEM:                       # only to refuse them
                raise GuestImageError(
                    f"guest file {path} is {_size(size)}: larger than the most RAM a guest can "
                    f"have ({_size(MAX_MEM)}, --mem {_size(MAX_MEM)})")
            data = f.read(MAX_MEM + 1)               # (a pipe or a device has no st_size)
    except OSError as e:
        raise GuestImageError(f"cannot read guest file {path}: {e.strerror}") from None
    if len(data) > MAX_MEM:
        raise GuestImageError(f"guest file {path} is larger than the most RAM a guest can have "
                              f"({_size(MAX_MEM)}, --mem {_size(MAX_MEM)})")
    if not data:
        raise GuestImageError(f"guest file is empty: {path}")
    return data


def load_guest(path: str, opts: BootOptions) -> BootImage:
    return build_boot_image(os.path.basename(path), read_guest_file(path), opts)


def build_boot_image(name: str, data: bytes, opts: BootOptions) -> BootImage:
    """Lay out a guest and vmm's boot structures in RAM, or raise GuestImageError/UsageError."""
    opts = resolve_options(opts, data)
    _check_options(opts)
    if data[:4] == b"\x7fELF":
        image, segments = _elf_layout(name, data, opts)
    else:
        image, segments = _raw_layout(name, data, opts)
    reserved = _reserved_ranges(image.entry.mode, opts.mem)
    for address, chunk, what in segments:
        end = address + len(chunk)
        if end > opts.mem:
            raise GuestImageError(
                f"{what} ({_size(len(chunk))} at {address:#x}-{end - 1:#x}) does not fit in "
                f"{_size(opts.mem)} of RAM: {_more_mem(end)}")
        for start, stop, label in reserved:
            if address < stop and start < max(end, address + 1):
                raise GuestImageError(
                    f"{what} at {address:#x}-{end - 1:#x} overlaps vmm's {label} at "
                    f"{start:#x}-{stop - 1:#x}: load it elsewhere (--load, or the ELF's addresses)")
        image.add(address, chunk, what)
    _add_boot_structures(image)
    image.board, image.options = opts.board, opts
    return image


def resolve_options(opts: BootOptions, data: bytes) -> BootOptions:
    """The options with the board and the RAM size filled in: a multiboot kernel gets the pc
    board, anything else p3, and RAM is the board's default unless --mem says otherwise."""
    from .boards import get_board
    board = get_board(opts.board or ("pc" if detect_protocol(data) else "p3"))
    return BootOptions(**dict(opts.to_dict(), board=board.name,
                              mem=board.default_mem if opts.mem is None else opts.mem))


MB1_MAGIC, MB1_SEARCH, MB1_ALIGN = 0x1BADB002, 8 * KiB, 4
MB2_MAGIC, MB2_SEARCH, MB2_ALIGN = 0xE85250D6, 32 * KiB, 8


def detect_protocol(data: bytes) -> str | None:
    """"multiboot1" or "multiboot2" if the file carries a valid header of that protocol (magic
    and checksum, within the first 8 or 32 KiB, aligned), else None."""
    for name, magic, search, align, words in (
            ("multiboot1", MB1_MAGIC, MB1_SEARCH, MB1_ALIGN, 3),
            ("multiboot2", MB2_MAGIC, MB2_SEARCH, MB2_ALIGN, 4)):
        needle = struct.pack("<I", magic)
        at = data.find(needle, 0, search)
        while at != -1:
            if at % align == 0 and at + 4 * words <= len(data):
                fields = struct.unpack_from(f"<{words}I", data, at)
                if name == "multiboot1" and sum(fields) & 0xFFFFFFFF == 0:
                    return name
                if name == "multiboot2" and (fields[0] + fields[1] + fields[2] + fields[3]) \
                        & 0xFFFFFFFF == 0:
                    return name
            at = data.find(needle, at + 1, search)
    return None


def _check_options(opts: BootOptions) -> None:
    if opts.mode is not None and opts.mode not in MODES:
        raise UsageError(f"bad --mode {opts.mode!r}: choose one of {', '.join(MODES)}")
    if not MIN_MEM <= opts.mem <= MAX_MEM:
        raise UsageError(f"--mem of {_size(opts.mem)} is out of range: "
                         f"give between {_size(MIN_MEM)} and {_size(MAX_MEM)}")
    if opts.mem % PAGE:
        raise UsageError(f"--mem must be a multiple of 4 KiB, not {opts.mem} bytes")
    if opts.stack is not None and not 0 < opts.stack <= opts.mem:
        raise UsageError(f"--stack {opts.stack:#x} is outside RAM (0x1-{opts.mem:#x})")


def _raw_layout(name: str, data: bytes, opts: BootOptions):
    if opts.entry == "reset":
        if opts.load is not None:
            raise UsageError("--entry reset loads the image at 0xF0000; drop --load")
        if opts.mode not in (None, "real"):
            raise UsageError("--entry reset starts in real mode; drop --mode " + opts.mode)
        if len(data) > RESET_MAX_SIZE:
            raise GuestImageError(f"reset-vector image {name} is {len(data)} bytes; "
                                  f"at most {RESET_MAX_SIZE} (64 KiB) fit below 1 MiB")
        if len(data) < RESET_IP + 5:
            raise GuestImageError(
                f"reset-vector image {name} is {len(data)} bytes: it must reach offset 0xFFF0, "
                "where such images keep a far jump to their code (make it 64 KiB)")
        if opts.mem < REAL_MODE_LIMIT:
            raise UsageError("--entry reset needs at least 1M of RAM (--mem)")
        entry = _real_mode_entry(RESET_SEGMENT, RESET_IP, opts)
        return BootImage(name, data, "raw", opts.mem, entry), [(RESET_LOAD, data, "image")]
    mode = opts.mode or "real"
    load = DEFAULT_LOAD if opts.load is None else opts.load
    entry_addr = load if opts.entry is None else opts.entry
    if mode == "real":
        if load + len(data) > REAL_MODE_LIMIT or entry_addr >= REAL_MODE_LIMIT:
            raise GuestImageError(f"real-mode image {name} must lie below 1 MiB "
                                  f"(loaded at {load:#x}, {len(data)} bytes, entry {entry_addr:#x})")
        segment = (entry_addr >> 4) & 0xF000 if entry_addr > 0xFFFF else 0
        entry = _real_mode_entry(segment, entry_addr - (segment << 4), opts)
    else:
        entry = _flat_entry(mode, entry_addr, opts)
    return BootImage(name, data, "raw", opts.mem, entry), [(load, data, "image")]


def _elf_layout(name: str, data: bytes, opts: BootOptions):
    from elftools.common.exceptions import ELFError  # imported here: only ELF guests pay for it
    from elftools.elf.elffile import ELFFile
    if opts.load is not None:
        raise UsageError("--load applies to raw binaries; an ELF file says where it loads")
    if opts.entry == "reset":
        raise UsageError("--entry reset applies to raw 64 KiB reset-vector images, not ELF files")
    try:
        elf = ELFFile(io.BytesIO(data))
        machine, elf_class = elf["e_machine"], elf.elfclass
        segments = []
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
                continue
            if seg["p_filesz"] > seg["p_memsz"]:
                raise GuestImageError(f"malformed ELF {name}: a segment's file size exceeds "
                                      "its memory size")
            if seg["p_paddr"] + seg["p_memsz"] > opts.mem:
                raise GuestImageError(
                    f"ELF segment at {seg['p_paddr']:#x} ({_size(seg['p_memsz'])} in memory) does "
                    f"not fit in {_size(opts.mem)} of RAM: "
                    f"{_more_mem(seg['p_paddr'] + seg['p_memsz'])}")
            body = seg.data()
            if len(body) != seg["p_filesz"]:
                raise GuestImageError(f"malformed ELF {name}: a segment runs past the end of "
                                      "the file")
            segments.append((seg["p_paddr"], body + bytes(seg["p_memsz"] - seg["p_filesz"]),
                             "ELF segment"))
        entry_addr = elf["e_entry"]
    except GuestImageError:
        raise
    except (ELFError, ValueError, struct.error, KeyError, AssertionError, IndexError,
            OverflowError) as e:
        raise GuestImageError(f"malformed ELF file {name}: {e}") from None
    if machine not in ("EM_386", "EM_X86_64"):
        raise GuestImageError(f"{name} is an ELF file for {machine}, not x86")
    if not segments:
        raise GuestImageError(f"ELF file {name} has no loadable (PT_LOAD) segments")
    mode = opts.mode or ("long" if elf_class == 64 else "protected")
    if isinstance(opts.entry, int):
        entry_addr = opts.entry
    if mode == "real":
        raise UsageError("ELF guests start in protected or long mode, not --mode real")
    kind = f"elf{elf_class}"
    return BootImage(name, data, kind, opts.mem, _flat_entry(mode, entry_addr, opts)), segments


def _real_mode_entry(cs: int, ip: int, opts: BootOptions) -> EntryState:
    def seg(selector: int, type_: int) -> Segment:
        return Segment(selector, selector << 4, 0xFFFF, type_)
    top = opts.stack if opts.stack is not None else min(opts.mem, 0xA0000)
    if top > REAL_MODE_LIMIT:
        raise UsageError("--stack must be below 1 MiB in real mode")
    # SS:SP with SS * 16 + SP == top, so the first push lands just below `top` (an SP of
    # 0x10000 is written 0: a push wraps it to 0xFFFE).
    ss = (top - 0x10000 + 15) >> 4 if top > 0x10000 else 0
    sp = (top - (ss << 4)) & 0xFFFF
    return EntryState(mode="real", rip=ip, rsp=sp, cs=seg(cs, 0xB), ds=seg(0, 0x3),
                      ss=seg(ss, 0x3), gdt=(0, 0xFFFF), idt=(0, 0x3FF))


def _flat_entry(mode: str, entry_addr: int, opts: BootOptions) -> EntryState:
    data = Segment(SEL_DATA, 0, 0xFFFFFFFF, 0x3, db=1, g=1)
    gdt = (GDT_BASE, 4 * 8 - 1)
    if mode == "protected":
        if entry_addr > 0xFFFFFFFF:
            raise GuestImageError(f"entry point {entry_addr:#x} is beyond 4 GiB in protected mode")
        rsp = opts.stack if opts.stack is not None else opts.mem
        return EntryState(mode="protected", rip=entry_addr, rsp=rsp,
                          cs=Segment(SEL_CODE32, 0, 0xFFFFFFFF, 0xB, db=1, g=1), ds=data, ss=data,
                          gdt=gdt, idt=(IDT_BASE, 256 * 8 - 1),
                          cr0=CR0_PE | CR0_MP | CR0_ET | CR0_NE, cr4=CR4_OSFXSR | CR4_OSXMMEXCPT)
    tables = _page_table_base(opts.mem)
    rsp = opts.stack if opts.stack is not None else tables
    return EntryState(mode="long", rip=entry_addr, rsp=rsp,
                      cs=Segment(SEL_CODE64, 0, 0xFFFFFFFF, 0xB, l=1, g=1), ds=data, ss=data,
                      gdt=gdt, idt=(IDT_BASE, 128 * 16 - 1),
                      cr0=CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG, cr3=tables,
                      cr4=CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT, efer=EFER_LME | EFER_LMA)


def _page_table_count(mem: int) -> int:
    return 2 + (mem + GiB - 1) // GiB         # PML4, PDPT, one PD per GiB


def _page_table_base(mem: int) -> int:
    return mem - _page_table_count(mem) * PAGE


def _reserved_ranges(mode: str, mem: int) -> list[tuple[int, int, str]]:
    ranges = [(0, RESERVED_LOW_END, "boot structures (IVT, GDT, IDT, handler stubs)")]
    if mode == "long":
        ranges.append((_page_table_base(mem), mem, "long-mode page tables"))
    return ranges


def _add_boot_structures(image: BootImage) -> None:
    mode = image.entry.mode
    image.add(STUB_BASE, b"\xf4" * STUB_COUNT, "vmm exception/interrupt HLT stubs")
    if mode == "real":
        ivt = b"".join(struct.pack("<HH", STUB_BASE + v, 0) for v in range(256))
        image.add(0, ivt, "vmm real-mode IVT")
        return
    gdt = b"".join(struct.pack("<Q", d) for d in (
        0,
        _descriptor(0, 0xFFFFF, access=0x9B, flags=0xC),   # 0x08: 32-bit code
        _descriptor(0, 0xFFFFF, access=0x93, flags=0xC),   # 0x10: data
        _descriptor(0, 0xFFFFF, access=0x9B, flags=0xA),   # 0x18: 64-bit code
    ))
    image.add(GDT_BASE, gdt, "vmm GDT")
    if mode == "protected":
        idt = b"".join(struct.pack("<HHBBH", (STUB_BASE + v) & 0xFFFF, SEL_CODE32, 0, 0x8E,
                                   (STUB_BASE + v) >> 16) for v in range(256))
        image.add(IDT_BASE, idt, "vmm IDT")
        return
    idt = b"".join(struct.pack("<HHBBHII", STUB_BASE + v, SEL_CODE64, 0, 0x8E, 0, 0, 0)
                   for v in range(128))
    image.add(IDT_BASE, idt, "vmm IDT")
    base, count = _page_table_base(image.mem_size), _page_table_count(image.mem_size)
    pml4 = struct.pack("<Q", (base + PAGE) | 0x3).ljust(PAGE, b"\0")
    n_pd = count - 2
    pdpt = b"".join(struct.pack("<Q", (base + (2 + i) * PAGE) | 0x3)
                    for i in range(n_pd)).ljust(PAGE, b"\0")
    pds = b"".join(struct.pack("<Q", (i * 512 + j) * 2 * MiB | 0x83)   # present, rw, 2 MiB page
                   for i in range(n_pd) for j in range(512))
    image.add(base, pml4 + pdpt + pds, "vmm long-mode page tables")


def _descriptor(base: int, limit: int, access: int, flags: int) -> int:
    return ((limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (access << 40)
            | (((limit >> 16) & 0xF) << 48) | (flags << 52) | (((base >> 24) & 0xFF) << 56))


def _size(n: int) -> str:
    """16M, 64K, 3G; or, when not a whole number of those, e.g. 1 byte, 2.0G (2147483649 bytes)."""
    for unit, factor in (("G", GiB), ("M", MiB), ("K", KiB)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    for unit, factor in (("G", GiB), ("M", MiB), ("K", KiB)):
        if n >= factor:
            return f"{n / factor:.1f}{unit} ({n} bytes)"
    return "1 byte" if n == 1 else f"{n} bytes"


def _more_mem(end: int) -> str:
    """Advice for what does not fit below `end`: the --mem that holds it, if there is one."""
    need = -(-end // MiB) * MiB
    if need > MAX_MEM:
        return f"it cannot fit: a guest has at most {_size(MAX_MEM)} of RAM (--mem {_size(MAX_MEM)})"
    return f"give at least --mem {_size(need)}"


def stub_vector(linear_rip_after_hlt: int) -> int | None:
    """If a HLT exit came from one of vmm's stubs, the vector it stands for; else None."""
    v = linear_rip_after_hlt - 1 - STUB_BASE
    return v if 0 <= v < STUB_COUNT else None
