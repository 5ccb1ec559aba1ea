# pc/real16.s - real16.elf, an ELF32 whose entry is 16-bit code, linked at
# 0x8000 (below 1 MiB): for `vmm run --mode real`.  It takes segments and a
# stack of its own, checks CR0.PE is clear, checks real-mode addressing
# (segment 0x0900 offset 0x0010 is linear 0x9010), prints on 0xE9 with
# `out dx, al`, and exits through 0xF4.
#
# Exit: 0x10 ok; 0x17 the segment arithmetic did not hold; 0x18 CR0.PE set.

        .include "pc.inc"

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
        mov     $0x7C00, %sp
        mov     $msg_hello, %si
        call    puts
        smsw    %ax                     # CR0's low word: PE must be clear
        test    $1, %al
        jz      1f
        mov     $msg_not_real, %si
        call    puts
        mov     $PC_WRONG_MODE, %al
        jmp     exit
1:      mov     $msg_real, %si
        call    puts
        movw    $0, 0x9010              # DS=0: linear 0x9010
        mov     $0x0900, %ax
        mov     %ax, %es
        movw    $0x1234, %es:0x0010     # 0x0900:0x0010 = linear 0x9010 too
        xor     %ax, %ax
        mov     %ax, %es
        cmpw    $0x1234, 0x9010
        je      2f
        mov     $msg_bad_seg, %si
        call    puts
        mov     $PC_BAD_MEMORY, %al
        jmp     exit
2:      mov     $msg_seg, %si
        call    puts
        mov     $msg_done, %si
        call    puts
        mov     $PC_OK, %al
exit:   out     %al, $DEBUG_EXIT
3:      cli
        hlt
        jmp     3b

# puts: print the NUL-terminated string at DS:SI on 0xE9
puts:   mov     $DEBUGCON, %dx
4:      lodsb
        test    %al, %al
        jz      5f
        out     %al, %dx
        jmp     4b
5:      ret

msg_hello:    .asciz "real16: an ELF32 with a 16-bit entry at 0x8000\n"
msg_real:     .asciz "CR0.PE=0: real mode\n"
msg_not_real: .asciz "CR0.PE=1: NOT real mode\n"
msg_seg:      .asciz "segment 0x0900:0x0010 is linear 0x9010\n"
msg_bad_seg:  .asciz "segment 0x0900:0x0010 is NOT linear 0x9010\n"
msg_done:     .asciz "real16: done\n"
