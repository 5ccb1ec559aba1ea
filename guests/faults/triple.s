# faults/triple.s - real-mode raw guest that triple faults.
#
# Loaded at 0x1000 in real mode.  Loads an IDTR with limit 0 (base 0),
# switches to 32-bit protected mode with its own minimal flat GDT, and
# executes ud2.  #UD (vector 6) is beyond the IDT limit -> #GP, also
# beyond it -> #DF -> triple fault: CPU shutdown (KVM_EXIT_SHUTDOWN).
#
# Why not simply `lidt zero_idtr; int3` in real mode?  Hosts that emulate
# real mode in software (KVM without unrestricted guest, KVM-PVM as on our
# CI machine) deliver real-mode interrupts through the IVT without checking
# the IDTR limit, so the int3 lands in vmm's HLT stub for vector 3 instead
# of triple faulting.  A CPU-raised fault in protected mode triple faults
# everywhere (and int3 there is not emulated by KVM-PVM either: it gives a
# KVM internal error, hence ud2).

        .set CODE_SEL,  0x08            # our GDT: flat 32-bit code
        .set DATA_SEL,  0x10            # our GDT: flat data
        .set CR0_PE,    0x1

        .code16
        .text
        .globl _start
_start:
        cli                             # nothing is delivered anyway
        xor     %ax, %ax
        mov     %ax, %ds                # gdtr/zero_idtr are addressed via DS
        lgdt    gdtr
        lidt    zero_idtr
        mov     %cr0, %eax
        or      $CR0_PE, %eax
        mov     %eax, %cr0
        ljmp    $CODE_SEL, $pmode

        .code32
pmode:
        mov     $DATA_SEL, %ax
        mov     %ax, %ds
        mov     %ax, %ss
        ud2                             # #UD -> #GP -> #DF -> shutdown
        jmp     .                       # not reached

        .balign 8
gdt:
        .quad   0                       # null descriptor
        .quad   0x00cf9b000000ffff      # 0x08: base 0, limit 4 GiB, code r/x, 32-bit
        .quad   0x00cf93000000ffff      # 0x10: base 0, limit 4 GiB, data r/w
gdt_end:

gdtr:
        .word   gdt_end - gdt - 1       # limit
        .long   gdt                     # base

zero_idtr:
        .word   0                       # limit: no vector fits
        .long   0                       # base
