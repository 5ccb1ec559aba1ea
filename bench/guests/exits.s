# exits.s - bench guest: COUNT port-I/O exits, then HLT.
#
# Real-mode raw guest loaded at 0x1000. Writes AL to COM1's scratch register (0x3ff) COUNT
# times with `out %al, %dx`, then halts. SCR is a plain register in vmm's UART and is not a
# coalesced port, so every OUT is an exit to the VMM's run loop: what is measured is exit
# dispatch (KVM_RUN, decode, bus lookup, device write). With IN=1 it reads SCR instead (an IN
# exit: the observation counter moves and the device answers).
# Build: as --32 -I guests/include --defsym COUNT=N [--defsym IN=1]

        .include "ports.inc"
        .ifndef IN
        .set IN, 0
        .endif

        REAL_MODE_START
        mov     $0x3ff, %dx
        mov     $0x5a, %al
        mov     $COUNT, %ecx
        test    %ecx, %ecx
        jz      2f
1:
        .if IN
        in      %dx, %al
        .else
        out     %al, %dx
        .endif
        dec     %ecx
        jnz     1b
2:      HALT_FOREVER
