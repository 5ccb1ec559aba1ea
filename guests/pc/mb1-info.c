/*
 * pc/mb1-info.c - a multiboot1 ELF kernel that prints what its loader told
 * it: the command line, the boot loader's name, mem_lower/mem_upper, the
 * memory map (and whether it agrees with mem_lower/mem_upper), and each
 * module's place, string, size and first bytes.  On VGA, COM1 and 0xE9.
 *
 * The lines that depend on the loader's own choices (its name, the memory
 * sizes and map, where modules are placed) start with "loader:", "mem:",
 * "mmap:" and "mod N at"; every other line is the same under any loader
 * given the same command line and modules.
 *
 * Exit: 0x10 ok; 0x11 bad magic; 0x12 the loopback probe failed; 0x14 the
 * memory information is missing or disagrees with the memory map, or a
 * module is not page-aligned (the header asks for that).
 */
#include "pc.h"

#define MB1_BOOT_MAGIC 0x2BADB002u
#define MBI_MEM      (1u << 0)
#define MBI_CMDLINE  (1u << 2)
#define MBI_MODS     (1u << 3)
#define MBI_MMAP     (1u << 6)
#define MBI_LOADER   (1u << 9)
#define FIRST_BYTES  16

struct mb1_info {
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline, mods_count, mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length, mmap_addr, drives_length, drives_addr, config_table;
    uint32_t boot_loader_name;
};

struct mb1_module {
    uint32_t start, end, string, reserved;
};

struct mb1_mmap {
    uint32_t size;              /* of the rest of the entry: the next is at +size+4 */
    uint64_t addr, len;
    uint32_t type;
} __attribute__((packed));

void kernel_main(uint32_t magic, const struct mb1_info *mbi);

static const char *text_at(uint32_t addr)
{
    return (const char *)(uintptr_t)addr;
}

void kernel_main(uint32_t magic, const struct mb1_info *mbi)
{
    vga_clear(ATTR(LIGHT_GREY, BLACK));
    pc_sinks = TO_VGA | TO_E9;
    if (magic != MB1_BOOT_MAGIC) {
        pr("mb1-info: bad multiboot magic 0x%08x\n", magic);
        pc_exit(PC_BAD_MAGIC);
    }
    if (com1_init() != 0) {
        pr("mb1-info: COM1 loopback probe failed\n");
        pc_exit(PC_NO_LOOPBACK);
    }
    pc_sinks = TO_VGA | TO_COM1 | TO_E9;
    int bad = 0;
    uint32_t flags = mbi->flags;

    vga_attr(ATTR(WHITE, BLUE));
    pr("mb1-info: the multiboot information\n");
    vga_attr(ATTR(LIGHT_GREY, BLACK));
    pr("cmdline: %s\n", (flags & MBI_CMDLINE) ? text_at(mbi->cmdline) : "(none)");
    pr("loader: %s\n", (flags & MBI_LOADER) ? text_at(mbi->boot_loader_name) : "(none)");

    if (flags & MBI_MEM) {
        pr("mem: lower %uK upper %uK\n", mbi->mem_lower, mbi->mem_upper);
    } else {
        pr("mem: (none)\n");
        bad = 1;
    }
    if (flags & MBI_MMAP) {
        /* the usable entries at 0 and at 1 MiB must end where mem_lower and
         * mem_upper say */
        int lower_ok = 0, upper_ok = 0;
        uint32_t at = mbi->mmap_addr, end = mbi->mmap_addr + mbi->mmap_length;
        while (at < end) {
            const struct mb1_mmap *e = (const struct mb1_mmap *)(uintptr_t)at;
            pr("mmap: 0x%09llx-0x%09llx type %u\n", (unsigned long long)e->addr,
               (unsigned long long)(e->addr + e->len), e->type);
            if (e->type == 1 && e->addr == 0 && e->len == (uint64_t)mbi->mem_lower * 1024)
                lower_ok = 1;
            if (e->type == 1 && e->addr == 0x100000
                && e->len == (uint64_t)mbi->mem_upper * 1024)
                upper_ok = 1;
            at += e->size + 4;
        }
        if ((flags & MBI_MEM) && lower_ok && upper_ok) {
            pr("memory map agrees with mem_lower and mem_upper\n");
        } else {
            pr("memory map DISAGREES with mem_lower and mem_upper\n");
            bad = 1;
        }
    } else {
        pr("mmap: (none)\n");
        bad = 1;
    }

    uint32_t count = (flags & MBI_MODS) ? mbi->mods_count : 0;
    pr("modules: %u\n", count);
    const struct mb1_module *mods = (const struct mb1_module *)(uintptr_t)mbi->mods_addr;
    for (uint32_t i = 0; i < count; i++) {
        const struct mb1_module *m = &mods[i];
        uint32_t size = m->end - m->start;
        int aligned = (m->start & 0xFFF) == 0;
        pr("mod %u at 0x%08x-0x%08x\n", i, m->start, m->end);
        pr("mod %u: \"%s\", %u bytes, %s: \"", i,
           m->string ? text_at(m->string) : "", size,
           aligned ? "page-aligned" : "NOT page-aligned");
        const uint8_t *data = (const uint8_t *)(uintptr_t)m->start;
        for (uint32_t j = 0; j < size && j < FIRST_BYTES; j++)
            pr("%c", data[j] >= 0x20 && data[j] < 0x7F ? data[j] : '.');
        pr("\"\n");
        bad |= !aligned;
    }
    pr("mb1-info: %s\n", bad ? "FAILED" : "done");
    pc_exit(bad ? PC_BAD_INFO : PC_OK);
}
