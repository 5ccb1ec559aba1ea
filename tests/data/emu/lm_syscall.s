# Long mode: SYSCALL with STAR/LSTAR/FMASK set; the entry point prints RCX, R11, RFLAGS, CS, SS.
    lgdt gdtr(%rip)
    mov $0xc0000080, %ecx
    rdmsr
    or $1, %eax
    wrmsr                   # EFER.SCE
    mov $0xc0000081, %ecx   # STAR: syscall cs=0x18 ss=0x20; sysret base 0x20 -> cs=0x30|3 ss=0x28|3
    mov $0, %eax
    mov $0x00200018, %edx
    wrmsr
    mov $0xc0000082, %ecx
    lea entry(%rip), %rax
    mov %rax, %rdx
    shr $32, %rdx
    wrmsr
    mov $0xc0000084, %ecx
    mov $0x200, %eax
    xor %edx, %edx
    wrmsr
    mov $0x1234, %r11
    mov $0x5678, %rcx
    pushf
    orq $0x200, (%rsp)
    popf
    syscall
back:
    out %eax, $0x81
    hlt
entry:
    mov %rcx, %rax
    out %eax, $0x81
    mov %r11, %rax
    out %eax, $0x81
    pushf
    pop %rax
    out %eax, $0x81
    mov %cs, %ax
    out %eax, $0x81
    mov %ss, %ax
    out %eax, $0x81
    mov $0x99, %eax
    hlt
.balign 16
gdt:
    .quad 0
    .quad 0x00cf9b000000ffff
    .quad 0x00cf93000000ffff
    .quad 0x00af9b000000ffff    # 0x18 code64
    .quad 0x00cf93000000ffff    # 0x20 data
gdt_end:
gdtr:
    .word gdt_end - gdt - 1
    .quad gdt
