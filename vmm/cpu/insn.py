"""The instruction at a guest's RIP, for reports: its bytes read through the guest's paging, and
its mnemonic when the capstone disassembler is installed (a dependency of vmm; without it the
report names the bytes only)."""

from __future__ import annotations

MAX_LENGTH = 15                       # the longest x86 instruction
CR0_PE = 1
EFER_LMA = 1 << 10


def code_bytes(memory, cpu, n: int = MAX_LENGTH) -> bytes:
    """Up to `n` bytes at CS:RIP (b"" where they cannot be read: unmapped, outside RAM)."""
    from ..gdb.paging import Unmapped, translate
    linear, out = cpu.linear_rip, b""
    while len(out) < n:
        try:
            physical = translate(memory, linear, cpu.cr0, cpu.cr3, cpu.cr4, cpu.efer)
        except Unmapped:
            break
        chunk = min(n - len(out), 4096 - (linear & 0xFFF), len(memory) - physical)
        if chunk <= 0:
            break
        out += bytes(memory[physical:physical + chunk])
        linear += chunk
    return out


def _bits(cpu) -> int:
    if not cpu.cr0 & CR0_PE:
        return 16
    return 64 if cpu.efer & EFER_LMA else 32   # (compatibility and 16-bit protected mode: rare)


def describe(memory, cpu) -> str | None:
    """'0f 57 c0 (xorps xmm0, xmm0)' for the instruction at RIP; the bytes alone (up to 15)
    without capstone or when it cannot decode them; None when no byte can be read."""
    code = code_bytes(memory, cpu)
    if not code:
        return None
    try:
        import capstone
    except ImportError:
        return code.hex(" ")
    mode = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}[_bits(cpu)]
    for insn in capstone.Cs(capstone.CS_ARCH_X86, mode).disasm(code, cpu.rip, 1):
        text = f"{insn.mnemonic} {insn.op_str}".strip()
        return f"{code[:insn.size].hex(' ')} ({text})"
    return code.hex(" ")
