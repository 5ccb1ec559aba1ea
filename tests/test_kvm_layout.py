"""The ctypes mirror of <linux/kvm.h> (x86-64): structure layouts, ioctl numbers, errors.

Every number here is the kernel's, written out literally, so that a change in vmm/cpu/kvm.py that
moves a field or miscomputes a request number fails here rather than as a confusing EINVAL (or a
silent misread of the run area) on a machine with KVM. None of these tests need /dev/kvm.
"""

from __future__ import annotations

import ctypes
import errno
import os

import pytest

from vmm.cpu import kvm
from vmm.cpu import kvm_backend
from vmm.errors import BackendUnavailable


# --- structure sizes ----------------------------------------------------------------------------
@pytest.mark.parametrize("struct, size", [
    (kvm.kvm_regs, 144),
    (kvm.kvm_sregs, 312),
    (kvm.kvm_segment, 24),
    (kvm.kvm_dtable, 16),
    (kvm.kvm_userspace_memory_region, 32),
    (kvm.kvm_cpuid_entry2, 40),
    (kvm.kvm_cpuid2, 8),
    (kvm.kvm_coalesced_mmio_zone, 16),
    (kvm.kvm_run_io, 16),
    (kvm.kvm_run_exit_union, 256),
])
def test_struct_size_matches_kernel(struct, size):
    assert ctypes.sizeof(struct) == size


def _offsets(struct) -> dict[str, int]:
    return {name: getattr(struct, name).offset for name, *_ in struct._fields_}


# --- field offsets ------------------------------------------------------------------------------
def test_kvm_regs_fields_are_consecutive_u64_in_kernel_order():
    names = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11",
             "r12", "r13", "r14", "r15", "rip", "rflags"]
    assert _offsets(kvm.kvm_regs) == {name: 8 * i for i, name in enumerate(names)}


def test_kvm_segment_field_offsets():
    assert _offsets(kvm.kvm_segment) == {
        "base": 0, "limit": 8, "selector": 12, "type": 14, "present": 15, "dpl": 16, "db": 17,
        "s": 18, "l": 19, "g": 20, "avl": 21, "unusable": 22, "padding": 23}


def test_kvm_dtable_field_offsets():
    assert _offsets(kvm.kvm_dtable) == {"base": 0, "limit": 8, "padding": 10}


def test_kvm_sregs_field_offsets():
    segments = ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"]
    expected = {name: 24 * i for i, name in enumerate(segments)}
    expected.update(gdt=192, idt=208, cr0=224, cr2=232, cr3=240, cr4=248, cr8=256, efer=264,
                    apic_base=272, interrupt_bitmap=280)
    assert _offsets(kvm.kvm_sregs) == expected


def test_kvm_sregs_interrupt_bitmap_holds_256_bits():
    assert kvm.kvm_sregs.interrupt_bitmap.size == 256 // 8


def test_kvm_userspace_memory_region_field_offsets():
    assert _offsets(kvm.kvm_userspace_memory_region) == {
        "slot": 0, "flags": 4, "guest_phys_addr": 8, "memory_size": 16, "userspace_addr": 24}


def test_kvm_cpuid_entry2_field_offsets():
    assert _offsets(kvm.kvm_cpuid_entry2) == {
        "function": 0, "index": 4, "flags": 8, "eax": 12, "ebx": 16, "ecx": 20, "edx": 24,
        "padding": 28}


def test_kvm_cpuid2_header_field_offsets():
    assert _offsets(kvm.kvm_cpuid2) == {"nent": 0, "padding": 4}


def test_kvm_coalesced_mmio_zone_field_offsets():
    assert _offsets(kvm.kvm_coalesced_mmio_zone) == {"addr": 0, "size": 8, "pio": 12}


def test_kvm_run_head_field_offsets():
    assert _offsets(kvm.kvm_run) == {
        "request_interrupt_window": 0, "immediate_exit": 1, "padding1": 2, "exit_reason": 8,
        "ready_for_interrupt_injection": 12, "if_flag": 13, "flags": 14, "cr8": 16,
        "apic_base": 24, "u": 32}


