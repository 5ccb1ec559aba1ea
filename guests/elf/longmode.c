/*
 * elf/longmode.c - 64-bit freestanding C guest (build/longmode.elf,
 * ELF64 linked at 0x100000, entered in long mode).
 *
 * Prints "Hello from long mode!" and then reads lines from the keyboard
 * (canonical status/ack/data sequence; Enter = '\r' or '\n'; 0x08/0x7f
 * erase the last char; at most LINE_CAP chars are kept).  After each Enter
 * it prints "you typed: <line>".  Then:
 *   "halt" -> prints "bye" and executes hlt;
 *   "exit" -> writes 0 to the exit port (vmm exits with status 1).
 */
#include "io.h"

#define LINE_CAP 200

static char line[LINE_CAP + 1];

static int streq(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

static uint8_t kbd_getc(void)
{
    int c;
    while ((c = kbd_poll()) < 0)
        ;
    return (uint8_t)c;
}

/* Read one line into line[] (NUL terminated, without the Enter). */
static void read_line(void)
{
    uint32_t len = 0;
    for (;;) {
        uint8_t c = kbd_getc();
        if (c == '\r' || c == '\n')
            break;
        if (c == ASCII_BS || c == ASCII_DEL) {
            if (len > 0)
                len--;
        } else if (len < LINE_CAP) {
            line[len++] = (char)c;
        }
    }
    line[len] = '\0';
}

int main(void)
{
    console_puts("Hello from long mode!\n");
    for (;;) {
        read_line();
        console_puts("you typed: ");
        console_puts(line);
        console_putc('\n');
        if (streq(line, "halt")) {
            console_puts("bye\n");
            for (;;)
                hlt();
        }
        if (streq(line, "exit")) {
            outb(EXIT_PORT, 0);
            for (;;)        /* not reached: the VMM ends the run */
                hlt();
        }
    }
}
