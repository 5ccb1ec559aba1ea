/*
 * pc/flat0.c - the C part of flat0.bin (see flat0-start.s): a guest linked
 * at 0 that writes a pattern over its scratch memory at 0x10-0x3FF, reads it
 * back, and prints on VGA and 0xE9 where it runs.
 *
 * Exit: 0x10 ok; 0x17 the scratch memory did not read back; 0x18 not in
 * protected mode (CR0.PE clear) or paging on.
 */
#include "pc.h"

extern volatile uint8_t flat0_scratch[], flat0_scratch_end[];
extern char _start[];

void flat0_main(void);

void flat0_main(void)
{
    vga_clear(ATTR(LIGHT_GREY, BLACK));
    pc_sinks = TO_VGA | TO_E9;
    uint32_t cr0;
    uint16_t cs, ds;
    __asm__ volatile("mov %%cr0, %0" : "=r"(cr0));
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    __asm__ volatile("mov %%ds, %0" : "=r"(ds));
    vga_attr(ATTR(BLACK, CYAN));
    pr("flat0: a raw protected-mode guest linked at 0x%08x\n", (unsigned)(uintptr_t)_start);
    vga_attr(ATTR(LIGHT_GREY, BLACK));
    pr("own GDT: CS=0x%02x DS=0x%02x, CR0.PE=%u CR0.PG=%u\n", cs, ds, cr0 & 1, cr0 >> 31);
    if (!(cr0 & 1) || (cr0 >> 31)) {
        pr("flat0: FAILED\n");
        pc_exit(PC_WRONG_MODE);
    }

    unsigned start = (unsigned)(uintptr_t)flat0_scratch;
    unsigned end = (unsigned)(uintptr_t)flat0_scratch_end;
    for (unsigned a = start; a < end; a++)
        flat0_scratch[a - start] = (uint8_t)(a * 7 + 3);
    unsigned wrong = 0;
    for (unsigned a = start; a < end; a++)
        wrong += flat0_scratch[a - start] != (uint8_t)(a * 7 + 3);
    pr("scratch 0x%03x-0x%03x: %u bytes written, %u read back wrong\n",
       start, end - 1, end - start, wrong);
    pr("flat0: %s\n", wrong ? "FAILED" : "done");
    pc_exit(wrong ? PC_BAD_MEMORY : PC_OK);
}
