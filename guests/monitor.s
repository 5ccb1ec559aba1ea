# monitor.s - menu-driven monitor over COM1.
#
# Real-mode raw binary, linked and loaded at 0x1000 (vmm boot default).
# All I/O goes through COM1 only: output is OUT to COM1 (0x3f8), input is a
# 16-bit `in %dx, %ax` from COM1, which blocks until a key is available and
# returns it in AL (AH = 0).  Line endings are "\n" only.
#
#   vmm monitor v1
#   Menu:
#     1) CPU information
#     2) Headline
#     3) Weather
#     4) Air quality
#     h) Halt
#   Choice: <key echoed>\n
#
# '\r' and '\n' keys are ignored silently.  Unknown keys print
# "Invalid choice: <c>" and the menu again.
#
# 2-4 use vmm's web-data devices (ports 0x100, 0x101-0x106, 0x201-0x206):
# 3 and 4 first ask for a city ("Cities:" / "  1) Chennai" ... / "City: ",
# the key echoed); a key other than 1-6 prints "Invalid city: <c>" and goes
# back to the main menu.  Then "Fetching, please wait...", the device's text
# (16-bit INs until a 0) and "\n".
#
# Adding an entry: write a handler (a near procedure, may clobber anything
# but must preserve SP, DS, ES) and add one MENU_ENTRY line to menu_table.

        .include "ports.inc"

        .set STACK_SIZE,        1024
        .set BRAND_LEN,         48      # CPUID 0x80000002..0x80000004

# Menu table entry layout (6 bytes):
        .set ENT_KEY,           0       # .byte key
        .set ENT_LABEL,         2       # .word address of NUL-terminated label
        .set ENT_HANDLER,       4       # .word address of handler
        .set ENT_SIZE,          6

# MENU_ENTRY key, "label", handler
        .macro MENU_ENTRY key, label, handler
        .pushsection .rodata
.Lmenu_label\@:
        .asciz "\label"
        .popsection
        .byte   \key, 0
        .word   .Lmenu_label\@, \handler
        .endm

        REAL_MODE_START
        mov     %ax, %es
        mov     %ax, %ss
        mov     $stack_top, %sp

        mov     $s_banner, %si
        call    puts

menu:
        call    print_menu
read_key:
        call    getc                    # AL = key
        cmp     $ASCII_CR, %al          # stray line endings: ignore silently
        je      read_key
        cmp     $ASCII_LF, %al
        je      read_key
        mov     %al, %bl                # BL = key for the rest of the loop
        call    putc                    # echo it ...
        mov     $ASCII_LF, %al          # ... and end the "Choice: " line
        call    putc

        mov     $menu_table, %si
1:      mov     ENT_KEY(%si), %al
        test    %al, %al                # end of table?
        jz      invalid_choice
        cmp     %bl, %al
        je      2f
        add     $ENT_SIZE, %si
        jmp     1b
2:      call    *ENT_HANDLER(%si)
        jmp     menu

invalid_choice:
        mov     $s_invalid, %si
        call    puts
        mov     %bl, %al
        call    putc
        mov     $ASCII_LF, %al
        call    putc
        jmp     menu

# ---------------------------------------------------------------------------
# Menu
# ---------------------------------------------------------------------------
menu_table:
        MENU_ENTRY '1', "CPU information", cmd_cpuinfo
        MENU_ENTRY '2', "Headline", cmd_headline
        MENU_ENTRY '3', "Weather", cmd_weather
        MENU_ENTRY '4', "Air quality", cmd_air
        MENU_ENTRY 'h', "Halt", cmd_halt
        .byte   0                       # end of table

# print_menu: "Menu:\n", one "  <key>) <label>\n" per entry, "Choice: ".
print_menu:
        mov     $s_menu, %si
        call    puts
        mov     $menu_table, %bx
1:      cmpb    $0, ENT_KEY(%bx)
        je      2f
        mov     $s_indent, %si
        call    puts
        mov     ENT_KEY(%bx), %al
        call    putc
        mov     $s_paren, %si
        call    puts
        mov     ENT_LABEL(%bx), %si
        call    puts
        mov     $ASCII_LF, %al
        call    putc
        add     $ENT_SIZE, %bx
        jmp     1b
