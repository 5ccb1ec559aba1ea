# elf/crt32.s - startup code for the 32-bit C guests (ELF32).
#
# vmm enters at e_entry in 32-bit protected mode with flat code/data
# segments and paging off.  We switch to our own stack in .bss, zero .bss
# (do not rely on the loader for that), call main() and halt if it returns.

        .set STACK_SIZE, 16384

        .code32
        .section .text.start, "ax"
        .globl _start
_start:
        cld
        mov     $stack_top, %esp
        mov     $__bss_start, %edi      # zero .bss (the stack included:
        mov     $__bss_end, %ecx        # nothing has been pushed yet)
        sub     %edi, %ecx
        xor     %eax, %eax
        rep stosb
        call    main
1:      hlt
        jmp     1b

        .bss
        .balign 16
stack:  .skip   STACK_SIZE
stack_top:
