/*
 * pc/mb2-long.c - the 64-bit part of mb2-long.elf: entered from
 * mb2-boot.s in long mode, it checks that paging, PAE and EFER.LMA are on,
 * walks the multiboot2 information tags up to the end tag, and prints the
 * command line and which of the requested tags it found, on VGA and 0xE9.
 *
 * Exit: 0x10 ok; 0x16 the tags are malformed (no end tag within total_size,
 * a tag shorter than 8 bytes) or a requested tag is missing; 0x18 not in
 * long mode with paging.
 */
#include "pc.h"

#define MB2_TAG_END      0
#define MB2_TAG_CMDLINE  1
#define MB2_TAG_LOADER   2
#define MB2_TAG_MEMINFO  4
#define MB2_TAG_MMAP     6
#define MAX_TAGS_BYTES   (1u << 20)

struct mb2_tag {
    uint32_t type, size;
};

void mb2_main(uint32_t magic, uint32_t mbi);

static uint64_t read_cr0(void) { uint64_t v; __asm__ volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static uint64_t read_cr4(void) { uint64_t v; __asm__ volatile("mov %%cr4, %0" : "=r"(v)); return v; }

static uint64_t read_efer(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(0xC0000080u));
    return (uint64_t)hi << 32 | lo;
}

void mb2_main(uint32_t magic, uint32_t mbi)
{
    (void)magic;                /* checked in 32-bit code */
    vga_clear(ATTR(LIGHT_GREY, BLACK));
    pc_sinks = TO_VGA | TO_E9;
    vga_attr(ATTR(WHITE, GREEN));
    pr("mb2-long: a multiboot2 ELF64 kernel, now in long mode\n");
    vga_attr(ATTR(LIGHT_GREY, BLACK));
    int pg = (read_cr0() >> 31) & 1, pae = (read_cr4() >> 5) & 1, lma = (read_efer() >> 10) & 1;
    pr("CR0.PG=%d CR4.PAE=%d EFER.LMA=%d\n", pg, pae, lma);
    if (!(pg && pae && lma))
        pc_exit(PC_WRONG_MODE);

    const uint8_t *base = (const uint8_t *)(uintptr_t)mbi;
    uint32_t total = *(const uint32_t *)base;
    const char *cmdline = 0;
    int loader = 0, meminfo = 0, mmap = 0, end = 0;
    for (uint32_t at = 8; total <= MAX_TAGS_BYTES && at + 8 <= total;) {
        const struct mb2_tag *tag = (const struct mb2_tag *)(base + at);
        if (tag->size < 8 || tag->size > total - at)
            break;
        if (tag->type == MB2_TAG_END) {
            end = 1;
            break;
        }
        if (tag->type == MB2_TAG_CMDLINE)
            cmdline = (const char *)(tag + 1);
        loader |= tag->type == MB2_TAG_LOADER;
        meminfo |= tag->type == MB2_TAG_MEMINFO;
        mmap |= tag->type == MB2_TAG_MMAP;
        at += (tag->size + 7) & ~7u;
    }
    pr("cmdline: %s\n", cmdline ? cmdline : "(none)");
    pr("tags: cmdline %s, loader name %s, meminfo %s, mmap %s, end %s\n",
       cmdline ? "yes" : "no", loader ? "yes" : "no", meminfo ? "yes" : "no",
       mmap ? "yes" : "no", end ? "yes" : "no");
    int ok = cmdline && loader && meminfo && mmap && end;
    vga_attr(ok ? ATTR(LIGHT_GREEN, BLACK) : ATTR(WHITE, RED));
    pr("mb2-long: %s\n", ok ? "done" : "FAILED");
    pc_exit(ok ? PC_OK : PC_BAD_TAGS);
}
