"""Thin ctypes wrapper over the Linux KVM API: structures, ioctl numbers, file descriptors.

Source: Documentation/virt/kvm/api.rst and include/uapi/linux/kvm.h (x86). Structures carry the
kernel's names and their layouts are pinned by tests/test_kvm_layout.py. The module follows the
kernel's own split of file descriptors: `Kvm` (/dev/kvm), `Vm` (a VM fd) and `Vcpu` (a vCPU fd),
one method per ioctl, each going through the single choke point `_ioctl`, which raises
`KvmError` naming the ioctl and the errno.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import fcntl
import mmap
import os
import struct

# --- ioctl request numbers, from <asm-generic/ioctl.h> -------------------------------------
_IOC_NRSHIFT, _IOC_TYPESHIFT, _IOC_SIZESHIFT, _IOC_DIRSHIFT = 0, 8, 16, 30
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
KVMIO = 0xAE


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    return (direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (
        size << _IOC_SIZESHIFT)


def _IO(nr: int) -> int:
    return _IOC(_IOC_NONE, KVMIO, nr, 0)


def _IOR(nr: int, struct) -> int:
    return _IOC(_IOC_READ, KVMIO, nr, ctypes.sizeof(struct))


def _IOW(nr: int, struct) -> int:
    return _IOC(_IOC_WRITE, KVMIO, nr, ctypes.sizeof(struct))


def _IOWR(nr: int, struct) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, KVMIO, nr, ctypes.sizeof(struct))


# --- structures, named as in <linux/kvm.h> ---------------------------------------------------
u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class kvm_regs(ctypes.Structure):
    _fields_ = [(name, u64) for name in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class kvm_segment(ctypes.Structure):
    _fields_ = [("base", u64), ("limit", u32), ("selector", u16), ("type", u8),
                ("present", u8), ("dpl", u8), ("db", u8), ("s", u8), ("l", u8), ("g", u8),
                ("avl", u8), ("unusable", u8), ("padding", u8)]


class kvm_dtable(ctypes.Structure):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


KVM_NR_INTERRUPTS = 256


class kvm_sregs(ctypes.Structure):
    _fields_ = [("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment),
                ("fs", kvm_segment), ("gs", kvm_segment), ("ss", kvm_segment),
                ("tr", kvm_segment), ("ldt", kvm_segment),
                ("gdt", kvm_dtable), ("idt", kvm_dtable),
                ("cr0", u64), ("cr2", u64), ("cr3", u64), ("cr4", u64), ("cr8", u64),
                ("efer", u64), ("apic_base", u64),
                ("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64))]


class kvm_userspace_memory_region(ctypes.Structure):
    _fields_ = [("slot", u32), ("flags", u32), ("guest_phys_addr", u64),
                ("memory_size", u64), ("userspace_addr", u64)]


class kvm_cpuid_entry2(ctypes.Structure):
    _fields_ = [("function", u32), ("index", u32), ("flags", u32), ("eax", u32),
                ("ebx", u32), ("ecx", u32), ("edx", u32), ("padding", u32 * 3)]


class kvm_cpuid2(ctypes.Structure):
    """Header only; the entries follow it in memory (a flexible array member in C)."""
    _fields_ = [("nent", u32), ("padding", u32)]


class kvm_coalesced_mmio_zone(ctypes.Structure):
    _fields_ = [("addr", u64), ("size", u32), ("pio", u32)]


class kvm_coalesced_mmio(ctypes.Structure):
    """One entry of the coalesced ring (vmm.cpu.coalesced reads it with struct, this pins it)."""
    _fields_ = [("phys_addr", u64), ("len", u32), ("pio", u32), ("data", u8 * 8)]


class kvm_coalesced_mmio_ring(ctypes.Structure):
    """The ring's header; the entries follow it in memory (a flexible array member in C)."""
    _fields_ = [("first", u32), ("last", u32)]


class kvm_run_io(ctypes.Structure):
    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32),
                ("data_offset", u64)]


class kvm_run_mmio(ctypes.Structure):
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class kvm_run_fail_entry(ctypes.Structure):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class kvm_run_internal(ctypes.Structure):
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_exit_union(ctypes.Union):
    _fields_ = [("io", kvm_run_io), ("mmio", kvm_run_mmio), ("fail_entry", kvm_run_fail_entry),
                ("internal", kvm_run_internal), ("padding", ctypes.c_char * 256)]


