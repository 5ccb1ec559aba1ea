# Protected mode, 32-bit paging of its own (a 4 MiB PSE page, a 4 KiB table with a read-only
# page, CR0.WP): writes, reads, then a write to the read-only page (#PF, error code 3).
    # page directory at 0x10000 (4M PSE page 0 identity, and a 4K table for 0x400000)
    mov $0x10000, %edi
    xor %eax, %eax
    mov $2048, %ecx
    rep stosl
    movl $0x00000083, 0x10000       # 4M page, present, rw
    movl $0x00c00083, 0x1000c       # 4M page at 12M (the stack)
    movl $0x00011003, 0x10004       # PT at 0x11000 for 0x400000-0x7fffff
    movl $0x00500003, 0x11000       # 0x400000 -> 0x500000 rw
    movl $0x00501001, 0x11004       # 0x401000 -> 0x501000 ro
    mov %cr4, %eax
    or $0x10, %eax                  # PSE
    mov %eax, %cr4
    mov $0x10000, %eax
    mov %eax, %cr3
    mov %cr0, %eax
    or $0x80010000, %eax            # PG | WP
    mov %eax, %cr0
    movl $0x11223344, 0x400010
    mov 0x401020, %ebx
    in $0x45, %al
    movl $1, 0x401000               # write to read-only page: #PF(3)
    hlt
