# irq/tick-real.s - tick-real.bin, an interrupt-driven real-mode kernel for the
# pc board (raw, loaded at 0x1000: vmm run tick-real.bin --board pc).  As the
# tutorial kernels do: remap the 8259A pair to vectors 0x20/0x28, program PIT
# channel 0 for 100 Hz, install IVT handlers for IRQ 0 and IRQ 1, read the CMOS
# date once, then wait in `sti; hlt`.
#   IRQ 0: counts ticks; VGA row 0 shows "ticks N"; EOI.
#   IRQ 1: reads the scancode from 0x60; make codes of letters, digits, Enter
#          and Space become ASCII by a table (break codes and other keys are
#          ignored); echoed on COM1 (Enter as \r\n) and on VGA from row 2
#          (Enter starts the next row); EOI.
#   RTC:   waits for UIP clear, reads century, year, month, day, hours,
#          minutes, seconds (BCD) and prints "RTC CCYY-MM-DD HH:MM:SS" on VGA
#          row 1 and COM1.
# After TICKS (300) ticks, 3 s, it writes " done" after the count on row 0,
# "done" on COM1, and exits: OUT 0x10 to 0xF4 (vmm and QEMU: status 33).
# No RDTSC, no BIOS, nothing below 0x1000 but the IVT entries 0x20 and 0x21.
# Assembled with --defsym SPIN=1 --defsym TICKS=50: spin-wait.bin, which sets up
# the same, prints one line on COM1 and waits in `while (ticks < 50);` with
# interrupts on: no HLT, no I/O (docs/devices.md: vmm has no point there to
# inject at; the run ends at --timeout).

        .set PIC1, 0x20
        .set PIC2, 0xA0
        .set PIT_CH0, 0x40
        .set PIT_CMD, 0x43
        .set KBD_DATA, 0x60
        .set CMOS_INDEX, 0x70
        .set CMOS_DATA, 0x71
        .set COM1, 0x3F8
        .set DEBUG_EXIT, 0xF4
        .set PC_OK, 0x10
        .set VGA_SEG, 0xB800
        .set ATTR, 0x07
        .ifndef TICKS
        .set TICKS, 300
        .endif
        .ifdef HZ1000
        .set DIVISOR, 1193              # 1193182 Hz / 1193 = 1000.2 Hz (the bench kernel)
        .else
        .set DIVISOR, 11932             # 1193182 Hz / 11932 = 100.0 Hz
        .endif
        .set ECHO_FIRST_ROW, 2
        .set ECHO_LAST_ROW, 24

        .code16
        .text
        .globl  _start
_start:
        .ifdef MULTIBOOT
        jmp     start16
        # multiboot1 with the a.out kludge: QEMU's -kernel loads the file at 0x1000 and
        # enters mb_entry in 32-bit protected mode, which goes back to real mode
        .balign 4
mb_header:
        .set MB1_MAGIC, 0x1BADB002
        .set MB1_FLAGS, 0x00010000
        .long   MB1_MAGIC, MB1_FLAGS, -(MB1_MAGIC + MB1_FLAGS)
        .long   mb_header               # header_addr
        .long   _start                  # load_addr: the file's first byte at 0x1000
        .long   0                       # load_end_addr: the whole file
        .long   0                       # bss_end_addr: none
        .long   mb_entry                # entry_addr
        .code32
mb_entry:
        cli
        lgdt    mb_gdt_ptr
        ljmp    $0x08, $1f              # 16-bit protected mode first
        .code16
1:      mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        mov     %cr0, %eax
        and     $0xFE, %al              # PE off
        mov     %eax, %cr0
        ljmp    $0, $start16
        .balign 8
mb_gdt: .quad   0
        .quad   0x00009A000000FFFF      # 0x08: 16-bit code, base 0, 64 KiB
        .quad   0x000092000000FFFF      # 0x10: 16-bit data, base 0, 64 KiB
mb_gdt_ptr:
        .word   . - mb_gdt - 1
        .long   mb_gdt
mb_ivt_ptr:
        .word   0x3FF
        .long   0
