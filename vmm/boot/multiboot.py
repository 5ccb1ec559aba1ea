"""Multiboot 1 and 2: load a kernel the way `qemu-system-i386 -kernel` (multiboot 1) and GRUB
(multiboot 2) do, and hand it its boot information.

Sources: the Multiboot Specification 0.6.96 (header, a.out kludge, machine state, the boot
information format), the Multiboot2 Specification 2.0 (header tags, boot information tags),
QEMU's hw/i386/multiboot.c and pc-bios/optionrom/multiboot.S (where the information goes, which
fields it fills, the memory map SeaBIOS reports), read to follow their behaviour. docs/boot.md
("Multiboot") describes the result; every address is part of the load map a trace records.
"""

from __future__ import annotations

import struct

from .. import __version__
from ..errors import GuestImageError, UsageError
from ..record_type import Record, factory
from . import (CONVENTIONAL_TOP, CR0_ET, CR0_PE, PAGE, BootImage, BootOptions, _more_mem,
               _size, elf_segments)
from .elf import is_elf, parse_elf

MB1_MAGIC, MB1_BOOT_MAGIC, MB1_SEARCH = 0x1BADB002, 0x2BADB002, 8 * 1024
MB2_MAGIC, MB2_BOOT_MAGIC, MB2_SEARCH = 0xE85250D6, 0x36D76289, 32 * 1024
MASK32 = 0xFFFFFFFF

BOOT_LOADER_NAME = f"vmm {__version__}"

# Multiboot 1 header flags.
MB1_PAGE_ALIGN, MB1_MEMORY_INFO, MB1_VIDEO_MODE, MB1_AOUT_KLUDGE = 1 << 0, 1 << 1, 1 << 2, 1 << 16
MB1_REQUIRED_KNOWN = MB1_PAGE_ALIGN | MB1_MEMORY_INFO | MB1_VIDEO_MODE
MB1_MODE_EGA_TEXT = 1
# Multiboot 1 information flags, as QEMU sets them, plus the framebuffer when text was asked for.
MBI_MEMORY, MBI_BOOT_DEVICE, MBI_CMDLINE, MBI_MODULES = 1 << 0, 1 << 1, 1 << 2, 1 << 3
MBI_MMAP, MBI_BOOT_LOADER, MBI_FRAMEBUFFER = 1 << 6, 1 << 9, 1 << 12
MBI_SIZE = 116                              # up to and including the framebuffer fields
MB1_BOOT_DEVICE = 0x8000FFFF                # QEMU's: BIOS drive 0x80, no partition
# Where the information goes (QEMU: memory map at 0x9000, the structure at 0x9500).
INFO_ADDR, MBI_OFFSET = 0x9000, 0x500

# The memory map: exactly what QEMU 8 with SeaBIOS reports (read from a kernel's memory map
# under `qemu-system-i386 -kernel -m 128` and -m 7): conventional memory up to the EBDA, the
# EBDA and the BIOS ROM reserved, RAM from 1 MiB to 128 KiB below its top available, that last
# 128 KiB reserved (SeaBIOS keeps its tables there; vmm keeps nothing there, and it holds the
# default stack), and the BIOS ROM's alias below 4 GiB reserved.
MEM_LOWER_END = 0x9FC00                     # 639 KiB of conventional memory, then the EBDA
BIOS_RESERVED = ((0x9FC00, 0x400), (0xF0000, 0x10000))
HIGH_MEMORY = 0x100000
TOP_RESERVED = 0x20000
ROM_ALIAS = (0xFFFC0000, 0x40000)
MMAP_AVAILABLE, MMAP_RESERVED = 1, 2

# EGA text mode, as a framebuffer (both specifications' framebuffer type 2).
EGA_ADDR, EGA_COLS, EGA_ROWS = 0xB8000, 80, 25

# Multiboot 2 header tags and boot information tags.
H_END, H_INFO_REQUEST, H_ADDRESS, H_ENTRY, H_CONSOLE, H_FRAMEBUFFER, H_MODULE_ALIGN = range(7)
H_EFI_BS, H_ENTRY_EFI32, H_ENTRY_EFI64, H_RELOCATABLE = 7, 8, 9, 10
H_OPTIONAL = 1
CONSOLE_REQUIRED, CONSOLE_EGA_TEXT = 1 << 0, 1 << 1
T_END, T_CMDLINE, T_LOADER, T_MODULE, T_MEMINFO, T_MMAP, T_FRAMEBUFFER, T_LOAD_BASE = (
    0, 1, 2, 3, 4, 6, 8, 21)
GIVEN_TAGS = frozenset({T_CMDLINE, T_LOADER, T_MODULE, T_MEMINFO, T_MMAP, T_FRAMEBUFFER,
                        T_LOAD_BASE})
TAG_NAMES = {
    1: "command line", 2: "boot loader name", 3: "modules", 4: "basic memory information",
    5: "BIOS boot device", 6: "memory map", 7: "VBE information", 8: "framebuffer",
    9: "ELF sections", 10: "APM table", 11: "EFI32 system table", 12: "EFI64 system table",
    13: "SMBIOS tables", 14: "ACPI 1.0 RSDP", 15: "ACPI 2.0 RSDP", 16: "network",
    17: "EFI memory map", 18: "EFI boot services not terminated", 19: "EFI32 image handle",
    20: "EFI64 image handle", 21: "image load base address",
}


def _page_up(n: int) -> int:
    return -(-n // PAGE) * PAGE


def _align8(n: int) -> int:
    return -(-n // 8) * 8


def find_mb1(data: bytes) -> int | None:
    """Offset of a valid multiboot 1 header (magic, flags, checksum summing to 0), 4-byte
    aligned and wholly in the first 8 KiB; None when there is none."""
    limit = min(len(data), MB1_SEARCH) - 12
    at = data.find(struct.pack("<I", MB1_MAGIC), 0, limit + 4)
    while 0 <= at <= limit:
        if at % 4 == 0:
            magic, flags, checksum = struct.unpack_from("<III", data, at)
            if (magic + flags + checksum) & MASK32 == 0:
                return at
        at = data.find(struct.pack("<I", MB1_MAGIC), at + 1, limit + 4)
    return None


def find_mb2(data: bytes) -> int | None:
    """Offset of a valid multiboot 2 header (magic, architecture, header_length and checksum
    summing to 0), 8-byte aligned and starting in the first 32 KiB; None when there is none."""
    limit = min(len(data), MB2_SEARCH) - 16
    at = data.find(struct.pack("<I", MB2_MAGIC), 0, limit + 4)
    while 0 <= at <= limit:
        if at % 8 == 0:
            fields = struct.unpack_from("<IIII", data, at)
            if sum(fields) & MASK32 == 0:
                return at
        at = data.find(struct.pack("<I", MB2_MAGIC), at + 1, limit + 4)
    return None


def detect_protocol(data: bytes) -> str | None:
    """"multiboot1", "multiboot2" or None. A kernel with both headers boots as multiboot 1, as
    under `qemu-system-i386 -kernel` (which knows no other)."""
    if find_mb1(data) is not None:
        return "multiboot1"
    if find_mb2(data) is not None:
        return "multiboot2"
    return None


def mmap_entries(mem: int) -> list[tuple[int, int, int]]:
    """(base, length, type) of the memory map, in address order."""
    entries = [(0, min(mem, MEM_LOWER_END), MMAP_AVAILABLE)]
    entries += [(base, length, MMAP_RESERVED) for base, length in BIOS_RESERVED]
    if mem > HIGH_MEMORY:
        top = max(HIGH_MEMORY, mem - TOP_RESERVED)
        if top > HIGH_MEMORY:
            entries.append((HIGH_MEMORY, top - HIGH_MEMORY, MMAP_AVAILABLE))
        entries.append((top, mem - top, MMAP_RESERVED))
    entries.append((*ROM_ALIAS, MMAP_RESERVED))
    return entries


def mem_lower_upper(mem: int) -> tuple[int, int]:
    """KiB of memory from 0 and from 1 MiB up to the first hole, as the memory map says (and
    as QEMU's option ROM computes mem_upper from it)."""
    upper = next((n for b, n, t in mmap_entries(mem) if b == HIGH_MEMORY and t == MMAP_AVAILABLE),
                 0)
    return min(mem, MEM_LOWER_END) // 1024, upper // 1024


class MultibootPlan(Record):
    """What build_boot_image needs: the kernel's segments and entry, and a `finish` that places
    the boot information once vmm's own structures are placed."""
    protocol: str
    name: str
    kind: str
    entry: int
    segments: list = factory(list)
    cmdline: str = ""
    modules: tuple = ()
    framebuffer: bool = False      # give the EGA text screen as a framebuffer

    @property
    def start(self) -> tuple[str, int]:
        return ("protected", self.entry)

    @property
    def kernel_end(self) -> int:
        return max(address + len(chunk) for address, chunk, _ in self.segments)

    @property
    def load_base(self) -> int:
        return min(address for address, _, _ in self.segments)

    def finish(self, image: BootImage, space) -> None:
        info = (self._finish_mb1 if self.protocol == "multiboot1" else self._finish_mb2)(image,
                                                                                         space)
        magic = MB1_BOOT_MAGIC if self.protocol == "multiboot1" else MB2_BOOT_MAGIC
        # The machine state both specifications give (and QEMU's option ROM leaves): flat
        # segments, CR0 = PE (and ET, fixed on every CPU since the 486), paging and interrupts
        # off, CR4 clear; EAX the magic, EBX the information's physical address.
        values = dict(image.entry.__dict__, rax=magic, rbx=info, cr0=CR0_PE | CR0_ET, cr4=0)
        image.entry = type(image.entry)(**values)

    def _place_modules(self, image: BootImage, space, start: int) -> list[tuple[int, int]]:
        """Each module at the next page boundary from `start` (always page-aligned: what the
        header flag or tag asks for, and what QEMU does anyway); (start, end) of each."""
        placed = []
        for i, m in enumerate(self.modules):
            address = _take(space, len(m.data), start, _module_what(i, m))
            placed.append((address, address + len(m.data)))
            start = _page_up(address + max(len(m.data), 1))
        return placed

    def _add_modules(self, image: BootImage, placed) -> None:
        for i, ((address, _), m) in enumerate(zip(placed, self.modules)):
            image.add(address, m.data, _module_what(i, m))

    def _finish_mb1(self, image: BootImage, space) -> int:
        region = _take(space, PAGE, INFO_ADDR, "multiboot information", below=CONVENTIONAL_TOP)
        # After the kernel, as QEMU: the module list, the module strings, the command line and
        # the boot loader's name, then the modules, each on a page boundary.
        strings = [m.string for m in self.modules] + [self.cmdline, BOOT_LOADER_NAME]
        list_size = 16 * len(self.modules)
        size = list_size + sum(len(s.encode()) + 1 for s in strings)
        base = _take(space, size, _page_up(self.kernel_end),
                     "multiboot module list and strings")
        addresses, blob, at = [], bytearray(), base + list_size
        for s in strings:
            addresses.append(at)
            blob += s.encode() + b"\0"
            at += len(s.encode()) + 1
        mods = self._place_modules(image, space, _page_up(base + size))
        mod_list = b"".join(struct.pack("<IIII", lo, hi, addresses[i], 0)
                            for i, (lo, hi) in enumerate(mods))
        image.add(base, mod_list + bytes(blob), "multiboot module list and strings")
        self._add_modules(image, mods)
        entries = mmap_entries(image.mem_size)
        mmap = b"".join(struct.pack("<IQQI", 20, b, n, t) for b, n, t in entries)
        image.add(region, mmap, "multiboot memory map")
        lower, upper = mem_lower_upper(image.mem_size)
        flags = (MBI_MEMORY | MBI_BOOT_DEVICE | MBI_CMDLINE | MBI_MODULES | MBI_MMAP
                 | MBI_BOOT_LOADER | (MBI_FRAMEBUFFER if self.framebuffer else 0))
        mbi = bytearray(MBI_SIZE)
        struct.pack_into("<IIIIIII", mbi, 0, flags, lower, upper, MB1_BOOT_DEVICE,
                         addresses[-2], len(self.modules), base)
        struct.pack_into("<II", mbi, 44, len(mmap), region)
        struct.pack_into("<I", mbi, 64, addresses[-1])
        if self.framebuffer:
            struct.pack_into("<QIIIBB", mbi, 88, EGA_ADDR, 2 * EGA_COLS, EGA_COLS, EGA_ROWS,
                             16, 2)
        image.add(region + MBI_OFFSET, bytes(mbi), "multiboot information structure")
        return region + MBI_OFFSET

    def _finish_mb2(self, image: BootImage, space) -> int:
        def tag(type_: int, body: bytes) -> bytes:
            raw = struct.pack("<II", type_, 8 + len(body)) + body
            return raw.ljust(_align8(len(raw)), b"\0")

        def string(s: str) -> bytes:
            return s.encode() + b"\0"
        # The structure's size does not depend on where things go: place it, then the modules.
        mod_tags = sum(_align8(16 + len(string(m.string))) for m in self.modules)
        fixed = self._mb2_tags(image.mem_size, [], tag, string)
        size = len(fixed) + mod_tags
        region = _take(space, size, INFO_ADDR, "multiboot2 information", below=CONVENTIONAL_TOP)
        mods = self._place_modules(image, space, _page_up(self.kernel_end))
        body = self._mb2_tags(image.mem_size, mods, tag, string)
        image.add(region, body, "multiboot2 information structure")
        self._add_modules(image, mods)
        return region

    def _mb2_tags(self, mem: int, mods, tag, string) -> bytes:
        lower, upper = mem_lower_upper(mem)
        entries = mmap_entries(mem)
        tags = [tag(T_CMDLINE, string(self.cmdline)), tag(T_LOADER, string(BOOT_LOADER_NAME))]
        tags += [tag(T_MODULE, struct.pack("<II", lo, hi) + string(self.modules[i].string))
                 for i, (lo, hi) in enumerate(mods)]
        tags.append(tag(T_MEMINFO, struct.pack("<II", lower, upper)))
        tags.append(tag(T_MMAP, struct.pack("<II", 24, 0) + b"".join(
            struct.pack("<QQII", b, n, t, 0) for b, n, t in entries)))
        if self.framebuffer:
            tags.append(tag(T_FRAMEBUFFER, struct.pack("<QIIIBBH", EGA_ADDR, 2 * EGA_COLS,
                                                       EGA_COLS, EGA_ROWS, 16, 2, 0)))
        tags.append(tag(T_LOAD_BASE, struct.pack("<I", self.load_base)))
        tags.append(tag(T_END, b""))
        body = b"".join(tags)
        return struct.pack("<II", 8 + len(body), 0) + body


def _module_what(i: int, module) -> str:
    return f"multiboot module {i} ({module.name})"


def _kind(data: bytes) -> str:
    """The image kind of a kernel loaded by its header's addresses (the file is not parsed)."""
    return {1: "elf32", 2: "elf64"}.get(data[4], "raw") if is_elf(data) else "raw"


def _take(space, size: int, preferred: int, what: str, below: int | None = None) -> int:
    return space.take(size, preferred, what, below=below, avoid_holes=True)


def multiboot_layout(name: str, data: bytes, opts: BootOptions, protocol: str) -> MultibootPlan:
    if opts.load is not None:
        raise UsageError(f"--load does not apply to {name}: a multiboot kernel's header or ELF "
                         "file says where it loads")
    if opts.entry is not None:
        raise UsageError(f"--entry does not apply to {name}: a multiboot kernel's header or ELF "
                         "file says where it starts")
    if opts.mode not in (None, "protected"):
        raise UsageError(f"{name} is a multiboot kernel: it starts in protected mode, as its "
                         f"boot loader leaves it; drop --mode {opts.mode}")
    if protocol == "multiboot1":
        plan = _mb1_plan(name, data, opts)
        plan.cmdline = f"{name} {opts.cmdline or ''}"    # QEMU: "<kernel path> <-append text>"
    else:
        plan = _mb2_plan(name, data, opts)
        plan.cmdline = opts.cmdline or ""                # GRUB: the arguments after the path
    plan.modules = tuple(opts.modules)
    for text, what in [(plan.cmdline, "--cmdline")] + [(m.string, f"--module {m.name}")
                                                       for m in plan.modules]:
        if "\0" in text:
            raise UsageError(f"{what}: the string holds a NUL character, which would end it")
    if plan.entry > MASK32:
        raise GuestImageError(f"the entry point of multiboot kernel {name} ({plan.entry:#x}) "
                              "lies beyond 4 GiB: it must be a 32-bit physical address")
    return plan


def _elf_kernel(name: str, data: bytes, opts: BootOptions, protocol: str) -> tuple:
    """(kind, segments, physical entry) of an ELF kernel, loaded by p_paddr."""
    label = "multiboot" if protocol == "multiboot1" else "multiboot2"
    if not is_elf(data):
        raise GuestImageError(
            f"{label} kernel {name} is not an ELF file and its header gives no load addresses "
            + ("(flag bit 16, the a.out kludge)" if protocol == "multiboot1"
               else "(an address tag)"))
    elf = parse_elf(name, data)
    segments = elf_segments(name, elf, opts.mem, what="ELF segment")
    return f"elf{elf.elf_class}", segments, elf.physical_entry()


def _flat_kernel(name: str, data: bytes, opts: BootOptions, at: int, header_addr: int,
                 load_addr: int, load_end: int, bss_end: int, label: str) -> list:
    """The a.out kludge (multiboot 1 flag 16) and the multiboot 2 address tag: the file, from
    the offset where the header sits minus (header_addr - load_addr), goes to load_addr."""
    if header_addr < load_addr:
        raise GuestImageError(f"{label} header of {name}: header_addr {header_addr:#x} is below "
                              f"load_addr {load_addr:#x}")
    offset = at - (header_addr - load_addr)
    if offset < 0:
        raise GuestImageError(f"{label} header of {name}: load_addr {load_addr:#x} would start "
                              f"loading {-offset} bytes before the beginning of the file")
    if load_end:
        if load_end < load_addr:
            raise GuestImageError(f"{label} header of {name}: load_end_addr {load_end:#x} is "
                                  f"below load_addr {load_addr:#x}")
        size = load_end - load_addr
        if offset + size > len(data):
            raise GuestImageError(f"{label} header of {name}: load_end_addr {load_end:#x} asks "
                                  f"for {size} bytes from file offset {offset:#x}, but the file "
                                  f"is {len(data)} bytes")
    else:
        size = len(data) - offset
    memsz = size
    if bss_end:
        if bss_end < load_addr + size:
            raise GuestImageError(f"{label} header of {name}: bss_end_addr {bss_end:#x} is "
                                  f"below the end of the loaded text ({load_addr + size:#x})")
        memsz = bss_end - load_addr
    end = load_addr + memsz
    if end > opts.mem:
        raise GuestImageError(f"multiboot kernel {name} ({_size(memsz)} at {load_addr:#x}-"
                              f"{end - 1:#x}) does not fit in {_size(opts.mem)} of RAM: "
                              f"{_more_mem(end)}")
    body = data[offset:offset + size] + bytes(memsz - size)
    return [(load_addr, body, "multiboot kernel")]


def _mb1_plan(name: str, data: bytes, opts: BootOptions) -> MultibootPlan:
    at = find_mb1(data)
    flags = struct.unpack_from("<I", data, at + 4)[0]
    unknown = flags & 0xFFFF & ~MB1_REQUIRED_KNOWN
    if unknown:
        bits = ", ".join(str(b) for b in range(16) if unknown >> b & 1)
        raise GuestImageError(f"multiboot kernel {name} requires features vmm does not know "
                              f"(header flags {flags:#x}: bit {bits})")

    def fields(count: int) -> tuple:
        need = at + 12 + 4 * count
        if need > min(len(data), MB1_SEARCH):
            raise GuestImageError(f"multiboot header of {name} is cut short: its flags "
                                  f"({flags:#x}) need {12 + 4 * count} bytes within the first "
                                  "8 KiB of the file")
        return struct.unpack_from(f"<{count}I", data, at + 12)

    framebuffer = False
    if flags & MB1_VIDEO_MODE:
        mode_type, width, height, depth = fields(9)[5:]
        if mode_type != MB1_MODE_EGA_TEXT:
            raise GuestImageError(
                f"multiboot kernel {name} asks for a graphics video mode (mode_type "
                f"{mode_type}, {width}x{height}x{depth}); vmm has only the 80x25 EGA text "
                "screen: clear header flag bit 2, or ask for mode_type 1 (text)")
        framebuffer = True
    if flags & MB1_AOUT_KLUDGE:
        header_addr, load_addr, load_end, bss_end, entry = fields(5)
        segments = _flat_kernel(name, data, opts, at, header_addr, load_addr, load_end, bss_end,
                                "multiboot")
        kind = _kind(data)
    else:
        kind, segments, entry = _elf_kernel(name, data, opts, "multiboot1")
    return MultibootPlan("multiboot1", name, kind, entry, segments, framebuffer=framebuffer)


def _mb2_plan(name: str, data: bytes, opts: BootOptions) -> MultibootPlan:
    at = find_mb2(data)
    _, arch, length, _ = struct.unpack_from("<IIII", data, at)
    if arch != 0:
        raise GuestImageError(f"multiboot2 kernel {name} is for architecture {arch}"
                              f"{' (MIPS)' if arch == 4 else ''}, not 0 (i386)")
    if length < 16 + 8 or at + length > len(data):
        raise GuestImageError(f"multiboot2 header of {name} is malformed: header_length "
                              f"{length} {'runs past the end of the file' if length >= 24 else 'leaves no room for its end tag'}")
    address = entry = relocatable = None
    framebuffer = False
    pos, end = at + 16, at + length
    while True:
        if pos + 8 > end:
            raise GuestImageError(f"multiboot2 header of {name} is malformed: its tags run past "
                                  f"header_length ({length}) without an end tag")
        type_, tflags, size = struct.unpack_from("<HHI", data, pos)
        if size < 8 or pos + size > end:
            raise GuestImageError(f"multiboot2 header of {name} is malformed: tag type {type_} "
                                  f"at offset {pos:#x} has size {size}")
        required = not tflags & H_OPTIONAL
        body = data[pos + 8:pos + size]

        def need(count: int) -> tuple:
            if len(body) < 4 * count:
                raise GuestImageError(f"multiboot2 header of {name} is malformed: tag type "
                                      f"{type_} has size {size}, too small")
            return struct.unpack_from(f"<{count}I", body)

        if type_ == H_END:
            break
        if type_ == H_INFO_REQUEST:
            wanted = struct.unpack_from(f"<{len(body) // 4}I", body)
            missing = [t for t in wanted if t not in GIVEN_TAGS]
            if missing and required:
                names = ", ".join(f"{t} ({TAG_NAMES.get(t, 'unknown')})" for t in missing)
                raise GuestImageError(f"multiboot2 kernel {name} requires boot information vmm "
                                      f"does not give: tag {names}")
            framebuffer |= T_FRAMEBUFFER in wanted
        elif type_ == H_ADDRESS:
            address = need(4)
        elif type_ == H_ENTRY:
            entry = need(1)[0]
        elif type_ == H_CONSOLE:
            console = need(1)[0]
            if console & CONSOLE_REQUIRED and not console & CONSOLE_EGA_TEXT and required:
                raise GuestImageError(f"multiboot2 kernel {name} requires a console other than "
                                      "EGA text, the only one vmm has")
            framebuffer |= bool(console & CONSOLE_EGA_TEXT)
        elif type_ == H_FRAMEBUFFER:
            width, height, depth = need(3)
            if required:
                raise GuestImageError(
                    f"multiboot2 kernel {name} requires a graphics framebuffer ({width}x{height}"
                    f"x{depth}); vmm has only the 80x25 EGA text screen: make the framebuffer "
                    "tag optional (flags 1)")
            framebuffer = True
        elif type_ == H_MODULE_ALIGN:
            pass                             # modules are always page-aligned
        elif type_ == H_RELOCATABLE:
            relocatable = need(4)
        elif type_ in (H_EFI_BS, H_ENTRY_EFI32, H_ENTRY_EFI64):
            pass                             # EFI only; a BIOS boot ignores them, as GRUB does
        elif required:
            raise GuestImageError(f"multiboot2 kernel {name} has a required header tag of "
                                  f"unknown type {type_}")
        pos += _align8(size)
    if address is not None:
        header_addr, load_addr, load_end, bss_end = address
        if load_addr == MASK32:              # -1: load from the file's first byte
            load_addr = header_addr - at
        segments = _flat_kernel(name, data, opts, at, header_addr, load_addr, load_end, bss_end,
                                "multiboot2")
        kind = _kind(data)
        if entry is None:
            if not is_elf(data):
                raise GuestImageError(f"multiboot2 kernel {name} has an address tag but no "
                                      "entry address tag: vmm cannot tell where it starts")
            entry = parse_elf(name, data).physical_entry()
    else:
        kind, segments, elf_entry = _elf_kernel(name, data, opts, "multiboot2")
        entry = elf_entry if entry is None else entry
    plan = MultibootPlan("multiboot2", name, kind, entry, segments, framebuffer=framebuffer)
    if relocatable is not None:
        min_addr, max_addr, align, _preference = relocatable
        lo, hi = plan.load_base, plan.kernel_end
        if lo < min_addr or hi > max_addr or (align and lo % align):
            raise GuestImageError(
                f"multiboot2 kernel {name} is linked at {lo:#x}-{hi - 1:#x}, outside what its "
                f"relocatable tag allows ({min_addr:#x}-{max_addr:#x}, aligned to {align:#x}); "
                "vmm loads relocatable kernels only at their link address")
    return plan
