"""The exception hierarchy and the exit codes of the `vmm` command.

    VmmError                      anything vmm reports to a user (one line, no traceback)
    ├── UsageError                a flag or argument makes no sense            exit 2
    ├── GuestImageError           the guest file cannot be booted              exit 10
    ├── BackendUnavailable        no usable /dev/kvm (or other CPU backend)    exit 12
    ├── GdbSetupError             --gdb cannot listen (port in use, bad host)  exit 16
    ├── TraceError                a trace file is unreadable or malformed      exit 14
    └── Terminated                SIGTERM arrived outside a run                 exit 143

How a *run* ends is not an exception but a `RunEnd` (vmm.machine), whose reason maps to an exit
code in `EXIT_CODES`. vmm's own codes are all even, so they never collide with the odd codes
(v << 1) | 1 of the isa-debug-exit device at port 0xf4.
"""

from __future__ import annotations


class VmmError(Exception):
    """Base of everything the CLI turns into a one-line message and an exit code."""
    exit_code = 1


class UsageError(VmmError):
    exit_code = 2


class GuestImageError(VmmError):
    exit_code = 10


class BackendUnavailable(VmmError):
    exit_code = 12


class GdbSetupError(VmmError):
    """The debugger cannot be offered: the port is in use, the address is not this host's."""
    exit_code = 16


class TraceError(VmmError):
    exit_code = 14


class Terminated(VmmError):
    """SIGTERM outside a run (a run turns it into its own orderly end)."""
    exit_code = 143


# Exit codes for the ways a run ends (RunEnd.reason -> code). See docs/exit-codes in README.
EXIT_CODES = {
    "halt": 0,             # the guest executed HLT
    "shutdown": 0,         # pc board: ACPI power-off (0x604, 0xb004) or Bochs' 0x8900 string
    "idle": 0,             # virtual clock: the guest waits for input and nothing is scheduled
    "quit": 36,            # the user pressed the quit key (Ctrl-]); or stdout was closed: 0
    # "exit-device": (v << 1) | 1, computed from the value written to port 0xf4 (or, on the
    #                pc board, to 0x501: QEMU's isa-debug-exit at its default address)
    "triple-fault": 20,
    "guest-exception": 22,  # an exception or software interrupt reached vmm's default handlers
    "memory-outside-ram": 24,
    "unknown-port": 26,
    "timeout": 28,         # --timeout (wall clock) ran out
    "spin": 50,            # the guest loops forever with no I/O in a state that repeats exactly
    "max-time": 28,        # --max-time (virtual clock) ran out
    "max-observations": 28,  # the guest-work budgets: --max-observations (reads),
    "max-exits": 28,         # --max-exits (I/O operations and halts),
    "max-instructions": 28,  # --max-instructions (the emulator)
    "script-end": 0,       # --script: the last step is done and the guest went idle
    "session-end": 0,      # harness.session: the test closed the session
    "expect-failed": 34,   # --script: an expect step's text did not appear in time
    "output-flood": 30,    # more console output than --max-output
    "kvm-error": 32,       # failed VM entry, KVM internal error, unknown exit
    "diverged": 40,        # vmm replay: the guest did something other than the recording
    "redrive-differs": 41,  # vmm replay --guest: console output differs from the recording
    "truncated-end": 42,   # vmm replay: a truncated trace's prefix replayed identically
    "debugger": 44,        # vmm replay --gdb: gdb wrote into the replay, which left its trace
    "stop-at-unreached": 46,  # vmm replay --stop-at N: the run ended before observation N
    "cannot-run": 48,      # vmm replay: this backend cannot execute the guest (a KVM internal
                           # error or emulation failure where the recording went on)
    "reset": 52,           # the guest reset the machine: 8042 command 0xfe (or another pulse of
                           # output line 0), 8042 output port bit 0 cleared (0xd1), or port
                           # 0x92's fast reset (bit 0 going 0 -> 1); vmm ends the run there, as
                           # QEMU does with -no-reboot
    "interrupted": 130,    # SIGINT / Ctrl-C
    "terminated": 143,     # SIGTERM
}
