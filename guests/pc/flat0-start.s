# pc/flat0-start.s - entry of flat0.bin, a raw flat protected-mode guest
# linked at address 0 (vmm run --mode protected --load 0 --entry 0).  The
# first KiB is its own: a jump at 0, then scratch memory 0x10-0x3FF, where the
# real-mode IVT would be, which flat0_main writes and reads back.  It loads
# a GDT of its own (in its image, near 0), reloads every segment register,
# takes a stack of its own just above the image, and calls flat0_main.

        .set SCRATCH_START, 0x10
        .set SCRATCH_END,   0x400
        .set STACK_SIZE,    8192

        .code32
        .text
        .globl  _start, flat0_scratch, flat0_scratch_end
_start:
        jmp     start32
        .balign SCRATCH_START, 0
flat0_scratch:
        .skip   SCRATCH_END - SCRATCH_START
flat0_scratch_end:

start32:
        cli
        lgdt    gdt_ptr
        ljmp    $0x08, $1f
1:      mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %fs
        mov     %ax, %gs
        mov     %ax, %ss
        mov     $stack_top, %esp
        call    flat0_main
2:      cli
        hlt
        jmp     2b

        .balign 8
gdt:    .quad   0
        .quad   0x00CF9A000000FFFF      # 0x08: flat 32-bit code
        .quad   0x00CF92000000FFFF      # 0x10: flat data
gdt_end:
        .balign 4
        .word   0
gdt_ptr:
        .word   gdt_end - gdt - 1
        .long   gdt

        .bss
        .balign 16
        .skip   STACK_SIZE
stack_top:
