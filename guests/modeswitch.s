# modeswitch.s - real mode -> protected mode -> long mode, printing the name of each.
#
# A raw image at 0x1000, entered in real mode. Prints "real", switches to 32-bit protected
# mode (flat GDT), prints "protected", identity-maps the first 2 MiB with one 2 MiB page
# (PML4 at 0x20000, PDPT 0x21000, PD 0x22000), enables PAE, EFER.LME and paging, far-jumps
# to 64-bit code, prints "long" and halts. For tests of the debugger (tests/test_gdb.py):
# its registers must read right in all three modes, across the switches; the labels
# real_mode, prot_mode and long_mode (in build/modeswitch.img) mark each.
# Source: Intel SDM vol. 3A, 9.8 (switching to protected mode), 9.8.5 (initializing IA-32e
# mode), 4.5 (4-level paging).

        .include "ports.inc"

        .set PML4, 0x20000
        .set PDPT, 0x21000
        .set PD,   0x22000
        .set MSR_EFER, 0xC0000080

        .macro SAY bytes:vararg          # character codes, then a newline
        .irp    ch, \bytes
        mov     $\ch, %al
        out     %al, $CONSOLE
        .endr
        mov     $10, %al
        out     %al, $CONSOLE
        .endm

        .code16
        .text
        .globl _start
_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %ss
        mov     $0x7000, %sp
        .globl real_mode
real_mode:
        SAY     'r', 'e', 'a', 'l'
        lgdtl   gdtr
        mov     %cr0, %eax
        or      $1, %eax                # PE
        mov     %eax, %cr0
        ljmp    $0x08, $prot_entry

        .code32
prot_entry:
        mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $0x7000, %esp
        .globl prot_mode
prot_mode:
        SAY     'p', 'r', 'o', 't', 'e', 'c', 't', 'e', 'd'
        mov     $PML4, %edi             # three zeroed tables
        xor     %eax, %eax
        mov     $(3 * 4096 / 4), %ecx
        rep stosl
        movl    $(PDPT | 3), PML4       # present, writable
        movl    $(PD | 3), PDPT
        movl    $0x83, PD               # 2 MiB page at 0: present, writable, PS
        mov     %cr4, %eax
        or      $0x20, %eax             # PAE
        mov     %eax, %cr4
        mov     $PML4, %eax
        mov     %eax, %cr3
        mov     $MSR_EFER, %ecx
        rdmsr
        or      $0x100, %eax            # LME
        wrmsr
        mov     %cr0, %eax
        or      $0x80000000, %eax       # PG: long mode is active from here
        mov     %eax, %cr0
        ljmp    $0x18, $long_entry

        .code64
long_entry:
        .globl long_mode
long_mode:
        SAY     'l', 'o', 'n', 'g'
        mov     $0x123456789, %rax      # a value only 64-bit registers hold
        hlt

        .p2align 3
gdt:    .quad   0
        .quad   0x00cf9a000000ffff      # 0x08: 32-bit code, base 0, 4 GiB
        .quad   0x00cf92000000ffff      # 0x10: data, base 0, 4 GiB
        .quad   0x00af9a000000ffff      # 0x18: 64-bit code
gdtr:   .word   gdtr - gdt - 1
        .long   gdt
