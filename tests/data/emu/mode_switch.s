# Real mode -> protected mode -> long mode, by the guest itself (its own GDT and page tables);
# prints a 64-bit register on port 0x81 and halts.
    .code16
    cli
    xor %ax, %ax
    mov %ax, %ds
    lgdt gdtr
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmp $0x08, $pm
    .code32
pm:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov %ax, %es
    mov $0x9000, %esp
    in $0x45, %al
    # identity map first 2M with PAE tables at 0x20000
    mov $0x20000, %edi
    xor %eax, %eax
    mov $3072, %ecx
    rep stosl
    movl $0x21003, 0x20000
    movl $0x22003, 0x21000
    movl $0x00000083, 0x22000
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $0x20000, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000000, %eax
    mov %eax, %cr0
    ljmp $0x18, $lm
    .code64
lm:
    movabs $0x1122334455667788, %rax
    in $0x45, %al
    mov %rax, %rbx
    shr $32, %rbx
    out %eax, $0x81
    mov %ebx, %eax
    out %eax, $0x81
    hlt
.balign 8
gdt:
    .quad 0
    .quad 0x00cf9b000000ffff
    .quad 0x00cf93000000ffff
    .quad 0x00af9b000000ffff
gdt_end:
gdtr:
    .word gdt_end - gdt - 1
    .long gdt