start16:
        lidt    mb_ivt_ptr              # the real-mode IVT at 0
        .endif
        cli
        cld
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %ss
        mov     $0x7000, %sp
        mov     $VGA_SEG, %ax
        mov     %ax, %es
        movw    $0, ticks
        movw    $ECHO_FIRST_ROW * 160, echo_pos
        # clear the screen
        xor     %di, %di
        mov     $(ATTR << 8 | ' '), %ax
        mov     $2000, %cx
        rep stosw
        # the IVT: 0x20 -> irq0, 0x21 -> irq1 (segment 0)
        movw    $irq0, 0x20 * 4
        movw    $0, 0x20 * 4 + 2
        movw    $irq1, 0x21 * 4
        movw    $0, 0x21 * 4 + 2
        # 8259A pair: ICW1 edge + cascade + ICW4, ICW2 0x20/0x28, ICW3, ICW4 8086
        mov     $0x11, %al
        out     %al, $PIC1
        out     %al, $PIC2
        mov     $0x20, %al
        out     %al, $PIC1 + 1
        mov     $0x28, %al
        out     %al, $PIC2 + 1
        mov     $4, %al
        out     %al, $PIC1 + 1
        mov     $2, %al
        out     %al, $PIC2 + 1
        mov     $1, %al
        out     %al, $PIC1 + 1
        out     %al, $PIC2 + 1
        mov     $0xFC, %al              # OCW1: IRQ 0 and 1 only
        out     %al, $PIC1 + 1
        mov     $0xFF, %al
        out     %al, $PIC2 + 1
        # PIT channel 0: lobyte/hibyte, mode 2 (rate generator), 100 Hz
        mov     $0x34, %al
        out     %al, $PIT_CMD
        mov     $(DIVISOR & 0xFF), %al
        out     %al, $PIT_CH0
        mov     $(DIVISOR >> 8), %al
        out     %al, $PIT_CH0
        .ifdef NO_IRQ
        jmp     9f                      # the bench's baseline: set up, then exit at once
        .endif
        .ifdef SPIN
        mov     $msg_spin, %si
        call    com1_puts
        sti
1:      cmpw    $TICKS, ticks           # no HLT, no I/O: nothing vmm can inject at
        jb      1b
        .else
        .ifndef NO_RTC
        call    rtc_line
        .endif
        sti
1:      hlt
        cmpw    $TICKS, ticks
        jb      1b
        .endif
9:      cli
        .if TICKS >= 1000
        mov     $(10 * 2), %di
        .elseif TICKS >= 100            # after "ticks N" on row 0
        mov     $(9 * 2), %di
        .else
        mov     $(8 * 2), %di
        .endif
        mov     $msg_done_vga, %si
        call    vga_puts
        mov     $msg_done, %si
        call    com1_puts
        mov     $PC_OK, %al
        out     %al, $DEBUG_EXIT
2:      cli
        hlt
        jmp     2b

# rtc_line: "RTC CCYY-MM-DD HH:MM:SS" on VGA row 1 and COM1
rtc_line:
1:      mov     $0x0A, %al              # register A: wait while an update is in progress
        out     %al, $CMOS_INDEX
        in      $CMOS_DATA, %al
        test    $0x80, %al
        jnz     1b
        mov     $rtc_fields, %si
        mov     $rtc_text + 4, %di
2:      lodsb                           # CMOS register, then the separator after it
        cmp     $0xFF, %al
        je      3f
        out     %al, $CMOS_INDEX
        in      $CMOS_DATA, %al
        mov     %al, %ah
        shr     $4, %al
        add     $'0', %al
        mov     %al, (%di)
        mov     %ah, %al
        and     $0x0F, %al
        add     $'0', %al
        mov     %al, 1(%di)
        lodsb
        mov     %al, 2(%di)
        add     $3, %di
        cmp     $0, %al
        jne     2b
        dec     %di                     # the century and the year share no separator
        jmp     2b
3:      mov     $rtc_text, %si
        mov     $160, %di
        call    vga_puts
        mov     $rtc_text, %si
        call    com1_puts
        mov     $crlf, %si
        jmp     com1_puts

# vga_puts: the NUL-terminated string at DS:SI on the screen from offset ES:DI
vga_puts:
        mov     $ATTR, %ah
1:      lodsb
        test    %al, %al
        jz      2f
        stosw
        jmp     1b
2:      ret

# com1_puts: the NUL-terminated string at DS:SI on COM1
com1_puts:
1:      lodsb
        test    %al, %al
        jz      2f
        call    com1_putc
        jmp     1b
2:      ret

# com1_putc: AL on COM1.  No wait for THRE in the LSR: under vmm the keyboard
# and COM1 share one input stream (docs/devices.md), and an LSR read would take
# the next key as a byte COM1 received; vmm's and QEMU's THR take every byte.
com1_putc:
        push    %dx
        mov     $COM1, %dx
        out     %al, %dx
        pop     %dx
        ret

