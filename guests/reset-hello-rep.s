# reset-hello-rep.s - reset-vector hello world with a single `rep outsb`.
#
# 64 KiB image for `vmm run --entry reset`: loaded at 0xF0000, starts at
# F000:FFF0, which far-jumps to `start`.  Prints "Hello from the reset
# vector!\n" to the pseudo-serial port 0xf1 with ONE string instruction
# (rep outsb: DS:SI -> port DX, CX bytes), then halts.  This exercises the
# VMM's string-I/O path (KVM reports count > 1 per exit, or one exit per
# iteration depending on the kernel).  DS must be 0xF000 (= CS) because the
# string lives in the image; DS is 0 at reset.

        .include "ports.inc"
        .include "reset.inc"

        RESET_START                     # DS = CS: our data is in the ROM
        mov     $msg, %si
        mov     $SERIAL_OUT, %dx
        mov     $msg_len, %cx
        rep outsb                       # DS:[SI++] -> port DX, CX times
        HALT_FOREVER

msg:    .ascii  "Hello from the reset vector!\n"
        .set    msg_len, . - msg

        RESET_VECTOR start
