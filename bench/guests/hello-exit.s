# hello-exit.s - bench guest: the reset-vector greeting, for vmm, the C loop and QEMU alike.
#
# 64 KiB image started at F000:FFF0 (vmm --entry reset; QEMU -bios). Prints
# "Hello from the reset vector!\n" on the debug console (0xe9: QEMU's -debugcon), one OUT per
# byte, then writes 0 to the exit device at 0xf4 (QEMU's isa-debug-exit): every VMM ends with
# status 1, so none needs to notice a HLT.

        .include "ports.inc"
        .include "reset.inc"

        RESET_START                     # DS = CS: our data is in the ROM
        mov     $msg, %si
        mov     $msg_len, %cx
1:      lodsb
        out     %al, $DEBUG_CON
        loop    1b
        xor     %al, %al
        out     %al, $EXIT_PORT
        HALT_FOREVER

msg:    .ascii  "Hello from the reset vector!\n"
        .set    msg_len, . - msg

        RESET_VECTOR start
