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
#
# Mutants for validating the grader (build/mutants/echo-*.bin, assembled with
# --defsym MUTANT_<name>=1; each breaks one rule of the assignment):
#   no_ack        never acks the keyboard        no_timer    never enables the timer
#   echo_once     echoes a line only once        drop_last   drops the last character
#   early_print   prints before Enter            one_line    ignores a second line
#   spin          spins forever after an echo    triple_fault  triple-faults at Enter
# and correct guests with other timer periods (build/periods/echo-<N>ms.bin, --defsym
# PERIOD_MS=N), which a fair rubric must give full marks.

        .include "ports.inc"

        .set LINE_CAP,  200             # input buffer capacity in bytes
.ifdef PERIOD_MS                        # --defsym PERIOD_MS=N: any period the spec allows
        .set TIMER_MS,  PERIOD_MS
.else
        .set TIMER_MS,  500             # timer period in milliseconds
.endif
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
.ifndef MUTANT_no_timer
        mov     $TIMER_ENABLE, %al
        out     %al, $TIMER_CTRL
.endif
.ifdef MUTANT_early_print
        PUTS    CONSOLE, "echo ready\n"
.endif

main_loop:
        # ---- keyboard ----------------------------------------------------
        in      $KBD_STATUS, %al
        test    $KBD_READY, %al
        jz      check_timer
.ifndef MUTANT_no_ack
        mov     $KBD_ACK, %al           # ack FIRST ...
        out     %al, $KBD_STATUS
.endif
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
.ifdef MUTANT_echo_once
        movb    $0, have_line
.endif
.ifdef MUTANT_spin
        jmp     .                       # never comes back
.endif
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
.ifdef MUTANT_triple_fault
        jmp     triple_fault
.endif
.ifdef MUTANT_one_line
        cmpb    $0, have_line           # a second line is dropped
        je      1f
        movw    $0, input_len
        ret
1:
.endif
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
.ifdef MUTANT_drop_last
        jcxz    2f
        dec     %cx
.endif
        jcxz    2f
1:      lodsb
        out     %al, $CONSOLE
        loop    1b
2:      mov     $ASCII_LF, %al
        out     %al, $CONSOLE
        ret

.ifdef MUTANT_triple_fault
# Enter protected mode with an empty IDT and execute ud2: #UD -> #GP -> #DF ->
# shutdown (this host's real-mode emulation ignores the IDT limit, so the
# fault has to happen in protected mode; see faults/triple.s).
triple_fault:
        cli
        lgdt    tf_gdtr
        lidt    tf_idtr
        mov     %cr0, %eax
        or      $1, %eax
        mov     %eax, %cr0
        ljmp    $0x08, $tf_pmode
        .code32
tf_pmode:
        ud2
        .code16
        .balign 8
tf_gdt: .quad   0, 0x00cf9b000000ffff, 0x00cf93000000ffff
tf_gdtr:
        .word   3 * 8 - 1
        .long   tf_gdt
tf_idtr:
        .word   0
        .long   0
.endif

        .bss
input_len:      .skip 2                 # bytes in input[]
line_len:       .skip 2                 # bytes in line[]
have_line:      .skip 1                 # 1 once Enter has been pressed
input:          .skip LINE_CAP          # line being typed
line:           .skip LINE_CAP          # last committed line
        .balign 16
stack:          .skip STACK_SIZE
stack_top:
