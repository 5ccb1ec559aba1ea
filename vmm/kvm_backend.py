"""The KVM CPU backend: one VM, one vCPU, guest RAM in one memory slot, no in-kernel irqchip/PIT.

No KVM_CREATE_IRQCHIP and no KVM_CREATE_PIT2: the in-kernel PIT would answer ports 0x40-0x43
from host time behind the input source's back (DESIGN §2).
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import struct

from . import kvm
from .backend import (HALT, INTERRUPTED, SHUTDOWN, CpuBackend, CpuState, EntryState, FailEntry,
                      InternalError, IoIn, IoOut, Mmio, Segment, UnknownExit, GPR_NAMES)
from .errors import BackendUnavailable

_io_info = struct.Struct("<BBHIQ").unpack_from          # direction, size, port, count, data_offset
_mmio_info = struct.Struct("<Q8sIB").unpack_from         # phys_addr, data, len, is_write
_u32 = struct.Struct("<I").unpack_from
_internal_info = struct.Struct("<II").unpack_from


def open_kvm(path: str = "/dev/kvm") -> kvm.Kvm:
    """Open /dev/kvm or raise BackendUnavailable with a sentence a user can act on."""
    try:
        return kvm.Kvm(path)
    except FileNotFoundError:
        raise BackendUnavailable(f"{path} does not exist: this host has no KVM "
                                 "(enable virtualization, or load the kvm module)") from None
    except PermissionError:
        raise BackendUnavailable(f"cannot open {path}: permission denied "
                                 "(add yourself to the 'kvm' group)") from None
    except OSError as e:
        raise BackendUnavailable(f"cannot use {path}: {e.strerror or e}") from None


class KvmBackend(CpuBackend):
    name = "kvm"

    def __init__(self, mem_size: int, path: str = "/dev/kvm"):
        self._kvm = open_kvm(path)
        self._vm = self._vcpu = self._ram = None
        try:
            self._vm = self._kvm.create_vm()
            self._vm.set_tss_addr(kvm.TSS_ADDR)
            self._ram = mmap.mmap(-1, mem_size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            self._vm.set_user_memory_region(0, 0, self._ram)
            self._vcpu = self._vm.create_vcpu(0)
        except BaseException:
            self.close()
            raise
        self.memory = memoryview(self._ram)
        self._run_area = self._vcpu.run_area
        self._vcpu_fd = self._vcpu.fd
        self._in_offset = 0

    # --- configuration ---------------------------------------------------------------------
    def supported_cpuid(self) -> list[dict]:
        return [_entry_to_dict(e) for e in self._kvm.get_supported_cpuid()]

    def set_cpuid(self, entries: list[dict]) -> None:
        self._vcpu.set_cpuid2([kvm.kvm_cpuid_entry2(
            e["function"], e["index"], e["flags"], e["eax"], e["ebx"], e["ecx"], e["edx"])
            for e in entries])

    def set_entry_state(self, state: EntryState) -> None:
        sregs = self._vcpu.get_sregs()
        for name in ("cs", "ds", "es", "fs", "gs", "ss"):
            seg = state.cs if name == "cs" else state.ss if name == "ss" else state.ds
            _fill_segment(getattr(sregs, name), seg)
        sregs.gdt.base, sregs.gdt.limit = state.gdt
        sregs.idt.base, sregs.idt.limit = state.idt
        sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = state.cr0, state.cr3, state.cr4, state.efer
        if state.mode != "real":
            # A protected-mode TR must be a busy TSS; KVM refuses entry otherwise.
            sregs.tr.type, sregs.tr.present, sregs.tr.s = 0xB, 1, 0
        self._vcpu.set_sregs(sregs)
        regs = kvm.kvm_regs()
        regs.rip, regs.rsp, regs.rflags = state.rip, state.rsp, state.rflags
        self._vcpu.set_regs(regs)

    def register_coalesced_pio(self, port: int, size: int = 1) -> bool:
        return False  # the coalesced ring arrives with the benchmarks issue

    # --- the hot path ------------------------------------------------------------------------
    def run(self):
        try:
            fcntl.ioctl(self._vcpu_fd, kvm.KVM_RUN)
        except InterruptedError:
            self._run_area[kvm.RUN_IMMEDIATE_EXIT] = 0
            return INTERRUPTED
        except OSError as e:
            raise kvm.KvmError("KVM_RUN", e.errno) from None
        area = self._run_area
        reason = _u32(area, kvm.RUN_EXIT_REASON)[0]
        if reason == kvm.KVM_EXIT_IO:
            direction, size, port, count, offset = _io_info(area, kvm.RUN_EXIT_INFO)
            if direction == kvm.KVM_EXIT_IO_OUT:
                return IoOut(port, size, area[offset:offset + size * count])
            self._in_offset = offset
            return IoIn(port, size, count)
        if reason == kvm.KVM_EXIT_HLT:
            return HALT
        if reason == kvm.KVM_EXIT_SHUTDOWN:
            return SHUTDOWN
        if reason == kvm.KVM_EXIT_MMIO:
            address, data, length, is_write = _mmio_info(area, kvm.RUN_EXIT_INFO)
            if not is_write:
                self._run_area[kvm.RUN_EXIT_INFO + 8:kvm.RUN_EXIT_INFO + 16] = b"\xff" * 8
            return Mmio(address, bool(is_write), length, data[:length])
        if reason == kvm.KVM_EXIT_INTR:
            return INTERRUPTED
        if reason == kvm.KVM_EXIT_FAIL_ENTRY:
            return FailEntry(struct.unpack_from("<Q", area, kvm.RUN_EXIT_INFO)[0])
        if reason == kvm.KVM_EXIT_INTERNAL_ERROR:
            suberror, ndata = _internal_info(area, kvm.RUN_EXIT_INFO)
            data = struct.unpack_from(f"<{min(ndata, 16)}Q", area, kvm.RUN_EXIT_INFO + 8)
            return InternalError(suberror, data)
        return UnknownExit(reason)

    def complete_in(self, data: bytes) -> None:
        self._run_area[self._in_offset:self._in_offset + len(data)] = data

    def kick(self) -> None:
        # Async-signal safe: one byte store. If KVM_RUN is in progress the signal itself
        # interrupts it; if it is about to start, immediate_exit makes it return at once.
        self._run_area[kvm.RUN_IMMEDIATE_EXIT] = 1

    # --- inspection --------------------------------------------------------------------------
    def memory_digest(self) -> str:
        from .trace import memory_digest
        return memory_digest(self.memory, _resident_pages(self._ram))

    def cpu_state(self) -> CpuState:
        regs = self._vcpu.get_regs()
        sregs = self._vcpu.get_sregs()
        return CpuState(regs={name: getattr(regs, name) for name in GPR_NAMES},
                        cs_base=sregs.cs.base, cs_selector=sregs.cs.selector, cr0=sregs.cr0,
                        cr2=sregs.cr2, cr3=sregs.cr3, cr4=sregs.cr4, efer=sregs.efer,
                        extra={"ss_base": sregs.ss.base})

    def close(self) -> None:
        # Closed explicitly and in order: leaving it to interpreter teardown is slow and bimodal.
        if getattr(self, "memory", None) is not None:
            self.memory.release()
            self.memory = None
        for part in (self._vcpu, self._vm):
            if part is not None:
                part.close()
        if self._ram is not None:
            try:
                self._ram.close()
            except BufferError:
                pass
            self._ram = None
        self._vcpu = self._vm = None
        self._kvm.close()


_libc = None


def _resident_pages(ram: mmap.mmap) -> bytes | None:
    """mincore(2): one byte per page, bit 0 set where the page is in memory. Never-touched
    anonymous pages are not, and are zero. None if the call is unavailable."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        pages = (len(ram) + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * pages)()
        anchor = ctypes.c_char.from_buffer(ram)
        try:
            rc = _libc.mincore(ctypes.c_void_p(ctypes.addressof(anchor)),
                               ctypes.c_size_t(len(ram)), vec)
        finally:
            del anchor
        return bytes(vec) if rc == 0 else None
    except (OSError, AttributeError, TypeError):
        return None


def _fill_segment(target: kvm.kvm_segment, seg: Segment) -> None:
    target.selector, target.base, target.limit, target.type = seg.selector, seg.base, seg.limit, seg.type
    target.present, target.dpl, target.db, target.s = seg.present, seg.dpl, seg.db, seg.s
    target.l, target.g, target.avl, target.unusable = seg.l, seg.g, 0, 0


def _entry_to_dict(e: kvm.kvm_cpuid_entry2) -> dict:
    return {"function": e.function, "index": e.index, "flags": e.flags, "eax": e.eax,
            "ebx": e.ebx, "ecx": e.ecx, "edx": e.edx}


__all__ = ["KvmBackend", "open_kvm"]
