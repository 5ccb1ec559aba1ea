"""The emulator CPU backend: the same machine on the Unicorn CPU emulator (QEMU's TCG), for hosts
without a usable /dev/kvm (DESIGN §7). It returns the same typed exits as vmm.cpu.kvm_backend, so
the run loop, the devices, the observation counter and the trace format are shared, and a
trace recorded on either backend replays exactly on the other.

Unicorn emulates the instructions; vmm supplies what Unicorn leaves to its embedder, so that a
guest sees what it would see under KVM (docs/emulator.md):

- Port I/O: IN and OUT hooks. The hook hands the exit to `run()` and waits inside the
  emulation (a greenlet switch) until the run loop has answered, so the instruction completes
  with the device's value and execution simply continues. A string IN is served like KVM's
  instruction emulator does it: one exit per chunk (up to the end of the page, at most 1024
  bytes, at most the REP count), one element per OUTS.
- HLT: Unicorn would just stop. vmm arms the CPU's own SVM intercept for HLT (and nothing
  else), so a HLT arrives as an interrupt hook at the exact instruction, never confused with
  any other stop.
- Exceptions and software interrupts: Unicorn reports them and does nothing else. vmm delivers
  them through the guest's IVT or IDT as the CPU would (real, protected and long mode, with
  error codes, privilege changes through the TSS, #DF and triple fault), so vmm's HLT stubs —
  or the guest's own handlers — run exactly as under KVM.
- SYSCALL and SYSENTER, which Unicorn stubs out, are carried out as the CPU does.
- CPUID is answered from the table given to set_cpuid(), with KVM's lookup rules.
- RDTSC returns a deterministic count of guest events (docs/emulator.md), so guests that read
  the TSC replay exactly on this backend.
- A guest that computes without any exit is stopped every SLICE_S by a helper thread calling
  uc_emu_stop(), so signals (the watchdog, Ctrl-C) are handled and kick() works as under KVM.

The segment registers' hidden parts, the CPU's TB flags and the exception state are not in
Unicorn's register API; vmm reads and writes them in Unicorn's saved CPU context, at offsets it
finds and checks at start-up (`_Layout`), so a Unicorn whose layout differs is refused with a
clear message instead of misbehaving.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
import threading
import time
import weakref
from collections import deque

from greenlet import GreenletExit, getcurrent, greenlet

from .backend import (DEBUG_STOP, HALT, INSTRUCTION_DEADLINE, INSTRUCTION_LIMIT, INTERRUPTED, IRQ_WINDOW, SHUTDOWN, CpuBackend, CpuState,
                      DebugState, EntryState, GPR_NAMES, InternalError, IoIn, IoOut, Mmio, Segment)
from ..errors import BackendUnavailable

SLICE_S = 0.02              # a guest computing without exits is stopped this often, to let
                            # signal handlers run (the stop is invisible to the guest)
SLICE_S_PROMPT = 0.001      # ... and this often while the machine wants prompt kicks
TSC_PER_EVENT = 1000        # RDTSC: this many ticks per guest event (docs/emulator.md)
COALESCE_LIMIT = 4096       # batched output bytes before an OUT exits anyway (as KVM's ring)
UNICORN_VERSIONS = "unicorn>=2.1.3,<2.2"
NO_DEADLINE = 1 << 63       # set_instruction_deadline(None): a count never reached

# x86 TB flags (QEMU target/i386/cpu.h HF_*), in CPUX86State.hflags.
HF_CPL_MASK = 3
HF_INHIBIT_IRQ = 1 << 3     # the STI / MOV SS interrupt shadow
HF_IOBPT = 1 << 24          # I/O breakpoints possible: every IN/OUT is followed by a check of
                            # DR7 (vmm keeps this set: its precise stop after an I/O instruction)
HF_CS32, HF_SS32, HF_ADDSEG, HF_PE = 1 << 4, 1 << 5, 1 << 6, 1 << 7
HF_MP_SHIFT = 9
HF_LMA, HF_CS64 = 1 << 14, 1 << 15
HF_SVME, HF_GUEST, HF_OSFXSR, HF_SMAP = 1 << 20, 1 << 21, 1 << 22, 1 << 23
HF_KEEP = (1 << 19) | (1 << 25) | (1 << 26)     # SMM, MPX: not modelled
# Segment-cache flags: the high dword of a descriptor (QEMU DESC_*).
DESC_TYPE_SHIFT, DESC_S, DESC_DPL_SHIFT, DESC_P = 8, 1 << 12, 13, 1 << 15
DESC_L, DESC_B, DESC_G = 1 << 21, 1 << 22, 1 << 23
DESC_CS, DESC_C = 1 << 11, 1 << 10
# SVM: the HLT intercept, and how an intercepted HLT reaches the interrupt hook.
SVM_EXIT_INTR, SVM_EXIT_HLT, EXCP_VMEXIT = 0x060, 0x078, 0x100
HLT_INTERCEPT = EXCP_VMEXIT + SVM_EXIT_HLT

CR0_PE, CR0_WP, CR0_PG = 1 << 0, 1 << 16, 1 << 31
CR4_PSE, CR4_PAE, CR4_OSFXSR, CR4_OSXSAVE, CR4_SMAP, CR4_PKE = (
    1 << 4, 1 << 5, 1 << 9, 1 << 18, 1 << 21, 1 << 22)
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE, EFER_SVME = 1, 1 << 8, 1 << 10, 1 << 11, 1 << 12
RFLAGS_TF, RFLAGS_IF, RFLAGS_DF = 1 << 8, 1 << 9, 1 << 10
RFLAGS_NT, RFLAGS_RF, RFLAGS_VM, RFLAGS_AC = 1 << 14, 1 << 16, 1 << 17, 1 << 18

MSR_EFER, MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_FMASK, MSR_TSC_AUX = (
    0xC0000080, 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084, 0xC0000103)
MSR_SYSENTER_CS, MSR_SYSENTER_ESP, MSR_SYSENTER_EIP = 0x174, 0x175, 0x176

# The precise stop after an I/O instruction (inject_interrupt, the interrupt window): an I/O
# breakpoint (DR7 R/W0 = 10b, L0, length 1) on the port just used, reported as #DB by the check
# QEMU runs right after the instruction.
DR7_IO_STOP = 0x400 | 1 | (2 << 16)
DB = 1

ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})
CONTRIBUTORY = frozenset({0, 10, 11, 12, 13})
UD, NP, SS_FAULT, GP, PF, DF, TS = 6, 11, 12, 13, 14, 8, 10
PAGE = 4096
MASK64 = (1 << 64) - 1
KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1

_SEG = struct.Struct("<I4xQII")          # QEMU SegmentCache: selector, base, limit, flags
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_IVT = struct.Struct("<HH")               # a real-mode IVT entry: offset, segment
_IVT_FRAME = struct.Struct("<HHH")        # what a real-mode interrupt pushes: IP, CS, FLAGS
ES, CS, SS, DS, FS, GS = range(6)


class EmulatorError(InternalError):
    """An exit the emulator cannot go on from (reported like KVM's internal errors, exit status
    32), with a sentence saying what happened."""
    __slots__ = ("message",)

    def __init__(self, suberror: int, data: tuple[int, ...], message: str):
        super().__init__(suberror, data)
        self.message = message


class _Fault(Exception):
    """A CPU exception raised while vmm carries out an event for the guest (delivery, SYSCALL)."""

    def __init__(self, vector: int, error_code: int = 0):
        super().__init__(vector, error_code)
        self.vector, self.error_code = vector, error_code


class _OutsideRam(Exception):
    """vmm's own access for the guest (a descriptor table, a stack push) left RAM."""

    def __init__(self, address: int, is_write: bool, length: int):
        super().__init__(address)
        self.address, self.is_write, self.length = address, is_write, length


def _import_unicorn():
    try:
        import unicorn
        from unicorn import x86_const
        from unicorn.unicorn_py3.unicorn import uclib
    except ImportError as e:
        raise BackendUnavailable(f"the emulator backend needs the unicorn package "
                                 f"({UNICORN_VERSIONS}): {e}") from None
    return unicorn, x86_const, uclib


class _Layout:
    """Where Unicorn keeps what its API does not expose, inside a saved context: found by
    writing known values through the API and looking for them, then checked."""

    def __init__(self, uc, x86):
        saved = uc.context_save()
        try:
            uc.reg_write(x86.UC_X86_REG_RAX, 0x1122334455667788)
            uc.reg_write(x86.UC_X86_REG_TR, (0x28, 0xAABBCC00, 0x67, 0x8B00))
            uc.reg_write(x86.UC_X86_REG_GDTR, (0, 0x5566000, 0x1FF, 0))
            for i in (0, 1, 2, 3):
                uc.reg_write(x86.UC_X86_REG_DR0 + i, 0xD0D0D0D0D0D00000 + i)
            uc.reg_write(x86.UC_X86_REG_DR7, 0x455)
            blob = bytes(uc.context_save())
            self.env = blob.find(_U64.pack(0x1122334455667788))
            self.dr = blob.find(_U64.pack(0xD0D0D0D0D0D00000))
            env, dr = self.env, self.dr
            self.hflags = env + 176
            self.segs = env + 184
            self.ldt, self.tr, self.gdt, self.idt = env + 328, env + 352, env + 376, env + 400
            self.cr = env + 424
            self.efer = env + 592
            self.error_code, self.is_int, self.next_eip = dr - 16, dr - 12, dr - 8
            self.old_exception, self.intercept = dr + 96, dr + 120
            self.size = len(blob)
            ok = (env >= 0 and dr > env
                  and _SEG.unpack_from(blob, self.tr) == (0x28, 0xAABBCC00, 0x67, 0x8B00)
                  and _SEG.unpack_from(blob, self.gdt)[1:3] == (0x5566000, 0x1FF)
                  and _U64.unpack_from(blob, dr + 24)[0] == 0xD0D0D0D0D0D00003
                  and _U64.unpack_from(blob, dr + 56)[0] == 0x455
                  and _U64.unpack_from(blob, self.cr)[0] == uc.reg_read(x86.UC_X86_REG_CR0)
                  and _U64.unpack_from(blob, self.efer)[0]
                  == uc.reg_read(x86.UC_X86_REG_MSR, MSR_EFER)
                  and _I32.unpack_from(blob, self.old_exception)[0] == -1
                  and _U64.unpack_from(blob, self.intercept)[0] == 0
                  and _U32.unpack_from(blob, self.hflags)[0] & (HF_LMA | HF_CS64 | HF_PE)
                  == HF_LMA | HF_CS64 | HF_PE)
        finally:
            uc.context_restore(saved)
        if not ok:
            import unicorn
            raise BackendUnavailable(
                f"the emulator backend does not know this unicorn's CPU state layout (unicorn "
                f"{unicorn.__version__}; vmm needs {UNICORN_VERSIONS})")


_LAYOUT: _Layout | None = None


def _flags_of(seg: Segment) -> int:
    return ((seg.type << DESC_TYPE_SHIFT) | (seg.s << 12) | (seg.dpl << DESC_DPL_SHIFT)
            | (seg.present << 15) | (seg.l << 21) | (seg.db << 22) | (seg.g << 23))


def _descriptor_parts(low: int, high: int) -> tuple[int, int, int]:
    """(base, limit in bytes, cache flags) of an 8-byte segment descriptor."""
    base = ((low >> 16) & 0xFFFF) | ((high & 0xFF) << 16) | (high & 0xFF000000)
    limit = (low & 0xFFFF) | (high & 0xF0000)
    if high & DESC_G:
        limit = (limit << 12) | 0xFFF
    return base, limit, high & 0x00F0FF00


