/*
 * pc/mb1-aout.c - the C part of mb1-aout.bin, a flat binary booted by the
 * multiboot a.out kludge: checks the magic, that its 64 KiB .bss array is
 * zero (the loader's job: bss_end_addr), that the file's first byte is at
 * load_addr, and prints on VGA and 0xE9.
 *
 * Exit: 0x10 ok; 0x11 bad magic; 0x13 .bss not zero; 0x14 not loaded at load_addr.
 */
#include "pc.h"

#define MB1_BOOT_MAGIC 0x2BADB002u
#define PROBE_SIZE 65536

extern char _load_start[];
static volatile uint8_t bss_probe[PROBE_SIZE];

void kernel_main(uint32_t magic, uint32_t mbi);

void kernel_main(uint32_t magic, uint32_t mbi)
{
    (void)mbi;
    vga_clear(ATTR(LIGHT_GREY, BLACK));
    pc_sinks = TO_VGA | TO_E9;
    if (magic != MB1_BOOT_MAGIC) {
        pr("mb1-aout: bad multiboot magic 0x%08x\n", magic);
        pc_exit(PC_BAD_MAGIC);
    }
    vga_attr(ATTR(BLACK, LIGHT_GREY));
    pr("mb1-aout: a flat binary loaded by the multiboot a.out kludge\n");
    vga_attr(ATTR(LIGHT_GREY, BLACK));
    /* the header's load_addr is the first byte of the file, linked at 1 MiB */
    int placed = (uintptr_t)_load_start == 0x100000 && *(const uint32_t *)_load_start == 0x1BADB002u;
    pr("image at 0x%08x: %s\n", (unsigned)(uintptr_t)_load_start,
       placed ? "the file's first byte is the header's magic" : "NOT the file's first byte");
    if (!placed)
        pc_exit(PC_BAD_INFO);

    unsigned dirty = 0, first = 0;
    for (unsigned i = 0; i < PROBE_SIZE; i++)
        if (bss_probe[i] && !dirty++)
            first = i;
    if (dirty) {
        vga_attr(ATTR(WHITE, RED));
        pr("bss: %u of %u bytes not zero, the first at 0x%08x\n", dirty, PROBE_SIZE,
           (unsigned)(uintptr_t)&bss_probe[first]);
        pc_exit(PC_BSS_DIRTY);
    }
    vga_attr(ATTR(LIGHT_GREEN, BLACK));
    pr("bss: %u bytes, all zero\n", PROBE_SIZE);
    vga_attr(ATTR(LIGHT_GREY, BLACK));
    pr("mb1-aout: done\n");
    pc_exit(PC_OK);
}