2:      mov     $s_choice, %si
        jmp     puts                    # tail call

# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

# cmd_halt: say goodbye and stop the CPU.
cmd_halt:
        mov     $s_halted, %si
        call    puts
        HALT_FOREVER

# cmd_cpuinfo: vendor, brand string and display family/model/stepping.
cmd_cpuinfo:
        # -- vendor: CPUID 0 -> EBX, EDX, ECX ------------------------------
        xor     %eax, %eax
        cpuid
        mov     %ebx, vendor
        mov     %edx, vendor+4
        mov     %ecx, vendor+8
        mov     $s_vendor, %si
        call    puts
        mov     $vendor, %si
        mov     $12, %cx
        call    putn
        mov     $ASCII_LF, %al
        call    putc

        # -- brand: CPUID 0x80000002..0x80000004, if supported --------------
        mov     $s_brand, %si
        call    puts
        mov     $0x80000000, %eax
        cpuid
        cmp     $0x80000004, %eax       # unsigned: also rejects garbage < 0x80000000
        jb      .Lno_brand
        mov     $brand, %di
        mov     $0x80000002, %ebp
.Lbrand_leaf:
        mov     %ebp, %eax
        cpuid
        stosl                           # EAX, EBX, ECX, EDX in that order
        mov     %ebx, %eax
        stosl
        mov     %ecx, %eax
        stosl
        mov     %edx, %eax
        stosl
        inc     %ebp
        cmp     $0x80000004, %ebp
        jbe     .Lbrand_leaf
        movb    $0, brand+BRAND_LEN     # the string is NUL padded; be sure
        mov     $brand, %si
1:      cmpb    $' ', (%si)             # trim leading spaces
        jne     2f
        inc     %si
        jmp     1b
2:      cmpb    $0, (%si)               # nothing left: treat as no brand
        je      .Lno_brand
        call    puts
        jmp     .Lfms
.Lno_brand:
        mov     $s_none, %si
        call    puts

        # -- family / model / stepping from CPUID 1 EAX --------------------
.Lfms:
        mov     $ASCII_LF, %al
        call    putc
        mov     $1, %eax
        cpuid
        mov     %eax, %edx              # EDX = signature
        mov     %dx, %bx                # BX = base family (bits 11:8)
        shr     $8, %bx
        and     $0xf, %bx
        mov     %dx, %cx                # CX = base model (bits 7:4)
        shr     $4, %cx
        and     $0xf, %cx
        mov     %bx, %di                # DI = display family
        cmp     $0xf, %bx
        jne     1f
        mov     %edx, %eax              # + extended family (bits 27:20)
        shr     $20, %eax
        and     $0xff, %ax
        add     %ax, %di
1:      cmp     $0x6, %bx               # display model for families 6, 15
        je      2f
        cmp     $0xf, %bx
        jne     3f
2:      mov     %edx, %eax              # + extended model (bits 19:16) << 4
        shr     $12, %eax
        and     $0xf0, %ax
        add     %ax, %cx
3:      mov     %dx, %bp                # BP = stepping (bits 3:0)
        and     $0xf, %bp

        mov     $s_family, %si
        call    puts
        mov     %di, %ax
        call    putdec
        mov     $s_model, %si
        call    puts
        mov     %cx, %ax
        call    putdec
        mov     $s_stepping, %si
        call    puts
        mov     %bp, %ax
        call    putdec
        mov     $ASCII_LF, %al
        jmp     putc                    # tail call

# cmd_headline: the top headline (port 0x100).
cmd_headline:
        mov     $WEB_HEADLINE, %dx
        jmp     show_web                # tail call

# cmd_weather, cmd_air: ask for a city, then show its weather / air quality.
cmd_weather:
        mov     $WEB_WEATHER, %dx
        jmp     city_menu
cmd_air:
        mov     $WEB_AIR, %dx
        # fall through

