/*
 * io.h - port I/O helpers and the vmm device contract for the C guests
 * (works for both -m32 and -m64).
 */
#ifndef GUESTS_IO_H
#define GUESTS_IO_H

#include <stdint.h>

/* console: OUT a byte; the VMM line-buffers and prints on '\n' */
#define CONSOLE         0x42
/* keyboard: poll status, ack with OUT 0 to status FIRST, then read data */
#define KBD_DATA        0x44
#define KBD_STATUS      0x45
#define KBD_READY       0x01
#define KBD_ACK         0x00
/* timer: period in ms (16/32-bit OUT), control/status */
#define TIMER_PERIOD    0x46
#define TIMER_CTRL      0x47
#define TIMER_ENABLE    0x01
#define TIMER_FIRED     0x02
/* exit device: OUT v ends the run, vmm exits with (v << 1) | 1 */
#define EXIT_PORT       0xf4

#define ASCII_BS        0x08
#define ASCII_DEL       0x7f

static inline void outb(uint16_t port, uint8_t val)
{
    __asm__ volatile("outb %0, %1" : : "a"(val), "Nd"(port));
}

static inline void outw(uint16_t port, uint16_t val)
{
    __asm__ volatile("outw %0, %1" : : "a"(val), "Nd"(port));
}

static inline void outl(uint16_t port, uint32_t val)
{
    __asm__ volatile("outl %0, %1" : : "a"(val), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t val;
    __asm__ volatile("inb %1, %0" : "=a"(val) : "Nd"(port));
    return val;
}

static inline void hlt(void)
{
    __asm__ volatile("hlt");
}

static inline void console_putc(char c)
{
    outb(CONSOLE, (uint8_t)c);
}

static inline void console_write(const char *s, uint32_t len)
{
    for (uint32_t i = 0; i < len; i++)
        console_putc(s[i]);
}

static inline void console_puts(const char *s)
{
    while (*s)
        console_putc(*s++);
}

/*
 * Canonical keyboard read: if a byte is latched, ack it (OUT 0 to status)
 * FIRST and only then read the data port.  Returns -1 if nothing latched.
 */
static inline int kbd_poll(void)
{
    if (!(inb(KBD_STATUS) & KBD_READY))
        return -1;
    outb(KBD_STATUS, KBD_ACK);
    return inb(KBD_DATA);
}

#endif /* GUESTS_IO_H */
