# faults/outloop.s - real-mode raw guest that writes a port forever and never reads.
#
# Loaded at 0x1000 in real mode. It counts in AX and writes the count to the interval timer's
# period port (0x46, p3 board: a port that is no output device, so no write is batched and
# none counts toward --max-output) without end. Each OUT is an exit, but it never reads, so
# the observation counter stands still and guest time with it: only --max-exits (or the
# wall-clock --timeout) ends its run. Its state changes every iteration, so it is no spin.

        .code16
        .text
        .globl _start
_start:
        incw    %ax
        outw    %ax, $0x46
        jmp     _start
