"""The CPU-backend interface (DESIGN §7) and the typed exits a backend returns.

Everything KVM-specific lives behind `CpuBackend`: create a machine with guest RAM, load the
entry state, run until the next exit, read registers. The run loop, the devices and the boot
code speak only the neutral types below, so that an emulator backend can be added later and one
trace replays identically on either.
"""

from __future__ import annotations

import struct
from ..record_type import Record, factory


# --- the entry state: what a CPU looks like when the guest's first instruction runs ---------
class Segment(Record, frozen=True):
    """A segment register with its hidden descriptor cache (the architectural fields)."""
    selector: int
    base: int
    limit: int
    type: int          # 4-bit descriptor type: 0xB = code exec/read accessed, 0x3 = data rw accessed
    present: int = 1
    dpl: int = 0
    db: int = 0        # default operand size 32-bit
    s: int = 1         # code/data (not system)
    l: int = 0         # 64-bit code
    g: int = 0         # limit in 4 KiB units

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class EntryState(Record, frozen=True):
    """Registers at the first instruction. General-purpose registers not listed are zero."""
    mode: str                       # "real" | "protected" | "long"
    rip: int
    rsp: int
    cs: Segment
    ds: Segment
    ss: Segment
    gdt: tuple[int, int] = (0, 0xFFFF)      # (base, limit)
    idt: tuple[int, int] = (0, 0x3FF)
    cr0: int = 0x60000010                   # the reset value: CD | NW | ET
    cr3: int = 0
    cr4: int = 0
    efer: int = 0
    rflags: int = 0x2
    rax: int = 0                            # boot protocols hand values over in EAX/EBX
    rbx: int = 0                            # (multiboot: magic and information address)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        for name in ("cs", "ds", "ss"):
            d[name] = getattr(self, name).to_dict()
        d["gdt"], d["idt"] = list(self.gdt), list(self.idt)
        for name in ("rax", "rbx"):       # only where a boot protocol set them: older traces
            if not d[name]:               # hold no such fields
                del d[name]
        return d


# --- register snapshots for reports and checkpoints ------------------------------------------
GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")
_RFLAGS_INDEX = GPR_NAMES.index("rflags")
# RFLAGS bits a register digest leaves out (trace format 3 on): the six arithmetic status flags
# (CF PF AF ZF SF OF), which many instructions leave undefined and which CPUs and the emulator
# set differently, and RF, which hypervisors set differently at string I/O and faults.
DIGEST_RFLAGS_IGNORED = 0x8D5 | (1 << 16)


def register_digest(gprs: list[int], control: tuple[int, ...], legacy: bool = False) -> str:
    """The digest of the architectural registers in a checkpoint: `gprs` in GPR_NAMES order
    (RFLAGS without DIGEST_RFLAGS_IGNORED; `legacy`: all of it, as traces of format versions
    1 and 2 hold it), then `control`: CS base and selector, CR0, CR3, CR4, EFER."""
    import hashlib          # here, not at the top: OpenSSL's load is off `vmm run`'s path
    if not legacy:
        gprs[_RFLAGS_INDEX] &= ~DIGEST_RFLAGS_IGNORED
    return hashlib.sha256(_DIGEST_LAYOUT.pack(*gprs, *control)).hexdigest()[:16]


_DIGEST_LAYOUT = struct.Struct(f"<{len(GPR_NAMES) + 6}Q")


