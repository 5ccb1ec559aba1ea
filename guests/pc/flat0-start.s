# pc/flat0-start.s - entry of flat0.bin, a raw flat protected-mode guest
# linked at address 0 (vmm run --mode protected --load 0 --entry 0).  The
# first KiB is its own: a jump at 0, then scratch memory 0x10-0x3FF, where the
# real-mode IVT would be, which flat0_main writes and reads back.  It loads
# a GDT of its own (in its image, near 0), reloads every segment register,
# takes a stack of its own just above the image, and calls flat0_main.
#
# Assembled with --defsym MULTIBOOT=1 (flat0-mb.bin), the scratch area starts
# with a multiboot1 header using the a.out kludge (load_addr 0, entry 0), so
# that QEMU's -kernel can load the same guest: the reference for flat0.bin.
# The header is only read by the loader; the guest overwrites it as scratch.

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
        .ifdef MULTIBOOT
        .set MB1_MAGIC, 0x1BADB002
        .set MB1_FLAGS, 0x00010000      # a.out kludge only
        .long   MB1_MAGIC, MB1_FLAGS, -(MB1_MAGIC + MB1_FLAGS)
        .long   flat0_scratch           # header_addr
        .long   0                       # load_addr: the file's first byte at 0
        .long   0                       # load_end_addr: the whole file
        .long   0                       # bss_end_addr: no .bss to clear
        .long   _start                  # entry_addr
        .skip   SCRATCH_END - SCRATCH_START - 32
        .else
        .skip   SCRATCH_END - SCRATCH_START
        .endif
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