def test_run_area_hot_path_offsets():
    assert kvm.RUN_IMMEDIATE_EXIT == 1
    assert kvm.RUN_EXIT_REASON == 8
    assert kvm.RUN_EXIT_INFO == 32


def test_kvm_run_io_field_offsets():
    assert _offsets(kvm.kvm_run_io) == {
        "direction": 0, "size": 1, "port": 2, "count": 4, "data_offset": 8}


def test_kvm_run_mmio_field_offsets():
    assert _offsets(kvm.kvm_run_mmio) == {"phys_addr": 0, "data": 8, "len": 16, "is_write": 20}
    assert kvm.kvm_run_mmio.data.size == 8


def test_kvm_run_fail_entry_and_internal_field_offsets():
    assert _offsets(kvm.kvm_run_fail_entry) == {"hardware_entry_failure_reason": 0, "cpu": 8}
    assert _offsets(kvm.kvm_run_internal) == {"suberror": 0, "ndata": 4, "data": 8}


def test_exit_union_members_all_start_at_union_offset():
    assert set(_offsets(kvm.kvm_run_exit_union).values()) == {0}


# --- the backend's struct-module decoders agree with the ctypes layouts ------------------------
def test_backend_io_decoder_reads_kvm_run_io_fields():
    io = kvm.kvm_run_io(direction=kvm.KVM_EXIT_IO_OUT, size=2, port=0x3F8, count=3,
                        data_offset=0x1000)
    assert kvm_backend._io_info(bytes(io), 0) == (kvm.KVM_EXIT_IO_OUT, 2, 0x3F8, 3, 0x1000)


def test_backend_mmio_decoder_reads_kvm_run_mmio_fields():
    mmio = kvm.kvm_run_mmio(phys_addr=0xFEE00000, len=4, is_write=1)
    mmio.data[:] = list(b"\x01\x02\x03\x04\x00\x00\x00\x00")
    address, data, length, is_write = kvm_backend._mmio_info(bytes(mmio), 0)
    assert (address, data[:length], length, is_write) == (0xFEE00000, b"\x01\x02\x03\x04", 4, 1)


# --- ioctl request numbers ----------------------------------------------------------------------
@pytest.mark.parametrize("name, value", [
    ("KVM_GET_API_VERSION", 0xAE00),
    ("KVM_CREATE_VM", 0xAE01),
    ("KVM_CHECK_EXTENSION", 0xAE03),
    ("KVM_GET_VCPU_MMAP_SIZE", 0xAE04),
    ("KVM_CREATE_VCPU", 0xAE41),
    ("KVM_RUN", 0xAE80),
    ("KVM_INTERRUPT", 0x4004AE86),
    ("KVM_GET_REGS", 0x8090AE81),
    ("KVM_SET_REGS", 0x4090AE82),
    ("KVM_GET_SREGS", 0x8138AE83),
    ("KVM_SET_SREGS", 0x4138AE84),
    ("KVM_SET_USER_MEMORY_REGION", 0x4020AE46),
    ("KVM_GET_SUPPORTED_CPUID", 0xC008AE05),
    ("KVM_SET_CPUID2", 0x4008AE90),
    ("KVM_SET_TSS_ADDR", 0xAE47),
    ("KVM_REGISTER_COALESCED_MMIO", 0x4010AE67),
])
def test_ioctl_number_matches_kernel(name, value):
    assert getattr(kvm, name) == value


@pytest.mark.parametrize("name, value", [
    ("KVM_EXIT_UNKNOWN", 0), ("KVM_EXIT_EXCEPTION", 1), ("KVM_EXIT_IO", 2), ("KVM_EXIT_HLT", 5),
    ("KVM_EXIT_MMIO", 6), ("KVM_EXIT_SHUTDOWN", 8), ("KVM_EXIT_FAIL_ENTRY", 9),
    ("KVM_EXIT_INTR", 10), ("KVM_EXIT_INTERNAL_ERROR", 17), ("KVM_EXIT_SYSTEM_EVENT", 24),
    ("KVM_EXIT_IO_IN", 0), ("KVM_EXIT_IO_OUT", 1), ("KVM_API_VERSION", 12),
    ("KVM_CAP_COALESCED_PIO", 162),
])
def test_kvm_constant_matches_kernel(name, value):
    assert getattr(kvm, name) == value


