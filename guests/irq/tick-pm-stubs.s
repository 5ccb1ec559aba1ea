# irq/tick-pm-stubs.s - the interrupt entry stubs of tick-pm.elf: each saves
# the general registers, calls its C handler with the direction flag clear,
# sends a non-specific EOI to the master 8259A and returns with IRET.  Entered
# through 32-bit interrupt gates (IF is clear inside).

        .code32
        .text
        .globl  irq0_stub, irq1_stub

        .macro  STUB name, handler
\name:
        pushal
        cld
        call    \handler
        movb    $0x20, %al
        outb    %al, $0x20
        popal
        iret
        .endm

        STUB    irq0_stub, irq0_handler
        STUB    irq1_stub, irq1_handler
