"""Linear-to-physical translation for the debugger's memory accesses, through the guest's own
page tables, without side effects (no accessed/dirty bits set, no faults raised).

Source: Intel SDM vol. 3A, chapter 4 "Paging": 32-bit paging (4.3, with 4 MiB pages under
CR4.PSE), PAE paging (4.4), 4-level paging (4.5). gdb's addresses are linear addresses (virtual
addresses in the guest's current address space, CS base not added), as in QEMU's gdb stub.
"""

from __future__ import annotations

CR0_PG = 1 << 31
CR4_PSE, CR4_PAE = 1 << 4, 1 << 5
EFER_LMA = 1 << 10
PRESENT, PAGE_SIZE_BIT = 1, 1 << 7
PAGE = 4096
_ADDR_52 = 0x000FFFFFFFFFF000


class Unmapped(Exception):
    """The linear address has no translation (or its tables lie outside RAM)."""


def _entry(memory, address: int, size: int) -> int:
    if address < 0 or address + size > len(memory):
        raise Unmapped(address)
    return int.from_bytes(memory[address:address + size], "little")


def translate(memory, linear: int, cr0: int, cr3: int, cr4: int, efer: int) -> int:
    """The physical address of `linear` under the given control registers."""
    if not cr0 & CR0_PG:
        return linear & 0xFFFFFFFF if not efer & EFER_LMA else linear
    if efer & EFER_LMA:
        table = cr3 & _ADDR_52
        for shift in (39, 30, 21, 12):
            e = _entry(memory, table + ((linear >> shift) & 0x1FF) * 8, 8)
            if not e & PRESENT:
                raise Unmapped(linear)
            if shift in (30, 21) and e & PAGE_SIZE_BIT:
                mask = (1 << shift) - 1
                return (e & _ADDR_52 & ~mask) | (linear & mask)
            table = e & _ADDR_52
        return table | (linear & 0xFFF)
    linear &= 0xFFFFFFFF
    if cr4 & CR4_PAE:
        e = _entry(memory, (cr3 & 0xFFFFFFE0) + ((linear >> 30) & 3) * 8, 8)
        if not e & PRESENT:
            raise Unmapped(linear)
        table = e & _ADDR_52
        for shift in (21, 12):
            e = _entry(memory, table + ((linear >> shift) & 0x1FF) * 8, 8)
            if not e & PRESENT:
                raise Unmapped(linear)
            if shift == 21 and e & PAGE_SIZE_BIT:
                return (e & _ADDR_52 & ~0x1FFFFF) | (linear & 0x1FFFFF)
            table = e & _ADDR_52
        return table | (linear & 0xFFF)
    pde = _entry(memory, (cr3 & 0xFFFFF000) + (linear >> 22) * 4, 4)
    if not pde & PRESENT:
        raise Unmapped(linear)
    if cr4 & CR4_PSE and pde & PAGE_SIZE_BIT:
        return (pde & 0xFFC00000) | ((pde & 0x1FE000) << 19) | (linear & 0x3FFFFF)
    pte = _entry(memory, (pde & 0xFFFFF000) + ((linear >> 12) & 0x3FF) * 4, 4)
    if not pte & PRESENT:
        raise Unmapped(linear)
    return (pte & 0xFFFFF000) | (linear & 0xFFF)


def pieces(memory, linear: int, length: int, cr: tuple[int, int, int, int]):
    """(physical, length) for each page-sized piece of [linear, linear + length), in order;
    stops at the first piece without a translation or outside RAM."""
    out = []
    while length > 0:
        chunk = min(length, PAGE - (linear & (PAGE - 1)))
        try:
            phys = translate(memory, linear, *cr)
        except Unmapped:
            break
        if phys + chunk > len(memory):
            chunk = max(0, len(memory) - phys)
            if chunk:
                out.append((phys, chunk))
            break
        out.append((phys, chunk))
        linear += chunk
        length -= chunk
    return out
