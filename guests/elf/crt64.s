# elf/crt64.s - startup code for the 64-bit C guests (ELF64).
#
# vmm enters at e_entry in long mode (identity-mapped RAM, code 0x18, data
# 0x10).  We switch to our own 16-byte aligned stack in .bss, zero .bss,
# call main() and halt if it returns.

        .set STACK_SIZE, 16384

        .code64
        .section .text.start, "ax"
        .globl _start
_start:
        cld
        mov     $stack_top, %rsp        # 16-byte aligned before the call
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