class kvm_run(ctypes.Structure):
    """The head of the shared vCPU run area, up to and including the exit-information union."""
    _fields_ = [("request_interrupt_window", u8), ("immediate_exit", u8), ("padding1", u8 * 6),
                ("exit_reason", u32), ("ready_for_interrupt_injection", u8), ("if_flag", u8),
                ("flags", u16), ("cr8", u64), ("apic_base", u64), ("u", kvm_run_exit_union)]


class kvm_guest_debug(ctypes.Structure):
    """struct kvm_guest_debug with x86's kvm_guest_debug_arch (debugreg[8])."""
    _fields_ = [("control", u32), ("pad", u32), ("debugreg", u64 * 8)]


class kvm_debug_exit_arch(ctypes.Structure):
    _fields_ = [("exception", u32), ("pad", u32), ("pc", u64), ("dr6", u64), ("dr7", u64)]


# --- request numbers ---------------------------------------------------------------------------
KVM_GET_API_VERSION = _IO(0x00)
KVM_CREATE_VM = _IO(0x01)
KVM_CHECK_EXTENSION = _IO(0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(0x05, kvm_cpuid2)
KVM_CREATE_VCPU = _IO(0x41)
KVM_SET_USER_MEMORY_REGION = _IOW(0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(0x47)
KVM_REGISTER_COALESCED_MMIO = _IOW(0x67, kvm_coalesced_mmio_zone)
KVM_UNREGISTER_COALESCED_MMIO = _IOW(0x68, kvm_coalesced_mmio_zone)
KVM_RUN = _IO(0x80)
KVM_INTERRUPT = _IOW(0x86, ctypes.c_uint32)
KVM_GET_REGS = _IOR(0x81, kvm_regs)
KVM_SET_REGS = _IOW(0x82, kvm_regs)
KVM_GET_SREGS = _IOR(0x83, kvm_sregs)
KVM_SET_SREGS = _IOW(0x84, kvm_sregs)
KVM_SET_CPUID2 = _IOW(0x90, kvm_cpuid2)
KVM_SET_GUEST_DEBUG = _IOW(0x9B, kvm_guest_debug)
# The rest of a vCPU's state, for snapshots under the debugger (vmm.gdb.snapshot), moved as
# opaque buffers of the kernel's sizes: struct kvm_fpu (416), kvm_vcpu_events (64), and
# kvm_msrs (an 8-byte header, then 16-byte kvm_msr_entry records).
KVM_FPU_SIZE, KVM_VCPU_EVENTS_SIZE, KVM_MSRS_HEADER, KVM_MSR_ENTRY = 416, 64, 8, 16
KVM_GET_MSRS = _IOC(_IOC_READ | _IOC_WRITE, KVMIO, 0x88, KVM_MSRS_HEADER)
KVM_SET_MSRS = _IOC(_IOC_WRITE, KVMIO, 0x89, KVM_MSRS_HEADER)
KVM_GET_FPU = _IOC(_IOC_READ, KVMIO, 0x8C, KVM_FPU_SIZE)
KVM_SET_FPU = _IOC(_IOC_WRITE, KVMIO, 0x8D, KVM_FPU_SIZE)
KVM_GET_VCPU_EVENTS = _IOC(_IOC_READ, KVMIO, 0x9F, KVM_VCPU_EVENTS_SIZE)
KVM_SET_VCPU_EVENTS = _IOC(_IOC_WRITE, KVMIO, 0xA0, KVM_VCPU_EVENTS_SIZE)

# KVM_SET_GUEST_DEBUG control bits (KVM_GUESTDBG_*).
KVM_GUESTDBG_ENABLE = 0x1
KVM_GUESTDBG_SINGLESTEP = 0x2
KVM_GUESTDBG_USE_HW_BP = 0x20000

KVM_API_VERSION = 12

# Extensions (KVM_CAP_*).
KVM_CAP_COALESCED_PIO = 162
KVM_CAP_SYNC_REGS = 74
KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS = 1, 2

# The coalesced ring is this page of the vCPU mmap (KVM_COALESCED_MMIO_PAGE_OFFSET, x86).
KVM_COALESCED_MMIO_PAGE_OFFSET = 2

# Exit reasons (KVM_EXIT_*).
KVM_EXIT_UNKNOWN = 0
KVM_EXIT_EXCEPTION = 1
KVM_EXIT_IO = 2
KVM_EXIT_DEBUG = 4
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_IRQ_WINDOW_OPEN = 7
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_SYSTEM_EVENT = 24

KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT = 0, 1

# Where KVM keeps the real-mode TSS (three pages) on Intel hosts without unrestricted guest:
# just under 4 GiB, far above any RAM size vmm accepts (the same place QEMU uses).
TSS_ADDR = 0xFFFBD000

# Offsets into the run area for the hot path, taken from the structures above.
RUN_IMMEDIATE_EXIT = kvm_run.immediate_exit.offset
RUN_REQUEST_INTERRUPT_WINDOW = kvm_run.request_interrupt_window.offset
RUN_READY_FOR_INTERRUPT_INJECTION = kvm_run.ready_for_interrupt_injection.offset
RUN_IF_FLAG = kvm_run.if_flag.offset
RUN_EXIT_REASON = kvm_run.exit_reason.offset
RUN_EXIT_INFO = kvm_run.u.offset
# After the exit union: kvm_valid_regs, kvm_dirty_regs (u64 each), then struct kvm_sync_regs
# (kvm_regs, kvm_sregs, ...), which KVM fills at every exit for the kinds set in valid_regs.
RUN_VALID_REGS = ctypes.sizeof(kvm_run)
RUN_SYNC_REGS = RUN_VALID_REGS + 16
RUN_SYNC_SREGS = RUN_SYNC_REGS + ctypes.sizeof(kvm_regs)
# A checkpoint's fields there (Vcpu.synced_digest_values): the general registers, CS's base and
# selector, and CR0 CR2 CR3 CR4 CR8 EFER (consecutive in kvm_sregs).
RUN_SYNC_CS = RUN_SYNC_SREGS + kvm_sregs.cs.offset
RUN_SYNC_CRS = RUN_SYNC_SREGS + kvm_sregs.cr0.offset
_SYNC_GPRS = struct.Struct(f"<{len(kvm_regs._fields_)}Q")
_SYNC_CS = struct.Struct(f"<Q{kvm_segment.selector.offset - 8}xH")
_SYNC_CRS = struct.Struct("<6Q")
assert kvm_sregs.efer.offset == kvm_sregs.cr0.offset + 40   # cr0 cr2 cr3 cr4 cr8 efer


class KvmError(OSError):
    """A KVM ioctl failed. `str()` names the ioctl and the errno, e.g. 'KVM_RUN: EINVAL'."""

    def __init__(self, request_name: str, err: int):
        self.request_name = request_name
        super().__init__(err, f"{request_name}: {_errno.errorcode.get(err, err)} "
                              f"({os.strerror(err)})")

    def __str__(self) -> str:
        return self.strerror


_REQUEST_NAMES = {value: name for name, value in globals().items() if name in (
    "KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_CHECK_EXTENSION", "KVM_GET_VCPU_MMAP_SIZE",
    "KVM_GET_SUPPORTED_CPUID", "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION",
    "KVM_SET_TSS_ADDR", "KVM_REGISTER_COALESCED_MMIO", "KVM_UNREGISTER_COALESCED_MMIO",
    "KVM_RUN", "KVM_INTERRUPT", "KVM_GET_REGS", "KVM_SET_REGS", "KVM_GET_SREGS", "KVM_SET_SREGS",
    "KVM_SET_CPUID2", "KVM_SET_GUEST_DEBUG", "KVM_GET_MSRS", "KVM_SET_MSRS", "KVM_GET_FPU",
    "KVM_SET_FPU", "KVM_GET_VCPU_EVENTS", "KVM_SET_VCPU_EVENTS")}


def _ioctl(fd: int, request: int, arg=0):
    """The one ioctl choke point: every KVM call goes through here (except the KVM_RUN fast path)."""
    try:
        return fcntl.ioctl(fd, request, arg)
    except OSError as e:
        raise KvmError(_REQUEST_NAMES.get(request, hex(request)), e.errno) from None


def _signed_arg(value: int) -> int:
    """fcntl.ioctl passes an int argument as a C int; fold values >= 2**31 into that range."""
    return value - (1 << 32) if value >= (1 << 31) else value


class Kvm:
    """/dev/kvm: the system file descriptor."""

    def __init__(self, path: str = "/dev/kvm"):
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            version = self.get_api_version()
            if version != KVM_API_VERSION:
                raise KvmError("KVM_GET_API_VERSION", _errno.EPROTO)
        except BaseException:
            os.close(self.fd)
            raise

    def get_api_version(self) -> int:
        return _ioctl(self.fd, KVM_GET_API_VERSION)

    def check_extension(self, cap: int) -> int:
        return _ioctl(self.fd, KVM_CHECK_EXTENSION, cap)

    def get_vcpu_mmap_size(self) -> int:
        return _ioctl(self.fd, KVM_GET_VCPU_MMAP_SIZE)

    def get_supported_cpuid(self, max_entries: int = 256) -> list[kvm_cpuid_entry2]:
        buf = _cpuid2_buffer([kvm_cpuid_entry2()] * max_entries)
        _ioctl(self.fd, KVM_GET_SUPPORTED_CPUID, buf)
        header = kvm_cpuid2.from_buffer(buf)
        entries = (kvm_cpuid_entry2 * header.nent).from_buffer(buf, ctypes.sizeof(kvm_cpuid2))
        return [kvm_cpuid_entry2.from_buffer_copy(e) for e in entries]

    def create_vm(self) -> "Vm":
        return Vm(self, _ioctl(self.fd, KVM_CREATE_VM, 0))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _cpuid2_buffer(entries) -> bytearray:
    buf = bytearray(ctypes.sizeof(kvm_cpuid2) + ctypes.sizeof(kvm_cpuid_entry2) * len(entries))
    kvm_cpuid2.from_buffer(buf).nent = len(entries)
    for i, entry in enumerate(entries):
        offset = ctypes.sizeof(kvm_cpuid2) + i * ctypes.sizeof(kvm_cpuid_entry2)
        buf[offset:offset + ctypes.sizeof(entry)] = bytes(entry)
    return buf


class Vm:
    """A VM file descriptor."""

    def __init__(self, kvm: Kvm, fd: int):
        self.kvm, self.fd = kvm, fd

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory: mmap.mmap,
                               flags: int = 0) -> None:
        address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
        region = kvm_userspace_memory_region(slot, flags, guest_phys_addr, len(memory), address)
        _ioctl(self.fd, KVM_SET_USER_MEMORY_REGION, bytes(region))

    def set_tss_addr(self, address: int) -> None:
        _ioctl(self.fd, KVM_SET_TSS_ADDR, _signed_arg(address))

    def register_coalesced_pio(self, port: int, size: int) -> None:
        _ioctl(self.fd, KVM_REGISTER_COALESCED_MMIO, bytes(kvm_coalesced_mmio_zone(port, size, 1)))

    def unregister_coalesced_pio(self, port: int, size: int) -> None:
        _ioctl(self.fd, KVM_UNREGISTER_COALESCED_MMIO,
               bytes(kvm_coalesced_mmio_zone(port, size, 1)))

    def create_vcpu(self, index: int = 0) -> "Vcpu":
        return Vcpu(self, _ioctl(self.fd, KVM_CREATE_VCPU, index))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Vcpu:
    """A vCPU file descriptor and its shared run area."""

    def __init__(self, vm: Vm, fd: int):
        self.vm, self.fd = vm, fd
        self.run_area = mmap.mmap(fd, vm.kvm.get_vcpu_mmap_size(), mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        self.synced = False          # KVM keeps regs and sregs in the run area (sync_regs)

    def sync_regs(self) -> bool:
        """Ask KVM to store the registers and segment registers in the run area at every exit
        (KVM_CAP_SYNC_REGS), so that reading them costs no ioctl. vmm never sets
        kvm_dirty_regs: registers it writes go through KVM_SET_REGS/SREGS, and this object
        copies them into the run area too, so the copy there is always the vCPU's."""
        if self.vm.kvm.check_extension(KVM_CAP_SYNC_REGS) & 3 != 3:
            return False
        self.run_area[RUN_VALID_REGS:RUN_VALID_REGS + 8] = struct.pack(
            "<Q", KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS)
        self._store(self.get_regs(), self.get_sregs())
        self.synced = True
        return True

    def _store(self, regs=None, sregs=None) -> None:
        if regs is not None:
            self.run_area[RUN_SYNC_REGS:RUN_SYNC_REGS + ctypes.sizeof(kvm_regs)] = bytes(regs)
        if sregs is not None:
            self.run_area[RUN_SYNC_SREGS:RUN_SYNC_SREGS + ctypes.sizeof(kvm_sregs)] = bytes(sregs)

    def synced_state(self) -> tuple[kvm_regs, kvm_sregs]:
        """The registers as of the last exit (or write), from the run area: sync_regs() only."""
        area = self.run_area
        return (kvm_regs.from_buffer_copy(area, RUN_SYNC_REGS),
                kvm_sregs.from_buffer_copy(area, RUN_SYNC_SREGS))

    def synced_digest_values(self) -> tuple[list[int], tuple[int, ...]]:
        """What a register digest covers (vmm.cpu.backend.register_digest), as of the last exit,
        from the run area (sync_regs() only): three reads instead of two whole structures."""
        area = self.run_area
        base, selector = _SYNC_CS.unpack_from(area, RUN_SYNC_CS)
        cr0, _, cr3, cr4, _, efer = _SYNC_CRS.unpack_from(area, RUN_SYNC_CRS)
        return list(_SYNC_GPRS.unpack_from(area, RUN_SYNC_REGS)), (base, selector, cr0, cr3,
                                                                   cr4, efer)

    def run(self) -> None:
        """KVM_RUN. Raises InterruptedError (EINTR) when a signal interrupts it."""
        fcntl.ioctl(self.fd, KVM_RUN)

    def interrupt(self, vector: int) -> None:
        """KVM_INTERRUPT: queue an external interrupt (userspace interrupt controller)."""
        _ioctl(self.fd, KVM_INTERRUPT, struct.pack("<I", vector))

    def get_regs(self) -> kvm_regs:
        regs = kvm_regs()
        _ioctl(self.fd, KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs: kvm_regs) -> None:
        _ioctl(self.fd, KVM_SET_REGS, bytes(regs))
        if self.synced:
            self._store(regs=self.get_regs())

    def get_sregs(self) -> kvm_sregs:
        sregs = kvm_sregs()
        _ioctl(self.fd, KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: kvm_sregs) -> None:
        _ioctl(self.fd, KVM_SET_SREGS, bytes(sregs))
        if self.synced:
            self._store(sregs=self.get_sregs())

    def set_cpuid2(self, entries) -> None:
        _ioctl(self.fd, KVM_SET_CPUID2, _cpuid2_buffer(entries))

    def get_state(self, msr_indices) -> dict:
        """Registers, segment and control registers, FPU, pending events and the given MSRs,
        as buffers set_state() takes back (a snapshot between two instructions)."""
        fpu, events = bytearray(KVM_FPU_SIZE), bytearray(KVM_VCPU_EVENTS_SIZE)
        _ioctl(self.fd, KVM_GET_FPU, fpu)
        _ioctl(self.fd, KVM_GET_VCPU_EVENTS, events)
        msrs = bytearray(KVM_MSRS_HEADER + KVM_MSR_ENTRY * len(msr_indices))
        msrs[0:4] = len(msr_indices).to_bytes(4, "little")
        for i, index in enumerate(msr_indices):
            at = KVM_MSRS_HEADER + KVM_MSR_ENTRY * i
            msrs[at:at + 4] = index.to_bytes(4, "little")
        count = _ioctl(self.fd, KVM_GET_MSRS, msrs)
        msrs[0:4] = int(count).to_bytes(4, "little")     # the ones this KVM has
        return {"regs": bytes(self.get_regs()), "sregs": bytes(self.get_sregs()),
                "fpu": bytes(fpu), "events": bytes(events), "msrs": bytes(msrs)}

    def set_state(self, state: dict) -> None:
        _ioctl(self.fd, KVM_SET_SREGS, state["sregs"])
        _ioctl(self.fd, KVM_SET_REGS, state["regs"])
        _ioctl(self.fd, KVM_SET_FPU, state["fpu"])
        _ioctl(self.fd, KVM_SET_MSRS, state["msrs"])
        _ioctl(self.fd, KVM_SET_VCPU_EVENTS, state["events"])
        if self.synced:
            self._store(self.get_regs(), self.get_sregs())

    def interrupt_injected(self) -> bool:
        """Whether an external interrupt is queued and not yet delivered: struct
        kvm_vcpu_events' interrupt.injected (offset 8, after the 8-byte exception part)."""
        events = bytearray(KVM_VCPU_EVENTS_SIZE)
        _ioctl(self.fd, KVM_GET_VCPU_EVENTS, events)
        return bool(events[8])

    def set_guest_debug(self, control: int, debugreg=None) -> None:
        dbg = kvm_guest_debug(control=control)
        for i, value in enumerate(debugreg or ()):
            dbg.debugreg[i] = value
        _ioctl(self.fd, KVM_SET_GUEST_DEBUG, bytes(dbg))

    def close(self) -> None:
        if self.fd >= 0:
            self.run_area.close()
            os.close(self.fd)
            self.fd = -1
