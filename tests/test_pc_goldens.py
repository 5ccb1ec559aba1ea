"""Golden traces of the pc kernels (guests/pc/): each run's console lines, final screen and how
it ended must match traces/test_pc_goldens/ (pytest --update-goldens rewrites them). The same
kernels are checked against QEMU in tests/test_qemu_reference.py."""

import pytest

pytestmark = pytest.mark.kvm

PC = "guests/build/pc/"


@pytest.mark.parametrize("kernel", ["mb1-hello.elf", "mb1-aout.bin", "mb1-gccnote.elf",
                                    "mb2-long.elf"])
def test_multiboot_kernel(vm, golden, kernel):
    s = vm(PC + kernel)                  # multiboot: the pc board, as a default
    s.wait(1)
    assert s.reason == "exit-device" and s.exit_code == 33, s
    assert s.screen is not None and any(s.screen)
    assert s == golden


def test_flat_protected_guest_linked_at_0(vm, golden):
    s = vm(PC + "flat0.bin", board="pc", mode="protected", load=0, entry=0)
    s.wait(1)
    assert s.exit_code == 33, s
    assert s == golden


def test_elf_with_a_16_bit_entry(vm, golden):
    s = vm(PC + "real16.elf", board="pc", mode="real")
    s.wait(1)
    assert s.exit_code == 33 and "real16: done" in s.lines, s
    assert s == golden
