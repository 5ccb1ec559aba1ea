# output.s - bench guest: LINES lines of console output, then HLT.
#
# Real-mode raw guest loaded at 0x1000. Each line is 63 printable characters and '\n' (64
# bytes), written to PORT (default the debug console, 0xe9) one `out %al, %dx` per byte, or
# with REP=1 one `rep outsb` per line. Build:
#   as --32 -I guests/include --defsym LINES=N [--defsym PORT=0x42] [--defsym REP=1]

        .include "ports.inc"
        .ifndef PORT
        .set PORT, DEBUG_CON
        .endif
        .ifndef REP
        .set REP, 0
        .endif

        REAL_MODE_START
        mov     $PORT, %dx
        mov     $LINES, %ebx
        test    %ebx, %ebx
        jz      3f
1:      mov     $line, %si
        mov     $line_len, %cx
        .if REP
        rep outsb
        .else
2:      lodsb
        out     %al, %dx
        loop    2b
        .endif
        dec     %ebx
        jnz     1b
3:      HALT_FOREVER

line:   .ascii  "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.\n"
        .set    line_len, . - line
