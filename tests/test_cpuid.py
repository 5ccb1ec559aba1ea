"""The CPUID table the guest sees (vmm.cpu.cpuid), built from sample KVM_GET_SUPPORTED_CPUID lists."""

from __future__ import annotations

import struct

import pytest

from vmm.cpu.cpuid import cpuid_table, portable_table
from vmm.errors import UsageError

RDRAND, HYPERVISOR = 1 << 30, 1 << 31
SSE3, SSE42, POPCNT = 1 << 0, 1 << 20, 1 << 23
SSE2, APIC = 1 << 26, 1 << 9
LM, NX = 1 << 29, 1 << 20


def entry(function, eax=0, ebx=0, ecx=0, edx=0, index=0, flags=0) -> dict:
    return {"function": function, "index": index, "flags": flags, "eax": eax, "ebx": ebx,
            "ecx": ecx, "edx": edx}


def vendor_leaf(vendor: bytes, max_leaf: int) -> dict:
    ebx, edx, ecx = struct.unpack("<3I", vendor)
    return entry(0, eax=max_leaf, ebx=ebx, ecx=ecx, edx=edx)


def brand_leaves(brand: bytes) -> list[dict]:
    text = brand.ljust(48, b"\0")
    return [entry(0x80000002 + i, *struct.unpack("<4I", text[16 * i:16 * i + 16]))
            for i in range(3)]


def supported(vendor=b"GenuineIntel", brand=b"Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz",
              signature=0x50657, leaf1_ecx=0xFFFFFFFF, leaf1_edx=0xFFFFFFFF,
              ext1_ecx=0xFFFFFFFF, ext1_edx=0xFFFFFFFF, addr_sizes=0x3027) -> list[dict]:
    """A plausible KVM_GET_SUPPORTED_CPUID answer, with every feature bit on by default."""
    return [
        vendor_leaf(vendor, 0x1F),
        entry(1, eax=signature, ebx=0x00200800, ecx=leaf1_ecx, edx=leaf1_edx),
        entry(7, ebx=0xFFFFFFFF, ecx=0xFFFFFFFF, edx=0xFFFFFFFF, flags=1),
        entry(0xD, eax=0x2E7, ebx=0xA88, ecx=0xA88, flags=1),
        entry(0x40000000, eax=0x40000001, ebx=0x4B4D564B, ecx=0x564B4D56, edx=0x4D),
        entry(0x40000001, eax=0x01007AFB),
        entry(0x80000000, eax=0x80000008),
        entry(0x80000001, ecx=ext1_ecx, edx=ext1_edx),
        *brand_leaves(brand),
        entry(0x80000008, eax=addr_sizes),
    ]


def leaf(table, function, index=0) -> dict:
    matches = [e for e in table if e["function"] == function and e["index"] == index]
    assert len(matches) == 1, f"leaf {function:#x} appears {len(matches)} times"
    return matches[0]


@pytest.fixture(scope="module")
def table():
    return portable_table(supported())


def test_portable_vendor_is_genuine_intel(table):
    e = leaf(table, 0)
    assert struct.pack("<3I", e["ebx"], e["edx"], e["ecx"]) == b"GenuineIntel"


def test_portable_brand_string(table):
    brand = b"".join(struct.pack("<4I", *(leaf(table, f)[r] for r in ("eax", "ebx", "ecx", "edx")))
                     for f in (0x80000002, 0x80000003, 0x80000004))
    assert brand.rstrip(b"\0") == b"vmm portable x86-64 CPU"


def test_portable_signature_is_family_6_model_3a_stepping_9(table):
    eax = leaf(table, 1)["eax"]
    family, model, stepping = (eax >> 8) & 0xF, (eax >> 4) & 0xF, eax & 0xF
    ext_model, ext_family = (eax >> 16) & 0xF, (eax >> 20) & 0xFF
    assert (family, ext_family) == (6, 0)
    assert (ext_model << 4) | model == 0x3A
    assert stepping == 9


def test_portable_has_no_rdrand(table):
    assert not leaf(table, 1)["ecx"] & RDRAND


def test_portable_has_no_hypervisor_bit(table):
    assert not leaf(table, 1)["ecx"] & HYPERVISOR


def test_portable_has_no_hypervisor_leaves(table):
    assert not [e for e in table if 0x40000000 <= e["function"] <= 0x400000FF]


def test_portable_has_no_apic_bit(table):
    assert not leaf(table, 1)["edx"] & APIC


def test_portable_offers_baseline_features_the_host_has(table):
    assert leaf(table, 1)["ecx"] & (SSE3 | SSE42 | POPCNT) == SSE3 | SSE42 | POPCNT
    assert leaf(table, 1)["edx"] & SSE2
    assert leaf(table, 0x80000001)["edx"] & (LM | NX) == LM | NX


def test_portable_does_not_offer_features_the_host_lacks():
    table = portable_table(supported(leaf1_ecx=0xFFFFFFFF & ~SSE42, ext1_edx=0xFFFFFFFF & ~NX))
    assert not leaf(table, 1)["ecx"] & SSE42
    assert not leaf(table, 0x80000001)["edx"] & NX


def test_portable_max_leaves_cover_every_leaf_present(table):
    basic_max, ext_max = leaf(table, 0)["eax"], leaf(table, 0x80000000)["eax"]
    for e in table:
        if e["function"] < 0x80000000:
            assert e["function"] <= basic_max
        else:
            assert e["function"] <= ext_max


def test_portable_leaves_are_unique(table):
    keys = [(e["function"], e["index"]) for e in table]
    assert len(keys) == len(set(keys))


def test_portable_does_not_depend_on_host_vendor_brand_or_signature():
    intel = supported(vendor=b"GenuineIntel", brand=b"Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz",
                      signature=0x906EA)
    amd = supported(vendor=b"AuthenticAMD", brand=b"AMD EPYC 7742 64-Core Processor",
                    signature=0x830F10)
    assert portable_table(intel) == portable_table(amd)


def test_portable_from_an_empty_list_still_names_the_cpu():
    table = portable_table([])
    assert leaf(table, 0)["ebx"] == struct.unpack("<I", b"Genu")[0]
    assert leaf(table, 1)["ecx"] == 0 and leaf(table, 1)["edx"] == 0


def test_portable_does_not_modify_its_input():
    host = supported()
    before = [dict(e) for e in host]
    portable_table(host)
    assert host == before


def test_cpuid_table_portable_is_portable_table():
    host = supported()
    assert cpuid_table("portable", host) == portable_table(host)


def test_cpuid_table_host_returns_the_supported_list():
    host = supported()
    assert cpuid_table("host", host) == host


def test_cpuid_table_host_returns_copies():
    host = supported()
    table = cpuid_table("host", host)
    table[0]["eax"] = 0xDEAD
    assert host[0]["eax"] == 0x1F


@pytest.mark.parametrize("mode", ["native", "", "Portable"])
def test_cpuid_table_bad_mode(mode):
    with pytest.raises(UsageError) as info:
        cpuid_table(mode, supported())
    assert repr(mode) in str(info.value)
    assert "\n" not in str(info.value)
