# Protected mode (vmm's flat entry): an IDT of its own; #GP and #UD handlers print their frame
# on port 0x81 and return past the faulting instruction with IRET.
    lidt idtr
    mov $0x1234, %ax
    mov %ax, %ds          # #GP(0x1234)
    mov $0x10, %ax
    mov %ax, %ds
    ud2                   # #UD, handler returns past it (2 bytes)
    mov $0xdead, %eax
    out %eax, $0x81
    hlt
gp_handler:
    pop %eax              # error code
    out %eax, $0x81
    mov (%esp), %eax      # eip
    out %eax, $0x81
    mov 4(%esp), %eax     # cs
    out %eax, $0x81
    mov 8(%esp), %eax     # eflags
    out %eax, $0x81
    addl $4, (%esp)       # skip mov %ax,%ds (2 bytes) + ... 
    subl $2, (%esp)
    iret
ud_handler:
    mov (%esp), %eax
    out %eax, $0x81
    mov 8(%esp), %eax
    out %eax, $0x81
    addl $2, (%esp)
    iret
.balign 8
idt:
    .fill 6, 8, 0
    .word ud_handler, 0x08
    .byte 0, 0x8e
    .word 0
    .fill 6, 8, 0
    .word gp_handler, 0x08
    .byte 0, 0x8e
    .word 0
idt_end:
idtr:
    .word idt_end - idt - 1
    .long idt
