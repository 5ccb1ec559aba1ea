/*
 * irq/tick-pm.c - tick-pm.elf, tick-real.bin in 32-bit protected mode: a
 * multiboot1 ELF (pc/mb1-boot.s, pc/mb1.ld) with its own GDT and an IDT of
 * interrupt gates for vectors 0x20 (IRQ 0) and 0x21 (IRQ 1), whose entry stubs
 * (irq/tick-pm-stubs.s) save the registers, call the handlers below, send EOI
 * and IRET.  Remaps the 8259A pair to 0x20/0x28, runs PIT channel 0 at 100 Hz,
 * prints the CMOS date, counts ticks on VGA row 0, echoes keys (letters,
 * digits, Enter, Space) on COM1 and from VGA row 2, waits in `sti; hlt`, and
 * after 300 ticks prints "done" and exits through 0xF4 (status 33).
 *
 * On this project's KVM host (a PVM nested hypervisor) IRET in protected mode
 * fails, so it runs on the emulator (--backend emu) and under QEMU.
 */
#include "pc.h"

#define PIC1 0x20
#define PIC2 0xA0
#define PIT_CH0 0x40
#define PIT_CMD 0x43
#define KBD_DATA 0x60
#define CMOS_INDEX 0x70
#define CMOS_DATA 0x71
#define TICKS 300
#define DIVISOR 11932           /* 1193182 Hz / 11932 = 100 Hz */
#define ATTR_TEXT 0x07
#define ECHO_FIRST_ROW 2
#define ECHO_LAST_ROW 24

void kernel_main(uint32_t magic, uint32_t mbi);
void irq0_handler(void);
void irq1_handler(void);
extern char irq0_stub[], irq1_stub[];

static volatile uint16_t *const vga = (volatile uint16_t *)VGA_TEXT;
static volatile unsigned ticks;
static unsigned echo_pos = ECHO_FIRST_ROW * VGA_COLS;

struct gate { uint16_t off_lo, sel; uint8_t zero, type; uint16_t off_hi; } __attribute__((packed));
struct dtr { uint16_t limit; uint32_t base; } __attribute__((packed));

static const uint64_t gdt[3] __attribute__((aligned(8))) = {
    0, 0x00CF9A000000FFFFull, 0x00CF92000000FFFFull,     /* 0x08 code, 0x10 data, flat */
};
static struct gate idt[0x30] __attribute__((aligned(8)));

static const char scancodes[0x3A] = {
    0, 0, '1', '2', '3', '4', '5', '6', '7', '8', '9', '0', 0, 0, 0, 0,
    'q', 'w', 'e', 'r', 't', 'y', 'u', 'i', 'o', 'p', 0, 0, '\n', 0, 'a', 's',
    'd', 'f', 'g', 'h', 'j', 'k', 'l', 0, 0, 0, 0, 0, 'z', 'x', 'c', 'v',
    'b', 'n', 'm', 0, 0, 0, 0, 0, 0, ' ',
};

static void vga_at(unsigned pos, const char *s)
{
    while (*s)
        vga[pos++] = (uint16_t)(ATTR_TEXT << 8 | (uint8_t)*s++);
}

/* COM1 without waiting for THRE in the LSR: under vmm the keyboard and COM1
 * share one input stream, and an LSR read would take the next key as a byte
 * COM1 received (docs/devices.md); vmm's and QEMU's THR take every byte. */
static void com1_out(char c)
{
    if (c == '\n')
        outb(COM1, '\r');
    outb(COM1, (uint8_t)c);
}

static void com1_puts(const char *s)
{
    while (*s)
        com1_out(*s++);
}

void irq0_handler(void)
{
    char buf[16] = "ticks ", digits[8];
    unsigned n = ++ticks, i = 0, j = 6;
    do { digits[i++] = (char)('0' + n % 10); n /= 10; } while (n);
    while (i)
        buf[j++] = digits[--i];
    buf[j] = 0;
    vga_at(0, buf);
}

