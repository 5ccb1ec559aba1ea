# irq/echo-p3.s - echo-p3.bin, an interrupt-driven echo for the p3 board (raw,
# real mode, loaded at 0x1000: vmm run echo-p3.bin).  The seeds' devices, but
# no polling: the p3 board's optional 8259A pair at 0x20/0xA0 (docs/devices.md)
# carries the interval timer's "fired" on IRQ 0 and the keyboard's "key
# waiting" on IRQ 1.
#   Set-up: IVT entries 0x20 -> irq0 and 0x21 -> irq1; the PIC pair remapped
#           to vectors 0x20/0x28 (ICW1-ICW4), IRQ 0 and 1 unmasked, the rest
#           masked; prints "echo-p3: ready"; the timer at PERIOD_MS (100 ms)
#           and enabled; then `sti` and an idle loop of `hlt`.
#   IRQ 0:  acks the timer (OUT 1 to 0x47: lowers IRQ 0, so that the next
#           firing is the next edge), counts the tick, EOI.
#   IRQ 1:  acks the keyboard (OUT 0 to 0x45) first, then reads the byte from
#           0x44 (the p3 keyboard protocol), counts it; Enter (\r or \n)
#           prints the line typed so far on the console (0x42) and starts a
#           new one; other bytes are appended (LINE_CAP, the rest dropped);
#           EOI.
# After TICKS (50) ticks, 5 s, it prints "ticks 50, keys K" and halts with
# interrupts off (`cli; hlt`: vmm's end reason "halt", status 0).
# No BIOS, no RDTSC; nothing below 0x1000 but IVT entries 0x20 and 0x21.
# With --defsym POLL=1 (echo-p3-poll.bin, 5 ticks) the idle loop does not halt:
# it reads the PIC's mask register, prints "x" and counts down 10000 loops,
# over and over, so interrupts come at its reads or in its computing (the
# emulator's --icount), never at a HLT.

        .include "ports.inc"

        .set PIC1, 0x20
        .set PIC2, 0xA0
        .set VECTORS, 0x20              # IRQ 0-7 -> 0x20-0x27, IRQ 8-15 -> 0x28-0x2f
        .set EOI, 0x20
        .set PERIOD_MS, 100
        .ifndef TICKS
        .set TICKS, 50
        .endif
        .set LINE_CAP, 64

        .code16
        .text
        .globl  _start
_start:
        cli
        cld
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $0x7000, %sp
        movw    $0, ticks               # raw image: initialise the state
        movw    $0, keys
        movw    $0, line_len
        # the IVT: 0x20 -> irq0, 0x21 -> irq1 (segment 0)
        movw    $irq0, VECTORS * 4
        movw    $0, VECTORS * 4 + 2
        movw    $irq1, (VECTORS + 1) * 4
        movw    $0, (VECTORS + 1) * 4 + 2
        # 8259A pair: ICW1 edge + cascade + ICW4, ICW2 0x20/0x28, ICW3, ICW4 8086
        mov     $0x11, %al
        out     %al, $PIC1
        out     %al, $PIC2
        mov     $VECTORS, %al
        out     %al, $PIC1 + 1
        mov     $VECTORS + 8, %al
        out     %al, $PIC2 + 1
        mov     $4, %al
        out     %al, $PIC1 + 1
        mov     $2, %al
        out     %al, $PIC2 + 1
        mov     $1, %al
        out     %al, $PIC1 + 1
        out     %al, $PIC2 + 1
        mov     $0xFC, %al              # OCW1: IRQ 0 (timer) and IRQ 1 (keyboard)
        out     %al, $PIC1 + 1
        mov     $0xFF, %al
        out     %al, $PIC2 + 1
        PUTS    CONSOLE, "echo-p3: ready\n"
        mov     $PERIOD_MS, %ax         # the p3 timer: period, then enable
        out     %ax, $TIMER_PERIOD
        mov     $TIMER_ENABLE, %al
        out     %al, $TIMER_CTRL
        sti
        .ifdef POLL
idle:   in      $0x21, %al              # a read: an interrupt point of its own
        mov     $'x', %al
        out     %al, $CONSOLE
        mov     $ASCII_LF, %al
        out     %al, $CONSOLE
        mov     $10000, %cx
1:      loop    1b
        .else
idle:   hlt                             # every interrupt comes here
        .endif
        cmpw    $TICKS, ticks
        jb      idle
        cli
        PUTS    CONSOLE, "ticks "
        mov     ticks, %ax
        call    put_dec
        PUTS    CONSOLE, ", keys "
        mov     keys, %ax
        call    put_dec
        mov     $ASCII_LF, %al
        out     %al, $CONSOLE
        HALT_FOREVER

# put_dec: AX in decimal on the console.  Clobbers AX, CX, DX, SI.
put_dec:
        xor     %cx, %cx
        mov     $10, %si
1:      xor     %dx, %dx
        div     %si
        push    %dx
        inc     %cx
        test    %ax, %ax
        jnz     1b
2:      pop     %ax
        add     $'0', %al
        out     %al, $CONSOLE
        loop    2b
        ret

# IRQ 0: the timer fired
irq0:
        push    %ax
        push    %ds
        xor     %ax, %ax
        mov     %ax, %ds
        mov     $TIMER_ENABLE, %al      # ack: bit 1 clear, still enabled
        out     %al, $TIMER_CTRL
        incw    ticks
        mov     $EOI, %al
        out     %al, $PIC1
        pop     %ds
        pop     %ax
        iret

# IRQ 1: a key is waiting
irq1:
        push    %ax
        push    %bx
        push    %cx
        push    %si
        push    %ds
        xor     %ax, %ax
        mov     %ax, %ds
        cld
        mov     $KBD_ACK, %al           # ack first (lowers IRQ 1) ...
        out     %al, $KBD_STATUS
        in      $KBD_DATA, %al          # ... then the byte, still latched in 0x44
        incw    keys
        cmp     $ASCII_CR, %al
        je      1f
        cmp     $ASCII_LF, %al
        je      1f
        mov     line_len, %bx           # append unless the line is full
        cmp     $LINE_CAP, %bx
        jae     9f
        mov     %al, line(%bx)
        inc     %bx
        mov     %bx, line_len
        jmp     9f
1:      mov     $line, %si              # Enter: the line, then a newline
        mov     line_len, %cx
        jcxz    3f
2:      lodsb
        out     %al, $CONSOLE
        loop    2b
3:      mov     $ASCII_LF, %al
        out     %al, $CONSOLE
        movw    $0, line_len
9:      mov     $EOI, %al
        out     %al, $PIC1
        pop     %ds
        pop     %si
        pop     %cx
        pop     %bx
        pop     %ax
        iret

        .balign 2
ticks:          .word 0
keys:           .word 0
line_len:       .word 0
line:           .skip LINE_CAP
