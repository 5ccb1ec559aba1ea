/*
 * pc/mb1-hello.c - a multiboot1 ELF kernel as hobbyists write them: checks
 * the magic in EAX, brings up COM1 with the OSDev init sequence and its
 * loopback probe, and prints three coloured lines on the VGA text screen
 * (moving the hardware cursor) and the same lines on COM1, then a few VGA
 * register read-backs, a line on 0xE9, and exits through 0xF4.
 *
 * Exit: 0x10 ok; 0x11 bad magic; 0x12 the loopback probe failed.
 */
#include "pc.h"

#define MB1_BOOT_MAGIC 0x2BADB002u

void kernel_main(uint32_t magic, uint32_t mbi);

void kernel_main(uint32_t magic, uint32_t mbi)
{
    (void)mbi;
    vga_clear(ATTR(LIGHT_GREY, BLACK));
    pc_sinks = TO_VGA | TO_E9;
    if (magic != MB1_BOOT_MAGIC) {
        pr("mb1-hello: bad multiboot magic 0x%08x\n", magic);
        pc_exit(PC_BAD_MAGIC);
    }
    if (com1_init() != 0) {
        pr("mb1-hello: COM1 loopback probe failed\n");
        pc_exit(PC_NO_LOOPBACK);
    }

    pc_sinks = TO_VGA | TO_COM1;
    vga_attr(ATTR(WHITE, BLUE));
    pr("Hello from mb1-hello, a multiboot1 ELF kernel!\n");
    vga_attr(ATTR(LIGHT_GREEN, BLACK));
    pr("magic 0x%08X ok, COM1 passed its loopback probe\n", magic);
    vga_attr(ATTR(YELLOW, RED));
    pr("VGA text 80x25 at 0x%X, in colour\n", VGA_TEXT);

    /* What kernels read back from the VGA: the misc output register (bit 0:
     * colour, CRTC at 0x3D4), the cursor position just written, and the
     * vertical retrace bit of 0x3DA, which must go on and off again. */
    vga_attr(ATTR(LIGHT_CYAN, BLACK));
    uint8_t misc = inb(VGA_MISC_R);
    unsigned cursor = vga_cursor_read();
    int on = 0, off = 0;
    for (int i = 0; i < 100000 && !on; i++)
        on = (inb(VGA_STATUS1) & 0x08) != 0;
    for (int i = 0; i < 100000 && on && !off; i++)
        off = (inb(VGA_STATUS1) & 0x08) == 0;
    pr("misc output: %s, cursor at row %u col %u, retrace %s\n",
       (misc & 1) ? "colour" : "mono", cursor / VGA_COLS, cursor % VGA_COLS,
       on && off ? "toggles" : "stuck");

    vga_attr(ATTR(LIGHT_GREY, BLACK));
    pc_sinks = TO_E9;
    pr("mb1-hello: done\n");
    pc_exit(PC_OK);
}
