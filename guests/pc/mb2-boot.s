# pc/mb2-boot.s - multiboot2 header and 32-bit entry of mb2-long.elf, an
# ELF64 kernel that switches itself to long mode, as multiboot2 long-mode
# tutorials do: a loader (GRUB, vmm) starts it at its 32-bit entry in
# protected mode with EAX = 0x36d76289 and EBX = the information structure.
# The entry checks the magic and CPUID's long-mode bit, identity-maps the
# first GiB with 2 MiB pages, enables PAE, EFER.LME and paging, loads a
# 64-bit GDT and far-jumps to 64-bit code, which calls mb2_main(magic, mbi).

        .include "pc.inc"

        .set MB2_MAGIC,      0xE85250D6
        .set MB2_ARCH_I386,  0
        .set MB2_BOOT_MAGIC, 0x36d76289
        .set STACK_SIZE,     16384

        .section .multiboot2, "a"
        .balign 8
mb2_header:
        .long   MB2_MAGIC
        .long   MB2_ARCH_I386
        .long   mb2_header_end - mb2_header
        .long   -(MB2_MAGIC + MB2_ARCH_I386 + (mb2_header_end - mb2_header))
        .balign 8
info_request:                           # type 1: the tags we need (not optional)
        .word   1, 0
        .long   info_request_end - info_request
        .long   1                       # command line
        .long   2                       # boot loader name
        .long   4                       # basic memory information
        .long   6                       # memory map
info_request_end:
        .balign 8
        .word   0, 0                    # end tag
        .long   8
mb2_header_end:

        .section .boot, "ax"
        .code32
        .globl  _start
        .type   _start, @function
_start:
        cli
        mov     $stack_top, %esp
        mov     %eax, %edi              # keep the magic and the MBI for mb2_main
        mov     %ebx, %esi
        cmp     $MB2_BOOT_MAGIC, %eax
        je      1f
        mov     $msg_magic, %ebx
        mov     $PC_BAD_MAGIC, %al
        jmp     fail32
1:      mov     $0x80000000, %eax       # CPUID: is there a long mode?
        cpuid
        cmp     $0x80000001, %eax
        jb      no_long_mode
        mov     $0x80000001, %eax
        cpuid
        test    $(1 << 29), %edx
        jnz     2f
no_long_mode:
        mov     $msg_no_lm, %ebx
        mov     $PC_NO_LONG_MODE, %al
        jmp     fail32

2:      cld                             # page tables: zero them, then
        push    %edi                    # PML4[0] -> PDPT, PDPT[0] -> PD,
        mov     $pml4, %edi             # PD[i] = i * 2 MiB, present, writable, large
        mov     $(3 * 4096 / 4), %ecx
        xor     %eax, %eax
        rep stosl
        pop     %edi
        movl    $(pdpt + 3), pml4
        movl    $(pd + 3), pdpt
        mov     $pd, %ebx
        mov     $0x83, %eax
        mov     $512, %ecx
3:      mov     %eax, (%ebx)
        add     $0x200000, %eax
        add     $8, %ebx
        loop    3b

        mov     $pml4, %eax
        mov     %eax, %cr3
        mov     %cr4, %eax
        or      $(1 << 5), %eax         # PAE
        mov     %eax, %cr4
        mov     $0xC0000080, %ecx       # EFER.LME
        rdmsr
        or      $(1 << 8), %eax
        wrmsr
        mov     %cr0, %eax
        or      $0x80000001, %eax       # PG (and PE, already set)
        mov     %eax, %cr0
        lgdt    gdt_ptr
        ljmp    $0x08, $long_entry

# fail32: print the NUL-terminated message at EBX on 0xE9, exit with AL.
fail32:
        mov     %al, %ah
        mov     $DEBUGCON, %dx
4:      mov     (%ebx), %al
        test    %al, %al
        jz      5f
        out     %al, %dx
        inc     %ebx
        jmp     4b
5:      mov     %ah, %al
        out     %al, $DEBUG_EXIT
6:      cli
        hlt
        jmp     6b

        .code64
long_entry:
        mov     $0x10, %ax
        mov     %ax, %ds
        mov     %ax, %es
        mov     %ax, %ss
        xor     %ax, %ax
        mov     %ax, %fs
        mov     %ax, %gs
        mov     $stack_top, %rsp
        call    mb2_main                # (edi = magic, esi = mbi)
7:      cli
        hlt
        jmp     7b

        .section .rodata
msg_magic:
        .asciz  "mb2-long: bad multiboot2 magic\n"
msg_no_lm:
        .asciz  "mb2-long: this CPU has no long mode\n"
        .balign 8
gdt:    .quad   0
        .quad   0x00AF9A000000FFFF      # 0x08: 64-bit code
        .quad   0x00CF92000000FFFF      # 0x10: data
gdt_end:
gdt_ptr:
        .word   gdt_end - gdt - 1
        .long   gdt

        .bss
        .balign 4096
pml4:   .skip   4096
pdpt:   .skip   4096
pd:     .skip   4096
        .balign 16
        .skip   STACK_SIZE
stack_top:
