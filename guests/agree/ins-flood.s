# agree/ins-flood.s - a REP INSB flood (issue 12: every run ends). Reads the keyboard's data
# port into ES:DI = 2000:fff0 .. 2000:fffe, 15 bytes up to the end of the segment, again and
# again; each REP INSB is one chunk, one observation. Ends at --max-time under the virtual clock.

        .include "ports.inc"

        REAL_MODE_START
        mov     $0x2000, %ax
        mov     %ax, %es
        mov     $KBD_DATA, %dx
        PUTS    CONSOLE, "flooding\n"
1:      mov     $0xfff0, %di
        mov     $15, %cx
        rep insb
        jmp     1b
