# pc/mb1-aout-boot.s - multiboot1 header with the a.out kludge (flag bit 16)
# for the flat binary mb1-aout.bin: the header gives the load address (the
# first byte of the file is loaded at 1 MiB), the end of the loaded bytes, the
# end of the .bss the loader must zero, and the entry point.  The symbols come
# from aout.ld.

        .set MB1_MAGIC, 0x1BADB002
        .set MB1_FLAGS, 0x00010003      # bit 16: a.out kludge; bits 0, 1 as usual
        .set STACK_SIZE, 16384

        .section .multiboot, "a"
        .balign 4
mb_header:
        .long   MB1_MAGIC
        .long   MB1_FLAGS
        .long   -(MB1_MAGIC + MB1_FLAGS)
        .long   mb_header               # header_addr
        .long   _load_start             # load_addr
        .long   _load_end               # load_end_addr
        .long   _bss_end                # bss_end_addr
        .long   _start                  # entry_addr

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
        push    %ebx
        push    %eax
        call    kernel_main
        cli
1:      hlt
        jmp     1b
        .size   _start, . - _start
