# faults/garbage.s - real-mode raw guest executing an invalid opcode.
#
# Loaded at 0x1000 in real mode.  Prints "jumping into garbage\n" on the
# console, then executes ud2 (#UD).  There is no BIOS: what happens next
# depends on the VMM's IVT at 0x0 (vector 6); it should end the run as an
# error.

        .include "ports.inc"

        REAL_MODE_START
        PUTS    CONSOLE, "jumping into garbage\n"
        ud2
        HALT_FOREVER                    # not reached
