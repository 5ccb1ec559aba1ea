# reset-spin.s - reset-vector image that spins forever (watchdog test).
#
# 64 KiB image for `vmm run --entry reset`: loaded at 0xF0000, starts at
# F000:FFF0, which far-jumps to `start`.  `start` is a tight `jmp .`: the
# guest never causes a VM exit, so only the VMM's watchdog/timeout ends it.

        .include "ports.inc"
        .include "reset.inc"

        .code16
        .text
        .globl _start
_start:
start:
        jmp     .                       # no I/O, no exits, ever

        RESET_VECTOR start
