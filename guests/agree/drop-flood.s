# agree/drop-flood.s - a flood of non-printable console output (issue 12: every run ends). The
# console drops the byte 0x01; dropped bytes count toward --max-output, so the run ends by
# output-flood like a flood of text.

        .include "ports.inc"

        REAL_MODE_START
        PUTS    CONSOLE, "dropping\n"
        mov     $1, %al
1:      out     %al, $CONSOLE
        jmp     1b
