# pc/mb1-boot.s - multiboot1 header and entry for the mb1-* ELF kernels,
# in the shape of the OSDev wiki's Bare Bones: a .multiboot section the link
# puts first, a boot stack in .bss, and kernel_main(magic, mbi) in C.

        .set MB1_MAGIC, 0x1BADB002
        .set MB1_FLAGS, 0x00000003      # bit 0: page-align modules, bit 1: memory info
        .set STACK_SIZE, 16384

# HEADER_IN_TEXT: the header at the start of .text instead, for a link with
# gcc's default script (mb1-gccnote.elf), which would place .multiboot anywhere.
        .ifdef HEADER_IN_TEXT
        .text
        .else
        .section .multiboot, "a"
        .endif
        .balign 4
        .long   MB1_MAGIC
        .long   MB1_FLAGS
        .long   -(MB1_MAGIC + MB1_FLAGS)

        .bss
        .balign 16
stack_bottom:
        .skip   STACK_SIZE
stack_top:

        .text
        .globl  _start
        .type   _start, @function
_start:
        mov     $stack_top, %esp
        push    %ebx                    # the multiboot information structure
        push    %eax                    # the magic, 0x2BADB002 from a multiboot loader
        call    kernel_main
        cli
1:      hlt
        jmp     1b
        .size   _start, . - _start
