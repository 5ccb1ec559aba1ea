/*
 * pc/pc.h - the PC devices the pc/ kernels use (QEMU's and vmm's pc board),
 * and the small library in pc/pclib.c.  Works for -m32 and -m64.
 *
 * Exit statuses: every kernel ends by writing one of these to the
 * isa-debug-exit port 0xF4 (QEMU and vmm then exit with (v << 1) | 1), and
 * falls back to `cli; hlt` where no exit device exists.
 */
#ifndef GUESTS_PC_H
#define GUESTS_PC_H

#include <stdint.h>
#include <stddef.h>

/* ---- exit statuses (value written to 0xF4; process status (v<<1)|1) ---- */
#define PC_OK            0x10   /* everything the kernel checks held: status 33 */
#define PC_BAD_MAGIC     0x11   /* EAX is not the boot protocol's magic: 35 */
#define PC_NO_LOOPBACK   0x12   /* COM1 loopback probe did not read 0xAE back: 37 */
#define PC_BSS_DIRTY     0x13   /* .bss was not zero at entry: 39 */
#define PC_BAD_INFO      0x14   /* boot information missing or inconsistent: 41 */
#define PC_NO_LONG_MODE  0x15   /* CPUID says no long mode: 43 */
#define PC_BAD_TAGS      0x16   /* multiboot2 information malformed: 45 */
#define PC_BAD_MEMORY    0x17   /* own memory did not read back what was written: 47 */
#define PC_WRONG_MODE    0x18   /* the CPU is not in the mode the kernel was built for: 49 */

/* ---- ports ---- */
#define DEBUG_EXIT   0xF4       /* isa-debug-exit */
#define DEBUGCON     0xE9       /* Bochs/QEMU debug console */
#define COM1         0x3F8
#define VGA_MISC_R   0x3CC      /* misc output register, read */
#define VGA_CRTC_I   0x3D4      /* CRTC index (colour) */
#define VGA_CRTC_D   0x3D5      /* CRTC data */
#define VGA_STATUS1  0x3DA      /* input status 1: bit 3 vertical retrace */
#define VGA_TEXT     0xB8000
#define VGA_COLS     80
#define VGA_ROWS     25

/* attribute bytes: background << 4 | foreground */
#define ATTR(fg, bg) ((uint8_t)(((bg) << 4) | (fg)))
enum { BLACK, BLUE, GREEN, CYAN, RED, MAGENTA, BROWN, LIGHT_GREY, DARK_GREY,
       LIGHT_BLUE, LIGHT_GREEN, LIGHT_CYAN, LIGHT_RED, LIGHT_MAGENTA, YELLOW, WHITE };

static inline void outb(uint16_t port, uint8_t val)
{
    __asm__ volatile("outb %0, %1" : : "a"(val), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t val;
    __asm__ volatile("inb %1, %0" : "=a"(val) : "Nd"(port));
    return val;
}

/* ---- pclib.c ---- */
/* where pr()/say() write: any of these bits */
#define TO_VGA   1
#define TO_COM1  2
#define TO_E9    4
extern unsigned pc_sinks;

void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
size_t strlen(const char *s);

void vga_clear(uint8_t attr);          /* blank screen in attr, cursor home */
void vga_attr(uint8_t attr);           /* attribute of what follows */
void vga_putc(char c);                 /* \n ends the row; scrolls at the bottom */
void vga_cursor_sync(void);            /* hardware cursor := software position */
unsigned vga_cursor_read(void);        /* hardware cursor offset, read back from the CRTC */
unsigned vga_row(void);
unsigned vga_col(void);

int com1_init(void);                   /* OSDev init + loopback probe: 0 ok, -1 failed */
void com1_putc(char c);                /* waits for THRE; \n goes out as \r\n */

void e9_putc(char c);

/* Formatted output to every sink in pc_sinks: %s %c %u %d %x %X, with a width
 * and 0 flag (%08x), l / ll for 64-bit (%llx).  VGA gets the cursor moved. */
void pr(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

__attribute__((noreturn)) void pc_exit(uint8_t status);

#endif /* GUESTS_PC_H */
