/*
 * pc/mb1-gccnote.c - a multiboot1 kernel linked the lazy way, with gcc's
 * default i386 link and -Ttext 0x100000 (no linker script): the linker then
 * keeps the ELF headers and the .note.gnu.build-id note in a PT_LOAD segment
 * of their own at 0x08048000, far above the kernel and above 128 MiB of RAM,
 * which loaders (QEMU's, GRUB's) tolerate.  Checks the magic, that its .data
 * was loaded and its .bss zeroed, and prints on VGA, COM1 (no init: straight
 * to THR, as such kernels do) and 0xE9.
 *
 * Exit: 0x10 ok; 0x11 bad magic; 0x13 .data or .bss not as linked.
 */
#include "pc.h"

#define MB1_BOOT_MAGIC 0x2BADB002u

static volatile uint32_t loaded = 0x600DDA7A;  /* in .data */
static volatile uint32_t zeroed[64];            /* in .bss */

void kernel_main(uint32_t magic, uint32_t mbi);

void kernel_main(uint32_t magic, uint32_t mbi)
{
    (void)mbi;
    vga_clear(ATTR(LIGHT_GREY, BLACK));
    pc_sinks = TO_VGA | TO_COM1 | TO_E9;
    if (magic != MB1_BOOT_MAGIC) {
        pr("mb1-gccnote: bad multiboot magic 0x%08x\n", magic);
        pc_exit(PC_BAD_MAGIC);
    }
    vga_attr(ATTR(LIGHT_MAGENTA, BLACK));
    pr("mb1-gccnote: linked by gcc's default script, a note segment far away\n");
    uint32_t any = 0;
    for (unsigned i = 0; i < 64; i++)
        any |= zeroed[i];
    vga_attr(ATTR(LIGHT_GREY, BLACK));
    pr(".data 0x%08x, .bss %s\n", loaded, any ? "NOT zero" : "zero");
    int ok = loaded == 0x600DDA7A && !any;
    pr("mb1-gccnote: %s\n", ok ? "done" : "FAILED");
    pc_exit(ok ? PC_OK : PC_BSS_DIRTY);
}
