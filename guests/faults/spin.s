# faults/spin.s - real-mode raw guest that spins forever (timeout test).
#
# Loaded at 0x1000 in real mode.  A bare `jmp .`: no port I/O and no VM
# exits at all, so the run only ends through the VMM's --timeout.

        .code16
        .text
        .globl _start
_start:
        jmp     .
