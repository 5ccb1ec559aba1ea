# agree/accessed.s - descriptor accessed bits (issue 12: the backends must agree).
#
# A raw image at 0x1000, entered in real mode. Loads a GDT whose descriptors are the standard
# flat ones with the accessed bit clear (0x00cf9a000000ffff code, 0x00cf92000000ffff data),
# enters protected mode with a far jump to 0x08, loads the data segments from 0x10, prints
# "protected", far-jumps again to a second code descriptor (0x18), then prints the access byte
# of each descriptor in hex ("access 9b 93 9b") and halts. The CPU sets the accessed bit (bit 0 of the access byte)
# when it loads a selector, so under KVM the GDT in memory changes; the emulator must change
# it the same way, or the final memory digests of a cross-backend replay differ.
# Source: Intel SDM vol. 3A, 3.4.5.1 (segment descriptor types: the accessed bit).

        .include "ports.inc"

        .code16
        .text
        .globl _start
_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        lgdtl   gdtr
        mov     %cr0, %eax
        or      $1, %eax                # PE
        mov     %eax, %cr0
        ljmp    $0x08, $prot

        .code32
prot:
        mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $0x7000, %esp
        PUTS    CONSOLE, "protected\n"
        ljmp    $0x18, $again           # a second CS
again:
        PUTS    CONSOLE, "access"
        mov     $gdt + 8 + 5, %ebx      # the access byte of descriptor 1
        mov     $3, %edi
byte:
        mov     $' ', %al
        out     %al, $CONSOLE
        movzbl  (%ebx), %edx
        mov     %edx, %eax
        shr     $4, %eax
        call    hexdigit
        mov     %edx, %eax
        call    hexdigit
        add     $8, %ebx
        dec     %edi
        jnz     byte
        mov     $ASCII_LF, %al
        out     %al, $CONSOLE
        HALT_FOREVER

hexdigit:                               # print the low nibble of EAX
        and     $0x0f, %al
        add     $'0', %al
        cmp     $'9', %al
        jbe     1f
        add     $('a' - '9' - 1), %al
1:      out     %al, $CONSOLE
        ret

        .p2align 3
gdt:    .quad   0
        .quad   0x00cf9a000000ffff      # 0x08: 32-bit code, base 0, 4 GiB, not accessed
        .quad   0x00cf92000000ffff      # 0x10: data, base 0, 4 GiB, not accessed
        .quad   0x00cf9a000000ffff      # 0x18: 32-bit code again
gdtr:   .word   gdtr - gdt - 1
        .long   gdt
