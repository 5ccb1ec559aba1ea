"""Turn a guest file (raw binary or ELF) plus boot options into RAM contents and an entry state.

Sources: Intel SDM vol. 3, ch. 3 (segment descriptors), 4.5 (4-level paging), 6.10-6.14 (IDT
and gate formats), 9.1 (processor state after reset), 9.8 (switching to protected mode);
ELF: the System V gABI (PT_LOAD, p_paddr). The layout of what vmm itself puts in guest RAM is
documented in docs/boot.md and is part of the machine configuration recorded in traces.

Physical layout (all modes), B the base of vmm's low page (0 unless the guest is there):
    0x0000-0x03ff    real-mode IVT: every vector points at its HLT stub
    B+0x0500-0x05ff  256 HLT stubs, one byte each: vector v halts at B + 0x500 + v, so the run
                     loop can name an unhandled exception or BIOS call instead of running garbage
    B+0x0600-0x061f  GDT (protected and long mode)
    B+0x0800-0x0fff  IDT (protected mode: 256 gates; long mode: 128 gates)
    top of RAM       long mode only: identity-mapping page tables (PML4, PDPT, one PD per GiB);
                     the default stack then starts just below them
A structure whose usual place the guest occupies goes to the highest free page-aligned range
instead (_Space.take); the real-mode IVT cannot move. Multiboot kernels (multiboot.py) add their
boot information and modules.
"""

from __future__ import annotations

import os
import struct
from ..record_type import Record, factory

from ..cpu.backend import EntryState, Segment
from ..errors import GuestImageError, UsageError
from .elf import is_elf, parse_elf

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
CONVENTIONAL_TOP = 0x9F000                  # vmm's low structures, when moved, stay below this
PC_HOLE = (0x9F000, 0x100000)               # EBDA, VGA memory, option and system ROMs: vmm
                                            # never moves its own structures in here

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


class BootModule(Record, frozen=True):
    """A multiboot module (`--module FILE[=STRING]`): its contents travel with the options, so a
    trace holds them (base64, like the guest) and replays without the file."""
    name: str                        # the file as given
    string: str                      # the module's string in the boot information
    data: bytes


class BootOptions(Record):
    mode: str | None = None          # None: real for raw binaries, from the ELF class otherwise
    load: int | None = None          # raw binaries only
    entry: int | str | None = None   # an address, "reset", or None for the default
    mem: int | None = None           # None: the board's default (vmm.boards)
    stack: int | None = None
    board: str | None = None         # None: pc for multiboot kernels, p3 for everything else
    cmdline: str | None = None       # multiboot only: --cmdline
    modules: tuple[BootModule, ...] = ()   # multiboot only: --module, in order

    def to_dict(self) -> dict:
        """As written into a trace header; cmdline and modules only when given, so traces of
        other guests keep exactly the header they always had."""
        d = {k: self.__dict__[k] for k in ("mode", "load", "entry", "mem", "stack")}
        if self.board is not None:
            d["board"] = self.board
        if self.cmdline is not None:
            d["cmdline"] = self.cmdline
        if self.modules:
            import base64
            import hashlib      # here, as in from_dict: off the start-up path of `vmm run`
            d["modules"] = [{"name": m.name, "string": m.string, "size": len(m.data),
                             "sha256": hashlib.sha256(m.data).hexdigest(),
                             "data": base64.b64encode(m.data).decode("ascii")}
                            for m in self.modules]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BootOptions:
        """The options a trace header holds (to_dict's output); ValueError, TypeError or
        KeyError when they are not well-formed."""
        for key in ("mode", "load", "entry", "mem", "stack"):
            value = d.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, str))):
                raise ValueError(key)
        cmdline = d.get("cmdline")
        if cmdline is not None and not isinstance(cmdline, str):
            raise ValueError("cmdline")
        board = d.get("board")
        if board is not None and not isinstance(board, str):
            raise ValueError("board")
        modules = []
        if d.get("modules"):
            import base64
            import hashlib
        for m in d.get("modules") or ():
            if not (isinstance(m, dict) and isinstance(m.get("name"), str)
                    and isinstance(m.get("string"), str) and isinstance(m.get("data"), str)):
                raise ValueError("modules")
            data = base64.b64decode(m["data"], validate=True)
            if len(data) != m.get("size") or hashlib.sha256(data).hexdigest() != m.get("sha256"):
                raise ValueError(f"module {m['name']}: contents do not match size and sha256")
            modules.append(BootModule(m["name"], m["string"], data))
        return cls(mode=d.get("mode"), load=d.get("load"), entry=d.get("entry"),
                   mem=int(d["mem"]), stack=d.get("stack"), board=board, cmdline=cmdline,
                   modules=tuple(modules))


