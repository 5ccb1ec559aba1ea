# print-spin.s - test guest: prints one line on the console, then spins without an exit.
#
# Real-mode raw guest loaded at 0x1000. With the console batched, the line sits in the ring
# until something returns from KVM_RUN: the watchdog's tick must bring it out.

        .include "ports.inc"

        REAL_MODE_START
        PUTS    CONSOLE, "printed, now spinning\n"
1:      jmp     1b