# IRQ 0: count, show the count on row 0, EOI
irq0:
        push    %ax
        push    %cx
        push    %dx
        push    %si
        push    %di
        push    %ds
        push    %es
        xor     %ax, %ax
        mov     %ax, %ds
        mov     $VGA_SEG, %ax
        mov     %ax, %es
        cld
        incw    ticks
        mov     $msg_ticks, %si
        xor     %di, %di
        call    vga_puts
        mov     ticks, %ax              # decimal, written right to left from col 6 + digits
        xor     %cx, %cx
        mov     $10, %si
1:      xor     %dx, %dx
        div     %si
        push    %dx
        inc     %cx
        test    %ax, %ax
        jnz     1b
        mov     $(6 * 2), %di
2:      pop     %ax
        add     $'0', %al
        mov     $ATTR, %ah
        stosw
        loop    2b
        mov     $0x20, %al              # non-specific EOI
        out     %al, $PIC1
        pop     %es
        pop     %ds
        pop     %di
        pop     %si
        pop     %dx
        pop     %cx
        pop     %ax
        iret

# IRQ 1: a scancode; make codes in the table are echoed on COM1 and the screen
irq1:
        push    %ax
        push    %bx
        push    %dx
        push    %si
        push    %di
        push    %ds
        push    %es
        xor     %ax, %ax
        mov     %ax, %ds
        mov     $VGA_SEG, %ax
        mov     %ax, %es
        cld
        in      $KBD_DATA, %al
        test    $0x80, %al              # a break code, or the E0/E1 prefixes
        jnz     9f
        cmp     $scancodes_end - scancodes, %al
        jae     9f
        xor     %bx, %bx
        mov     %al, %bl
        mov     scancodes(%bx), %al
        test    %al, %al
        jz      9f
        cmp     $'\n', %al
        jne     3f
        mov     $'\r', %al
        call    com1_putc
        mov     $'\n', %al
        call    com1_putc
        mov     echo_pos, %ax           # the next row
        xor     %dx, %dx
        mov     $160, %bx
        div     %bx
        inc     %ax
        jmp     4f
3:      call    com1_putc
        mov     echo_pos, %di
        mov     $ATTR, %ah
        stosw
        mov     %di, echo_pos
        mov     %di, %ax
        xor     %dx, %dx
        mov     $160, %bx
        div     %bx
        test    %dx, %dx
        jnz     9f                      # still inside the row
4:      cmp     $ECHO_LAST_ROW, %ax
        jbe     5f
        mov     $ECHO_FIRST_ROW, %ax
5:      mov     $160, %bx
        mul     %bx
        mov     %ax, echo_pos
9:      mov     $0x20, %al
        out     %al, $PIC1
        pop     %es
        pop     %ds
        pop     %di
        pop     %si
        pop     %dx
        pop     %bx
        pop     %ax
        iret

# scancode set 1 make code -> ASCII (0: not echoed)
scancodes:
        .byte   0, 0, '1', '2', '3', '4', '5', '6', '7', '8', '9', '0', 0, 0, 0, 0     # 0x00
        .byte   'q', 'w', 'e', 'r', 't', 'y', 'u', 'i', 'o', 'p', 0, 0, '\n', 0, 'a', 's' # 0x10
        .byte   'd', 'f', 'g', 'h', 'j', 'k', 'l', 0, 0, 0, 0, 0, 'z', 'x', 'c', 'v'   # 0x20
        .byte   'b', 'n', 'm', 0, 0, 0, 0, 0, 0, ' '                                   # 0x30
scancodes_end:

# CMOS registers and what follows each in the text (0: nothing; 0xFF ends)
rtc_fields:
        .byte   0x32, 0, 0x09, '-', 0x08, '-', 0x07, ' ', 0x04, ':', 0x02, ':', 0x00, 0, 0xFF
rtc_text:
        .ascii  "RTC CCYY-MM-DD HH:MM:SS"
        .byte   0, 0, 0
msg_ticks:      .asciz "ticks "
msg_done_vga:   .asciz " done"
msg_done:       .asciz "done\r\n"
crlf:           .asciz "\r\n"
msg_spin:       .asciz "spin-wait: waiting for 50 ticks in a loop with no hlt and no I/O\r\n"
        .balign 2
ticks:          .word 0
echo_pos:       .word 0
