"""vmm.cpu.insn: the instruction at RIP, for the report of an instruction KVM cannot execute."""

from __future__ import annotations

import struct
import sys

from vmm.cpu.backend import CpuState
from vmm.cpu.insn import code_bytes, describe

REGS = {name: 0 for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9",
                             "r10", "r11", "r12", "r13", "r14", "r15", "rflags")}


def cpu(rip, **control) -> CpuState:
    return CpuState(regs=dict(REGS, rip=rip), **control)


def test_real_mode_bytes_and_mnemonic():
    memory = bytearray(0x10000)
    memory[0x1010:0x1013] = bytes.fromhex("0f57c0")
    assert describe(memory, cpu(0x1010)) == "0f 57 c0 (xorps xmm0, xmm0)"
    memory[0x1010:0x1014] = bytes.fromhex("660fc7f0")
    assert describe(memory, cpu(0x1010)) == "66 0f c7 f0 (rdrand eax)"


def test_cs_base_is_added():
    memory = bytearray(0x30000)
    memory[0x20005:0x20008] = bytes.fromhex("0f57c9")
    assert describe(memory, cpu(0x5, cs_base=0x20000)) == "0f 57 c9 (xorps xmm1, xmm1)"


def test_through_four_level_paging():
    """Linear 0x400000 mapped to physical 0x5000 by 4-level tables at 0x1000/0x2000/0x3000."""
    memory = bytearray(0x10000)
    struct.pack_into("<Q", memory, 0x1000, 0x2000 | 3)             # PML4[0]
    struct.pack_into("<Q", memory, 0x2000, 0x3000 | 3)             # PDPT[0]
    struct.pack_into("<Q", memory, 0x3000 + 2 * 8, 0x4000 | 3)     # PD[2]: 0x400000
    struct.pack_into("<Q", memory, 0x4000, 0x5000 | 3)             # PT[0]
    memory[0x5000:0x5004] = bytes.fromhex("0fc7f048")              # rdrand eax; then a REX
    state = cpu(0x400000, cr0=0x80000011, cr3=0x1000, cr4=0x20, efer=0x500)
    assert code_bytes(memory, state, 4) == bytes.fromhex("0fc7f048")
    assert describe(memory, state) == "0f c7 f0 (rdrand eax)"


def test_unmapped_or_outside_ram_is_none():
    memory = bytearray(0x10000)
    assert describe(memory, cpu(0x400000, cr0=0x80000011, cr3=0x1000, cr4=0x20,
                                efer=0x500)) is None
    assert describe(memory, cpu(0x20000)) is None


def test_without_capstone_the_bytes_alone(monkeypatch):
    monkeypatch.setitem(sys.modules, "capstone", None)             # import capstone fails
    memory = bytearray(0x10000)
    memory[0x1000:0x1003] = bytes.fromhex("0f57c0")
    assert describe(memory, cpu(0x1000)).startswith("0f 57 c0 00")
