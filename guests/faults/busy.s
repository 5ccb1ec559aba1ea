# faults/busy.s - real-mode raw guest that computes forever without I/O (timeout test).
#
# Loaded at 0x1000 in real mode. It counts in EDX:EAX and never reads, writes a port or
# halts, so only the VMM's --timeout (or a signal) ends its run. Unlike faults/spin.s, its
# state never comes round again (the 64-bit count repeats after 2^64 iterations), so vmm
# cannot tell that it is stuck: this is the guest for testing host-side stops.

        .code16
        .text
        .globl _start
_start:
        addl    $1, %eax
        adcl    $0, %edx
        jmp     _start