class BootImage(Record):
    """Everything needed to start the machine: RAM contents, entry state, and a load map."""
    guest_name: str
    guest_bytes: bytes
    kind: str                        # "raw" | "elf32" | "elf64"
    mem_size: int
    entry: EntryState
    chunks: list[tuple[int, bytes]] = factory(list)
    load_map: list[dict] = factory(list)
    stub_base: int = STUB_BASE       # vmm's 256 HLT stubs: vector v halts at stub_base + v
    protocol: str | None = None      # None | "multiboot1" | "multiboot2"
    board: str = "p3"
    options: BootOptions | None = None   # the options it was built with, board and mem resolved

    def add(self, address: int, data: bytes, what: str) -> None:
        self.chunks.append((address, data))
        self.load_map.append({"addr": address, "size": len(data), "what": what})


def read_module_file(spec: str) -> BootModule:
    """`FILE[=STRING]` (--module): the file's contents, and STRING (default: FILE as given)."""
    path, sep, string = spec.partition("=")
    if not path:
        raise UsageError(f"bad --module {spec!r}: give FILE or FILE=STRING")
    data = read_guest_file(path, what="module file", allow_empty=True)
    return BootModule(path, string if sep else path, data)


def read_guest_file(path: str, what: str = "guest file", allow_empty: bool = False) -> bytes:
    """Read a guest file, refusing the ways it can be unusable with a one-line reason."""
    if not os.path.exists(path):
        raise GuestImageError(f"{what} not found: {path}")
    if os.path.isdir(path):
        raise GuestImageError(f"{what.split()[0]} path is a directory, not a file: {path}")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size     # checked before reading: never read 2 GiB
            if size > MAX_MEM:                       # only to refuse them
                raise GuestImageError(
                    f"{what} {path} is {_size(size)}: larger than the most RAM a guest can "
                    f"have ({_size(MAX_MEM)}, --mem {_size(MAX_MEM)})")
            data = f.read(MAX_MEM + 1)               # (a pipe or a device has no st_size)
    except OSError as e:
        raise GuestImageError(f"cannot read {what} {path}: {e.strerror}") from None
    if len(data) > MAX_MEM:
        raise GuestImageError(f"{what} {path} is larger than the most RAM a guest can have "
                              f"({_size(MAX_MEM)}, --mem {_size(MAX_MEM)})")
    if not data and not allow_empty:
        raise GuestImageError(f"{what} is empty: {path}")
    return data


def load_guest(path: str, opts: BootOptions) -> BootImage:
    return build_boot_image(os.path.basename(path), read_guest_file(path), opts)


# The headers' magic numbers as a file holds them (vmm.boot.multiboot's MB1_MAGIC, MB2_MAGIC)
_MB1_MAGIC, _MB2_MAGIC = b"\x02\xb0\xad\x1b", b"\xd6\x50\x52\xe8"


def detect_protocol(data: bytes) -> str | None:
    """"multiboot1" or "multiboot2" when the file holds a valid header of that boot protocol
    (multiboot 1 wins when it holds both, as with `qemu-system-i386 -kernel`), else None."""
    head = data[:32 * 1024]              # multiboot 2's search range, the longer one
    if _MB1_MAGIC not in head and _MB2_MAGIC not in head:
        return None                      # no header can be there: multiboot.py stays unloaded
    from .multiboot import detect_protocol as detect
    return detect(data)