class CpuState(Record):
    """General registers plus the control state a report needs."""
    regs: dict[str, int]
    cs_base: int = 0
    cs_selector: int = 0
    cr0: int = 0
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    efer: int = 0
    extra: dict[str, int] = factory(dict)

    @property
    def rip(self) -> int:
        return self.regs["rip"]

    @property
    def linear_rip(self) -> int:
        """The linear address of RIP (CS base + RIP), which is what matters in real mode."""
        return (self.cs_base + self.regs["rip"]) & 0xFFFFFFFFFFFFFFFF

    def digest(self, legacy: bool = False) -> str:
        """A digest of the architectural registers, for replay checkpoints (register_digest)."""
        return register_digest([self.regs[name] for name in GPR_NAMES],
                               (self.cs_base, self.cs_selector, self.cr0, self.cr3, self.cr4,
                                self.efer), legacy)

    def format(self) -> str:
        """Registers as a short multi-line block for error reports."""
        r = self.regs
        lines = [
            "  rax=%016x rbx=%016x rcx=%016x rdx=%016x" % (r["rax"], r["rbx"], r["rcx"], r["rdx"]),
            "  rsi=%016x rdi=%016x rsp=%016x rbp=%016x" % (r["rsi"], r["rdi"], r["rsp"], r["rbp"]),
            "  rip=%016x rflags=%08x cs=%04x(base %x) cr0=%08x cr3=%08x cr4=%08x efer=%x" % (
                r["rip"], r["rflags"], self.cs_selector, self.cs_base, self.cr0, self.cr3,
                self.cr4, self.efer),
        ]
        return "\n".join(lines)


# --- typed exits -------------------------------------------------------------------------------
class Exit:
    __slots__ = ()


class IoOut(Exit):
    """The guest wrote `data` (size * count bytes: string OUT writes count elements) to `port`."""
    __slots__ = ("port", "size", "data")

    def __init__(self, port: int, size: int, data: bytes):
        self.port, self.size, self.data = port, size, data


class IoIn(Exit):
    """The guest reads `count` elements of `size` bytes from `port`; answer with complete_in()."""
    __slots__ = ("port", "size", "count")

    def __init__(self, port: int, size: int, count: int):
        self.port, self.size, self.count = port, size, count


class Halt(Exit):
    __slots__ = ()


class Shutdown(Exit):
    """Triple fault (or another reason the CPU shut down)."""
    __slots__ = ()


class Mmio(Exit):
    """An access to guest-physical memory that is not RAM."""
    __slots__ = ("address", "is_write", "length", "data")

    def __init__(self, address: int, is_write: bool, length: int, data: bytes):
        self.address, self.is_write, self.length, self.data = address, is_write, length, data


class FailEntry(Exit):
    __slots__ = ("reason",)

    def __init__(self, reason: int):
        self.reason = reason


class InternalError(Exit):
    __slots__ = ("suberror", "data")

    def __init__(self, suberror: int, data: tuple[int, ...]):
        self.suberror, self.data = suberror, data


class Interrupted(Exit):
    """A host signal (watchdog kick, Ctrl-C) returned control; the guest did nothing."""
    __slots__ = ()


class UnknownExit(Exit):
    __slots__ = ("reason",)

    def __init__(self, reason: int):
        self.reason = reason


class IrqWindow(Exit):
    """The guest can take an external interrupt now (asked for with
    request_interrupt_window): interrupts are enabled and no instruction shadow (after STI or
    MOV SS) blocks them. A deterministic point: the same instruction boundary on every run."""
    __slots__ = ()


class DebugStop(Exit):
    """Under a debugger (vmm.gdb): the guest stopped between two instructions, because the
    instruction budget ran out, a breakpoint's instruction is next, or a watched location
    changed. `CpuBackend.debug.reason` says which."""
    __slots__ = ()


class InstructionLimit(Exit):
    """The guest used up its instruction budget (set_instruction_limit, the emulator only):
    the next translated block would take it past the limit. A deterministic point."""
    __slots__ = ()


class InstructionDeadline(Exit):
    """Instruction-count mode (the emulator): the count reached the deadline set with
    set_instruction_deadline, or, while watch_interrupt_window is on, the guest can take an
    interrupt now. At the start of a translated block, before it runs: a deterministic point,
    where the count is the same on every run."""
    __slots__ = ()


HALT, SHUTDOWN, INTERRUPTED, DEBUG_STOP = Halt(), Shutdown(), Interrupted(), DebugStop()
INSTRUCTION_LIMIT = InstructionLimit()
INSTRUCTION_DEADLINE = InstructionDeadline()
IRQ_WINDOW = IrqWindow()


