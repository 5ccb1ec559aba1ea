# reset-hello.s - reset-vector hello world, one OUT per byte.
#
# 64 KiB image for `vmm run --entry reset`: loaded at 0xF0000, starts at
# F000:FFF0, which far-jumps to `start`.  Prints "Hello from the reset
# vector!\n" to the pseudo-serial port 0xf1 with one `outb` per byte, then
# halts.  The string lives in this image, i.e. in segment 0xF000, so DS is
# loaded from CS first (DS is 0 at reset).

        .include "ports.inc"
        .include "reset.inc"

        RESET_START                     # DS = CS: our data is in the ROM
        mov     $msg, %si
        mov     $msg_len, %cx
1:      lodsb                           # AL = DS:[SI++]
        out     %al, $SERIAL_OUT
        loop    1b
        HALT_FOREVER

msg:    .ascii  "Hello from the reset vector!\n"
        .set    msg_len, . - msg

        RESET_VECTOR start