# city_menu: DX = the port of city 1.  Print the cities and read a key
# (CR/LF ignored, the key echoed); 1-6 shows the device at DX + key - '1',
# anything else prints "Invalid city: <c>".
city_menu:
        mov     $s_cities, %si
        call    puts
1:      call    getc                    # preserves DX
        cmp     $ASCII_CR, %al
        je      1b
        cmp     $ASCII_LF, %al
        je      1b
        mov     %al, %bl
        call    putc
        mov     $ASCII_LF, %al
        call    putc
        cmp     $'1', %bl
        jb      2f
        cmp     $'0' + WEB_CITIES, %bl
        ja      2f
        sub     $'1', %bl
        xor     %bh, %bh
        add     %bx, %dx
        jmp     show_web                # tail call
2:      mov     $s_bad_city, %si
        call    puts
        mov     %bl, %al
        call    putc
        mov     $ASCII_LF, %al
        jmp     putc                    # tail call

# show_web: DX = a web-data port.  "Fetching, please wait...", then the
# device's text: 16-bit INs until one returns 0 (the first one waits while
# vmm fetches), then "\n".
show_web:
        mov     $s_fetching, %si
        call    puts
1:      in      %dx, %ax
        test    %al, %al
        jz      2f
        call    putc                    # preserves DX
        jmp     1b
2:      mov     $ASCII_LF, %al
        jmp     putc                    # tail call

# ---------------------------------------------------------------------------
# COM1 helpers
# ---------------------------------------------------------------------------

# getc: block for a key; returns it in AL (16-bit IN, AH = 0).
getc:
        push    %dx
        mov     $COM1, %dx
        in      %dx, %ax
        pop     %dx
        ret

# putc: transmit AL.
putc:
        push    %dx
        mov     $COM1, %dx
        out     %al, %dx
        pop     %dx
        ret

# puts: transmit the NUL-terminated string at DS:SI.  Clobbers AL, SI.
puts:
1:      lodsb
        test    %al, %al
        jz      2f
        call    putc
        jmp     1b
2:      ret

# putn: transmit CX bytes from DS:SI.  Clobbers AL, CX, SI.
putn:
        jcxz    2f
1:      lodsb
        call    putc
        loop    1b
2:      ret

# putdec: transmit AX as an unsigned decimal number.  Preserves all but AX.
putdec:
        push    %bx
        push    %cx
        push    %dx
        mov     $10, %bx
        xor     %cx, %cx
1:      xor     %dx, %dx
        div     %bx                     # AX = AX / 10, DX = digit
        push    %dx
        inc     %cx
        test    %ax, %ax
        jnz     1b
2:      pop     %ax
        add     $'0', %al
        call    putc
        loop    2b
        pop     %dx
        pop     %cx
        pop     %bx
        ret

# ---------------------------------------------------------------------------
# Strings
# ---------------------------------------------------------------------------
        .section .rodata
s_banner:       .asciz "vmm monitor v1\n"
s_menu:         .asciz "Menu:\n"
s_indent:       .asciz "  "
s_paren:        .asciz ") "
s_choice:       .asciz "Choice: "
s_invalid:      .asciz "Invalid choice: "
s_halted:       .asciz "Halted.\n"
s_vendor:       .asciz "Vendor: "
s_brand:        .asciz "Brand: "
s_none:         .asciz "(none)"
s_family:       .asciz "Family: "
s_model:        .asciz " Model: "
s_stepping:     .asciz " Stepping: "
s_fetching:     .asciz "Fetching, please wait...\n"
s_cities:       .ascii "Cities:\n"
                .ascii "  1) Chennai\n"
                .ascii "  2) New Delhi\n"
                .ascii "  3) London\n"
                .ascii "  4) Chicago\n"
                .ascii "  5) San Francisco\n"
                .ascii "  6) New York\n"
                .asciz "City: "
s_bad_city:     .asciz "Invalid city: "

        .bss
vendor:         .skip 12
brand:          .skip BRAND_LEN + 1
        .balign 16
stack:          .skip STACK_SIZE
stack_top:
