"""The KVM CPU backend: one VM, one vCPU, guest RAM in one memory slot, no in-kernel irqchip/PIT.

No KVM_CREATE_IRQCHIP and no KVM_CREATE_PIT2: the in-kernel PIT would answer ports 0x40-0x43
from host time behind the input source's back (DESIGN §2).

Output-only ports can be registered as coalesced PIO (KVM_CAP_COALESCED_PIO): KVM then appends
OUTs to them to a ring in the vCPU mmap instead of exiting (vmm.cpu.coalesced). `run()` drains the
ring at every return from KVM_RUN, before it decodes the exit, and hands each batched write to
`coalesced_sink` in the guest's order; so the machine sees exactly the OUTs it would have seen
one exit at a time, in the same order, and only fewer exits.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import struct

from . import coalesced, kvm
from .backend import (DEBUG_STOP, HALT, INTERRUPTED, IRQ_WINDOW, SHUTDOWN, CpuBackend, CpuState,
                      DebugState, EntryState, FailEntry, InternalError, IoIn, IoOut, Mmio,
                      Segment, UnknownExit, GPR_NAMES, register_digest)
from ..errors import BackendUnavailable, TraceError

_io_info = struct.Struct("<BBHIQ").unpack_from          # direction, size, port, count, data_offset
# The hot path decodes exit_reason (offset 8) and the io member (offset 32) in one call:
# exit_reason, direction, size, port, count, data_offset.
_exit_io = struct.Struct("<I20xBBHIQ").unpack_from
_mmio_info = struct.Struct("<Q8sIB").unpack_from         # phys_addr, data, len, is_write
_u32 = struct.Struct("<I").unpack_from
_internal_info = struct.Struct("<II").unpack_from
KVM_MAX_CPUID_ENTRIES = 256   # KVM_SET_CPUID2 takes at most this many (E2BIG beyond)
_HLT = 0xF4
# MSRs a snapshot keeps (EFER is in the segment registers): SYSENTER CS/ESP/EIP, PAT, STAR,
# LSTAR, CSTAR, SFMASK, KERNEL_GS_BASE, TSC_AUX.
_SNAPSHOT_MSRS = (0x174, 0x175, 0x176, 0x277, 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084,
                  0xC0000102, 0xC0000103)


# The hot path's names, bound once. KVM_RUN goes straight to fcntl.ioctl with two arguments
# (an omitted argument is cheaper to pass than an explicit 0), not through kvm._ioctl.
_ioctl = fcntl.ioctl
_KVM_RUN, _RUN_EXIT_REASON = kvm.KVM_RUN, kvm.RUN_EXIT_REASON
_KVM_EXIT_IO, _KVM_EXIT_IO_OUT = kvm.KVM_EXIT_IO, kvm.KVM_EXIT_IO_OUT


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
        self._synced = self._vcpu.sync_regs()   # cpu_state() from the run area, no ioctl
        self._vcpu_fd = self._vcpu.fd
        self._in_offset = 0
        # Exit objects for the hot path, reused: an exit is handled before the next run().
        self._io_out, self._io_in = IoOut(0, 1, b""), IoIn(0, 1, 1)
        # The coalesced ring: its header as two u32 words (first, last), once a port is
        # registered; None until then.
        self._ring_base = kvm.KVM_COALESCED_MMIO_PAGE_OFFSET * mmap.PAGESIZE
        self._ring_max = coalesced.ring_max(mmap.PAGESIZE)
        self._ring = None
        self._coalesced_zones: set[tuple[int, int]] = set()
        self.coalesced_sink = None

    # --- configuration ---------------------------------------------------------------------
    def supported_cpuid(self) -> list[dict]:
        return [_entry_to_dict(e) for e in self._kvm.get_supported_cpuid()]

    def set_cpuid(self, entries: list[dict]) -> None:
        if len(entries) > KVM_MAX_CPUID_ENTRIES:    # KVM_SET_CPUID2 would fail with E2BIG
            raise TraceError(f"a CPUID table of {len(entries)} entries: KVM takes at most "
                             f"{KVM_MAX_CPUID_ENTRIES}")
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
        regs.rax, regs.rbx = state.rax, state.rbx
        self._vcpu.set_regs(regs)

    def register_coalesced_pio(self, port: int, size: int = 1) -> bool:
        if self.coalesced_sink is None:
            raise ValueError("set coalesced_sink before registering coalesced ports")
        if self._ring is None:
            if (len(self._run_area) < self._ring_base + mmap.PAGESIZE
                    or self._kvm.check_extension(kvm.KVM_CAP_COALESCED_PIO) <= 0):
                return False
            self._ring = memoryview(self._run_area)[self._ring_base:self._ring_base + 8].cast("I")
        self._vm.register_coalesced_pio(port, size)
        self._coalesced_zones.add((port, size))
        return True

    def unregister_coalesced_pio(self, port: int, size: int = 1) -> None:
        if (port, size) in self._coalesced_zones:
            self._vm.unregister_coalesced_pio(port, size)
            self._coalesced_zones.discard((port, size))

    def drain_coalesced(self) -> None:
        ring = self._ring
        if ring is not None and ring[0] != ring[1]:
            sink = self.coalesced_sink
            for port, size, data in coalesced.drain_ring(self._run_area, self._ring_base,
                                                         self._ring_max):
                sink(port, size, data)

    # --- the hot path ------------------------------------------------------------------------
    def run(self):
        try:
            _ioctl(self._vcpu_fd, _KVM_RUN)
        except InterruptedError:
            self._run_area[kvm.RUN_IMMEDIATE_EXIT] = 0
            self.drain_coalesced()
            return INTERRUPTED
        except OSError as e:
            raise kvm.KvmError("KVM_RUN", e.errno) from None
        ring = self._ring
        if ring is not None and ring[0] != ring[1]:
            self.drain_coalesced()         # batched OUTs first: they happened before this exit
        area = self._run_area
        reason, direction, size, port, count, offset = _exit_io(area, _RUN_EXIT_REASON)
        if reason == _KVM_EXIT_IO:
            if direction == _KVM_EXIT_IO_OUT:
                out = self._io_out
                out.port, out.size, out.data = port, size, area[offset:offset + size * count]
                return out
            self._in_offset = offset
            in_ = self._io_in
            in_.port, in_.size, in_.count = port, size, count
            return in_
        if reason == kvm.KVM_EXIT_HLT:
            return HALT
        if reason == kvm.KVM_EXIT_IRQ_WINDOW_OPEN:
            return IRQ_WINDOW
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

    # --- external interrupts: KVM_INTERRUPT into a userspace interrupt controller ------------
    def interrupt_ready(self) -> bool:
        # Set by KVM at every exit: IF=1, no interrupt shadow, no event being injected.
        return bool(self._run_area[kvm.RUN_READY_FOR_INTERRUPT_INJECTION])

    def inject_interrupt(self, vector: int) -> None:
        self._vcpu.interrupt(vector)
        # KVM refreshes the flag at the next exit only: until then an interrupt is being
        # injected, and the guest cannot take another (the interface's contract).
        self._run_area[kvm.RUN_READY_FOR_INTERRUPT_INJECTION] = 0

    def interrupt_pending(self) -> bool:
        # From the vCPU itself: the run area's ready flag is not refreshed by every return
        # (an interrupted KVM_RUN on this host's KVM can leave it at 0 for good).
        return self._vcpu.interrupt_injected()

    def request_interrupt_window(self, on: bool) -> None:
        self._run_area[kvm.RUN_REQUEST_INTERRUPT_WINDOW] = 1 if on else 0

    def kick(self) -> None:
        # Async-signal safe: one byte store. If KVM_RUN is in progress the signal itself
        # interrupts it; if it is about to start, immediate_exit makes it return at once.
        self._run_area[kvm.RUN_IMMEDIATE_EXIT] = 1

    # --- debugging (vmm.gdb): single-stepping, so that every instruction is counted ---------
    def debug_begin(self) -> DebugState:
        """Debug mode: KVM_RUN single-steps (KVM_GUESTDBG_SINGLESTEP) whenever the debugger
        needs every step (a step count to reach, breakpoints, watchpoints), so breakpoints are
        never written into guest memory. `run` becomes `_debug_run` for this backend only: the
        hot path of runs without a debugger is unchanged."""
        if self.debug is None:
            self.debug = DebugState()
            self.debug.memory = self.memory
            self._debug_pending = False     # an I/O exit completed its instruction: check it
            self._debug_stepping = None     # the KVM_SET_GUEST_DEBUG state now in force
            self._debug_rip = None
            self.run = self._debug_run
        return self.debug

    def debug_end(self) -> None:
        if self.debug is None:
            return
        if self._debug_stepping not in (None, ("off",)):
            self._vcpu.set_guest_debug(0)
        self.__dict__.pop("run", None)         # KvmBackend.run again
        self.debug = None
        self._debug_pending = False

    def _debug_run(self):
        debug = self.debug
        if self._debug_pending:
            self._debug_pending = False
            if debug.completed(self._linear_rip()):
                return DEBUG_STOP
        every = debug.needs_every_step
        slots = None
        if every and not debug.count and debug.target is None:
            slots = _hw_slots(debug)        # a live run: breakpoints in the debug registers
        if slots is not None and self._linear_rip() in debug.breakpoints:
            slots = None                    # on a breakpoint: step off it first
        mode = ("off",) if not every else ("step",) if slots is None else ("hw",) + slots
        if mode != self._debug_stepping:
            if mode[0] == "hw":
                dr7 = 0
                for i, (_, rw, length) in enumerate(slots):
                    dr7 |= (1 << (2 * i)) | (rw << (16 + 4 * i)) | (length << (18 + 4 * i))
                self._vcpu.set_guest_debug(kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_USE_HW_BP,
                                           [a for a, _, _ in slots] + [0] * (7 - len(slots))
                                           + [dr7])
            else:
                self._vcpu.set_guest_debug(kvm.KVM_GUESTDBG_ENABLE | kvm.KVM_GUESTDBG_SINGLESTEP
                                           if every else 0)
            self._debug_stepping = mode
        if mode[0] != "step":
            # Not single-stepped: a live run that needs no positions (breakpoints, if any, are
            # in the debug registers, which the guest's memory never sees).
            self._debug_rip = None
            exit_ = KvmBackend.run(self)
            if _u32(self._run_area, _RUN_EXIT_REASON)[0] == kvm.KVM_EXIT_DEBUG \
                    and type(exit_) is UnknownExit:
                if debug.completed(self._debug_exit_pc()):
                    return DEBUG_STOP
                return INTERRUPTED          # a write that changed nothing: go on
            return exit_
        area = self._run_area
        if self._debug_rip is None:
            self._debug_rip = self._linear_rip()
        while True:
            rip_before = self._debug_rip
            exit_ = KvmBackend.run(self)
            if type(exit_) is UnknownExit and \
                    _u32(area, _RUN_EXIT_REASON)[0] == kvm.KVM_EXIT_DEBUG:
                pc = self._debug_rip = self._debug_exit_pc()
                if rip_before is not None and pc == rip_before + 1 and \
                        self._debug_byte(rip_before) == _HLT:
                    # Single-stepped, HLT traps like any instruction (no KVM_EXIT_HLT on some
                    # hypervisors): report it as the HLT exit it is, as without a debugger.
                    return HALT
                if debug.completed(pc):
                    return DEBUG_STOP
                if slots is None and not debug.count and debug.target is None \
                        and _hw_slots(debug) is not None:
                    return INTERRUPTED      # stepped off a breakpoint: on in hardware mode
                continue
            if type(exit_) in (IoOut, IoIn):
                # An I/O exit either completed its instruction already (RIP moved on, as for
                # OUT on some hypervisors) or completes it at the next entry (a debug exit
                # follows). Either way each instruction is counted exactly once.
                rip = self._linear_rip()
                if rip_before is not None and rip != rip_before:
                    self._debug_rip = rip
                    self._debug_pending = True
            return exit_

    def _debug_exit_pc(self) -> int:
        area = self._run_area
        return kvm.kvm_debug_exit_arch.from_buffer_copy(
            area[kvm.RUN_EXIT_INFO:kvm.RUN_EXIT_INFO + ctypes.sizeof(kvm.kvm_debug_exit_arch)]).pc

    def debug_save(self) -> dict:
        """The vCPU between two instructions, for a snapshot (vmm.gdb.snapshot)."""
        return {"vcpu": self._vcpu.get_state(_SNAPSHOT_MSRS), "steps": self.debug.steps}

    def debug_restore(self, saved: dict) -> None:
        """Load what debug_save() returned, before this backend has run."""
        self._vcpu.set_state(saved["vcpu"])
        self.debug.steps = saved["steps"]
        self._debug_rip = None
        self._debug_pending = False

    def resident_pages(self) -> bytes | None:
        return _resident_pages(self._ram)

    def _debug_byte(self, linear: int) -> int | None:
        from ..gdb.paging import Unmapped, translate
        sregs = self._vcpu.get_sregs()
        try:
            physical = translate(self.memory, linear, sregs.cr0, sregs.cr3, sregs.cr4,
                                 sregs.efer)
        except Unmapped:
            return None
        return self.memory[physical] if physical < len(self.memory) else None

    def _linear_rip(self) -> int:
        sregs = self._vcpu.get_sregs()
        return (sregs.cs.base + self._vcpu.get_regs().rip) & 0xFFFFFFFFFFFFFFFF

    def debug_registers(self) -> dict[str, int]:
        regs = self._vcpu.get_regs()
        sregs = self._vcpu.get_sregs()
        out = {name: getattr(regs, name) for name in GPR_NAMES}
        for name in ("cs", "ss", "ds", "es", "fs", "gs"):
            out[name] = getattr(sregs, name).selector
        out["cs_base"] = sregs.cs.base
        out["fs_base"], out["gs_base"] = sregs.fs.base, sregs.gs.base
        out.update(cr0=sregs.cr0, cr2=sregs.cr2, cr3=sregs.cr3, cr4=sregs.cr4, efer=sregs.efer)
        return out

    def set_debug_registers(self, values: dict[str, int]) -> None:
        regs = self._vcpu.get_regs()
        for name in GPR_NAMES:
            if name in values:
                setattr(regs, name, values[name] & 0xFFFFFFFFFFFFFFFF)
        self._vcpu.set_regs(regs)
        if "rip" in values:
            self._debug_rip = None

    # --- inspection --------------------------------------------------------------------------
    def memory_digest(self) -> str:
        from ..trace import memory_digest
        return memory_digest(self.memory, _resident_pages(self._ram))

    def halt_view(self) -> tuple[int, int]:
        if not self._synced:
            return super().halt_view()
        regs, sregs = self._vcpu.synced_state()
        return (sregs.cs.base + regs.rip) & 0xFFFFFFFFFFFFFFFF, regs.rflags

    def cpu_state(self) -> CpuState:
        if self._synced:
            regs, sregs = self._vcpu.synced_state()
        else:
            regs, sregs = self._vcpu.get_regs(), self._vcpu.get_sregs()
        return CpuState(regs={name: getattr(regs, name) for name in GPR_NAMES},
                        cs_base=sregs.cs.base, cs_selector=sregs.cs.selector, cr0=sregs.cr0,
                        cr2=sregs.cr2, cr3=sregs.cr3, cr4=sregs.cr4, efer=sregs.efer,
                        extra={"ss_base": sregs.ss.base})

    def register_digest(self, legacy: bool = False) -> str:
        if not self._synced:
            return super().register_digest(legacy)
        return register_digest(*self._vcpu.synced_digest_values(), legacy)

    def close(self) -> None:
        # Closed explicitly and in order: leaving it to interpreter teardown is slow and bimodal.
        if getattr(self, "memory", None) is not None:
            self.memory.release()
            self.memory = None
        if getattr(self, "_ring", None) is not None:
            self._ring.release()           # before the run area's mmap is closed
            self._ring = None
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


_DR_EXEC = 0b00              # DR7 R/Wn for an instruction breakpoint (Intel SDM 3B 17.2.4)


def _hw_slots(debug: DebugState) -> tuple | None:
    """The breakpoints as debug-register slots (address, R/W, LEN), or None when they do not
    fit the four registers or watchpoints are set (then every instruction is single-stepped
    and watched locations are compared after each). Data breakpoints (R/W = write) are not
    used: on nested hypervisors they may never fire, as on this project's CI host."""
    if debug.watches or len(debug.breakpoints) > 4:
        return None
    return tuple((address, _DR_EXEC, 0) for address in sorted(debug.breakpoints))


def _fill_segment(target: kvm.kvm_segment, seg: Segment) -> None:
    target.selector, target.base, target.limit, target.type = seg.selector, seg.base, seg.limit, seg.type
    target.present, target.dpl, target.db, target.s = seg.present, seg.dpl, seg.db, seg.s
    target.l, target.g, target.avl, target.unusable = seg.l, seg.g, 0, 0


def _entry_to_dict(e: kvm.kvm_cpuid_entry2) -> dict:
    return {"function": e.function, "index": e.index, "flags": e.flags, "eax": e.eax,
            "ebx": e.ebx, "ecx": e.ecx, "edx": e.edx}


__all__ = ["KvmBackend", "open_kvm"]
