# irq/echo-p3-pm.s - echo-p3-pm.bin, echo-p3.bin in 32-bit protected mode: an
# interrupt-driven echo for the p3 board (raw, entered in real mode, loaded at
# 0x1000: vmm run echo-p3-pm.bin) with its own GDT and an IDT instead of the
# IVT.  The seeds' devices, but no polling: the p3 board's optional 8259A pair
# at 0x20/0xA0 (docs/devices.md) carries the interval timer's "fired" on IRQ 0
# and the keyboard's "key waiting" on IRQ 1.
#   Set-up: lgdt (flat 32-bit code 0x08, flat data 0x10), CR0.PE, a far jump
#           to 32-bit code; the IDT: interrupt gates (0x8E, selector 0x08)
#           0x00-0x1f -> one stub per exception, 0x20 -> irq0, 0x21 -> irq1,
#           its limit ending at 0x21 (any other vector is a #GP); lidt; the
#           PIC pair remapped to vectors 0x20/0x28 (ICW1-ICW4), IRQ 0 and 1
#           unmasked, the rest masked; prints "echo-p3: ready" (the same
#           output as echo-p3); the timer at PERIOD_MS (100 ms) and enabled;
#           then `sti` and an idle loop of `hlt`.
#   IRQ 0:  acks the timer (OUT 1 to 0x47: lowers IRQ 0, so that the next
#           firing is the next edge), counts the tick, EOI, iret.
#   IRQ 1:  acks the keyboard (OUT 0 to 0x45) first, then reads the byte from
#           0x44 (the p3 keyboard protocol), counts it; Enter (\r or \n)
#           prints the line typed so far on the console (0x42) and starts a
#           new one; other bytes are appended (LINE_CAP, the rest dropped);
#           EOI, iret.
#   Exceptions: clears the frame the CPU pushed (its EFLAGS image can hold
#           undefined status flags), prints "echo-p3-pm: exception N" (N the
#           vector, decimal) and halts with interrupts off.  Built with --defsym TRAP=1 (as
#           echo-p3-pm-trap.bin) it executes ud2 after the banner, to show it.
# After TICKS (50) ticks, 5 s, it prints "ticks 50, keys K" and halts with
# interrupts off (`cli; hlt`: vmm's end reason "halt", status 0).
# No BIOS, no RDTSC; nothing below 0x1000 is touched: the GDT and IDT are in
# the image.
# Source: Intel SDM vol. 3A, 9.8 (switching to protected mode), 6.10-6.11 (the
# IDT, interrupt gates), 6.12.1 (IRET from a handler).

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
        .set CODE_SEL, 0x08
        .set DATA_SEL, 0x10
        .set INT_GATE, 0x8E             # present, DPL 0, 32-bit interrupt gate (IF cleared)
        .set EXCEPTIONS, 32             # vectors 0x00-0x1f
        .set IDT_ENTRIES, VECTORS + 2   # up to 0x21 (IRQ 1)
        .set STUB_SIZE, 8

# SAY port, "text": PUTS for 32-bit code (ESI, ECX in full: lodsb and loop use
# them there).  Clobbers AL, ECX, ESI.
        .macro SAY port, text
        .pushsection .text, 1
.Lsay_str\@:
        .ascii "\text"
.Lsay_end\@:
        .popsection
        mov     $.Lsay_str\@, %esi
        mov     $(.Lsay_end\@ - .Lsay_str\@), %ecx
.Lsay_loop\@:
        lodsb
        out     %al, $\port
        loop    .Lsay_loop\@
        .endm

        .code16
        .text
        .globl  _start
_start:
        cli
        cld
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %ss
        mov     $0x7000, %sp
        lgdtl   gdtr
        mov     %cr0, %eax
        or      $1, %eax                # PE
        mov     %eax, %cr0
        ljmp    $CODE_SEL, $prot_entry

        .code32
prot_entry:
        mov     $DATA_SEL, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     $0x7000, %esp
        movl    $0, ticks               # raw image: initialise the state
        movl    $0, keys
        movl    $0, line_len
        # the IDT: an exception stub per vector 0x00-0x1f, then irq0 and irq1
        xor     %ebx, %ebx
1:      lea     exc_stubs(, %ebx, STUB_SIZE), %eax
        call    set_gate
        inc     %ebx
        cmp     $EXCEPTIONS, %ebx
        jb      1b
        mov     $irq0, %eax
        mov     $VECTORS, %ebx
        call    set_gate
        mov     $irq1, %eax
        mov     $VECTORS + 1, %ebx
        call    set_gate
        lidt    idtr
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
        SAY     CONSOLE, "echo-p3: ready\n"
        .ifdef TRAP
        ud2                             # #UD, vector 6: the exception stub's message
        .endif
        mov     $PERIOD_MS, %ax         # the p3 timer: period, then enable
        out     %ax, $TIMER_PERIOD
        mov     $TIMER_ENABLE, %al
        out     %al, $TIMER_CTRL
        sti
