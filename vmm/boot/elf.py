"""ELF files as vmm loads them: the loadable segments, by physical address.

Sources: the System V gABI, ch. 5 (program headers: PT_LOAD, PT_NOTE, p_paddr, p_filesz,
p_memsz, PF_X). pyelftools parses; this module decides what is loaded, and refuses malformed
files with a one-line GuestImageError.
"""

from __future__ import annotations

import io
import struct

from ..errors import GuestImageError
from ..record_type import Record, factory

PF_X = 0x1


class ElfSegment(Record, frozen=True):
    paddr: int
    vaddr: int
    body: bytes          # the file bytes (p_filesz of them)
    memsz: int
    flags: int
    metadata_only: bool  # every byte of it is a note (PT_NOTE) or the ELF and program headers

    @property
    def end(self) -> int:
        return self.paddr + self.memsz

    def contents(self) -> bytes:
        return self.body + bytes(self.memsz - len(self.body))


class ElfImage(Record):
    elf_class: int                   # 32 or 64
    machine: str                     # "EM_386", "EM_X86_64", ...
    entry: int                       # e_entry, as written
    segments: list[ElfSegment] = factory(list)   # PT_LOAD segments with p_memsz > 0

    def physical_entry(self) -> int:
        """e_entry as a physical address, the way GRUB and QEMU's multiboot loader take it: an
        entry inside an executable segment linked at a virtual address other than its physical
        one (a higher-half kernel) is moved by that segment's p_paddr - p_vaddr."""
        for seg in self.segments:
            if (seg.flags & PF_X and seg.vaddr != seg.paddr
                    and seg.vaddr <= self.entry < seg.vaddr + seg.memsz):
                return self.entry - seg.vaddr + seg.paddr
        return self.entry


def _covered(start: int, stop: int, ranges: list[tuple[int, int]]) -> bool:
    """Whether every byte of [start, stop) lies in one of `ranges` (and there is a byte)."""
    at = start
    for a, b in sorted(ranges):
        if a <= at < b:
            at = b
        if at >= stop:
            return stop > start
    return False


def is_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF"


def parse_elf(name: str, data: bytes) -> ElfImage:
    """The loadable segments of an x86 ELF file (PT_LOAD with p_memsz 0 are left out)."""
    from elftools.common.exceptions import ELFError  # imported here: only ELF guests pay for it
    from elftools.elf.elffile import ELFFile
    try:
        elf = ELFFile(io.BytesIO(data))
        machine, elf_class, entry = elf["e_machine"], elf.elfclass, elf["e_entry"]
        headers = [seg.header for seg in elf.iter_segments()]
        metadata = [(h["p_offset"], h["p_offset"] + h["p_filesz"]) for h in headers
                    if h["p_type"] == "PT_NOTE" and h["p_filesz"]]
        metadata.append((0, max(elf["e_ehsize"], elf["e_phoff"] + elf["e_phnum"] * elf["e_phentsize"])))
        segments = []
        for h in headers:
            if h["p_type"] != "PT_LOAD" or h["p_memsz"] == 0:
                continue
            if h["p_filesz"] > h["p_memsz"]:
                raise GuestImageError(f"malformed ELF {name}: a segment's file size exceeds "
                                      "its memory size")
            start, stop = h["p_offset"], h["p_offset"] + h["p_filesz"]
            if stop > len(data):
                raise GuestImageError(f"malformed ELF {name}: a segment runs past the end of "
                                      "the file")
            segments.append(ElfSegment(h["p_paddr"], h["p_vaddr"], data[start:stop],
                                       h["p_memsz"], h["p_flags"],
                                       _covered(start, stop, metadata)
                                       and h["p_filesz"] == h["p_memsz"]))
    except GuestImageError:
        raise
    except (ELFError, ValueError, struct.error, KeyError, AssertionError, IndexError,
            OverflowError) as e:
        raise GuestImageError(f"malformed ELF file {name}: {e}") from None
    if machine not in ("EM_386", "EM_X86_64"):
        raise GuestImageError(f"{name} is an ELF file for {machine}, not x86")
    return ElfImage(elf_class, machine, entry, segments)