def build_boot_image(name: str, data: bytes, opts: BootOptions) -> BootImage:
    """Lay out a guest and vmm's boot structures in RAM, or raise GuestImageError/UsageError."""
    protocol = detect_protocol(data)
    opts = resolve_options(opts, protocol)
    _check_options(opts)
    plan = None
    if protocol is not None:
        from .multiboot import multiboot_layout
        plan = multiboot_layout(name, data, opts, protocol)
        kind, start, segments = plan.kind, plan.start, plan.segments
    else:
        if opts.cmdline is not None or opts.modules:
            raise UsageError(f"--cmdline and --module are for multiboot kernels; {name} has no "
                             "multiboot header")
        if is_elf(data):
            kind, start, segments = _elf_layout(name, data, opts)
        else:
            kind, start, segments = _raw_layout(name, data, opts)
    mode = start[0]
    space = _Space(opts.mem)
    fixed = _fixed_ranges(mode)
    for address, chunk, what in segments:
        end = address + len(chunk)
        if end > opts.mem:
            raise GuestImageError(
                f"{what} ({_size(len(chunk))} at {address:#x}-{end - 1:#x}) does not fit in "
                f"{_size(opts.mem)} of RAM: {_more_mem(end)}")
        for lo, hi, label in fixed:
            if address < hi and lo < max(end, address + 1):
                raise GuestImageError(
                    f"{what} at {address:#x}-{end - 1:#x} overlaps vmm's {label} at "
                    f"{lo:#x}-{hi - 1:#x}: load it elsewhere (--load, or the ELF's addresses)")
        space.occupy(address, end)
    # vmm's own structures go where they always did unless the guest is there: then to the
    # highest free page-aligned range (docs/boot.md, "Where vmm's structures go").
    tables = None
    if mode == "long":
        size = _page_table_count(opts.mem) * PAGE
        tables = space.take(size, opts.mem - size, "long-mode page tables")
    block = 0 if mode == "real" else space.take(PAGE, 0, "GDT, IDT and handler stubs",
                                               below=CONVENTIONAL_TOP)
    entry = _entry_state(start, opts, block, tables)
    image = BootImage(name, data, kind, opts.mem, entry, stub_base=block + STUB_BASE,
                      protocol=protocol)
    for address, chunk, what in segments:
        image.add(address, chunk, what)
    _add_boot_structures(image, block, tables)
    if plan is not None:
        plan.finish(image, space)
    image.board, image.options = opts.board, opts
    return image


def resolve_options(opts: BootOptions, protocol: str | None) -> BootOptions:
    """The options with the board and the RAM size filled in: a multiboot kernel gets the pc
    board, anything else p3, and RAM is the board's default unless --mem says otherwise."""
    from ..boards import get_board
    board = get_board(opts.board or ("pc" if protocol else "p3"))
    fields = {name: getattr(opts, name) for name in BootOptions._fields}
    return BootOptions(**dict(fields, board=board.name,
                              mem=board.default_mem if opts.mem is None else opts.mem))


