# Long mode: GDT with ring-3 segments and a TSS; IRETQ to ring 3, where HLT raises #GP(0):
# the ring-0 handler (stack from TSS.RSP0) prints the whole frame on port 0x81.
    lgdt gdtr(%rip)
    lidt idtr(%rip)
    # TSS descriptor base
    lea tss(%rip), %rax
    mov %ax, tss_desc+2(%rip)
    shr $16, %rax
    mov %al, tss_desc+4(%rip)
    mov %ah, tss_desc+7(%rip)
    shr $16, %rax
    mov %eax, tss_desc+8(%rip)
    lea stack0_top(%rip), %rax
    mov %rax, tss+4(%rip)
    mov $0x30, %ax
    ltr %ax
    # let ring 3 use the first 16 MiB: set U/S in vmm's PML4[0], PDPT[0] and PD[0..7]
    mov %cr3, %rbx
    orq $4, (%rbx)
    mov (%rbx), %rcx
    and $-4096, %rcx
    orq $4, (%rcx)
    mov (%rcx), %rdx
    and $-4096, %rdx
    mov $8, %ecx
1:  orq $4, (%rdx)
    add $8, %rdx
    loop 1b
    mov %rbx, %cr3
    # iretq to ring 3: SS, RSP, RFLAGS, CS, RIP
    push $0x23
    lea stack3_top(%rip), %rax
    push %rax
    push $0x202
    push $0x2b
    lea user(%rip), %rax
    push %rax
    iretq
user:
    mov $7, %ebx
    hlt                     # #GP(0) at CPL 3
    jmp user
gp_handler:
    mov (%rsp), %rax        # error code
    out %eax, $0x81
    mov 8(%rsp), %rax       # rip
    out %eax, $0x81
    mov 16(%rsp), %rax      # cs
    out %eax, $0x81
    mov 24(%rsp), %rax      # rflags
    out %eax, $0x81
    mov 32(%rsp), %rax      # rsp
    out %eax, $0x81
    mov 40(%rsp), %rax      # ss
    out %eax, $0x81
    mov %ss, %ax
    out %eax, $0x81
    mov %rsp, %rax
    out %eax, $0x81
    hlt
.balign 16
gdt:
    .quad 0
    .quad 0x00cf9b000000ffff    # 0x08 code32
    .quad 0x00cf93000000ffff    # 0x10 data
    .quad 0x00af9b000000ffff    # 0x18 code64 dpl0
    .quad 0x00cff3000000ffff    # 0x20 data dpl3
    .quad 0x00affb000000ffff    # 0x28 code64 dpl3
tss_desc:
    .quad 0x0000890000000067
    .quad 0
gdt_end:
gdtr:
    .word gdt_end - gdt - 1
    .quad gdt
.balign 16
idt:
    .fill 26, 8, 0
    .word gp_handler, 0x18
    .byte 0, 0x8e
    .word 0
    .long 0, 0
idt_end:
idtr:
    .word idt_end - idt - 1
    .quad idt
.balign 16
tss:
    .fill 0x68, 1, 0
.balign 16
    .fill 256, 1, 0
stack0_top:
    .fill 256, 1, 0
stack3_top:
