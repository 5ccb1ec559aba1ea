# irq/preempt.s - preempt.bin, a two-task preemptive real-mode kernel for the
# pc board (raw, loaded at 0x1000: vmm run preempt.bin --board pc), made for
# placing timer interrupts by instruction count (icount).  As tick-real.s sets
# up: remap the 8259A pair to vectors 0x20/0x28 with IRQ 0 alone unmasked,
# program PIT channel 0 for 1000 Hz (mode 2, divisor 1193), install the IVT
# entry for IRQ 0.  Then two tasks, A and B, each with its own stack:
#   A (stack below 0x7000) and B (stack below 0x6000) are pure busy loops:
#          each increments its own 32-bit counter in memory forever, and every
#          2^SHIFT (4096) iterations prints one line "A n" / "B n" on COM1, n the
#          counter >> SHIFT (1, 2, 3, ...).  The line is printed with interrupts
#          off (cli ... sti), so that lines never mix; the tasks have no IN, no
#          HLT, no RDTSC, no BIOS: only the timer can take the CPU from them.
#   IRQ 0: saves the running task's registers (PUSHA, DS, ES) on its own stack,
#          counts the tick, EOI, keeps that task's SP and loads the other's
#          (round robin), and IRETs into it.  B's stack starts with a frame as
#          IRQ 0 leaves one (zero registers, IP task_b, CS 0, FLAGS with IF), so
#          the first switch enters B at task_b.  A runs from the start.
# After TICKS (20, --defsym TICKS=N) ticks the handler prints
#   "ticks N, A=<iterations> B=<iterations>" and "done" on COM1 (each line
# ending in \n, no \r) and exits: OUT 0x10 to 0xF4 (vmm and QEMU: status 33).
# With SHIFT 12, a task prints about every 12 K instructions (3 per iteration):
# every few ms of guest time at a few tens of millions of instructions a second.
# No I/O read anywhere in the kernel: the setup and the output are OUT only, and
# COM1's THR is written without reading its LSR (tick-real.s: com1_putc).
# Assembled with --defsym MULTIBOOT=1: preempt-mb.bin, the same behind a
# multiboot1 a.out-kludge header, for QEMU's -kernel (loaded at 0x1000 too).
# Nothing below 0x1000 is written but the IVT entry 0x20; the variables are at
# 0x2000 (.bss, zeroed at start), the stacks at 0x5000..0x7000.

        .set PIC1, 0x20
        .set PIC2, 0xA0
        .set PIT_CH0, 0x40
        .set PIT_CMD, 0x43
        .set COM1, 0x3F8
        .set DEBUG_EXIT, 0xF4
        .set PC_OK, 0x10
        .ifndef TICKS
        .set TICKS, 20
        .endif
        .ifndef SHIFT
        .set SHIFT, 12                  # a line every 2^SHIFT iterations
        .endif
        .set MASK, (1 << SHIFT) - 1
        .set DIVISOR, 1193              # 1193182 Hz / 1193 = 1000.2 Hz
        .set STACK_A, 0x7000            # A: 0x6000..0x7000
        .set STACK_B, 0x6000            # B: 0x5000..0x6000
        .set FLAGS_IF, 0x0202

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
        mov     %ax, %es
        mov     %ax, %ss
        mov     $STACK_A, %sp
        movw    $0, ticks
        movl    $0, count_a
        movl    $0, count_b
        movw    $0, current
        # the IVT: 0x20 -> irq0 (segment 0)
        movw    $irq0, 0x20 * 4
        movw    $0, 0x20 * 4 + 2
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
        mov     $0xFE, %al              # OCW1: IRQ 0 only
        out     %al, $PIC1 + 1
        mov     $0xFF, %al
        out     %al, $PIC2 + 1
        # B's first frame, as irq0 leaves a task's stack: FLAGS, CS, IP (IRET), then
        # AX CX DX BX SP BP SI DI (PUSHA; POPA skips SP), then DS, ES
        mov     $STACK_B, %sp
        pushw   $FLAGS_IF
        pushw   $0
        pushw   $task_b
        mov     $8 + 2, %cx             # eight registers and the two segments, all 0
1:      pushw   $0
        loop    1b
        mov     %sp, saved_sp + 2
        mov     $STACK_A, %sp
        # PIT channel 0: lobyte/hibyte, mode 2 (rate generator), 1000 Hz
        mov     $0x34, %al
        out     %al, $PIT_CMD
        mov     $(DIVISOR & 0xFF), %al
        out     %al, $PIT_CH0
        mov     $(DIVISOR >> 8), %al
        out     %al, $PIT_CH0
        xor     %ax, %ax                # A starts with zero registers too
        xor     %bx, %bx
        xor     %cx, %cx
        xor     %dx, %dx
        xor     %si, %si
        xor     %di, %di
        xor     %bp, %bp
        sti
        # fall into task A

# Task A: count, and print "A n" every 2^SHIFT iterations
task_a:
1:      incl    count_a
        testl   $MASK, count_a
        jnz     1b
        cli                             # one whole line at a time
        mov     count_a, %eax
        mov     $'A', %cl
        call    task_line
        sti
        jmp     1b

# Task B: the same with its own counter, code and stack
task_b:
1:      incl    count_b
        testl   $MASK, count_b
        jnz     1b
        cli
        mov     count_b, %eax
        mov     $'B', %cl
        call    task_line
        sti
        jmp     1b

# task_line: "<CL> <EAX >> SHIFT>\n" on COM1 (interrupts off)
task_line:
        push    %eax
        mov     %cl, %al
        call    com1_putc
        mov     $' ', %al
        call    com1_putc
        pop     %eax
        shr     $SHIFT, %eax
        call    com1_dec
        mov     $'\n', %al
        jmp     com1_putc

# com1_dec: EAX in decimal on COM1 (clobbers EAX, EBX, ECX, EDX)
com1_dec:
        mov     $10, %ebx
        xor     %cx, %cx
1:      xor     %edx, %edx
        div     %ebx
        push    %dx
        inc     %cx
        test    %eax, %eax
        jnz     1b
2:      pop     %ax
        add     $'0', %al
        call    com1_putc
        loop    2b
        ret

# com1_puts: the NUL-terminated string at DS:SI on COM1
com1_puts:
1:      lodsb
        test    %al, %al
        jz      2f
        call    com1_putc
        jmp     1b
2:      ret

# com1_putc: AL on COM1.  No wait for THRE in the LSR (no IN at all): under vmm the
# keyboard and COM1 share one input stream (docs/devices.md), and an LSR read would
# take the next key as a byte COM1 received; vmm's and QEMU's THR take every byte.
com1_putc:
        push    %dx
        mov     $COM1, %dx
        out     %al, %dx
        pop     %dx
        ret

# IRQ 0: save the task, count, EOI, switch to the other task's stack, IRET into it
irq0:
        pushaw
        push    %ds
        push    %es
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %es
        cld
        incw    ticks
        mov     $0x20, %al              # non-specific EOI
        out     %al, $PIC1
        cmpw    $TICKS, ticks
        jae     finish
        mov     current, %bx            # 0: A, 2: B
        mov     %sp, saved_sp(%bx)
        xor     $2, %bx
        mov     %bx, current
        mov     saved_sp(%bx), %sp
        pop     %es
        pop     %ds
        popaw
        iret

# the last tick: the summary, "done", exit (interrupts stay off)
finish:
        mov     $msg_ticks, %si
        call    com1_puts
        xor     %eax, %eax
        mov     ticks, %ax
        call    com1_dec
        mov     $msg_a, %si
        call    com1_puts
        mov     count_a, %eax
        call    com1_dec
        mov     $msg_b, %si
        call    com1_puts
        mov     count_b, %eax
        call    com1_dec
        mov     $msg_done, %si
        call    com1_puts
        mov     $PC_OK, %al
        out     %al, $DEBUG_EXIT
2:      cli
        hlt
        jmp     2b

msg_ticks:      .asciz "ticks "
msg_a:          .asciz ", A="
msg_b:          .asciz " B="
msg_done:       .asciz "\ndone\n"
# The variables live in .bss, on a page of their own (0x2000; the kernel zeroes them):
# the tasks write their counters on every iteration, and a write to the page of the code
# being run makes a TCG-based CPU (QEMU, the Unicorn emulator) retranslate it each time.
        .bss
        .balign 4096
count_a:        .long 0                 # task A's iterations
count_b:        .long 0                 # task B's iterations
saved_sp:       .word 0, 0              # A's and B's SP while the other runs
current:        .word 0                 # the running task: 0 A, 2 B
ticks:          .word 0
