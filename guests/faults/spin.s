# faults/spin.s - real-mode raw guest that spins forever in one state.
#
# Loaded at 0x1000 in real mode.  A bare `jmp .`: no port I/O and no VM
# exits at all. Its state never changes, so vmm finds the loop at its next
# watchdog tick and ends the run (reason "spin", exit 50) without waiting for
# --timeout. faults/busy.s is the guest that only --timeout ends.

        .code16
        .text
        .globl _start
_start:
        jmp     .
