# faults/exit.s - real-mode raw guest using the exit device.
#
# Loaded at 0x1000 in real mode.  Prints "exiting with 0x21\n" on the
# console, then writes 0x21 to the exit port 0xf4: vmm ends the run with
# exit status (0x21 << 1) | 1 = 0x43 (67).  Halts if it ever returns.

        .include "ports.inc"

        .set EXIT_VALUE, 0x21

        REAL_MODE_START
        PUTS    CONSOLE, "exiting with 0x21\n"
        mov     $EXIT_VALUE, %al
        out     %al, $EXIT_PORT
        HALT_FOREVER
