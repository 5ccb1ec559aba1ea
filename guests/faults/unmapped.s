# faults/unmapped.s - protected-mode raw guest reading unmapped memory.
#
# Run with `--mode protected`: loaded at 0x1000, flat 32-bit code (0x08)
# and data (0x10) segments, paging off, EIP = 0x1000.  Reads a dword from
# physical 0xF0000000, far outside guest RAM (KVM reports it as an MMIO
# access nobody handles), then halts.

        .set UNMAPPED_ADDR, 0xf0000000

        .code32
        .text
        .globl _start
_start:
        mov     UNMAPPED_ADDR, %eax     # load from absolute address
        hlt
        jmp     .
