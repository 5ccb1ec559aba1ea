# faults/rdtsc.s - real-mode raw guest for record/replay tests.
#
# Loaded at 0x1000 in real mode.  LOOPS times: rdtsc, print
# "tsc low bits: XXXX\n" (low 16 bits of EAX as 4 lowercase hex digits) on
# the console, then do POLLS `in al, 0x45` reads whose results are ignored.
# Halts afterwards.  The output is non-deterministic unless the VMM
# records/replays RDTSC; the keyboard reads are the other recorded input.

        .include "ports.inc"

        .set LOOPS, 3
        .set POLLS, 50

        REAL_MODE_START
        mov     $LOOPS, %bp             # BP = remaining iterations

next:
        rdtsc                           # EDX:EAX = TSC
        mov     %ax, %bx                # BX = low 16 bits
        PUTS    CONSOLE, "tsc low bits: "

        mov     $4, %cx                 # 4 hex digits, most significant first
hex_digit:
        rol     $4, %bx
        mov     %bl, %al
        and     $0x0f, %al
        add     $'0', %al
        cmp     $'9', %al
        jbe     1f
        add     $('a' - '9' - 1), %al
1:      out     %al, $CONSOLE
        loop    hex_digit
        mov     $ASCII_LF, %al
        out     %al, $CONSOLE

        mov     $POLLS, %cx
poll:
        in      $KBD_STATUS, %al        # result ignored
        loop    poll

        dec     %bp
        jnz     next
        HALT_FOREVER