class _Space:
    """Which page-aligned ranges of guest RAM are taken, and where a new one can go."""

    def __init__(self, mem: int):
        self.mem = mem
        self.taken: list[tuple[int, int]] = []

    def occupy(self, start: int, end: int) -> None:
        self.taken.append((start, max(end, start + 1)))

    def free(self, start: int, end: int, avoid_holes: bool = False) -> bool:
        if start < 0 or end > self.mem:
            return False
        ranges = self.taken + ([PC_HOLE] if avoid_holes else [])
        return all(end <= lo or hi <= start for lo, hi in ranges)

    def take(self, size: int, preferred: int | None, what: str, *, below: int | None = None,
             avoid_holes: bool = False) -> int:
        """`preferred` if [preferred, +size) is free, else the highest free page-aligned range
        of `size` bytes (first below `below`, then anywhere), never in the PC's 0x9F000-0xFFFFF
        (EBDA, VGA, ROMs); GuestImageError when there is none."""
        size = max(size, 1)
        if preferred is not None and self.free(preferred, preferred + size, avoid_holes):
            self.occupy(preferred, preferred + size)
            return preferred
        for limit in ([below] if below is not None else []) + [self.mem]:
            found = self._highest(size, min(limit, self.mem))
            if found is not None:
                self.occupy(found, found + size)
                return found
        raise GuestImageError(
            f"no free {_size(-(-size // PAGE) * PAGE)} range left in {_size(self.mem)} of RAM "
            f"for vmm's {what}: the guest occupies the rest; {_more_mem(self.mem + size)}")

    def _highest(self, size: int, limit: int) -> int | None:
        ranges = sorted(self.taken + [PC_HOLE])
        best = None
        lo = 0
        for a, b in ranges + [(limit, limit)]:
            hi = min(a, limit)
            start = (hi - size) & ~(PAGE - 1)
            if hi - lo >= size and start >= lo:
                best = start
            lo = max(lo, -(-b // PAGE) * PAGE)
            if lo >= limit:
                break
        return best


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
    """(kind, start, segments): start is ("real", cs, ip) or (mode, entry address)."""
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
        return "raw", ("real", RESET_SEGMENT, RESET_IP), [(RESET_LOAD, data, "image")]
    mode = opts.mode or "real"
    load = DEFAULT_LOAD if opts.load is None else opts.load
    entry_addr = load if opts.entry is None else opts.entry
    if mode == "real":
        if load + len(data) > REAL_MODE_LIMIT or entry_addr >= REAL_MODE_LIMIT:
            raise GuestImageError(f"real-mode image {name} must lie below 1 MiB "
                                  f"(loaded at {load:#x}, {len(data)} bytes, entry {entry_addr:#x})")
        return "raw", _real_start(entry_addr), [(load, data, "image")]
    return "raw", (mode, entry_addr), [(load, data, "image")]


def _real_start(entry_addr: int) -> tuple[str, int, int]:
    """CS:IP for a real-mode entry below 1 MiB: CS 0, or the 64 KiB segment holding it."""
    segment = (entry_addr >> 4) & 0xF000 if entry_addr > 0xFFFF else 0
    return ("real", segment, entry_addr - (segment << 4))


def elf_segments(name: str, elf, mem: int, what: str = "ELF segment") -> list:
    """The (address, bytes, what) an ELF file loads, by p_paddr. A segment holding nothing but
    notes (PT_NOTE) and the ELF headers, which gcc's default i386 link can place at 0x08048000,
    far from a kernel linked at 1 MiB, is left out when it lies beyond RAM: no kernel runs
    there."""
    out = []
    for seg in elf.segments:
        if seg.end > mem:
            if seg.metadata_only:
                continue
            raise GuestImageError(
                f"{what} at {seg.paddr:#x} ({_size(seg.memsz)} in memory) does not fit in "
                f"{_size(mem)} of RAM: {_more_mem(seg.end)}")
        out.append((seg.paddr, seg.contents(), what))
    if not out:
        raise GuestImageError(f"ELF file {name} has no loadable (PT_LOAD) segments")
    return out


def _elf_layout(name: str, data: bytes, opts: BootOptions):
    if opts.load is not None:
        raise UsageError("--load applies to raw binaries; an ELF file says where it loads")
    if opts.entry == "reset":
        raise UsageError("--entry reset applies to raw 64 KiB reset-vector images, not ELF files")
    elf = parse_elf(name, data)
    segments = elf_segments(name, elf, opts.mem)
    mode = opts.mode or ("long" if elf.elf_class == 64 else "protected")
    entry_addr = opts.entry if isinstance(opts.entry, int) else elf.entry
    kind = f"elf{elf.elf_class}"
    if mode == "real":
        if elf.elf_class != 32 or elf.machine != "EM_386":
            raise UsageError(f"--mode real starts 16-bit code: {name} is {kind} {elf.machine}, "
                             "give an ELF32 i386 file whose entry is 16-bit code")
        if entry_addr >= REAL_MODE_LIMIT:
            raise GuestImageError(f"--mode real: the entry point of {name} ({entry_addr:#x}) "
                                  "must lie below 1 MiB")
        return kind, _real_start(entry_addr), segments
    return kind, (mode, entry_addr), segments


def _entry_state(start: tuple, opts: BootOptions, block: int, tables: int | None) -> EntryState:
    if start[0] == "real":
        return _real_mode_entry(start[1], start[2], opts)
    return _flat_entry(start[0], start[1], opts, block, tables)


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


def _flat_entry(mode: str, entry_addr: int, opts: BootOptions, block: int = 0,
                tables: int | None = None) -> EntryState:
    data = Segment(SEL_DATA, 0, 0xFFFFFFFF, 0x3, db=1, g=1)
    gdt = (block + GDT_BASE, 4 * 8 - 1)
    if mode == "protected":
        if entry_addr > 0xFFFFFFFF:
            raise GuestImageError(f"entry point {entry_addr:#x} is beyond 4 GiB in protected mode")
        rsp = opts.stack if opts.stack is not None else opts.mem
        return EntryState(mode="protected", rip=entry_addr, rsp=rsp,
                          cs=Segment(SEL_CODE32, 0, 0xFFFFFFFF, 0xB, db=1, g=1), ds=data, ss=data,
                          gdt=gdt, idt=(block + IDT_BASE, 256 * 8 - 1),
                          cr0=CR0_PE | CR0_MP | CR0_ET | CR0_NE, cr4=CR4_OSFXSR | CR4_OSXMMEXCPT)
    if tables is None:
        tables = _page_table_base(opts.mem)
    # The stack starts below the page tables when they are at the top of RAM, as always; when
    # the guest's own layout pushed them elsewhere, at the top of RAM.
    default_rsp = tables if tables == _page_table_base(opts.mem) else opts.mem
    rsp = opts.stack if opts.stack is not None else default_rsp
    return EntryState(mode="long", rip=entry_addr, rsp=rsp,
                      cs=Segment(SEL_CODE64, 0, 0xFFFFFFFF, 0xB, l=1, g=1), ds=data, ss=data,
                      gdt=gdt, idt=(block + IDT_BASE, 128 * 16 - 1),
                      cr0=CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG, cr3=tables,
                      cr4=CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT, efer=EFER_LME | EFER_LMA)


def _page_table_count(mem: int) -> int:
    return 2 + (mem + GiB - 1) // GiB         # PML4, PDPT, one PD per GiB


def _page_table_base(mem: int) -> int:
    return mem - _page_table_count(mem) * PAGE


def _fixed_ranges(mode: str) -> list[tuple[int, int, str]]:
    """What vmm cannot move: in real mode the IVT at 0 and its stubs (the IVT's place is
    architectural, and real-mode guests are small and load above it)."""
    if mode == "real":
        return [(0, RESERVED_LOW_END, "boot structures (IVT, GDT, IDT, handler stubs)")]
    return []


def _add_boot_structures(image: BootImage, block: int, tables: int | None) -> None:
    mode = image.entry.mode
    stubs = image.stub_base
    image.add(stubs, b"\xf4" * STUB_COUNT, "vmm exception/interrupt HLT stubs")
    if mode == "real":
        ivt = b"".join(struct.pack("<HH", stubs + v, 0) for v in range(256))
        image.add(0, ivt, "vmm real-mode IVT")
        return
    gdt = b"".join(struct.pack("<Q", d) for d in (
        0,
        _descriptor(0, 0xFFFFF, access=0x9B, flags=0xC),   # 0x08: 32-bit code
        _descriptor(0, 0xFFFFF, access=0x93, flags=0xC),   # 0x10: data
        _descriptor(0, 0xFFFFF, access=0x9B, flags=0xA),   # 0x18: 64-bit code
    ))
    image.add(block + GDT_BASE, gdt, "vmm GDT")
    if mode == "protected":
        idt = b"".join(struct.pack("<HHBBH", (stubs + v) & 0xFFFF, SEL_CODE32, 0, 0x8E,
                                   (stubs + v) >> 16) for v in range(256))
        image.add(block + IDT_BASE, idt, "vmm IDT")
        return
    idt = b"".join(struct.pack("<HHBBHII", (stubs + v) & 0xFFFF, SEL_CODE64, 0, 0x8E,
                               (stubs + v) >> 16, 0, 0) for v in range(128))
    image.add(block + IDT_BASE, idt, "vmm IDT")
    base, count = tables, _page_table_count(image.mem_size)
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


def stub_vector(linear_rip_after_hlt: int, base: int = STUB_BASE) -> int | None:
    """If a HLT exit came from one of vmm's stubs (at `base`: the image's stub_base), the
    vector it stands for; else None."""
    v = linear_rip_after_hlt - 1 - base
    return v if 0 <= v < STUB_COUNT else None
