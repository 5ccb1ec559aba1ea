# Long mode: an IDT of its own; a #GP (with error code) and a #PF (error code, CR2) handler
# print their frame on port 0x81 and return with IRETQ.
    lidt idtr(%rip)
    mov $0x1234, %ax
    mov %ax, %ds
    movabs $0x40000000, %rbx
    movl $5, (%rbx)          # #PF (not mapped by vmm's tables? 16M RAM identity mapped 1GiB? maps 1 PD per GiB so 0x40000000 is unmapped)
    mov $0xdead, %eax
    out %eax, $0x81
    hlt
gp_handler:
    pop %rax
    out %eax, $0x81
    mov (%rsp), %rax
    out %eax, $0x81
    mov 8(%rsp), %rax
    out %eax, $0x81
    mov 16(%rsp), %rax
    out %eax, $0x81
    mov 24(%rsp), %rax
    out %eax, $0x81
    mov 32(%rsp), %rax
    out %eax, $0x81
    addq $2, (%rsp)
    iretq
pf_handler:
    pop %rax
    out %eax, $0x81
    mov %cr2, %rax
    out %eax, $0x81
    mov (%rsp), %rax
    out %eax, $0x81
    addq $6, (%rsp)
    iretq
.balign 16
idt:
    .fill 26, 8, 0
    .word gp_handler, 0x18
    .byte 0, 0x8e
    .word 0
    .long 0, 0
    .word pf_handler, 0x18
    .byte 0, 0x8e
    .word 0
    .long 0, 0
idt_end:
idtr:
    .word idt_end - idt - 1
    .quad idt
