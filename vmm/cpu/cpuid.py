"""The CPUID table the guest sees. Fixed, recorded in the trace, and set again on replay.

`portable` (the default): a fixed vendor, brand string and family/model/stepping, and a baseline
feature set (x86-64 with SSE up to 4.2) intersected with what this host's KVM supports. No
RDRAND/RDSEED (their values cannot be replayed), no XSAVE/AVX, and no hypervisor or kvmclock
leaves (0x40000000-0x400000ff), so a guest prints the same CPU information on every host. One
value is still the host's: the address sizes in leaf 0x80000008, because KVM needs the guest's
physical-address width to match the host's for its reserved-bit checks.
`host`: exactly what this host's KVM supports (KVM_GET_SUPPORTED_CPUID).

Source: Intel SDM vol. 2A, CPUID; AMD APM vol. 3, appendix E.
"""

from __future__ import annotations

import struct

from ..errors import UsageError

PORTABLE_VENDOR = b"GenuineIntel"
PORTABLE_BRAND = b"vmm portable x86-64 CPU"
PORTABLE_SIGNATURE = (6 << 8) | (0x3 << 16) | (0xA << 4) | 9   # family 6, model 0x3a, stepping 9
PORTABLE_LEAF1_EBX = (1 << 16) | (8 << 8)     # one logical CPU, CLFLUSH line 64 bytes, APIC ID 0

# Leaf 1 EDX: FPU VME DE PSE TSC MSR PAE MCE CX8 SEP MTRR PGE MCA CMOV PAT PSE36 CLFSH MMX FXSR
# SSE SSE2 (no APIC: vmm has no local APIC).
LEAF1_EDX = sum(1 << b for b in (0, 1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13, 14, 15, 16, 17, 19, 23,
                                 24, 25, 26))
# Leaf 1 ECX: SSE3 PCLMULQDQ SSSE3 CX16 SSE4.1 SSE4.2 MOVBE POPCNT (no RDRAND, no hypervisor bit).
LEAF1_ECX = sum(1 << b for b in (0, 1, 9, 13, 19, 20, 22, 23))
# Leaf 0x80000001 EDX: SYSCALL NX 1GB-pages? no; LM.  ECX: LAHF/SAHF.
EXT1_EDX = (1 << 11) | (1 << 20) | (1 << 29)
EXT1_ECX = 1 << 0

CPUID_MODES = ("portable", "host")


def _entry(function: int, eax=0, ebx=0, ecx=0, edx=0, index=0, flags=0) -> dict:
    return {"function": function, "index": index, "flags": flags, "eax": eax, "ebx": ebx,
            "ecx": ecx, "edx": edx}


def _regs(text: bytes) -> tuple[int, ...]:
    return struct.unpack("<4I", text.ljust(16, b"\0"))


def portable_table(supported: list[dict]) -> list[dict]:
    host = {(e["function"], e["index"]): e for e in supported}
    leaf1 = host.get((1, 0), _entry(1))
    ext1 = host.get((0x80000001, 0), _entry(0x80000001))
    ext8 = host.get((0x80000008, 0), _entry(0x80000008, eax=0x3027))
    vendor = struct.unpack("<3I", PORTABLE_VENDOR)
    table = [
        _entry(0, eax=1, ebx=vendor[0], ecx=vendor[2], edx=vendor[1]),
        _entry(1, eax=PORTABLE_SIGNATURE, ebx=PORTABLE_LEAF1_EBX,
               ecx=leaf1["ecx"] & LEAF1_ECX, edx=leaf1["edx"] & LEAF1_EDX),
        _entry(0x80000000, eax=0x80000008),
        _entry(0x80000001, ecx=ext1["ecx"] & EXT1_ECX, edx=ext1["edx"] & EXT1_EDX),
    ]
    brand = PORTABLE_BRAND.ljust(48, b"\0")
    for i in range(3):
        a, b, c, d = _regs(brand[16 * i:16 * i + 16])
        table.append(_entry(0x80000002 + i, eax=a, ebx=b, ecx=c, edx=d))
    table.append(_entry(0x80000008, eax=ext8["eax"] & 0xFFFF))
    return table


def cpuid_table(mode: str, supported: list[dict]) -> list[dict]:
    if mode == "portable":
        return portable_table(supported)
    if mode == "host":
        return [dict(e) for e in supported]
    raise UsageError(f"bad --cpuid {mode!r}: choose portable or host")