class DebugState:
    """What a backend under a debugger counts and checks, the same on every backend.

    `steps` counts completed instructions (a REP string instruction counts once per iteration,
    as the CPU single-steps it) since debugging began. After each completed instruction the
    backend calls `completed(linear_rip)`; True means: stop here, before the instruction at
    `linear_rip`, and return DEBUG_STOP. The position it stops at never depends on when the
    host looked, so a replay re-executed to the same step count is in the same state."""

    def __init__(self):
        self.steps = 0
        self.target: int | None = None           # stop once `steps` reaches this
        self.breakpoints: frozenset[int] = frozenset()   # linear addresses
        self.watches: list[list] = []            # [physical, length, bytes then, linear, kind]
        self.reason: tuple = ("step",)
        self.memory = None
        self.count = False      # count every instruction even with nothing to stop at (replays)

    @property
    def needs_every_step(self) -> bool:
        return (self.count or self.target is not None or bool(self.breakpoints)
                or bool(self.watches))

    def completed(self, linear_rip: int) -> bool:
        self.steps += 1
        if self.watches:
            memory = self.memory
            for w in self.watches:
                now = bytes(memory[w[0]:w[0] + w[1]])
                if now != w[2]:
                    w[2] = now
                    self.reason = ("watch", w[3], w[4])
                    return True
        if linear_rip in self.breakpoints:
            self.reason = ("break", linear_rip)
            return True
        if self.target is not None and self.steps >= self.target:
            self.reason = ("step",)
            return True
        return False


