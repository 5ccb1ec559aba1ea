# com1-dlab.s - test guest: COM1 output around divisor-latch writes, with reads in between.
#
# Real-mode raw guest loaded at 0x1000. Prints on COM1's THR (0x3f8), sets LCR.DLAB and writes
# the divisor latch through the same port 0x3f8 (and 0x3f9), clears DLAB, prints again, reads
# the scratch register (an IN: an observation), prints on the console, and halts. With 0x3f8
# batched (coalesced PIO), the divisor byte must still reach the divisor latch, not the output.

        .include "ports.inc"
        .include "puts_dx.inc"

        .set LCR, 0x3fb
        .set SCR, 0x3ff

        REAL_MODE_START
        mov     $COM1, %dx
        PUTS_DX "before dlab "
        mov     $LCR, %dx
        mov     $0x83, %al              # DLAB set, 8N1
        out     %al, %dx
        mov     $COM1, %dx
        mov     $0x0c, %al              # divisor low: 9600 baud
        out     %al, %dx
        inc     %dx
        xor     %al, %al                # divisor high
        out     %al, %dx
        mov     $LCR, %dx
        mov     $0x03, %al              # DLAB clear, 8N1
        out     %al, %dx
        mov     $COM1, %dx
        PUTS_DX "after dlab\n"
        mov     $SCR, %dx
        in      %dx, %al
        mov     $COM1, %dx
        PUTS_DX "after a read\n"
        PUTS    CONSOLE, "console line\n"
        HALT_FOREVER
