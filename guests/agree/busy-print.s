# agree/busy-print.s - a guest busy printing between polls (issue 12: an idle end only where
# the guest truly waits). 100 times: print "line N" (N a digit, cycling), then poll the keyboard
# status port once. Then it polls the status port forever: there it truly waits, and a run
# under the virtual clock with no input ends as idle, after all 100 lines.

        .include "ports.inc"

        REAL_MODE_START
        mov     $100, %bp
        xor     %bx, %bx
1:      PUTS    CONSOLE, "line "
        mov     %bl, %al
        add     $'0', %al
        out     %al, $CONSOLE
        mov     $ASCII_LF, %al
        out     %al, $CONSOLE
        inc     %bl
        cmp     $10, %bl
        jb      2f
        xor     %bl, %bl
2:      in      $KBD_STATUS, %al
        dec     %bp
        jnz     1b
3:      in      $KBD_STATUS, %al
        jmp     3b
