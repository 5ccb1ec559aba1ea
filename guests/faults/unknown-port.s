# faults/unknown-port.s - real-mode raw guest writing to an unknown port.
#
# Loaded at 0x1000 in real mode.  Announces itself on the console, then
# writes the byte 0x5a to port 0x1234 (through DX), which no device
# claims: vmm must end the run with an error.  Halts if it ever returns.

        .include "ports.inc"

        .set UNKNOWN_PORT,  0x1234
        .set UNKNOWN_VALUE, 0x5a

        REAL_MODE_START
        PUTS    CONSOLE, "about to touch port 0x1234\n"
        mov     $UNKNOWN_PORT, %dx
        mov     $UNKNOWN_VALUE, %al
        out     %al, %dx
        HALT_FOREVER
