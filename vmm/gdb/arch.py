"""Register layouts and target descriptions for the three x86 CPU modes, as data.

Source: the GDB manual, "Target Descriptions" and "i386 Features" (org.gnu.gdb.i386.core: the
general registers, EIP/RIP, EFLAGS, the six segment selectors, then the x87 registers, in this
order), and gdb/features/i386/32bit-core.xml and 64bit-core.xml for names and sizes.

A layout is a list of (name, bits). The 'g' packet is the layout's registers, little-endian, in
order; 'p'/'P' number them from 0 in the same order. Real mode (i8086) uses the 32-bit register
file, as on a real CPU; only the architecture name differs, so that gdb disassembles 16-bit
code. The x87 registers are in the layout because gdb requires them in the core feature; vmm
does not model FPU state for the debugger and reports them as the reset values.
"""

from __future__ import annotations

from dataclasses import dataclass

_X87 = [(f"st{i}", 80) for i in range(8)] + [
    (name, 32) for name in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")]
_SEGMENTS = [(name, 32) for name in ("cs", "ss", "ds", "es", "fs", "gs")]
X87_RESET = {"fctrl": 0x37F, "ftag": 0xFFFF}   # FNINIT's values

_CORE32 = [(name, 32) for name in ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi",
                                   "eip", "eflags")] + _SEGMENTS + _X87
_CORE64 = [(name, 64) for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                                   "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip")
           ] + [("eflags", 32)] + _SEGMENTS + _X87

# 32-bit register names -> the 64-bit register that holds them
_WIDE = {"eax": "rax", "ecx": "rcx", "edx": "rdx", "ebx": "rbx", "esp": "rsp", "ebp": "rbp",
         "esi": "rsi", "edi": "rdi", "eip": "rip", "eflags": "rflags"}


@dataclass(frozen=True)
class Arch:
    name: str              # vmm's name for the CPU mode: i8086, i386, x86-64
    gdb_arch: str          # <architecture> in the target description
    registers: tuple       # ((name, bits), ...)
    pc: str                # the program counter's name in this layout

    @property
    def g_size(self) -> int:
        return sum(bits for _, bits in self.registers) // 8

    def target_xml(self) -> bytes:
        regs = []
        for number, (name, bits) in enumerate(self.registers):
            if name.startswith("st"):
                kind = "i387_ext"
            elif name in ("eip", "rip"):
                kind = "code_ptr"
            elif name in ("esp", "ebp", "rsp", "rbp"):
                kind = "data_ptr"
            else:
                kind = f"int{bits}"
            group = ' group="float"' if (name, bits) in _X87 else ""
            regs.append(f'    <reg name="{name}" bitsize="{bits}" type="{kind}" '
                        f'regnum="{number}"{group}/>')
        return ("<?xml version=\"1.0\"?>\n<!DOCTYPE target SYSTEM \"gdb-target.dtd\">\n"
                f"<target version=\"1.0\">\n  <architecture>{self.gdb_arch}</architecture>\n"
                "  <feature name=\"org.gnu.gdb.i386.core\">\n" + "\n".join(regs) +
                "\n  </feature>\n</target>\n").encode("ascii")

    def value_of(self, name: str, regs: dict[str, int]) -> int:
        """The value of layout register `name` from vmm's register dict (64-bit names)."""
        if name in regs:
            return regs[name]
        wide = _WIDE.get(name)
        if wide is not None:
            return regs.get(wide, 0) & 0xFFFFFFFF
        if name == "eflags":
            return regs.get("rflags", 0) & 0xFFFFFFFF
        return X87_RESET.get(name, 0)

    def vmm_name(self, name: str) -> str | None:
        """The vmm register a write to layout register `name` changes (None: not writable)."""
        if name == "eflags":
            return "rflags"
        if name in _WIDE:
            return _WIDE[name]
        if name.startswith("r") and name not in ("rflags",):
            return name
        return None

    def encode(self, regs: dict[str, int]) -> bytes:
        out = bytearray()
        for name, bits in self.registers:
            out += (self.value_of(name, regs) & ((1 << bits) - 1)).to_bytes(bits // 8, "little")
        return bytes(out)

    def decode(self, data: bytes) -> dict[str, int]:
        """Register values from a 'G' packet's bytes (as many as it holds)."""
        values, offset = {}, 0
        for name, bits in self.registers:
            size = bits // 8
            if offset + size > len(data):
                break
            values[name] = int.from_bytes(data[offset:offset + size], "little")
            offset += size
        return values


I8086 = Arch("i8086", "i8086", tuple(_CORE32), "eip")
I386 = Arch("i386", "i386", tuple(_CORE32), "eip")
X86_64 = Arch("x86-64", "i386:x86-64", tuple(_CORE64), "rip")
ARCHES = {a.name: a for a in (I8086, I386, X86_64)}

CR0_PE = 1
EFER_LMA = 1 << 10


def arch_for(cr0: int, efer: int) -> Arch:
    """The layout for the CPU's current mode: real mode, protected mode, or long mode (which
    includes compatibility mode: the register file is 64 bits wide there)."""
    if efer & EFER_LMA:
        return X86_64
    if cr0 & CR0_PE:
        return I386
    return I8086
