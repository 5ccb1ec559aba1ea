/*
 * elf/echo.c - the echo reference guest as a 32-bit freestanding C program
 * (build/echo.elf, ELF32 linked at 0x100000, entered in protected mode).
 *
 * Console behaviour is byte-identical to echo.s (build/echo.bin):
 *   - timer period 500 ms, enabled; nothing printed before the first Enter;
 *   - keyboard: canonical sequence (status, ack, data);
 *     Enter ('\r' or '\n') commits the input buffer as "the line" (empty
 *     allowed) and clears it; 0x08/0x7f drop the last buffered char; other
 *     bytes are appended up to LINE_CAP (extra bytes ignored);
 *   - timer: on FIRED, ack (OUT 1) and print the committed line + '\n'.
 * Never returns.
 */
#include "io.h"

#define LINE_CAP  200   /* input buffer capacity (same as echo.s) */
#define TIMER_MS  500   /* timer period in milliseconds */

static char input[LINE_CAP];
static uint32_t input_len;
static char line[LINE_CAP];
static uint32_t line_len;
static int have_line;

static void handle_key(uint8_t c)
{
    switch (c) {
    case '\r':
    case '\n':
        for (uint32_t i = 0; i < input_len; i++)
            line[i] = input[i];
        line_len = input_len;
        input_len = 0;
        have_line = 1;
        break;
    case ASCII_BS:
    case ASCII_DEL:
        if (input_len > 0)
            input_len--;
        break;
    default:
        if (input_len < LINE_CAP)
            input[input_len++] = (char)c;
        break;
    }
}

int main(void)
{
    outl(TIMER_PERIOD, TIMER_MS);
    outb(TIMER_CTRL, TIMER_ENABLE);

    for (;;) {
        int c = kbd_poll();
        if (c >= 0)
            handle_key((uint8_t)c);

        if (inb(TIMER_CTRL) & TIMER_FIRED) {
            outb(TIMER_CTRL, TIMER_ENABLE);     /* ack: bit1 clear, bit0 set */
            if (have_line) {
                console_write(line, line_len);
                console_putc('\n');
            }
        }
    }
}
