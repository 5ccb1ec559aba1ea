/*
 * pc/pclib.c - the little console library of the pc/ kernels: the VGA text
 * screen at 0xB8000 (with the CRTC's hardware cursor), COM1 with the OSDev
 * init sequence and loopback probe, the 0xE9 debug console, a small printf.
 * Freestanding, no SSE/x87 (-mgeneral-regs-only), for -m32 and -m64.
 */
#include "pc.h"

unsigned pc_sinks = TO_VGA | TO_E9;

static volatile uint16_t *const vga = (volatile uint16_t *)VGA_TEXT;
static unsigned row, col;
static uint8_t attr = ATTR(LIGHT_GREY, BLACK);

void *memset(void *dst, int c, size_t n)
{
    unsigned char *d = dst;
    while (n--)
        *d++ = (unsigned char)c;
    return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

/* ---- VGA text ---------------------------------------------------------- */

void vga_clear(uint8_t a)
{
    for (unsigned i = 0; i < VGA_COLS * VGA_ROWS; i++)
        vga[i] = (uint16_t)(a << 8 | ' ');
    attr = a;
    row = col = 0;
}

void vga_attr(uint8_t a)
{
    attr = a;
}

unsigned vga_row(void) { return row; }
unsigned vga_col(void) { return col; }

static void vga_scroll(void)
{
    for (unsigned i = 0; i < VGA_COLS * (VGA_ROWS - 1); i++)
        vga[i] = vga[i + VGA_COLS];
    for (unsigned i = VGA_COLS * (VGA_ROWS - 1); i < VGA_COLS * VGA_ROWS; i++)
        vga[i] = (uint16_t)(attr << 8 | ' ');
    row = VGA_ROWS - 1;
}

void vga_putc(char c)
{
    if (c == '\n') {
        col = 0;
        if (++row == VGA_ROWS)
            vga_scroll();
        return;
    }
    vga[row * VGA_COLS + col] = (uint16_t)(attr << 8 | (uint8_t)c);
    if (++col == VGA_COLS) {
        col = 0;
        if (++row == VGA_ROWS)
            vga_scroll();
    }
}

void vga_cursor_sync(void)
{
    unsigned pos = row * VGA_COLS + col;
    outb(VGA_CRTC_I, 0x0F);             /* cursor location low */
    outb(VGA_CRTC_D, (uint8_t)pos);
    outb(VGA_CRTC_I, 0x0E);             /* cursor location high */
    outb(VGA_CRTC_D, (uint8_t)(pos >> 8));
}

unsigned vga_cursor_read(void)
{
    unsigned pos;
    outb(VGA_CRTC_I, 0x0F);
    pos = inb(VGA_CRTC_D);
    outb(VGA_CRTC_I, 0x0E);
    pos |= (unsigned)inb(VGA_CRTC_D) << 8;
    return pos;
}

/* ---- COM1 -------------------------------------------------------------- */

int com1_init(void)
{
    outb(COM1 + 1, 0x00);       /* IER: no interrupts */
    outb(COM1 + 3, 0x80);       /* LCR: DLAB on */
    outb(COM1 + 0, 0x03);       /* divisor 3 (38400 baud), low byte */
    outb(COM1 + 1, 0x00);       /*                         high byte */
    outb(COM1 + 3, 0x03);       /* LCR: 8 bits, no parity, one stop bit, DLAB off */
    outb(COM1 + 2, 0xC7);       /* FCR: FIFOs on, cleared, 14-byte threshold */
    outb(COM1 + 4, 0x0B);       /* MCR: DTR, RTS, OUT2 */
    outb(COM1 + 4, 0x1E);       /* MCR: loopback, to test the chip */
    outb(COM1 + 0, 0xAE);       /* send 0xAE ... */
    if (inb(COM1 + 0) != 0xAE)  /* ... and it must come back */
        return -1;
    outb(COM1 + 4, 0x0F);       /* MCR: normal operation, DTR RTS OUT1 OUT2 */
    return 0;
}

void com1_putc(char c)
{
    if (c == '\n')
        com1_putc('\r');
    while (!(inb(COM1 + 5) & 0x20))     /* LSR.THRE */
        ;
    outb(COM1, (uint8_t)c);
}

/* ---- 0xE9 -------------------------------------------------------------- */

void e9_putc(char c)
{
    outb(DEBUGCON, (uint8_t)c);
}

/* ---- printf ------------------------------------------------------------ */

static void emit(char c)
{
    if (pc_sinks & TO_VGA)
        vga_putc(c);
    if (pc_sinks & TO_COM1)
        com1_putc(c);
    if (pc_sinks & TO_E9)
        e9_putc(c);
}

/* Digits of v in base (at most 16) without 64-bit division, which -m32 code
 * would need libgcc for: long division by 16-bit limbs in 32-bit arithmetic. */
static void emit_num(unsigned long long v, unsigned base, int upper, int width, char pad)
{
    char digits[24];
    int n = 0;
    const char *set = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    uint16_t limb[4] = {(uint16_t)(v >> 48), (uint16_t)(v >> 32),
                        (uint16_t)(v >> 16), (uint16_t)v};
    for (;;) {
        uint32_t rem = 0;
        int zero = 1;
        for (int i = 0; i < 4; i++) {
            uint32_t cur = rem << 16 | limb[i];
            limb[i] = (uint16_t)(cur / base);
            rem = cur % base;
            zero &= limb[i] == 0;
        }
        digits[n++] = set[rem];
        if (zero)
            break;
    }
    while (width-- > n)
        emit(pad);
    while (n)
        emit(digits[--n]);
}

void pr(const char *fmt, ...)
{
    __builtin_va_list ap;
    __builtin_va_start(ap, fmt);
    for (const char *p = fmt; *p; p++) {
        if (*p != '%') {
            emit(*p);
            continue;
        }
        char pad = ' ';
        int width = 0, longs = 0;
        p++;
        if (*p == '0') {
            pad = '0';
            p++;
        }
        while (*p >= '0' && *p <= '9')
            width = width * 10 + (*p++ - '0');
        while (*p == 'l') {
            longs++;
            p++;
        }
        unsigned long long u;
        if (!*p)                /* a lone '%' at the end */
            break;
        switch (*p) {
        case 's': {
            const char *s = __builtin_va_arg(ap, const char *);
            int len = (int)strlen(s);
            while (width-- > len)
                emit(' ');
            while (*s)
                emit(*s++);
            break;
        }
        case 'c':
            emit((char)__builtin_va_arg(ap, int));
            break;
        case 'd': {
            long long v = longs > 1 ? __builtin_va_arg(ap, long long)
                        : longs ? __builtin_va_arg(ap, long) : __builtin_va_arg(ap, int);
            if (v < 0) {
                emit('-');
                v = -v;
            }
            emit_num((unsigned long long)v, 10, 0, width, pad);
            break;
        }
        case 'u': case 'x': case 'X':
            u = longs > 1 ? __builtin_va_arg(ap, unsigned long long)
              : longs ? __builtin_va_arg(ap, unsigned long) : __builtin_va_arg(ap, unsigned);
            emit_num(u, *p == 'u' ? 10 : 16, *p == 'X', width, pad);
            break;
        case '%':
            emit('%');
            break;
        default:                /* unknown conversion: show it */
            emit('%');
            emit(*p);
            break;
        }
    }
    __builtin_va_end(ap);
    if (pc_sinks & TO_VGA)
        vga_cursor_sync();
}

void pc_exit(uint8_t status)
{
    outb(DEBUG_EXIT, status);
    for (;;)
        __asm__ volatile("cli; hlt");
}