class CpuBackend:
    """What the run loop needs from a CPU. Implementations: vmm.cpu.kvm_backend.KvmBackend,
    vmm.cpu.emu_backend.EmuBackend (vmm.runner.create_backend picks one)."""

    name = "abstract"
    memory: memoryview  # guest RAM, guest-physical address 0 upwards

    def set_cpuid(self, entries: list[dict]) -> None:
        raise NotImplementedError

    def set_entry_state(self, state: EntryState) -> None:
        raise NotImplementedError

    def run(self) -> Exit:
        """Run the guest until the next exit and return it. The exit object may be reused by
        the next run(): handle it before calling again."""
        raise NotImplementedError

    # --- coalesced output (optional): OUTs to output-only ports without an exit each ----------
    coalesced_sink = None   # sink(port, size, data), set by the machine before registering

    def register_coalesced_pio(self, port: int, size: int = 1) -> bool:
        """Batch OUTs of at most `size` bytes to port..port+size-1 instead of exiting for each.
        A backend that can returns True and from then on hands every batched write to
        `coalesced_sink(port, size, data)` (data: size * count bytes, like a string OUT), in
        the guest's order, before run() returns the next exit, so the run loop sees the same
        OUTs in the same order as without batching. False: not supported, every OUT exits."""
        return False

    def unregister_coalesced_pio(self, port: int, size: int = 1) -> None:
        """Stop batching OUTs to the port (writes already batched are still delivered)."""

    def drain_coalesced(self) -> None:
        """Deliver batched writes now (the run loop calls this when a run ends)."""

    def complete_in(self, data: bytes) -> None:
        """Provide the data for the IoIn exit just returned by run()."""
        raise NotImplementedError

    def cpu_state(self) -> CpuState:
        raise NotImplementedError

    def register_digest(self, legacy: bool = False) -> str:
        """cpu_state().digest(legacy), for a checkpoint: a backend may read just what it needs."""
        return self.cpu_state().digest(legacy)

    # --- external interrupts (DESIGN §10): injected only at exits the guest caused ------------
    def interrupt_ready(self) -> bool:
        """At an exit: whether the guest can take an external interrupt before its next
        instruction (RFLAGS.IF set, no STI/MOV SS shadow, nothing already being injected)."""
        raise NotImplementedError(f"the {self.name} backend has no interrupt injection")

    def inject_interrupt(self, vector: int) -> None:
        """Deliver external interrupt `vector` through the guest's IVT/IDT before its next
        instruction; only when interrupt_ready(). A HLT the guest is in is left (the handler's
        IRET returns past it), as on a CPU woken by an interrupt."""
        raise NotImplementedError(f"the {self.name} backend has no interrupt injection")

    def interrupt_pending(self) -> bool:
        """Whether an interrupt inject_interrupt() gave is still to be delivered (the guest has
        not run since). Asked between exits, not on the hot path."""
        raise NotImplementedError(f"the {self.name} backend has no interrupt injection")

    def request_interrupt_window(self, on: bool) -> None:
        """With on=True, run() returns IRQ_WINDOW at the first instruction boundary where the
        guest can take an interrupt (at once if it can now)."""
        raise NotImplementedError(f"the {self.name} backend has no interrupt injection")

    # --- an instruction budget (optional: the emulator) ----------------------------------------
    counts_instructions = False    # whether set_instruction_limit() is supported
    instructions = 0               # counted so far, once a limit is set

    def set_instruction_limit(self, limit: int) -> None:
        """From now on count the instructions the guest executes in `instructions`, a whole
        translated block at a time (at the block's start, as QEMU's icount does), and return
        INSTRUCTION_LIMIT from run() before a block that would take the count past `limit`.
        The count is a function of the guest's execution only: the same on every run."""
        raise NotImplementedError(f"the {self.name} backend cannot count instructions")

    def set_instruction_deadline(self, count: int | None) -> None:
        """Once counting (set_instruction_limit): return INSTRUCTION_DEADLINE from run() at the
        first translated block's start where `instructions` >= `count` (None: no deadline).
        The block has not run yet; the count is that of the blocks before it."""
        raise NotImplementedError(f"the {self.name} backend cannot count instructions")

    def watch_interrupt_window(self, on: bool) -> None:
        """Once counting: with on=True, also return INSTRUCTION_DEADLINE at the first block's
        start where the guest can take an external interrupt (interrupts enabled, no STI or
        MOV SS shadow), for an interrupt that came while it could not."""
        raise NotImplementedError(f"the {self.name} backend cannot count instructions")

    def halt_view(self) -> tuple[int, int]:
        """At a HLT exit: (the linear RIP, RFLAGS), all the run loop needs to tell an idle HLT
        from one of vmm's stubs; cheaper than cpu_state() where a backend can."""
        cpu = self.cpu_state()
        return cpu.linear_rip, cpu.regs["rflags"]

    def prompt_kicks(self, on: bool) -> None:
        """With on=True, a kick() should take effect within a few milliseconds even while the
        guest makes no exit (the machine is waiting to catch an idle spin); off: the usual
        latency. A hint: KVM's kicks are always immediate."""

    def kick(self) -> None:
        """Make the current or next run() return Interrupted soon; async-signal safe."""
        raise NotImplementedError

    def memory_digest(self) -> str:
        from ..trace import memory_digest
        return memory_digest(self.memory)

    def close(self) -> None:
        raise NotImplementedError

    # --- debugging (optional; vmm.gdb) -------------------------------------------------------
    debug: DebugState | None = None     # set by debug_begin()

    def debug_begin(self) -> DebugState:
        """From now on run() counts instructions in `debug.steps` and returns DEBUG_STOP where
        `debug` says to stop. Costs nothing until called."""
        raise NotImplementedError(f"the {self.name} backend cannot be debugged")

    def debug_end(self) -> None:
        """Leave debug mode: run() no longer counts or stops, and costs what it did before
        debug_begin(). The guest stays where it is (between two instructions)."""
        raise NotImplementedError(f"the {self.name} backend cannot be debugged")

    def debug_registers(self) -> dict[str, int]:
        """GPR_NAMES plus the segment selectors cs ss ds es fs gs, fs_base, gs_base, and the
        control registers cr0 cr2 cr3 cr4 efer."""
        raise NotImplementedError

    def set_debug_registers(self, values: dict[str, int]) -> None:
        """Write general registers, RIP and RFLAGS (names of GPR_NAMES)."""
        raise NotImplementedError

    def debug_write_memory(self, physical: int, data: bytes) -> None:
        """Write guest RAM for the debugger (so that translated code is invalidated too)."""
        self.memory[physical:physical + len(data)] = data