class EmuBackend(CpuBackend):
    name = "emu"

    def __init__(self, mem_size: int, kvm_path: str | None = None):
        unicorn, x86, uclib = _import_unicorn()
        self._x86, self._lib = x86, uclib
        self._kvm_path = kvm_path
        self._closed = self._dying = False
        self._uc_lock = threading.Lock()
        self._g = None
        self._uc = None
        self._ram = self._anchor = None
        self.memory = None
        try:
            self._uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
            self._uch = self._uc._uch
            # The hot calls go through a handle without argtypes: two to four times cheaper
            # than the binding's checked ones (arguments are passed as exact ctypes types).
            self._raw = ctypes.CDLL(uclib._name)
            for fn in ("uc_reg_read", "uc_reg_write", "uc_reg_read_batch", "uc_reg_write_batch",
                       "uc_context_save", "uc_context_restore", "uc_emu_start", "uc_emu_stop",
                       "uc_mem_write"):
                getattr(self._raw, fn).restype = ctypes.c_int
            self._uch_p = ctypes.c_void_p(self._uch.value)
            self._uc.ctl_exits_enabled(True)     # no `until` address: run until stopped
            self._ram = mmap.mmap(-1, mem_size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            self._anchor = ctypes.c_char.from_buffer(self._ram)
            self._uc.mem_map_ptr(0, mem_size, unicorn.UC_PROT_ALL, ctypes.addressof(self._anchor))
            global _LAYOUT
            if _LAYOUT is None:                  # the same for every instance: probe once
                _LAYOUT = _Layout(self._uc, x86)
            self._layout = _LAYOUT
        except BackendUnavailable:
            self.close()
            raise
        except Exception as e:
            self.close()
            raise BackendUnavailable(f"cannot start the emulator backend: {e}") from None
        self.mem_size = mem_size
        self.memory = memoryview(self._ram)
        self._ctx = self._uc.context_save()          # one context buffer, reused
        self._ctx_ptr = ctypes.cast(self._ctx.context, ctypes.c_void_p).value
        self._ctx_buf = (ctypes.c_char * self._ctx.size).from_address(self._ctx_ptr)
        self._reg = ctypes.c_uint64()
        self._reg_ref = ctypes.byref(self._reg)
        self._msr = (ctypes.c_uint32 * 4)()           # uc_x86_msr: rid (u32, padded), value (u64)
        names = GPR_NAMES + ("cr0", "cr2", "cr3", "cr4", "cs")
        ids = [getattr(x86, f"UC_X86_REG_{n.upper()}") for n in names]
        self._state_names = names
        self._state_ids = (ctypes.c_int * len(ids))(*ids)
        self._state_vals = (ctypes.c_uint64 * len(ids))()
        self._state_ptrs = (ctypes.c_void_p * len(ids))(
            *[ctypes.addressof(self._state_vals) + 8 * i for i in range(len(ids))])
        self._io_ids = (ctypes.c_int * 4)(x86.UC_X86_REG_RIP, x86.UC_X86_REG_CS,
                                          x86.UC_X86_REG_CR0, x86.UC_X86_REG_CR3)
        self._io_vals = (ctypes.c_uint64 * 4)()
        self._cs_id = x86.UC_X86_REG_CS
        self._ins_ids = (ctypes.c_int * 3)(x86.UC_X86_REG_RDI, x86.UC_X86_REG_RFLAGS,
                                           x86.UC_X86_REG_ES)
        self._ins_vals = (ctypes.c_uint64 * 3)()
        self._ins_ptrs = (ctypes.c_void_p * 3)(
            *[ctypes.addressof(self._ins_vals) + 8 * i for i in range(3)])
        # RIP, RSP, RFLAGS: what an interrupt frame takes and its delivery sets, in one call
        self._frame_ids = (ctypes.c_int * 3)(x86.UC_X86_REG_RIP, x86.UC_X86_REG_RSP,
                                             x86.UC_X86_REG_RFLAGS)
        self._frame_vals = (ctypes.c_uint64 * 3)()
        self._frame_ptrs = (ctypes.c_void_p * 3)(
            *[ctypes.addressof(self._frame_vals) + 8 * i for i in range(3)])
        self._es_cache: dict[tuple[int, int], tuple[int, int, int]] = {}
        self._io_ptrs = (ctypes.c_void_p * 4)(
            *[ctypes.addressof(self._io_vals) + 8 * i for i in range(4)])
        self._cpuid: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        self._cpuid_any: dict[int, tuple[int, int, int, int]] = {}
        self._cpuid_vendor_amd = False
        self._max_basic = 0
        # run state
        self._caller = None          # the greenlet that called run()
        self._g = None               # the greenlet the emulation runs in
        self._stop = None            # why emulation stopped, as recorded by a hook
        self._hook_error = None
        self._resume = None          # what the suspended hook gets when run() resumes it
        self._kicked = False
        self._emulating = False      # inside uc_emu_start and not suspended at an exit
        self._activity = 0           # bumped by every hook: the slicer leaves busy guests alone
        self._events = 0             # guest events, for RDTSC
        self._in_rest: deque[int] = deque()    # the rest of a string IN's chunk
        self._in_stop_after = None   # (port, info): arm the stop after the chunk's last element
        self._io_in = IoIn(0, 1, 1)  # the IN exit, reused (CpuBackend.run allows it)
        self._exit_info = None       # decoded I/O instruction of the exit being handled
        self._ins_continues = None   # linear RIP of a REP INS that has more chunks to come
        self._rf_set = False         # vmm has pushed RF in a fault frame (see _clear_rf)
        self._decoded: dict = {}     # (cs selector, pe, cr3, rip) -> decoded I/O instruction
        self._cs_base_cache: dict[tuple[int, int], int] = {}
        self._cs_seen = -1           # the CS selector last given its accessed bit
        self._batch: list[list] = []  # coalesced OUTs: [port, size, bytearray]
        self._batch_bytes = 0
        self._coalesced: set[int] = set()
        self.coalesced_sink = None
        self._slicer = None
        self._slice_s = SLICE_S
        # external interrupts (inject_interrupt, request_interrupt_window)
        self._irq_work = False       # anything below is set: run() takes its slow path
        self._pending = None         # the vector inject_interrupt() asked for, not yet taken
        self._window = False         # request_interrupt_window(True) in force
        self._block_hook = None      # the window's block hook (handle), while installed
        self._io_stop = None         # the armed stop after an I/O instruction (saved DRs...)
        self._push_rf = False        # the interrupt comes between REP string iterations
        self._at = None              # where the exit just returned leaves the CPU: "in" or
                                     # "out" (inside that instruction), "halt", "window", None
        self._block_hook_fn = None
        # the instruction budget (set_instruction_limit)
        self.instructions = 0        # counted a translated block at a time
        self._insn_limit = None
        self._deadline = NO_DEADLINE  # icount mode: stop at the block where the count is this
        self._watch_window = False   # icount mode: stop at the block where IF lets one in
        self._bound = -1             # the counting hook's fast path: a block that brings the
                                     # count to at most this needs no other look (_rebound)
        self._insn_hook = None       # (handle, callback) of the counting block hook
        self._block_insns: dict[tuple[int, int], int] = {}   # (linear pc, bytes) -> instructions
        self._decoders: dict = {}    # capstone mode -> decoder
        self._install_hooks()

    # --- raw register access (the hot paths avoid the binding's per-call overhead) ---------------
    def _rd(self, reg: int) -> int:
        self._raw.uc_reg_read(self._uch_p, reg, self._reg_ref)
        return self._reg.value

    def _wr(self, reg: int, value: int) -> None:
        self._reg.value = value & MASK64
        self._raw.uc_reg_write(self._uch_p, reg, self._reg_ref)

    def _rdmsr(self, msr: int) -> int:
        self._msr[0] = msr
        self._raw.uc_reg_read(self._uch_p, self._x86.UC_X86_REG_MSR, self._msr)
        return self._msr[2] | (self._msr[3] << 32)

    def _save(self):
        """Unicorn's CPU context, saved into the reusable buffer: returns it for unpack_from."""
        self._raw.uc_context_save(self._uch_p, self._ctx.context)
        return self._ctx_buf

    def _restore(self) -> None:
        self._raw.uc_context_restore(self._uch_p, self._ctx.context)

    def _emu_stop(self) -> None:
        self._bound = -1                     # the counting hook looks at why, from now on
        self._raw.uc_emu_stop(self._uch_p)

    def _rebound(self) -> None:
        """The counting hook's fast path bound: the budget or the deadline, whichever comes
        first; -1 (every block takes the slow path) while a stop, a kick or the window is in
        the air."""
        if self._kicked or self._stop is not None or self._watch_window \
                or self._insn_limit is None:
            self._bound = -1
        else:
            self._bound = min(self._insn_limit, self._deadline)
            if self._kicked:                 # a kick (a signal handler) came in between
                self._bound = -1

    # --- hooks -----------------------------------------------------------------------------------
    def _install_hooks(self) -> None:
        import unicorn
        x86 = self._x86
        c = ctypes
        eng = c.c_void_p
        intr_t = c.CFUNCTYPE(None, eng, c.c_uint32, c.c_void_p)
        in_t = c.CFUNCTYPE(c.c_uint32, eng, c.c_uint32, c.c_int, c.c_void_p)
        out_t = c.CFUNCTYPE(None, eng, c.c_uint32, c.c_int, c.c_uint32, c.c_void_p)
        int_t = c.CFUNCTYPE(c.c_int, eng, c.c_void_p)
        void_t = c.CFUNCTYPE(None, eng, c.c_void_p)
        mem_t = c.CFUNCTYPE(c.c_bool, eng, c.c_int, c.c_uint64, c.c_int, c.c_int64, c.c_void_p)
        bool_t = c.CFUNCTYPE(c.c_bool, eng, c.c_void_p)
        # Hooks hold only a weak reference, so that a forgotten backend can be collected.
        ref = weakref.ref(self)

        def guarded(method, default):
            def call(*args):
                me = ref()
                if me is None:
                    return default
                try:
                    return method(me, *args)
                except BaseException as e:       # never unwind through Unicorn's C frames
                    if me._hook_error is None:
                        me._hook_error = e
                    me._emu_stop()
                    return default
            return call

        self._hooks = []

        def add(htype, ftype, method, default, *extra):
            fptr = ftype(guarded(method, default))
            handle = ctypes.c_size_t()
            err = self._lib.uc_hook_add(self._uch, ctypes.byref(handle), htype,
                                        ctypes.cast(fptr, ctypes.c_void_p), None,
                                        ctypes.c_uint64(1), ctypes.c_uint64(0), *extra)
            if err:
                raise BackendUnavailable(f"cannot install the emulator's hooks (unicorn error "
                                         f"{err})")
            self._hooks.append(fptr)

        insn = lambda code: ctypes.c_int(code)          # noqa: E731
        add(unicorn.UC_HOOK_INSN, in_t, EmuBackend._on_in, 0xFFFFFFFF, insn(x86.UC_X86_INS_IN))
        add(unicorn.UC_HOOK_INSN, out_t, EmuBackend._on_out, None, insn(x86.UC_X86_INS_OUT))
        add(unicorn.UC_HOOK_INSN, int_t, EmuBackend._on_cpuid, 1, insn(x86.UC_X86_INS_CPUID))
        add(unicorn.UC_HOOK_INSN, int_t, EmuBackend._on_rdtsc, 1, insn(x86.UC_X86_INS_RDTSC))
        add(unicorn.UC_HOOK_INSN, int_t, EmuBackend._on_rdtscp, 1, insn(x86.UC_X86_INS_RDTSCP))
        add(unicorn.UC_HOOK_INSN, void_t, EmuBackend._on_syscall, None,
            insn(x86.UC_X86_INS_SYSCALL))
        add(unicorn.UC_HOOK_INSN, void_t, EmuBackend._on_sysenter, None,
            insn(x86.UC_X86_INS_SYSENTER))
        add(unicorn.UC_HOOK_INTR, intr_t, EmuBackend._on_intr, None)
        add(unicorn.UC_HOOK_INSN_INVALID, bool_t, EmuBackend._on_invalid, True)
        add(unicorn.UC_HOOK_MEM_UNMAPPED, mem_t, EmuBackend._on_unmapped, False)

    def _on_in(self, uch, port, size, ud):
        self._activity += 1
        if self._stop is not None:
            return 0xFFFFFFFF
        self._events += 1
        if self._in_rest:                      # the rest of a string IN's chunk
            value = self._in_rest.popleft()
            if not self._in_rest and self._in_stop_after is not None:
                after, self._in_stop_after = self._in_stop_after, None
                self._after_io(*after)
            return value
        info = self._decode_io()                  # reads RIP, CS, CR0, CR3 into _io_vals
        sel = self._io_vals[1]
        if sel != self._cs_seen:
            self._note_cs(sel)
        rep_ins = info is not None and info["rep_ins"]
        count = self._string_in_count(info, size) if rep_ins else 1
        fault = places = None
        if info is not None and info["string"] and info["in"]:
            fault, places = self._ins_check(info, size, count)
        if places is not None:
            context = bytes(self._save())        # the INS, before this chunk
        self._exit_info = info
        exit_ = self._io_in
        exit_.port, exit_.size, exit_.count = port, size, count
        self._at = "in"
        data = self._suspend(exit_)
        self._at = None
        self._exit_info = None
        if places is not None:
            # The chunk's destination leaves RAM: as KVM does, store what lands in RAM and
            # report the first write outside it (after the one element Unicorn stores now).
            self._stop = ("ins-mmio", context, info, size, places,
                          (bytes(data or b"") + b"\xff" * (size * count))[:size * count])
            self._emu_stop()
            self._in_rest.clear()
            self._ins_continues = None
            return 0
        if fault is not None:
            # KVM reads the chunk from the port (the exit above), then finds its destination
            # beyond ES's limit: #GP, with no element stored and the registers as they were.
            self._stop = ("ins-fault",) + fault
            self._emu_stop()
            self._in_rest.clear()
            self._ins_continues = None
            return 0
        if rep_ins:
            rcx = self._rd(self._x86.UC_X86_REG_RCX) & info["amask"]
            self._ins_continues = info["linear"] if rcx > count else None
        else:
            self._ins_continues = None
        if data is None or len(data) < size * count:
            data = (bytes(data or b"") + b"\xff" * (size * count))[:size * count]
        if count == 1:
            if self._irq_work:
                self._after_io(port, info)
            return data[0] if size == 1 else int.from_bytes(data[:size], "little")
        values = [int.from_bytes(data[i:i + size], "little") for i in range(0, size * count, size)]
        self._in_rest.extend(values[1:])
        if self._irq_work:              # stop after the chunk's last element
            self._in_stop_after = (port, info)
        return values[0]

    def _on_out(self, uch, port, size, value, ud):
        self._activity += 1
        if self._stop is not None:
            return
        self._events += 1
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        if port in self._coalesced and self._batch_bytes < COALESCE_LIMIT:
            batch = self._batch
            if batch and batch[-1][0] == port and batch[-1][1] == size:
                batch[-1][2] += data
            else:
                batch.append([port, size, bytearray(data)])
            self._batch_bytes += size
            return
        self._exit_info = ("out", size)       # decoded lazily, if a report needs registers
        self._ins_continues = None
        self._raw.uc_reg_read(self._uch_p, self._cs_id, self._reg_ref)   # _note_cs, inlined
        if self._reg.value != self._cs_seen:
            self._note_cs(self._reg.value)
        self._at = "out"
        self._suspend(IoOut(port, size, data))
        self._at = None
        self._exit_info = None
        if self._irq_work:
            self._after_io(port, None)

    def _on_cpuid(self, uch, ud):
        self._activity += 1
        if self._stop is not None:
            return 1
        self._events += 1
        x86 = self._x86
        eax, ebx, ecx, edx = self._cpuid_answer(self._rd(x86.UC_X86_REG_RAX) & 0xFFFFFFFF,
                                                self._rd(x86.UC_X86_REG_RCX) & 0xFFFFFFFF)
        self._wr(x86.UC_X86_REG_RAX, eax)
        self._wr(x86.UC_X86_REG_RBX, ebx)
        self._wr(x86.UC_X86_REG_RCX, ecx)
        self._wr(x86.UC_X86_REG_RDX, edx)
        return 1

    def _tsc(self) -> int:
        self._events += 1
        return (self._events * TSC_PER_EVENT) & MASK64

    def _on_rdtsc(self, uch, ud):
        self._activity += 1
        if self._stop is not None:
            return 1
        tsc = self._tsc()
        self._wr(self._x86.UC_X86_REG_RAX, tsc & 0xFFFFFFFF)
        self._wr(self._x86.UC_X86_REG_RDX, tsc >> 32)
        return 1

    def _on_rdtscp(self, uch, ud):
        self._on_rdtsc(uch, ud)
        self._wr(self._x86.UC_X86_REG_RCX, self._rdmsr(MSR_TSC_AUX) & 0xFFFFFFFF)
        return 1

    def _on_syscall(self, uch, ud):
        self._activity += 1
        if self._stop is None:
            self._stop = ("syscall", self._rd(self._x86.UC_X86_REG_RIP))
            self._emu_stop()

    def _on_sysenter(self, uch, ud):
        self._activity += 1
        if self._stop is None:
            self._stop = ("sysenter", self._rd(self._x86.UC_X86_REG_RIP))
            self._emu_stop()

    def _on_intr(self, uch, intno, ud):
        self._activity += 1
        if self._stop is not None:
            return
        if intno == HLT_INTERCEPT:
            self._stop = ("hlt",)
        elif intno == DB and self._io_stop is not None:
            self._stop = ("after-io",)          # vmm's own stop after an I/O instruction
        elif intno < 256:
            buf = self._save()
            lay = self._layout
            error_code = _U32.unpack_from(buf, lay.error_code)[0]
            software = _I32.unpack_from(buf, lay.is_int)[0] != 0
            self._stop = ("exception", intno, error_code, software)
        else:
            self._stop = ("internal", intno)
        self._emu_stop()

    def _on_invalid(self, uch, ud):
        self._activity += 1
        if self._stop is None:
            self._stop = ("exception", UD, 0, False)
        self._emu_stop()
        return True

    def _on_unmapped(self, uch, access, address, size, value, ud):
        self._activity += 1
        if self._stop is None:
            import unicorn
            if access == unicorn.UC_MEM_FETCH_UNMAPPED:
                self._stop = ("fetch", address)
            else:
                is_write = access == unicorn.UC_MEM_WRITE_UNMAPPED
                # A write lets the rest of its translation block run before the stop takes
                # effect: keep the registers as they are at the faulting instruction.
                snapshot = bytes(self._save()) if is_write else None
                data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little") if is_write \
                    else b""
                self._stop = ("mmio", address, is_write, size, data, snapshot)
        self._emu_stop()
        return False

    # --- suspending the emulation at an exit -----------------------------------------------------
    def _suspend(self, exit_):
        """Hand an exit to the caller of run() and wait, inside the emulation, until run() is
        called again; returns what complete_in() provided (None for other exits)."""
        if self._dying:
            raise GreenletExit
        if self._rf_set:
            self._clear_rf()
        if exit_.__class__ is not IoIn and exit_.__class__ is not IoOut:
            self._note_cs()                      # (the I/O hooks note it themselves, cheaper)
        self._emulating = False
        value = self._caller.switch(exit_)
        self._emulating = True
        self._activity += 1
        return value

    def _note_cs(self, sel: int | None = None) -> None:
        """At an exit: a CS selector not seen at the previous one gets its descriptor's
        accessed bit (one register read; a real-mode CS that enters protected mode with the
        same selector value is not seen: real-mode code at CS 0x08 is rare)."""
        if sel is None:
            sel = self._rd(self._x86.UC_X86_REG_CS)
        if sel != self._cs_seen:
            self._cs_seen = sel
            self._set_accessed(CS)

    def _clear_rf(self) -> None:
        """RF, which a fault's frame carries and IRET restores, is cleared by the CPU once the
        next instruction completes; QEMU clears it only at the end of a translation block. By
        the next exit the guest has moved on, so clear it here (from the first fault frame
        on: an IRET can bring RF back any time after)."""
        reg = self._x86.UC_X86_REG_RFLAGS
        rflags = self._rd(reg)
        if rflags & RFLAGS_RF:
            self._wr(reg, rflags & ~RFLAGS_RF)

    # --- the run loop ----------------------------------------------------------------------------
    def run(self):
        if self._kicked:
            self._kicked = False
            return self._drain(INTERRUPTED)
        if self._irq_work and self._window_now():
            return IRQ_WINDOW
        if self._slicer is None:
            self._start_slicer()
        self._caller = caller = getcurrent()
        g = self._g
        if g is None or g.dead:
            g = self._g = greenlet(self._emulate)
        g.parent = caller
        resume, self._resume = self._resume, None
        exit_ = g.switch(resume)
        return self._drain(exit_)

    def _drain(self, exit_):
        if self._batch:
            self.drain_coalesced()
        return exit_

    def complete_in(self, data: bytes) -> None:
        self._resume = bytes(data)

    def prompt_kicks(self, on: bool) -> None:
        self._slice_s = SLICE_S_PROMPT if on else SLICE_S

    def kick(self) -> None:
        if self.debug is not None:
            # Under a debugger the code hook sees the kick between two instructions: stopping
            # Unicorn mid-block would make it re-run a hook and count an instruction twice.
            self._kicked = True
            return
        # Called from signal handlers. Python runs them in the main thread between bytecodes:
        # while the emulation runs, that is inside one of our hooks, where stopping is allowed;
        # a guest that never calls a hook is stopped by the slicer thread within SLICE_S, and
        # the handler runs then.
        self._kicked = True
        self._bound = -1
        if self._emulating and self._insn_limit is None:
            # (While counting instructions, the counting hook stops at the next block's start
            # instead: a stop from inside another hook would leave a counted block half run.)
            self._emu_stop()

    def _emulate(self, _resume=None):
        x86 = self._x86
        rip_reg = x86.UC_X86_REG_RIP
        start, u64, uch = self._raw.uc_emu_start, ctypes.c_uint64, self._uch_p
        zero, no_count = ctypes.c_uint64(0), ctypes.c_size_t(0)
        while True:
            if self._irq_work:
                self._between_runs()
            self._stop = None
            self._hook_error = None
            if self._insn_hook is not None:
                self._rebound()
            self._emulating = True
            self._activity += 1
            try:
                status = start(uch, u64(self._rd(rip_reg)), zero, zero, no_count)
            finally:
                self._emulating = False
            if self._hook_error is not None:
                error, self._hook_error = self._hook_error, None
                raise error
            cause = self._stop
            if cause is None:
                if status:
                    rip = self._rd(rip_reg)
                    self._suspend(EmulatorError(2, (status,), f"emulator error: unicorn stopped "
                                                f"with error {status} at rip={rip:#x}"))
                elif self._kicked:
                    self._kicked = False
                    self._suspend(INTERRUPTED)
                continue            # a slice ended, or a stale kick: go on
            kind = cause[0]
            if kind == "insn-limit":
                while True:
                    self._suspend(INSTRUCTION_LIMIT)    # the budget is spent: for good
            if kind == "deadline":
                self._suspend(INSTRUCTION_DEADLINE)     # then on at the block not yet run
                continue
            if kind == "hlt" and self._pending is not None:
                continue        # a late stop after an I/O instruction: the interrupt first
            if kind == "hlt":
                self._wr(rip_reg, self._hlt_end())
                self._end_shadow()              # the HLT completed: its shadow, if any, is over
                self._at = "halt"
                self._suspend(HALT)
                self._at = None
            elif kind == "after-io":
                self._end_io_stop()
                if self._pending is None and self._window and self.interrupt_ready():
                    self._at = "window"
                    self._suspend(IRQ_WINDOW)
                    self._at = None
            elif kind == "inject":
                pass                            # taken at the top of the loop
            elif kind == "exception":
                end = self._exception(cause[1], cause[2], cause[3])
                if end is not None:
                    while True:
                        self._suspend(end)          # a triple fault, or RAM left: for good
            elif kind in ("syscall", "sysenter"):
                try:
                    self._syscall(kind)
                except _Fault as f:
                    self._wr(rip_reg, cause[1])     # fault at the instruction itself
                    end = self._exception(f.vector, f.error_code, False)
                    if end is not None:
                        while True:
                            self._suspend(end)
            elif kind == "ins-fault":
                _, context, linear, stored = cause
                self._ctx_buf[:] = context           # back to the INS, as it was
                self._restore()
                if stored:
                    try:
                        self._write_linear(linear, stored)   # undo the one element stored
                    except (_Fault, _OutsideRam):
                        pass
                end = self._exception(GP, 0, False)
                if end is not None:
                    while True:
                        self._suspend(end)
            elif kind == "ins-mmio":
                _, context, info, size, places, data = cause
                self._ctx_buf[:] = context
                self._restore()
                self._suspend(self._ins_to_mmio(info, size, places, data))
            elif kind == "mmio":
                _, address, is_write, size, data, snapshot = cause
                if snapshot is not None:
                    self._ctx_buf[:] = snapshot
                    self._restore()
                    info = self._decode_io()
                    if info is not None and info["string"] and info["in"]:
                        # Unicorn's INS probes its destination before the IN; KVM reads the
                        # chunk from the port first (an exit), then writes outside RAM.
                        self._suspend(self._ins_exit_then_mmio(info))
                        continue
                    self._step_over_write()
                self._suspend(Mmio(address, is_write, size, data))
            elif kind == "fetch":
                self._suspend(EmulatorError(1, (cause[1],), f"guest executed code at physical "
                                            f"address {cause[1]:#x}, outside its RAM (KVM: an "
                                            "internal error, emulation failure)"))
            else:
                self._suspend(EmulatorError(3, (cause[1],), f"emulator error: unexpected CPU "
                                            f"event {cause[1]:#x}"))

    def _ins_exit_then_mmio(self, info: dict) -> Mmio:
        """An INS whose first element lies outside RAM: the chunk's IN exit, then the write."""
        size = info["width"]
        count = self._string_in_count(info, size) if info["rep_ins"] else 1
        places = self._ins_check(info, size, count)[1]
        port = self._rd(self._x86.UC_X86_REG_RDX) & 0xFFFF
        self._exit_info = info
        data = self._suspend(IoIn(port, size, count))
        self._exit_info = None
        data = (bytes(data or b"") + b"\xff" * (size * count))[:size * count]
        if places is None:                       # (cannot be: its first element is outside)
            return Mmio(len(self._ram), True, min(8, size * count), data[:8])
        return self._ins_to_mmio(info, size, places, data)

    def _step_over_write(self) -> None:
        """KVM reports a write outside RAM with RIP past the writing instruction: move RIP on
        by that instruction's length, which a code hook on just that address reports."""
        import unicorn
        rip_reg = self._x86.UC_X86_REG_RIP
        rip = self._rd(rip_reg)
        sizes = []

        def on_code(uch, address, size, ud):
            sizes.append(size)
            self._emu_stop()

        fptr = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32,
                                ctypes.c_void_p)(on_code)
        handle = ctypes.c_size_t()
        cs_base = self._cs()[0]
        linear = (cs_base + rip) & MASK64
        self._stop = ("mmio-step",)
        self._bound = -1                     # (the counting hook stops, as for any _stop)
        try:
            if self._lib.uc_hook_add(self._uch, ctypes.byref(handle), unicorn.UC_HOOK_CODE,
                                     ctypes.cast(fptr, ctypes.c_void_p), None,
                                     ctypes.c_uint64(linear), ctypes.c_uint64(linear)) == 0:
                try:
                    self._uc.ctl_remove_cache(linear, linear + 1)  # retranslate, with the hook
                    self._raw.uc_emu_start(self._uch_p, ctypes.c_uint64(rip), ctypes.c_uint64(0),
                                           ctypes.c_uint64(0), ctypes.c_size_t(0))
                finally:
                    self._lib.uc_hook_del(self._uch, handle)
        finally:
            self._stop = None
            self._hook_error = None
        self._wr(rip_reg, rip + (sizes[0] if sizes else 0))

    # --- external interrupts (DESIGN §10) ---------------------------------------------------------
    # An interrupt is taken at an instruction boundary, as the CPU takes one:
    # - at an IN or OUT exit, right after that instruction (the emulation waits inside the I/O
    #   hook, mid translation block): an I/O breakpoint on the port just used, armed in DR7 for
    #   this one instruction, makes QEMU's own check after the instruction raise #DB, which ends
    #   the block there; vmm then puts the guest's debug registers back;
    # - at any other exit (HLT, the window, a debugger stop) before the next instruction;
    # - the window: a block hook, installed only while the window is requested, checks IF and
    #   the interrupt shadow at the start of each block (IF can only be set by an instruction
    #   that ends its block: STI, POPF, IRET, SYSRET; the instruction in an STI / MOV SS shadow
    #   is a block of its own).
    def interrupt_ready(self) -> bool:
        if self._pending is not None:
            return False
        if not self._rd(self._x86.UC_X86_REG_RFLAGS) & RFLAGS_IF:
            return False
        if self._at in ("out", "halt", "window"):
            return True             # the instruction completed: a shadow it was in is over
        return not _U32.unpack_from(self._save(), self._layout.hflags)[0] & HF_INHIBIT_IRQ

    def inject_interrupt(self, vector: int) -> None:
        if not 0 <= vector <= 255:
            raise ValueError(f"interrupt vector {vector} is not 0-255")
        if self._pending is not None:
            raise RuntimeError(f"interrupt {self._pending:#x} is still being injected")
        self._pending = vector
        self._irq_work = True

    def interrupt_pending(self) -> bool:
        return self._pending is not None

    def request_interrupt_window(self, on: bool) -> None:
        self._window = bool(on)
        if not on:
            self._irq_work = self._pending is not None
            self._remove_block_hook()
            return
        self._irq_work = True
        # At an I/O exit the stop after the instruction is armed when it resumes; elsewhere,
        # if the guest can take an interrupt now, run() says so at once; otherwise the block
        # hook goes in before the emulation goes on (see _between_runs).

    def _window_now(self) -> bool:
        """run(): the window is requested and open at the boundary the guest stopped at."""
        return (self._window and self._pending is None and self._at not in ("in", "out")
                and self.interrupt_ready())

    def _after_io(self, port: int, info) -> None:
        """In an I/O hook, just before the instruction completes: arm the stop right after it
        if an interrupt is to be injected there or the window is wanted."""
        if self._pending is None and not self._window:
            return
        x86 = self._x86
        if not _U32.unpack_from(self._save(), self._layout.hflags)[0] & HF_IOBPT:
            # This block was translated after the guest wrote DR7 (which recomputes the flag):
            # no check follows the instruction. The stop takes effect at the end of the block
            # (or at its next memory access), and the interrupt or the window comes then.
            self._emu_stop()
            return
        if info is None:
            info = self._decode_io()
        saved = (self._rd(x86.UC_X86_REG_DR0), self._rd(x86.UC_X86_REG_DR6),
                 self._rd(x86.UC_X86_REG_DR7))
        self._io_stop = (saved, info, self._rd(x86.UC_X86_REG_RIP))
        self._wr(x86.UC_X86_REG_DR0, port)
        self._wr(x86.UC_X86_REG_DR7, DR7_IO_STOP)

    def _end_io_stop(self) -> None:
        """After the stop following an I/O instruction: the guest's debug registers back, and
        for a REP string instruction the count QEMU decrements after the check."""
        x86 = self._x86
        (dr0, dr6, dr7), info, rip = self._io_stop
        self._io_stop = None
        self._wr(x86.UC_X86_REG_DR0, dr0)
        self._wr(x86.UC_X86_REG_DR6, dr6)
        self._wr(x86.UC_X86_REG_DR7, dr7)
        if isinstance(info, dict) and info["string"] and info["rep"]:
            amask = info["amask"]
            rcx = self._rd(x86.UC_X86_REG_RCX)
            left = ((rcx & amask) - 1) & amask
            self._wr(x86.UC_X86_REG_RCX, (rcx & ~amask) | left)
            # Back at the instruction, with RF in the frame, as KVM re-enters after a REP INS
            # chunk or a REP OUTS element (measured: even after the last, with RCX 0).
            self._wr(x86.UC_X86_REG_RIP, rip)
            self._push_rf = True
        self._end_shadow()

    def _end_shadow(self) -> None:
        """The instruction in an STI / MOV SS shadow completed (outside the emulation). Also
        sets HF_IOBPT again if a guest write to DR7 cleared it."""
        buf = self._save()
        hflags = _U32.unpack_from(buf, self._layout.hflags)[0]
        if hflags & (HF_INHIBIT_IRQ | HF_IOBPT) != HF_IOBPT:
            _U32.pack_into(buf, self._layout.hflags, (hflags & ~HF_INHIBIT_IRQ) | HF_IOBPT)
            self._restore()

    def _leave_block(self) -> bool:
        """In a code or block hook, resumed at an instruction boundary: if an interrupt is to
        be taken here, or the window's hook must go in first, stop before the instruction."""
        if self._pending is not None or (self._window and self._block_hook is None):
            self._stop = ("inject",)
            self._emu_stop()        # Unicorn checks right after the hook: nothing more runs
            return True
        return False

    def _between_runs(self) -> None:
        """Outside the emulation, before it goes on: take a pending interrupt, put the
        window's block hook in (or take it out)."""
        if self._pending is not None:
            vector, self._pending = self._pending, None
            self._irq_work = self._window
            end = self._exception(vector, 0, False, external=True)
            if end is not None:
                while True:
                    self._suspend(end)      # delivery ended the run (triple fault, outside RAM)
        self._push_rf = False
        if self._window and self._block_hook is None:
            self._install_block_hook()

    def _on_block(self, address: int, size: int) -> None:
        if self._stop is not None:
            return
        if self._pending is not None:
            self._stop = ("inject",)
            self._emu_stop()
            return
        if not self._window or not self._rd(self._x86.UC_X86_REG_RFLAGS) & RFLAGS_IF:
            return
        if _U32.unpack_from(self._save(), self._layout.hflags)[0] & HF_INHIBIT_IRQ:
            return                  # the one instruction in a shadow: the next block, then
        self._activity += 1
        self._at = "window"
        self._suspend(IRQ_WINDOW)
        self._at = None
        self._leave_block()

    def _install_block_hook(self) -> None:
        """Called outside the emulation only (flushing translated code mid-block is unsafe)."""
        import unicorn
        if self._block_hook_fn is None:
            ref = weakref.ref(self)
            # The common case, interrupts still disabled, costs one register read: bound here.
            read, uch_p, rflags = self._raw.uc_reg_read, self._uch_p, self._x86.UC_X86_REG_RFLAGS
            value = ctypes.c_uint64()
            value_ref = ctypes.byref(value)

            def on_block(uch, address, size, ud):
                me = ref()
                if me is None:
                    return
                read(uch_p, rflags, value_ref)
                if not value.value & RFLAGS_IF and me._pending is None:
                    return
                try:
                    me._on_block(address, size)
                except BaseException as e:    # never unwind through Unicorn's C frames
                    if me._hook_error is None:
                        me._hook_error = e
                    me._emu_stop()

            self._block_hook_fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64,
                                                   ctypes.c_uint32, ctypes.c_void_p)(on_block)
        handle = ctypes.c_size_t()
        err = self._lib.uc_hook_add(self._uch, ctypes.byref(handle), unicorn.UC_HOOK_BLOCK,
                                    ctypes.cast(self._block_hook_fn, ctypes.c_void_p), None,
                                    ctypes.c_uint64(1), ctypes.c_uint64(0))
        if err:
            raise BackendUnavailable(f"cannot install the emulator's interrupt-window hook "
                                     f"(unicorn error {err})")
        self._block_hook = handle
        self._uc.ctl_flush_tb()             # code translated so far has no hook call in it

    def _remove_block_hook(self) -> None:
        if self._block_hook is not None:
            # Unicorn invalidates the blocks the hook was translated into (safe mid-block).
            self._lib.uc_hook_del(self._uch, self._block_hook)
            self._block_hook = None

    # --- the instruction budget -----------------------------------------------------------------
    counts_instructions = True

    def set_instruction_limit(self, limit: int) -> None:
        """Count instructions with a block hook: at each translated block's start, its
        instruction count (decoded once per block with capstone) is added to `instructions`,
        and a block that would take the count past `limit` is not run: run() returns
        INSTRUCTION_LIMIT with the CPU at that block's first instruction. Called before the
        run starts (flushing translated code mid-block is unsafe)."""
        import unicorn
        self._insn_limit = int(limit)
        self._rebound()
        if self._insn_hook is not None:
            return
        ref = weakref.ref(self)
        counts = self._block_insns

        def on_block(uch, address, size, ud):
            me = ref()
            if me is None:
                return
            n = counts.get((address, size))
            if n is not None:                  # the fast path: nothing to look at (_rebound)
                c = me.instructions + n
                if c <= me._bound:
                    me.instructions = c
                    return
            # (the slicer never stops a counted guest: it needs no _activity from here)
            if me._kicked or me._stop is not None:
                me._emu_stop()                 # a host stop between blocks: none is half run
                return
            if n is None:
                try:
                    n = counts[(address, size)] = me._count_block(address, size)
                except BaseException as e:     # never unwind through Unicorn's C frames
                    me._hook_error = me._hook_error or e
                    me._emu_stop()
                    return
            c = me.instructions
            if c >= me._deadline or (me._watch_window and me._window_open()):
                me._stop = ("deadline",)       # (icount mode) before this block runs
                me._emu_stop()
                return
            if c + n > me._insn_limit:
                me._stop = ("insn-limit",)
                me._emu_stop()                 # Unicorn checks right after the hook
                return
            me.instructions = c + n

        callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32,
                                    ctypes.c_void_p)(on_block)
        handle = ctypes.c_size_t()
        err = self._lib.uc_hook_add(self._uch, ctypes.byref(handle), unicorn.UC_HOOK_BLOCK,
                                    ctypes.cast(callback, ctypes.c_void_p), None,
                                    ctypes.c_uint64(1), ctypes.c_uint64(0))
        if err:
            raise BackendUnavailable(f"cannot install the emulator's instruction counter "
                                     f"(unicorn error {err})")
        self._insn_hook = (handle, callback)
        self._uc.ctl_flush_tb()                # code translated so far has no hook call in it

    def set_instruction_deadline(self, count: int | None) -> None:
        self._deadline = NO_DEADLINE if count is None else int(count)
        self._rebound()

    def watch_interrupt_window(self, on: bool) -> None:
        self._watch_window = bool(on)
        self._rebound()

    def _window_open(self) -> bool:
        """At a block's start: interrupts enabled and no STI / MOV SS shadow (the instruction
        in a shadow is a block of its own, so the next block's start is past it)."""
        if not self._rd(self._x86.UC_X86_REG_RFLAGS) & RFLAGS_IF:
            return False
        return not _U32.unpack_from(self._save(), self._layout.hflags)[0] & HF_INHIBIT_IRQ

    def _count_block(self, address: int, size: int) -> int:
        """The instructions in the block of `size` bytes at linear `address`, in the CPU's
        current code size (a byte that does not decode counts as one instruction: it ends the
        block with an exception)."""
        code = self._peek_linear(address, size) or b""
        if not code:
            return 1
        import capstone
        _, cs_flags, cr0 = self._cs()
        if self._rdmsr(MSR_EFER) & EFER_LMA and cs_flags & DESC_L:
            mode = capstone.CS_MODE_64
        elif cs_flags & DESC_B and cr0 & CR0_PE:
            mode = capstone.CS_MODE_32
        else:
            mode = capstone.CS_MODE_16
        decoder = self._decoders.get(mode)
        if decoder is None:
            decoder = self._decoders[mode] = capstone.Cs(capstone.CS_ARCH_X86, mode)
        n = used = 0
        for _, length, _, _ in decoder.disasm_lite(code, address):
            n += 1
            used += length
        return max(1, n + (used < len(code)))

    # --- debugging (vmm.gdb) ------------------------------------------------------------------
    def debug_begin(self) -> DebugState:
        """Debug mode: a code hook before every instruction counts completed instructions
        exactly and stops where `debug` says, by suspending the emulation inside the hook (as
        an I/O exit does), so nothing is re-executed and no breakpoint touches guest memory."""
        if self.debug is None:
            import unicorn
            self.debug = DebugState()
            self.debug.memory = self.memory
            self._dbg_in_insn = False        # an instruction has started since the last stop
            code_t = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32,
                                      ctypes.c_void_p)
            ref = weakref.ref(self)

            def on_code(uch, address, size, ud):
                me = ref()
                if me is not None:
                    try:
                        me._on_code(address)
                    except BaseException as e:    # never unwind through Unicorn's C frames
                        if me._hook_error is None:
                            me._hook_error = e
                        me._emu_stop()

            fptr = code_t(on_code)
            handle = ctypes.c_size_t()
            err = self._lib.uc_hook_add(self._uch, ctypes.byref(handle), unicorn.UC_HOOK_CODE,
                                        ctypes.cast(fptr, ctypes.c_void_p), None,
                                        ctypes.c_uint64(1), ctypes.c_uint64(0))
            if err:
                raise BackendUnavailable(f"cannot install the emulator's debug hook (unicorn "
                                         f"error {err})")
            self._hooks.append(fptr)
            self._debug_hook = handle
            self._uc.ctl_flush_tb()           # code translated so far has no hook call in it
        return self.debug

    def debug_end(self) -> None:
        if self.debug is None:
            return
        # Unicorn invalidates the blocks the hook was translated into (safe mid-block, as the
        # emulation is suspended inside the hook now).
        self._lib.uc_hook_del(self._uch, self._debug_hook)
        self._debug_hook = None
        self.debug = None
        self._dbg_in_insn = False

    def _on_code(self, address: int) -> None:
        self._activity += 1                   # also keeps the slicer from stopping mid-block
        if self._stop is not None or self.debug is None:
            return                            # (None: the rest of a block after debug_end)
        if self._dbg_in_insn:
            self._dbg_in_insn = False
            if self.debug.completed(address):
                self._suspend(DEBUG_STOP)
                if self._irq_work and self._leave_block():
                    return
        if self._kicked:
            self._kicked = False
            self._suspend(INTERRUPTED)
            if self._irq_work and self._leave_block():
                return
        self._dbg_in_insn = True

    def debug_registers(self) -> dict[str, int]:
        cpu = self.cpu_state()
        out = dict(cpu.regs)
        x86 = self._x86
        for name in ("cs", "ss", "ds", "es", "fs", "gs"):
            out[name] = self._rd(getattr(x86, f"UC_X86_REG_{name.upper()}")) & 0xFFFF
        out["cs_base"] = cpu.cs_base
        out["fs_base"] = self._rd(x86.UC_X86_REG_FS_BASE)
        out["gs_base"] = self._rd(x86.UC_X86_REG_GS_BASE)
        out.update(cr0=cpu.cr0, cr2=cpu.cr2, cr3=cpu.cr3, cr4=cpu.cr4, efer=cpu.efer)
        return out

    def set_debug_registers(self, values: dict[str, int]) -> None:
        x86 = self._x86
        for name in GPR_NAMES:
            if name in values:
                self._wr(getattr(x86, f"UC_X86_REG_{name.upper()}"), values[name])
        if "rip" in values:
            self._dbg_in_insn = False         # Unicorn restarts at the new RIP

    def debug_write_memory(self, physical: int, data: bytes) -> None:
        self._write_physical(physical, data)

    def debug_save(self) -> dict:
        """The CPU between two instructions, for a snapshot (vmm.gdb.snapshot): Unicorn's
        whole CPU context (hidden segment parts, TB flags and lazy flags included) and what
        vmm keeps beside it (the RDTSC event count, a string IN's pending elements)."""
        return {"context": bytes(self._save()), "events": self._events,
                "in_rest": list(self._in_rest), "ins_continues": self._ins_continues,
                "rf_set": self._rf_set, "steps": self.debug.steps, "cs_seen": self._cs_seen,
                "interrupt": self._pending, "window": self._window}

    def debug_restore(self, saved: dict) -> None:
        """Load what debug_save() returned, before this backend has run (memory is the
        caller's: vmm.gdb.snapshot restores it)."""
        self._ctx_buf[:] = saved["context"]
        self._restore()
        self._events = saved["events"]
        self._in_rest = deque(saved["in_rest"])
        self._ins_continues, self._rf_set = saved["ins_continues"], saved["rf_set"]
        self._cs_seen = saved.get("cs_seen", -1)
        self.debug.steps = saved["steps"]
        self._pending, self._window = saved.get("interrupt"), saved.get("window", False)
        self._irq_work = self._pending is not None or self._window
        self._dbg_in_insn = False
        self._uc.ctl_flush_tb()

    def resident_pages(self) -> bytes | None:
        from .kvm_backend import _resident_pages
        return _resident_pages(self._ram)

    # --- the slicer: a guest that never exits must still see signals -----------------------------
    def _start_slicer(self) -> None:
        if self._slicer is None:
            self._slicer = threading.Thread(target=_slicer, args=(weakref.ref(self),),
                                            name="vmm-emu-slicer", daemon=True)
            self._slicer.start()

    # --- configuration ---------------------------------------------------------------------------
    def supported_cpuid(self) -> list[dict]:
        """The CPU the emulator offers: this host's KVM CPU when /dev/kvm is usable (so that a
        run records the same CPUID table on either backend), else the emulator's own CPU."""
        if self._kvm_path is not None:
            try:
                from .kvm_backend import _entry_to_dict, open_kvm
                kvm = open_kvm(self._kvm_path)
                try:
                    return [_entry_to_dict(e) for e in kvm.get_supported_cpuid()]
                finally:
                    kvm.close()
            except (BackendUnavailable, OSError):
                pass
        return emulator_cpuid()

    def set_cpuid(self, entries: list[dict]) -> None:
        self._cpuid, self._cpuid_any = {}, {}
        for e in entries:
            value = (e["eax"] & 0xFFFFFFFF, e["ebx"] & 0xFFFFFFFF, e["ecx"] & 0xFFFFFFFF,
                     e["edx"] & 0xFFFFFFFF)
            if e.get("flags", 0) & KVM_CPUID_FLAG_SIGNIFCANT_INDEX:
                self._cpuid.setdefault((e["function"], e["index"]), value)
            else:
                self._cpuid_any.setdefault(e["function"], value)
        basic = self._find_cpuid(0, 0)
        self._max_basic = basic[0] if basic else 0
        self._cpuid_vendor_amd = bool(basic) and (basic[1], basic[3], basic[2]) in (
            (0x68747541, 0x69746E65, 0x444D4163), (0x6F677948, 0x656E6975, 0x6E65476E))

    def _find_cpuid(self, function: int, index: int):
        hit = self._cpuid.get((function, index))
        return hit if hit is not None else self._cpuid_any.get(function)

    def _cpuid_answer(self, function: int, index: int) -> tuple[int, int, int, int]:
        """KVM's rules (arch/x86/kvm/cpuid.c, kvm_cpuid): the exact entry; else, for an Intel
        CPU, a function beyond its class's maximum reads the highest basic leaf; else zeros."""
        entry = self._find_cpuid(function, index)
        if entry is None and not self._cpuid_vendor_amd and self._find_cpuid(0, 0) is not None:
            if 0x40000000 <= function <= 0x4FFFFFFF:
                cls = self._find_cpuid(function & 0xFFFFFF00, 0)
            elif function >= 0xC0000000:
                cls = self._find_cpuid(0xC0000000, 0)
            else:
                cls = self._find_cpuid(function & 0x80000000, 0)
            if cls is None or function > cls[0]:
                function = self._max_basic
                entry = self._find_cpuid(function, index)
        if entry is None:
            return 0, 0, 0, 0
        eax, ebx, ecx, edx = entry
        if function == 1:
            cr4 = self._rd(self._x86.UC_X86_REG_CR4)
            if ecx & (1 << 26):                          # XSAVE: OSXSAVE follows CR4
                ecx = (ecx & ~(1 << 27)) | ((1 << 27) if cr4 & CR4_OSXSAVE else 0)
        elif function == 7 and index == 0 and ecx & (1 << 3):
            cr4 = self._rd(self._x86.UC_X86_REG_CR4)     # PKU: OSPKE follows CR4
            ecx = (ecx & ~(1 << 4)) | ((1 << 4) if cr4 & CR4_PKE else 0)
        return eax, ebx, ecx, edx

    def set_entry_state(self, state: EntryState) -> None:
        x86 = self._x86
        for name in GPR_NAMES:
            self._wr(getattr(x86, f"UC_X86_REG_{name.upper()}"), 0)
        # The FPU and SSE as KVM resets them (Unicorn leaves them zero: exceptions unmasked).
        self._uc.reg_write(x86.UC_X86_REG_FPCW, 0x037F)
        self._uc.reg_write(x86.UC_X86_REG_FPTAG, 0xFFFF)
        self._uc.reg_write(x86.UC_X86_REG_MXCSR, 0x1F80)
        self._wr(x86.UC_X86_REG_CR4, state.cr4)
        self._wr(x86.UC_X86_REG_CR3, state.cr3)
        self._wr(x86.UC_X86_REG_CR0, state.cr0)
        self._uc.reg_write(x86.UC_X86_REG_GDTR, (0, state.gdt[0], state.gdt[1], 0))
        self._uc.reg_write(x86.UC_X86_REG_IDTR, (0, state.idt[0], state.idt[1], 0))
        self._uc.reg_write(x86.UC_X86_REG_TR, (0, 0, 0xFFFF, (0xB << 8) | DESC_P))
        self._uc.reg_write(x86.UC_X86_REG_LDTR, (0, 0, 0xFFFF, (0x2 << 8) | DESC_P))
        lay = self._layout
        buf = self._save()
        _U64.pack_into(buf, lay.efer, state.efer)
        segs = {ES: state.ds, CS: state.cs, SS: state.ss, DS: state.ds, FS: state.ds,
                GS: state.ds}
        for index, seg in segs.items():
            _SEG.pack_into(buf, lay.segs + 24 * index, seg.selector, seg.base, seg.limit,
                           _flags_of(seg))
        _U64.pack_into(buf, lay.intercept, 1 << (SVM_EXIT_HLT - SVM_EXIT_INTR))
        _I32.pack_into(buf, lay.old_exception, -1)
        _I32.pack_into(buf, lay.is_int, 0)
        self._set_hflags(buf, cpl=state.ss.dpl if state.mode != "real" else 0)
        self._restore()
        self._cs_base_cache.clear()
        self._es_cache.clear()
        self._decoded.clear()
        self._wr(x86.UC_X86_REG_RIP, state.rip)
        self._wr(x86.UC_X86_REG_RSP, state.rsp)
        self._wr(x86.UC_X86_REG_RFLAGS, state.rflags)
        self._wr(x86.UC_X86_REG_RAX, state.rax)
        self._wr(x86.UC_X86_REG_RBX, state.rbx)

    def _set_hflags(self, buf, cpl: int) -> None:
        """Recompute the TB flags from the segment caches and control registers, as QEMU's
        cpu_x86_load_seg_cache / update_cr0 / update_cr4 / load_efer keep them."""
        lay = self._layout
        cr0 = _U64.unpack_from(buf, lay.cr)[0]
        cr4 = _U64.unpack_from(buf, lay.cr + 32)[0]
        efer = _U64.unpack_from(buf, lay.efer)[0]
        cs_flags = _SEG.unpack_from(buf, lay.segs + 24 * CS)[3]
        ss_flags = _SEG.unpack_from(buf, lay.segs + 24 * SS)[3]
        old = _U32.unpack_from(buf, lay.hflags)[0]
        hf = (old & HF_KEEP) | HF_GUEST | HF_IOBPT | (cpl & HF_CPL_MASK)
        pe = cr0 & CR0_PE
        if pe:
            hf |= HF_PE
        hf |= ((cr0 >> 1) & 7) << HF_MP_SHIFT
        if efer & EFER_LMA:
            hf |= HF_LMA
        if efer & EFER_SVME:
            hf |= HF_SVME
        if cr4 & CR4_OSFXSR:
            hf |= HF_OSFXSR
        if cr4 & CR4_SMAP:
            hf |= HF_SMAP
        if (efer & EFER_LMA) and (cs_flags & DESC_L):
            hf |= HF_CS32 | HF_CS64
        elif cs_flags & DESC_B:
            hf |= HF_CS32
        if ss_flags & DESC_B:
            hf |= HF_SS32
        if not hf & HF_CS64:
            if not pe or not hf & HF_CS32:
                hf |= HF_ADDSEG
            else:
                bases = [_SEG.unpack_from(buf, lay.segs + 24 * i)[1] for i in (DS, ES, SS)]
                if any(bases):
                    hf |= HF_ADDSEG
        _U32.pack_into(buf, lay.hflags, hf)

    # --- reading the CPU -------------------------------------------------------------------------
    def _state(self) -> dict[str, int]:
        self._raw.uc_reg_read_batch(self._uch_p, self._state_ids, self._state_ptrs,
                                    len(self._state_names))
        return dict(zip(self._state_names, self._state_vals))

    def halt_view(self) -> tuple[int, int]:
        x86 = self._x86
        cs_base = _SEG.unpack_from(self._save(), self._layout.segs + 24 * CS)[1]
        return ((cs_base + self._rd(x86.UC_X86_REG_RIP)) & 0xFFFFFFFFFFFFFFFF,
                self._rd(x86.UC_X86_REG_RFLAGS))

    def cpu_state(self) -> CpuState:
        values = self._state()
        buf = self._save()
        lay = self._layout
        cs = _SEG.unpack_from(buf, lay.segs + 24 * CS)
        ss = _SEG.unpack_from(buf, lay.segs + 24 * SS)
        efer = _U64.unpack_from(buf, lay.efer)[0]
        regs = {name: values[name] for name in GPR_NAMES}
        if self._exit_info is not None:
            self._exit_view(regs, cs[1])
        return CpuState(regs=regs, cs_base=cs[1], cs_selector=cs[0], cr0=values["cr0"],
                        cr2=values["cr2"], cr3=values["cr3"], cr4=values["cr4"], efer=efer,
                        extra={"ss_base": ss[1]})

    def _exit_view(self, regs: dict, cs_base: int) -> None:
        """The registers as KVM reports them at this I/O exit, as measured on KVM: RIP at an IN
        or INS (RF set from the second chunk of a REP INS on), past an OUT or OUTS; a REP OUTS
        exits per element with RIP at the instruction, the element done and RF set."""
        info = self._exit_info
        if isinstance(info, tuple):
            decoded = self._decode_io()
            info = self._exit_info = dict(decoded, size=info[1]) if decoded else "unknown"
        if not isinstance(info, dict):
            return
        if info["in"]:
            if info["string"] and info["rep"] and self._ins_continues == info["linear"]:
                regs["rflags"] |= RFLAGS_RF
            return
        if not (info["string"] and info["rep"]):
            regs["rip"] = (regs["rip"] + info["length"]) & info["ipmask"]
        if info["string"]:
            amask, size = info["amask"], info["size"]
            step = -size if regs["rflags"] & RFLAGS_DF else size
            regs["rsi"] = (regs["rsi"] & ~amask) | ((regs["rsi"] + step) & amask)
            if info["rep"]:
                regs["rcx"] = (regs["rcx"] & ~amask) | ((regs["rcx"] - 1) & amask)
                regs["rflags"] |= RFLAGS_RF

    def _hlt_end(self) -> int:
        """RIP past the HLT at RIP. An idle kernel's every tick: a plain F4 without paging is
        read straight from RAM (one call into Unicorn for RIP, CS and CR0), anything else
        decoded as _prefixed_length does."""
        rip, sel, cr0, _ = self._io_regs()
        if not cr0 & CR0_PG:
            linear = (self._cs(sel, cr0)[0] + rip) & 0xFFFFFFFF
            if linear < len(self._ram) and self._ram[linear] == 0xF4:
                return rip + 1
        return rip + self._prefixed_length(0xF4)

    def _prefixed_length(self, opcode: int) -> int:
        """Length of the one-byte instruction `opcode` at RIP, prefixes included (1 if the bytes
        there are not that instruction)."""
        code = self._code_bytes(16)
        if code is None:
            return 1
        for i, b in enumerate(code[:15]):
            if b == opcode:
                return i + 1
            if b not in _PREFIXES:
                break
        return 1

    def _io_regs(self) -> tuple[int, int, int, int]:
        """RIP, CS selector, CR0, CR3: one call into Unicorn (the I/O hooks' hot path)."""
        self._raw.uc_reg_read_batch(self._uch_p, self._io_ids, self._io_ptrs, 4)
        return tuple(self._io_vals)

    def _cs(self, sel: int | None = None, cr0: int | None = None) -> tuple[int, int, int]:
        """(CS base, CS cache flags, CR0). The base is cached per (selector, mode): a guest
        that reloads a selector after changing its descriptor is not seen (only I/O decoding
        uses this; reports read the segment itself)."""
        x86 = self._x86
        if sel is None:
            sel = self._rd(x86.UC_X86_REG_CS)
            cr0 = self._rd(x86.UC_X86_REG_CR0)
        key = (sel, cr0 & CR0_PE)
        hit = self._cs_base_cache.get(key)
        if hit is None:
            buf = self._save()
            seg = _SEG.unpack_from(buf, self._layout.segs + 24 * CS)
            hit = self._cs_base_cache[key] = (seg[1], seg[3])
        return hit[0], hit[1], cr0

    def _code_bytes(self, n: int) -> bytes | None:
        cs_base, _, _ = self._cs()
        linear = (cs_base + self._rd(self._x86.UC_X86_REG_RIP)) & MASK64
        return self._peek_linear(linear, n)

    def _decode_io(self) -> dict | None:
        """Decode the I/O instruction at RIP (the hooks see RIP at the instruction)."""
        key = self._io_regs()                     # RIP, CS selector, CR0, CR3
        info = self._decoded.get(key)
        if info is not None:
            # Valid only while the code bytes are the same: a guest may rewrite them (an INSB
            # made a REP INSB). One slice compared at the physical address they were read from.
            physical, code = info["at"]
            if physical is not None and self._ram[physical:physical + len(code)] == code:
                return info
        rip, sel, cr0, cr3 = key
        cs_base, cs_flags, cr0 = self._cs(sel, cr0)
        linear = (cs_base + rip) & MASK64
        code = self._peek_linear(linear, 16)
        if code is None:
            return None
        efer_lma = bool(self._rdmsr(MSR_EFER) & EFER_LMA)
        cs64 = efer_lma and bool(cs_flags & DESC_L)
        cs32 = cs64 or bool(cs_flags & DESC_B) and bool(cr0 & CR0_PE)
        rep = asize = osize = False
        i = 0
        while i < 15:
            b = code[i]
            if b in (0xF2, 0xF3):
                rep = True
            elif b == 0x67:
                asize = True
            elif b == 0x66:
                osize = True
            elif b in _PREFIXES or (cs64 and 0x40 <= b <= 0x4F):
                pass
            else:
                break
            i += 1
        op = code[i]
        if op not in _IO_OPCODES:
            return None
        if cs64:
            amask = 0xFFFFFFFF if asize else MASK64
            ipmask = MASK64
        elif cs32:
            amask = 0xFFFF if asize else 0xFFFFFFFF
            ipmask = 0xFFFFFFFF
        else:
            amask = 0xFFFFFFFF if asize else 0xFFFF
            ipmask = 0xFFFF
        info = {"in": op in (0xE4, 0xE5, 0xEC, 0xED, 0x6C, 0x6D),
                "string": op in (0x6C, 0x6D, 0x6E, 0x6F), "rep": rep,
                "rep_ins": rep and op in (0x6C, 0x6D),
                "length": i + (2 if op in (0xE4, 0xE5, 0xE6, 0xE7) else 1),
                "amask": amask, "ipmask": ipmask, "linear": linear, "cs64": cs64,
                # the element size of a string IN/OUT: 1, or 2/4 by the operand size
                "width": 1 if op in (0x6C, 0x6E) else 2 if osize != (not cs32) else 4}
        length = info["length"]
        try:                                      # where the bytes are, if on a single page
            physical = (self._walk(linear, False, False, set_ad=False)
                        if (linear & 0xFFF) + length <= PAGE else None)
        except (_Fault, _OutsideRam):
            physical = None
        info["at"] = (physical, bytes(code[:length]))
        if len(self._decoded) > 4096:
            self._decoded.clear()
        self._decoded[key] = info
        return info

    def _ins_check(self, info: dict, size: int, count: int):
        """Where an INS chunk's destination goes, before its exit: (fault, None) if it lies
        beyond ES's limit (outside 64-bit mode, an expand-up segment), fault being (the saved
        context, the linear address, the bytes there) to undo the store Unicorn makes before
        the #GP is delivered; (None, places) if part of it lies outside RAM, places being each
        element's physical address; (None, None) otherwise. One context read and a walk per
        page the chunk touches: the common case, all in RAM, stays cheap."""
        self._raw.uc_reg_read_batch(self._uch_p, self._ins_ids, self._ins_ptrs, 3)
        rdi, rflags, es = self._ins_vals
        cr0 = self._io_vals[2]                   # read by _decode_io for this instruction
        key = (es, cr0 & CR0_PE)
        seg = self._es_cache.get(key)
        if seg is None:                          # cached per selector, as CS's base is
            seg = self._es_cache[key] = _SEG.unpack_from(
                self._save(), self._layout.segs + 24 * ES)[1:]
        base, limit, flags = seg
        amask = info["amask"]
        offset = rdi & amask
        step = -size if rflags & RFLAGS_DF else size
        low = offset - (count - 1) * size if step < 0 else offset
        high = low + count * size - 1
        expand_down = flags & DESC_S and not flags & DESC_CS and flags & (0x4 << DESC_TYPE_SHIFT)
        if not info["cs64"] and not expand_down and (low < 0 or high > limit):
            linear = (base + offset) & MASK64
            return (bytes(self._save()), linear, self._peek_linear(linear, size) or b""), None
        ram = len(self._ram)
        if not cr0 & CR0_PG and 0 <= low and high <= amask and base + high < ram:
            return None, None                    # no paging, all in RAM: the common case
        if 0 <= low and high <= amask:           # one stretch of linear addresses
            try:
                first, last = base + low, base + high
                page = first & ~0xFFF
                while page <= last:
                    start, end = max(page, first), min(page | 0xFFF, last)
                    if self._walk(start & MASK64, True, False, set_ad=False) + end - start >= ram:
                        break                    # this page's part reaches outside RAM
                    page += PAGE
                else:
                    return None, None
            except (_Fault, _OutsideRam):
                return None, None                # Unicorn raises the page fault
        places = []
        try:
            for i in range(count):
                places.append(self._walk((base + ((offset + i * step) & amask)) & MASK64,
                                         True, False, set_ad=False))
        except (_Fault, _OutsideRam):
            return None, None
        return None, (places if any(p + size > ram for p in places) else None)

    def _ins_to_mmio(self, info: dict, size: int, places: list[int], data: bytes) -> Mmio:
        """Finish an INS chunk that leaves RAM as KVM's emulator does: the elements up to the
        first outside RAM are stored, RCX and RDI move past the whole chunk, RIP stays at the
        instruction, and the exit is the write outside RAM (at most 8 bytes of it)."""
        x86 = self._x86
        ram = len(self._ram)
        first = next(i for i, p in enumerate(places) if p + size > ram)
        for i in range(first):
            self._write_physical(places[i], data[i * size:(i + 1) * size])
        count, amask = len(places), info["amask"]
        step = -size if self._rd(x86.UC_X86_REG_RFLAGS) & RFLAGS_DF else size
        for reg, delta in ((x86.UC_X86_REG_RCX, -count if info["rep"] else 0),
                           (x86.UC_X86_REG_RDI, count * step)):
            value = self._rd(reg)
            self._wr(reg, (value & ~amask) | ((value + delta) & amask))
        rest = data[first * size:]
        address = max(places[first], ram) if places[first] < ram else places[first]
        rest = rest[address - places[first]:]
        return Mmio(address, True, min(8, len(rest)), rest[:8])

    def _string_in_count(self, info: dict, size: int) -> int:
        """Elements of a REP INS served by one exit, as KVM's emulator reads ahead
        (arch/x86/kvm/emulate.c, pio_in_emulated): up to the end of the page (its byte count
        compared with the element count, as KVM does), at most 1024 bytes, at most RCX."""
        x86 = self._x86
        rcx = self._rd(x86.UC_X86_REG_RCX) & info["amask"]
        rdi = self._rd(x86.UC_X86_REG_RDI)
        down = self._rd(x86.UC_X86_REG_RFLAGS) & RFLAGS_DF
        in_page = (rdi & 0xFFF) if down else PAGE - (rdi & 0xFFF)
        return max(1, min(in_page, 1024 // size, rcx))

    # --- guest memory through the guest's paging -------------------------------------------------
    def _walk(self, linear: int, write: bool, user: bool, fetch: bool = False,
              set_ad: bool = True) -> int:
        """Linear -> physical through the guest's page tables, as the CPU walks them: raises
        _Fault(#PF) (with CR2 set) where the CPU would fault; sets accessed/dirty bits."""
        x86 = self._x86
        cr0 = self._rd(x86.UC_X86_REG_CR0)
        if not cr0 & CR0_PG:
            return linear & 0xFFFFFFFF
        cr3 = self._rd(x86.UC_X86_REG_CR3)
        cr4 = self._rd(x86.UC_X86_REG_CR4)
        efer = self._rdmsr(MSR_EFER)
        ram = self._ram
        entries = []                       # (physical address of entry, value, size)
        if efer & EFER_LMA:
            levels = ((cr3 & 0x000FFFFFFFFFF000), (39, 30, 21, 12), 8)
        elif cr4 & CR4_PAE:
            levels = ((cr3 & 0xFFFFFFE0), (30, 21, 12), 8)
        else:
            levels = ((cr3 & 0xFFFFF000), (22, 12), 4)
        table, shifts, width = levels
        pae = width == 8
        rw = us = True
        nx = False
        physical = None
        for depth, shift in enumerate(shifts):
            index = (linear >> shift) & (0x1FF if pae else 0x3FF)
            if pae and len(shifts) == 3 and depth == 0:
                index = (linear >> 30) & 3
            address = table + index * width
            if address + width > len(ram):
                raise _OutsideRam(address, False, width)
            value = int.from_bytes(ram[address:address + width], "little")
            if not value & 1:
                self._page_fault(linear, False, write, user, fetch)
            pdpte_legacy = pae and len(shifts) == 3 and depth == 0
            if not pdpte_legacy:
                rw = rw and bool(value & 2)
                us = us and bool(value & 4)
                if pae and value >> 63:
                    nx = True
                entries.append((address, value, width))
            frame = value & (0x000FFFFFFFFFF000 if pae else 0xFFFFF000)
            last = shift == 12
            large = not last and not pdpte_legacy and value & 0x80 and (
                shift in (21, 30) if pae else cr4 & CR4_PSE)
            if large:
                if pae:
                    base = frame & ~((1 << shift) - 1)
                else:
                    base = (value & 0xFFC00000) | ((value & 0x1FE000) << 19)
                physical = base | (linear & ((1 << shift) - 1))
                break
            if last:
                physical = frame | (linear & 0xFFF)
                break
            table = frame
        wp = bool(cr0 & CR0_WP)
        if (user and not us) or (write and not rw and (user or wp)) or (
                fetch and nx and efer & EFER_NXE):
            self._page_fault(linear, True, write, user, fetch)
        if set_ad:
            for i, (address, value, size) in enumerate(entries):
                new = value | 0x20
                if write and i == len(entries) - 1:
                    new |= 0x40
                if new != value:
                    self._write_physical(address, new.to_bytes(size, "little"))
        return physical

    def _page_fault(self, linear: int, present: bool, write: bool, user: bool,
                    fetch: bool) -> None:
        self._wr(self._x86.UC_X86_REG_CR2, linear)
        raise _Fault(PF, int(present) | (int(write) << 1) | (int(user) << 2) | (int(fetch) << 4))

    def _peek_linear(self, linear: int, n: int) -> bytes | None:
        """Bytes at a linear address, without faults or side effects (None if unmapped)."""
        out = b""
        try:
            while n > 0:
                chunk = min(n, PAGE - (linear & 0xFFF))
                physical = self._walk(linear, False, False, set_ad=False)
                if physical + chunk > len(self._ram):
                    return out or None
                out += self._ram[physical:physical + chunk]
                linear += chunk
                n -= chunk
        except (_Fault, _OutsideRam):
            return out or None
        return out

    def _read_linear(self, linear: int, n: int, user: bool = False) -> bytes:
        out = b""
        while n > 0:
            chunk = min(n, PAGE - (linear & 0xFFF))
            physical = self._walk(linear & MASK64, False, user)
            if physical + chunk > len(self._ram):
                raise _OutsideRam(physical, False, chunk)
            out += self._ram[physical:physical + chunk]
            linear += chunk
            n -= chunk
        return out

    def _write_linear(self, linear: int, data: bytes, user: bool = False) -> None:
        while data:
            chunk = min(len(data), PAGE - (linear & 0xFFF))
            physical = self._walk(linear & MASK64, True, user)
            if physical + chunk > len(self._ram):
                raise _OutsideRam(physical, True, chunk)
            self._write_physical(physical, data[:chunk])
            linear += chunk
            data = data[chunk:]

    def _write_physical(self, address: int, data: bytes) -> None:
        # Through Unicorn, so that translated code on the page is invalidated.
        data = bytes(data)          # (passed as a char pointer: the handle has no argtypes)
        self._raw.uc_mem_write(self._uch_p, ctypes.c_uint64(address), data,
                               ctypes.c_uint64(len(data)))

    # --- descriptors -----------------------------------------------------------------------------
    def _descriptor(self, buf, selector: int, ext: int) -> tuple[int, int, int, int]:
        """(low, high) dwords of the GDT/LDT descriptor for `selector`, and its address; #GP if
        it lies beyond the table's limit."""
        lay = self._layout
        table = _SEG.unpack_from(buf, lay.ldt if selector & 4 else lay.gdt)
        index = selector & ~7
        if index + 7 > table[2]:
            raise _Fault(GP, (selector & 0xFFFC) | ext)
        address = table[1] + index
        raw = self._read_linear(address, 8)
        return _U32.unpack_from(raw, 0)[0], _U32.unpack_from(raw, 4)[0], address, 0

    def _set_accessed(self, *segments: int) -> None:
        """Set the accessed bit of the GDT/LDT descriptors that `segments` (ES..GS) were loaded
        from, as the CPU does when it loads a selector. QEMU's TCG does so for data segments
        and SS (helper_load_seg), not for CS on a far jump, call, return or IRET; vmm does it
        for CS when it sees a new CS at an exit (and for what its own deliveries load), which
        covers every CS that a guest runs in up to an exit or the end of the run."""
        if not self._rd(self._x86.UC_X86_REG_CR0) & CR0_PE or \
                self._rd(self._x86.UC_X86_REG_RFLAGS) & RFLAGS_VM:
            return
        buf = self._save()
        lay = self._layout
        for seg in segments:
            selector = _SEG.unpack_from(buf, lay.segs + 24 * seg)[0]
            if selector & ~3 == 0:
                continue                         # the null selector: nothing was loaded
            table = _SEG.unpack_from(buf, lay.ldt if selector & 4 else lay.gdt)
            index = selector & ~7
            if index + 7 > table[2]:
                continue
            address = (table[1] + index + 5) & MASK64      # the access byte
            access = self._peek_linear(address, 1)
            # A code or data descriptor (S set), present, not yet accessed.
            if not access or access[0] & 0x91 != 0x90:
                continue
            try:
                self._write_linear(address, bytes([access[0] | 1]))
            except (_Fault, _OutsideRam):
                pass

    # --- events vmm carries out: exceptions, interrupts, SYSCALL/SYSENTER ------------------------
    def _exception(self, vector: int, error_code: int, software: bool, external: bool = False):
        """Deliver an exception, software interrupt or (`external`) external interrupt as the
        CPU would, with #DF and triple fault. Returns None when delivered, or the exit that ends
        the run (Shutdown, Mmio)."""
        x86 = self._x86
        buf = self._save()
        snapshot = bytes(buf)
        rip = None
        first_fault = not software and not external
        current = (vector, error_code, software, external)
        for _ in range(8):
            try:
                self._deliver(*current, buf=buf)
                return None
            except _Fault as fault:
                buf = None                  # (the delivery may have written CR2: save again)
                if rip is None:
                    rip = self._rd(x86.UC_X86_REG_RIP)     # a failed delivery moves no RIP
                v = current[0]
                if current[3]:
                    # Faults delivering an external interrupt: the interrupt is benign (no
                    # #DF, whatever its vector); the fault is delivered in its place.
                    current = (fault.vector, fault.error_code, False, False)
                    continue
                if v == DF:
                    self._ctx_buf[:] = snapshot
                    self._restore()
                    self._wr(x86.UC_X86_REG_RIP, rip)
                    if first_fault:
                        self._wr(x86.UC_X86_REG_RFLAGS,
                                 self._rd(x86.UC_X86_REG_RFLAGS) | RFLAGS_RF)
                    return SHUTDOWN
                if (v in CONTRIBUTORY and fault.vector in CONTRIBUTORY) or (
                        v == PF and (fault.vector == PF or fault.vector in CONTRIBUTORY)):
                    current = (DF, 0, False, False)
                else:
                    current = (fault.vector, fault.error_code, False, False)
            except _OutsideRam as e:
                self._ctx_buf[:] = snapshot
                self._restore()
                return Mmio(e.address, e.is_write, e.length, b"")
        return SHUTDOWN

    def _deliver(self, vector: int, error_code: int, software: bool,
                 external: bool = False, buf=None) -> None:
        """Deliver one event (_exception handles the faults on the way). `buf`: the CPU
        context, saved just now by the caller (else saved here)."""
        x86 = self._x86
        if buf is None:
            buf = self._save()
        lay = self._layout
        cr0 = _U64.unpack_from(buf, lay.cr)[0]
        efer = _U64.unpack_from(buf, lay.efer)[0]
        self._raw.uc_reg_read_batch(self._uch_p, self._frame_ids, self._frame_ptrs, 3)
        rip, rsp, rflags = self._frame_vals
        cs = _SEG.unpack_from(buf, lay.segs + 24 * CS)
        ss = _SEG.unpack_from(buf, lay.segs + 24 * SS)
        idt = _SEG.unpack_from(buf, lay.idt)
        ext = 0 if software else 1
        if not cr0 & CR0_PE:
            # Real mode: the IVT (Intel SDM vol. 3, 20.1.4). No paging: linear is physical.
            if vector * 4 + 3 > idt[2]:
                raise _Fault(GP, vector * 8 + 2 + ext)
            entry = (idt[1] + vector * 4) & 0xFFFFFFFF
            ram = self._ram
            if entry + 4 <= len(ram):
                offset, segment = _IVT.unpack_from(ram, entry)
            else:
                offset, segment = _IVT.unpack(self._read_linear(entry, 4))   # outside RAM
            sp = rsp & 0xFFFF
            frame = _IVT_FRAME.pack(rip & 0xFFFF, cs[0], rflags & 0xFFFF)
            sp = (sp - 6) & 0xFFFF
            if sp <= 0xFFFA:
                top = (ss[1] + sp) & 0xFFFFFFFF
                if top + 6 <= len(ram):
                    self._write_physical(top, frame)
                else:
                    self._write_linear(ss[1] + sp, frame)                  # outside RAM
            else:
                for i in range(0, 6, 2):    # each word wraps within the 64 KiB stack segment
                    self._write_linear(ss[1] + ((sp + i) & 0xFFFF), frame[i:i + 2])
            # (memory only since `buf` was saved: it is still the CPU's context)
            self._finish_delivery(
                rip=offset, rsp=(rsp & ~0xFFFF) | sp,
                rflags=rflags & ~(RFLAGS_IF | RFLAGS_TF | RFLAGS_AC | RFLAGS_RF),
                cs=(segment, segment << 4, cs[2], cs[3]), ss=None, cpl=0, buf=buf)
            return
        cpl = _U32.unpack_from(buf, lay.hflags)[0] & HF_CPL_MASK
        long_mode = bool(efer & EFER_LMA)
        gate_size = 16 if long_mode else 8
        if vector * gate_size + gate_size - 1 > idt[2]:
            raise _Fault(GP, vector * 8 + 2 + ext)
        gate = self._read_linear(idt[1] + vector * gate_size, gate_size)
        low, high = struct.unpack_from("<II", gate)
        gate_type = (high >> 8) & 0x1F
        gate_dpl = (high >> 13) & 3
        valid = (0xE, 0xF) if long_mode else (0x6, 0x7, 0xE, 0xF)
        if gate_type == 0x5 and not long_mode:
            raise _Fault(GP, vector * 8 + 2 + ext)   # task gates: not supported by vmm
        if gate_type not in valid:
            raise _Fault(GP, vector * 8 + 2 + ext)
        if software and gate_dpl < cpl:
            raise _Fault(GP, vector * 8 + 2)
        if not high & DESC_P:
            raise _Fault(NP, vector * 8 + 2 + ext)
        selector = low >> 16
        offset = (low & 0xFFFF) | (high & 0xFFFF0000)
        if long_mode:
            offset |= struct.unpack_from("<I", gate, 8)[0] << 32
        elif gate_type in (0x6, 0x7):
            offset &= 0xFFFF
        if selector & 0xFFFC == 0:
            raise _Fault(GP, ext)
        d_low, d_high, _, _ = self._descriptor(buf, selector, ext)
        if (d_high & (DESC_S | DESC_CS)) != (DESC_S | DESC_CS):
            raise _Fault(GP, (selector & 0xFFFC) | ext)
        dpl = (d_high >> 13) & 3
        if dpl > cpl:
            raise _Fault(GP, (selector & 0xFFFC) | ext)
        if not d_high & DESC_P:
            raise _Fault(NP, (selector & 0xFFFC) | ext)
        if long_mode and (not d_high & DESC_L or d_high & DESC_B):
            raise _Fault(GP, (selector & 0xFFFC) | ext)
        base, limit, flags = _descriptor_parts(d_low, d_high)
        conforming = bool(d_high & DESC_C)
        new_cpl = cpl if conforming else dpl
        # No error code for INT n, nor for an external interrupt on an exception's vector.
        has_error = not software and not external and vector in ERROR_CODE_VECTORS
        clear = RFLAGS_TF | RFLAGS_VM | RFLAGS_RF | RFLAGS_NT
        if gate_type in (0x6, 0xE):
            clear |= RFLAGS_IF
        pushed_flags = rflags & ~RFLAGS_RF
        if not software and not external and _is_fault(vector):
            pushed_flags |= RFLAGS_RF
            self._rf_set = True
        elif external and self._push_rf:
            pushed_flags |= RFLAGS_RF        # taken between iterations of a REP string I/O
            self._rf_set = True
        tr = _SEG.unpack_from(buf, lay.tr)
        if long_mode:
            ist = gate[4] & 7
            new_ss = None
            if ist:
                stack = self._tss_read(tr, 0x24 + 8 * (ist - 1), 8, ext)
            elif new_cpl < cpl:
                stack = self._tss_read(tr, 4 + 8 * new_cpl, 8, ext)
            else:
                stack = rsp
            if new_cpl < cpl:
                new_ss = (new_cpl, 0, 0, new_cpl << DESC_DPL_SHIFT)
            stack &= ~0xF
            words = [ss[0], rsp, pushed_flags, cs[0], rip] + ([error_code] if has_error else [])
            stack = (stack - 8 * len(words)) & MASK64
            self._write_linear(stack, b"".join(_U64.pack(w & MASK64) for w in reversed(words)))
            self._finish_delivery(rip=offset, rsp=stack, rflags=rflags & ~clear,
                                  cs=((selector & 0xFFFC) | new_cpl, base, limit, flags),
                                  ss=new_ss, cpl=new_cpl)
            return
        width = 4 if gate_type in (0xE, 0xF) else 2
        pack = "<I" if width == 4 else "<H"
        if new_cpl < cpl:
            # Inner privilege: the new stack from the TSS (a 32-bit TSS, or a 16-bit one).
            if tr[3] & (0x8 << DESC_TYPE_SHIFT):
                new_esp = self._tss_read(tr, 4 + 8 * new_cpl, 4, ext)
                new_ss_sel = self._tss_read(tr, 8 + 8 * new_cpl, 2, ext)
            else:
                new_esp = self._tss_read(tr, 2 + 4 * new_cpl, 2, ext)
                new_ss_sel = self._tss_read(tr, 4 + 4 * new_cpl, 2, ext)
            if new_ss_sel & 0xFFFC == 0:
                raise _Fault(TS, ext)
            s_low, s_high, _, _ = self._descriptor(buf, new_ss_sel, ext)
            s_dpl = (s_high >> 13) & 3
            if (new_ss_sel & 3) != new_cpl or s_dpl != new_cpl or (
                    s_high & (DESC_S | DESC_CS | (0x2 << DESC_TYPE_SHIFT))) != (
                    DESC_S | (0x2 << DESC_TYPE_SHIFT)):
                raise _Fault(TS, (new_ss_sel & 0xFFFC) | ext)
            if not s_high & DESC_P:
                raise _Fault(SS_FAULT, (new_ss_sel & 0xFFFC) | ext)
            s_base, s_limit, s_flags = _descriptor_parts(s_low, s_high)
            words = [ss[0], rsp, pushed_flags, cs[0], rip]
            stack_base, sp, sp_mask = s_base, new_esp, 0xFFFFFFFF if s_flags & DESC_B else 0xFFFF
            new_ss = (new_ss_sel, s_base, s_limit, s_flags)
        else:
            words = [pushed_flags, cs[0], rip]
            stack_base, sp = ss[1], rsp
            sp_mask = 0xFFFFFFFF if ss[3] & DESC_B else 0xFFFF
            new_ss = None
        if has_error:
            words.append(error_code)
        if rflags & RFLAGS_VM:
            raise _Fault(GP, ext)                    # virtual-8086 mode: not supported by vmm
        new_sp = (sp - width * len(words)) & sp_mask
        for i, word in enumerate(reversed(words)):
            self._write_linear(stack_base + ((new_sp + i * width) & sp_mask),
                               struct.pack(pack, word & ((1 << (8 * width)) - 1)))
        new_rsp = new_sp if new_ss is not None else (rsp & ~sp_mask & MASK64) | new_sp
        self._finish_delivery(rip=offset, rsp=new_rsp, rflags=rflags & ~clear,
                              cs=((selector & 0xFFFC) | new_cpl, base, limit, flags),
                              ss=new_ss, cpl=new_cpl)

    def _tss_read(self, tr, offset: int, size: int, ext: int) -> int:
        if offset + size - 1 > tr[2]:
            raise _Fault(TS, (tr[0] & 0xFFFC) | ext)
        return int.from_bytes(self._read_linear(tr[1] + offset, size), "little")

    def _finish_delivery(self, *, rip: int, rsp: int, rflags: int, cs, ss, cpl: int,
                         loaded: bool = True, buf=None) -> None:
        """Load what the delivery set. `buf`: the CPU's context as it is now (else saved)."""
        x86 = self._x86
        lay = self._layout
        if buf is None:
            buf = self._save()
        _SEG.pack_into(buf, lay.segs + 24 * CS, *cs)
        if ss is not None:
            _SEG.pack_into(buf, lay.segs + 24 * SS, *ss)
        _I32.pack_into(buf, lay.old_exception, -1)
        _I32.pack_into(buf, lay.is_int, 0)
        self._set_hflags(buf, cpl)
        self._restore()
        self._cs_base_cache.clear()
        self._es_cache.clear()
        self._decoded.clear()
        vals = self._frame_vals
        vals[0], vals[1], vals[2] = rip & MASK64, rsp & MASK64, rflags & MASK64
        self._raw.uc_reg_write_batch(self._uch_p, self._frame_ids, self._frame_ptrs, 3)
        if loaded:                               # from descriptors (not SYSCALL/SYSENTER)
            self._set_accessed(CS, SS) if ss is not None else self._set_accessed(CS)

    def _syscall(self, kind: str) -> None:
        """SYSCALL / SYSENTER as the CPU does them (QEMU's helper_syscall/helper_sysenter, which
        Unicorn replaces with a hook). RIP is already past the instruction."""
        x86 = self._x86
        buf = self._save()
        lay = self._layout
        efer = _U64.unpack_from(buf, lay.efer)[0]
        rip = self._rd(x86.UC_X86_REG_RIP)
        rflags = self._rd(x86.UC_X86_REG_RFLAGS)
        code = DESC_G | DESC_P | DESC_S | DESC_CS | (0x3 << DESC_TYPE_SHIFT)
        data = DESC_G | DESC_B | DESC_P | DESC_S | (0x3 << DESC_TYPE_SHIFT)
        cs_flags = _SEG.unpack_from(buf, lay.segs + 24 * CS)[3]
        if kind == "syscall":
            if not efer & EFER_SCE:
                raise _Fault(UD)
            selector = (self._rdmsr(MSR_STAR) >> 32) & 0xFFFF
            if efer & EFER_LMA:
                self._wr(x86.UC_X86_REG_RCX, rip)
                self._wr(x86.UC_X86_REG_R11, rflags & ~RFLAGS_RF)
                target = self._rdmsr(MSR_LSTAR if cs_flags & DESC_L else MSR_CSTAR)
                new_flags = rflags & ~(self._rdmsr(MSR_FMASK) | RFLAGS_RF)
                cs = (selector & 0xFFFC, 0, 0xFFFFFFFF, code | DESC_L)
            else:
                self._wr(x86.UC_X86_REG_RCX, rip & 0xFFFFFFFF)
                target = self._rdmsr(MSR_STAR) & 0xFFFFFFFF
                new_flags = rflags & ~(RFLAGS_IF | RFLAGS_RF | RFLAGS_VM)
                cs = (selector & 0xFFFC, 0, 0xFFFFFFFF, code | DESC_B)
            ss = ((selector + 8) & 0xFFFC, 0, 0xFFFFFFFF, data)
            rsp = self._rd(x86.UC_X86_REG_RSP)
        else:
            sysenter_cs = self._rdmsr(MSR_SYSENTER_CS) & 0xFFFF
            if sysenter_cs == 0:
                raise _Fault(GP, 0)
            new_flags = rflags & ~(RFLAGS_VM | RFLAGS_IF | RFLAGS_RF)
            cs = (sysenter_cs & 0xFFFC, 0, 0xFFFFFFFF,
                  code | (DESC_L if efer & EFER_LMA else DESC_B))
            ss = ((sysenter_cs + 8) & 0xFFFC, 0, 0xFFFFFFFF, data)
            rsp = self._rdmsr(MSR_SYSENTER_ESP)
            target = self._rdmsr(MSR_SYSENTER_EIP)
        self._finish_delivery(rip=target, rsp=rsp, rflags=new_flags, cs=cs, ss=ss, cpl=0,
                              loaded=False)

    # --- coalesced output ------------------------------------------------------------------------
    def register_coalesced_pio(self, port: int, size: int = 1) -> bool:
        if self.coalesced_sink is None:
            raise ValueError("set coalesced_sink before registering coalesced ports")
        self._coalesced.update(range(port, port + size))
        return True

    def unregister_coalesced_pio(self, port: int, size: int = 1) -> None:
        self._coalesced.difference_update(range(port, port + size))

    def drain_coalesced(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        for port, size, data in batch:
            self.coalesced_sink(port, size, bytes(data))

    # --- inspection ------------------------------------------------------------------------------
    def memory_digest(self) -> str:
        self._set_accessed(CS)                   # a CS loaded since the last exit
        from .kvm_backend import _resident_pages
        from ..trace import memory_digest
        return memory_digest(self.memory, _resident_pages(self._ram))

    def close(self) -> None:
        if self._closed:
            return
        g = getattr(self, "_g", None)
        if g is not None and not g.dead:
            # The emulation is suspended inside a hook, inside uc_emu_start: unwind it first.
            self._dying = True
            try:
                g.parent = getcurrent()
                g.throw(GreenletExit)
            except Exception:
                pass
            if not g.dead:
                return              # cannot unwind it from here: leave Unicorn and RAM be
        with self._uc_lock:         # the slicer thread must not stop a closed Unicorn
            self._closed = True
        self._g = None
        uc, self._uc = self._uc, None
        if uc is not None:
            finalizer = getattr(uc, "_Uc__finalizer", None)
            if finalizer is not None:
                finalizer()                 # uc_close, before the RAM it maps goes away
        if getattr(self, "memory", None) is not None:
            self.memory.release()
            self.memory = None
        self._anchor = None
        if self._ram is not None:
            try:
                self._ram.close()
            except BufferError:
                pass
            self._ram = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


_PREFIXES = frozenset({0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67})
_IO_OPCODES = frozenset({0xE4, 0xE5, 0xE6, 0xE7, 0xEC, 0xED, 0xEE, 0xEF, 0x6C, 0x6D, 0x6E, 0x6F})


def _is_fault(vector: int) -> bool:
    """Exceptions reported at the faulting instruction (RF is set in the EFLAGS they push)."""
    return vector not in (1, 3, 4)


def _slicer(ref) -> None:
    """Stop a guest that has computed for a whole SLICE_S without calling any hook, so that
    Python can run pending signal handlers; the emulation then simply goes on."""
    last = None
    pause = SLICE_S
    while True:
        time.sleep(pause)
        me = ref()
        if me is None or me._closed:
            return
        with me._uc_lock:
            if me._closed:
                return
            if me._emulating and me._insn_limit is None:
                # (While counting instructions, the counting hook runs at every block and
                # signal handlers with it; a stop from here could land inside that hook after
                # it counted a block that then does not run.)
                activity = me._activity
                if activity == last:
                    me._emu_stop()
                    last = None
                else:
                    last = activity
            else:
                last = None
            pause = me._slice_s
        del me


_EMULATOR_CPUID: list[dict] | None = None


def emulator_cpuid() -> list[dict]:
    """The emulator's own CPU (Unicorn's default x86-64 model), for hosts without KVM: its
    CPUID leaves, read by executing CPUID in a scratch emulator."""
    global _EMULATOR_CPUID
    if _EMULATOR_CPUID is None:
        _EMULATOR_CPUID = _probe_emulator_cpuid()
    return [dict(e) for e in _EMULATOR_CPUID]


def _probe_emulator_cpuid() -> list[dict]:
    unicorn, x86, _ = _import_unicorn()
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.mem_map(0, PAGE)
    uc.mem_write(0, b"\x0f\xa2")                     # cpuid

    def cpuid(function: int, index: int = 0) -> tuple[int, int, int, int]:
        uc.reg_write(x86.UC_X86_REG_RAX, function)
        uc.reg_write(x86.UC_X86_REG_RCX, index)
        uc.emu_start(0, 2)
        return tuple(uc.reg_read(r) & 0xFFFFFFFF for r in (
            x86.UC_X86_REG_RAX, x86.UC_X86_REG_RBX, x86.UC_X86_REG_RCX, x86.UC_X86_REG_RDX))

    def entry(function, values, index=0, flags=0):
        return {"function": function, "index": index, "flags": flags, "eax": values[0],
                "ebx": values[1], "ecx": values[2], "edx": values[3]}

    table = []
    for base in (0, 0x80000000):
        top = cpuid(base)[0]
        for function in range(base, min(top, base + 0x40) + 1):
            if function in (4, 7, 0xB, 0xD):
                for index in range(8):
                    values = cpuid(function, index)
                    if index and not any(values):
                        break
                    table.append(entry(function, values, index, KVM_CPUID_FLAG_SIGNIFCANT_INDEX))
            else:
                table.append(entry(function, cpuid(function)))
    return table


__all__ = ["EmuBackend", "EmulatorError", "emulator_cpuid"]
