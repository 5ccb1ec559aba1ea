# echo.s - reference guest for the console/keyboard/timer assignment.
#
# Real-mode raw binary, linked and loaded at 0x1000 (vmm boot default).
#
# Behaviour:
#   * programs the timer for 500 ms and enables it;
#   * prints nothing until the first Enter;
#   * event loop (forever, never halts):
#       - keyboard: poll KBD_STATUS; when a byte is latched, ack it
#         (OUT 0 to KBD_STATUS) FIRST, then IN KBD_DATA.
#           Enter ('\r' or '\n') commits the input buffer as "the line"
#                                (an empty line is allowed) and clears it;
#           backspace (0x08/0x7f) drops the last buffered char, if any;
#           any other byte is appended (buffer cap LINE_CAP, extra dropped).
#       - timer: poll TIMER_CTRL; when FIRED is set, ack (OUT 1) and, if a
#         line has been committed, print it followed by '\n' on CONSOLE.
#
# elf/echo.c (build/echo.elf) implements byte-identical behaviour in C.

        .include "ports.inc"

        .set LINE_CAP,  200             # input buffer capacity in bytes
        .set TIMER_MS,  500             # timer period in milliseconds
        .set STACK_SIZE, 512

        .code16
        .text
        .globl _start
_start:
        cld
        xor     %ax, %ax                # flat real mode: everything in seg 0
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $stack_top, %sp

        movw    $0, input_len           # raw image: .bss is not loaded,
        movw    $0, line_len            # so initialise state explicitly
        movb    $0, have_line

        mov     $TIMER_MS, %ax          # 16-bit OUT: period in ms
        out     %ax, $TIMER_PERIOD
        mov     $TIMER_ENABLE, %al
        out     %al, $TIMER_CTRL

main_loop:
        # ---- keyboard ----------------------------------------------------
        in      $KBD_STATUS, %al
        test    $KBD_READY, %al
        jz      check_timer
        mov     $KBD_ACK, %al           # ack FIRST ...
        out     %al, $KBD_STATUS
        in      $KBD_DATA, %al          # ... then fetch the byte
        call    handle_key

check_timer:
        # ---- timer -------------------------------------------------------
        in      $TIMER_CTRL, %al
        test    $TIMER_FIRED, %al
        jz      main_loop
        mov     $TIMER_ENABLE, %al      # ack: bit1 clear, bit0 (enable) set
        out     %al, $TIMER_CTRL
        cmpb    $0, have_line
        je      main_loop
        call    print_line
        jmp     main_loop

# handle_key: AL = byte from the keyboard.  Clobbers BX, CX, SI, DI.
handle_key:
        cmp     $ASCII_CR, %al
        je      commit_line
        cmp     $ASCII_LF, %al
        je      commit_line
        cmp     $ASCII_BS, %al
        je      backspace
        cmp     $ASCII_DEL, %al
        je      backspace
        mov     input_len, %bx          # append unless the buffer is full
        cmp     $LINE_CAP, %bx
        jae     1f
        mov     %al, input(%bx)
        inc     %bx
        mov     %bx, input_len
1:      ret

backspace:
        cmpw    $0, input_len
        je      1f
        decw    input_len
1:      ret

commit_line:                            # line := input; input := ""
        mov     input_len, %cx
        mov     %cx, line_len
        mov     $input, %si
        mov     $line, %di
        rep movsb
        movw    $0, input_len
        movb    $1, have_line
        ret

# print_line: write the committed line and '\n' to the console.
# Clobbers AL, CX, SI.
print_line:
        mov     $line, %si
        mov     line_len, %cx
        jcxz    2f
1:      lodsb
        out     %al, $CONSOLE
        loop    1b
2:      mov     $ASCII_LF, %al
        out     %al, $CONSOLE
        ret

        .bss
input_len:      .skip 2                 # bytes in input[]
line_len:       .skip 2                 # bytes in line[]
have_line:      .skip 1                 # 1 once Enter has been pressed
input:          .skip LINE_CAP          # line being typed
line:           .skip LINE_CAP          # last committed line
        .balign 16
stack:          .skip STACK_SIZE
stack_top:
