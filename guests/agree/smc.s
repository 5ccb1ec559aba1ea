# agree/smc.s - self-modifying I/O code (issue 12: the backends must agree).
#
# A raw image at 0x1000, entered in real mode. Executes the two bytes at `site` twice: first
# as INSB followed by a NOP (6c 90: one read of the keyboard data port, one observation), then,
# after rewriting them to REP INSB (f3 6c) with CX = 4, as one string read of 4 bytes (one
# chunk: one observation). So the run makes 2 observations, on KVM and on the emulator alike:
# an emulator that decoded the instruction at that RIP once and kept it would see 4 INSBs.
# Prints "smc done" and halts.

        .include "ports.inc"

        REAL_MODE_START
        mov     %ax, %es
        mov     $KBD_DATA, %dx
        mov     $2, %bp
again:
        mov     $0x3000, %di
        mov     $4, %cx
site:   insb
        nop
        movw    $0x6cf3, site           # rep insb
        dec     %bp
        jnz     again
        PUTS    CONSOLE, "smc done\n"
        HALT_FOREVER