void irq1_handler(void)
{
    uint8_t code = inb(KBD_DATA);
    if (code >= sizeof scancodes || !scancodes[code])
        return;                               /* break codes, prefixes, other keys */
    char c = scancodes[code];
    com1_out(c);                              /* \n goes out as \r\n */
    if (c == '\n')
        echo_pos = (echo_pos / VGA_COLS + 1) * VGA_COLS;
    else
        vga[echo_pos++] = (uint16_t)(ATTR_TEXT << 8 | (uint8_t)c);
    if (echo_pos >= (ECHO_LAST_ROW + 1) * VGA_COLS)
        echo_pos = ECHO_FIRST_ROW * VGA_COLS;
}

static uint8_t cmos(uint8_t reg)
{
    outb(CMOS_INDEX, reg);
    return inb(CMOS_DATA);
}

static void set_gate(int vector, char *stub)
{
    uint32_t off = (uint32_t)stub;
    idt[vector] = (struct gate){ (uint16_t)off, 0x08, 0, 0x8E, (uint16_t)(off >> 16) };
}

void kernel_main(uint32_t magic, uint32_t mbi)
{
    (void)magic;
    (void)mbi;
    struct dtr gdtr = { sizeof gdt - 1, (uint32_t)gdt }, idtr = { sizeof idt - 1, (uint32_t)idt };
    __asm__ volatile("lgdt %0\n\t"
                     "ljmp $0x08, $1f\n"
                     "1:\tmov $0x10, %%ax\n\t"
                     "mov %%ax, %%ds\n\tmov %%ax, %%es\n\tmov %%ax, %%ss\n\t"
                     "mov %%ax, %%fs\n\tmov %%ax, %%gs"
                     : : "m"(gdtr) : "eax", "memory");
    set_gate(0x20, irq0_stub);
    set_gate(0x21, irq1_stub);
    __asm__ volatile("lidt %0" : : "m"(idtr) : "memory");

    for (unsigned i = 0; i < VGA_COLS * VGA_ROWS; i++)
        vga[i] = ATTR_TEXT << 8 | ' ';

    outb(PIC1, 0x11); outb(PIC2, 0x11);       /* ICW1: edge, cascade, ICW4 */
    outb(PIC1 + 1, 0x20); outb(PIC2 + 1, 0x28); /* ICW2: vectors */
    outb(PIC1 + 1, 4); outb(PIC2 + 1, 2);     /* ICW3: the slave on IR2 */
    outb(PIC1 + 1, 1); outb(PIC2 + 1, 1);     /* ICW4: 8086 mode */
    outb(PIC1 + 1, 0xFC); outb(PIC2 + 1, 0xFF); /* IRQ 0 and 1 only */
    outb(PIT_CMD, 0x34);                      /* channel 0, lobyte/hibyte, mode 2 */
    outb(PIT_CH0, DIVISOR & 0xFF);
    outb(PIT_CH0, DIVISOR >> 8);

    while (cmos(0x0A) & 0x80)                 /* update in progress */
        ;
    static const uint8_t regs[7] = { 0x32, 0x09, 0x08, 0x07, 0x04, 0x02, 0x00 };
    static const char seps[7] = { 0, '-', '-', ' ', ':', ':', 0 };
    char line[32] = "RTC ";
    unsigned j = 4;
    for (int i = 0; i < 7; i++) {
        uint8_t v = cmos(regs[i]);
        line[j++] = (char)('0' + (v >> 4));
        line[j++] = (char)('0' + (v & 15));
        if (seps[i])
            line[j++] = seps[i];
    }
    line[j] = 0;
    vga_at(VGA_COLS, line);
    com1_puts(line);
    com1_puts("\n");

    __asm__ volatile("sti");
    while (ticks < TICKS)
        __asm__ volatile("hlt");
    __asm__ volatile("cli");
    vga_at(9, " done");
    com1_puts("done\n");
    pc_exit(PC_OK);
}