# --- helpers around the ioctls ------------------------------------------------------------------
def test_signed_arg_folds_high_values_into_c_int_keeping_the_bits():
    folded = kvm._signed_arg(kvm.TSS_ADDR)
    assert -(1 << 31) <= folded < 0
    assert folded & 0xFFFFFFFF == kvm.TSS_ADDR


def test_signed_arg_leaves_small_values_alone():
    assert kvm._signed_arg(0) == 0
    assert kvm._signed_arg(0x7FFFFFFF) == 0x7FFFFFFF


def test_cpuid2_buffer_is_header_then_entries():
    entries = [kvm.kvm_cpuid_entry2(function=0, eax=1), kvm.kvm_cpuid_entry2(function=1, ecx=7)]
    buf = kvm._cpuid2_buffer(entries)
    assert len(buf) == 8 + 2 * 40
    assert kvm.kvm_cpuid2.from_buffer(buf).nent == 2
    second = kvm.kvm_cpuid_entry2.from_buffer(buf, 8 + 40)
    assert (second.function, second.ecx) == (1, 7)


# --- errors -------------------------------------------------------------------------------------
@pytest.fixture
def devnull_fd():
    fd = os.open(os.devnull, os.O_RDWR)
    yield fd
    os.close(fd)


def test_kvm_error_names_ioctl_and_errno(devnull_fd):
    with pytest.raises(kvm.KvmError) as info:
        kvm._ioctl(devnull_fd, kvm.KVM_GET_REGS, kvm.kvm_regs())
    assert "KVM_GET_REGS" in str(info.value)
    assert "ENOTTY" in str(info.value)
    assert info.value.errno == errno.ENOTTY
    assert info.value.request_name == "KVM_GET_REGS"


def test_kvm_error_is_an_oserror(devnull_fd):
    with pytest.raises(OSError):
        kvm._ioctl(devnull_fd, kvm.KVM_GET_SREGS, kvm.kvm_sregs())


def test_kvm_error_names_io_type_ioctl_get_api_version(devnull_fd):
    with pytest.raises(kvm.KvmError) as info:
        kvm._ioctl(devnull_fd, kvm.KVM_GET_API_VERSION)
    assert "KVM_GET_API_VERSION" in str(info.value)
    assert "ENOTTY" in str(info.value)


def test_kvm_error_names_io_type_ioctl_create_vm(devnull_fd):
    with pytest.raises(kvm.KvmError) as info:
        kvm._ioctl(devnull_fd, kvm.KVM_CREATE_VM, 0)
    assert str(info.value).startswith("KVM_CREATE_VM: ")


def test_kvm_error_message_is_one_line():
    assert "\n" not in str(kvm.KvmError("KVM_RUN", errno.EINVAL))
    assert str(kvm.KvmError("KVM_RUN", errno.EINVAL)).startswith("KVM_RUN: EINVAL")


def test_open_kvm_on_missing_path_raises_backend_unavailable(tmp_path):
    path = str(tmp_path / "no-such-kvm")
    with pytest.raises(BackendUnavailable) as info:
        kvm_backend.open_kvm(path)
    message = str(info.value)
    assert path in message
    assert "does not exist" in message
    assert "\n" not in message


def test_open_kvm_on_a_directory_raises_backend_unavailable(tmp_path):
    with pytest.raises(BackendUnavailable) as info:
        kvm_backend.open_kvm(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_open_kvm_on_a_non_kvm_device_raises_backend_unavailable_and_closes_it():
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(BackendUnavailable) as info:
        kvm_backend.open_kvm(os.devnull)
    assert os.devnull in str(info.value)
    assert set(os.listdir("/proc/self/fd")) == before      # the fd opened on /dev/null is closed
