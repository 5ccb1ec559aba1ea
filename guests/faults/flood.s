# faults/flood.s - real-mode raw guest flooding the console.
#
# Loaded at 0x1000 in real mode.  Prints
# "flood flood flood flood flood flood flood flood\n" on the console
# forever (tests output limits / timeouts with a very chatty guest).

        .include "ports.inc"

        REAL_MODE_START
again:
        PUTS    CONSOLE, "flood flood flood flood flood flood flood flood\n"
        jmp     again