idle:   hlt                             # every interrupt comes here
        cmpl    $TICKS, ticks
        jb      idle
        cli
        SAY     CONSOLE, "ticks "
        mov     ticks, %eax
        call    put_dec
        SAY     CONSOLE, ", keys "
        mov     keys, %eax
        call    put_dec
        mov     $ASCII_LF, %al
        out     %al, $CONSOLE
        HALT_FOREVER

# set_gate: IDT entry EBX -> handler EAX, an interrupt gate in the code
# segment.  Clobbers EAX, EDX.
set_gate:
        lea     idt(, %ebx, 8), %edx
        mov     %ax, (%edx)             # offset 15:0
        movw    $CODE_SEL, 2(%edx)
        movb    $0, 4(%edx)
        movb    $INT_GATE, 5(%edx)
        shr     $16, %eax
        mov     %ax, 6(%edx)            # offset 31:16
        ret

# put_dec: EAX in decimal on the console.  Clobbers EAX, ECX, EDX, ESI.
put_dec:
        xor     %ecx, %ecx
        mov     $10, %esi
1:      xor     %edx, %edx
        div     %esi
        push    %edx
        inc     %ecx
        test    %eax, %eax
        jnz     1b
2:      pop     %eax
        add     $'0', %al
        out     %al, $CONSOLE
        loop    2b
        ret

# The handlers leave DS alone: it is the flat data segment (0x10) everywhere
# after the switch.  (Saving it would take a 32-bit push of a segment
# register, which writes 16 or 32 bits as the CPU chooses: this host's CPU and
# the emulator would leave different stacks.)

# IRQ 0: the timer fired
irq0:
        push    %eax
        mov     $TIMER_ENABLE, %al      # ack: bit 1 clear, still enabled
        out     %al, $TIMER_CTRL
        incl    ticks
        mov     $EOI, %al
        out     %al, $PIC1
        pop     %eax
        iret

# IRQ 1: a key is waiting
irq1:
        push    %eax
        push    %ebx
        push    %ecx
        push    %esi
        cld
        mov     $KBD_ACK, %al           # ack first (lowers IRQ 1) ...
        out     %al, $KBD_STATUS
        in      $KBD_DATA, %al          # ... then the byte, still latched in 0x44
        incl    keys
        cmp     $ASCII_CR, %al
        je      1f
        cmp     $ASCII_LF, %al
        je      1f
        mov     line_len, %ebx          # append unless the line is full
        cmp     $LINE_CAP, %ebx
        jae     9f
        mov     %al, line(%ebx)
        inc     %ebx
        mov     %ebx, line_len
        jmp     9f
1:      mov     $line, %esi             # Enter: the line, then a newline
        mov     line_len, %ecx
        jecxz   3f
2:      lodsb
        out     %al, $CONSOLE
        loop    2b
3:      mov     $ASCII_LF, %al
        out     %al, $CONSOLE
        movl    $0, line_len
9:      mov     $EOI, %al
        out     %al, $PIC1
        pop     %esi
        pop     %ecx
        pop     %ebx
        pop     %eax
        iret

# Exceptions 0x00-0x1f: each stub (STUB_SIZE bytes, so that set-up finds
# stub N at exc_stubs + N * STUB_SIZE) pushes its vector and goes to
# exception; nothing returns (an error code, where the CPU pushes one, stays
# on the stack).
        .balign STUB_SIZE
exc_stubs:
        .set    vec, 0
        .rept   EXCEPTIONS
        .balign STUB_SIZE
        push    $vec
        jmp     exception
        .set    vec, vec + 1
        .endr

exception:
        cli
        mov     $DATA_SEL, %ax
        mov     %ax, %ds
        mov     %ax, %es
        cld
        pop     %ebx                    # the vector
        # The frame left on the stack (EIP, CS, EFLAGS, an error code first where there is one)
        # holds the interrupted code's status flags, some of which can be undefined (AF after
        # a shift: this host's CPU and the emulator differ; RF at a fault): cleared, so that
        # memory does not depend on the backend (the register digests leave them out too).
        mov     %esp, %edi
        xor     %eax, %eax
        mov     $4, %ecx
        rep stosl
        SAY     CONSOLE, "echo-p3-pm: exception "
        mov     %ebx, %eax
        call    put_dec
        mov     $ASCII_LF, %al
        out     %al, $CONSOLE
        HALT_FOREVER

        .p2align 3
gdt:    .quad   0
        .quad   0x00cf9a000000ffff      # 0x08: 32-bit code, base 0, 4 GiB
        .quad   0x00cf92000000ffff      # 0x10: data, base 0, 4 GiB
gdtr:   .word   gdtr - gdt - 1
        .long   gdt
        .p2align 2
idtr:   .word   IDT_ENTRIES * 8 - 1
        .long   idt

        .p2align 3
idt:            .skip IDT_ENTRIES * 8
ticks:          .long 0
keys:           .long 0
line_len:       .long 0
line:           .skip LINE_CAP
