/*
 * elf/average.c - a small kernel with a bug, for docs/debugging.md and tests/test_gdb.py
 * (build/average.elf: ELF32 at 0x100000, protected mode, built with -g -O0 so that gdb has
 * lines, locals and frames).
 *
 * It fills a table of NUM_SAMPLES samples and prints their average. The bug: fill() runs one
 * entry past the end of the table (`<=` for `<`), and the entry past the end is the divisor,
 * which it sets to 0; average() then divides by zero, and the guest dies of a divide error
 * (vmm: "guest raised exception #DE"). The walkthrough finds that write by running backwards.
 */
#include "io.h"

#define NUM_SAMPLES 8

static struct {
    uint32_t sample[NUM_SAMPLES];
    uint32_t divisor;               /* right after the table: the overflow lands here */
} stats = { { 0 }, NUM_SAMPLES };

static void print_number(uint32_t n)
{
    char digits[10];
    int len = 0;
    do {
        digits[len++] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    while (len)
        console_putc(digits[--len]);
    console_putc('\n');
}

static void fill(uint32_t count)
{
    for (uint32_t i = 0; i <= count; i++)          /* the bug: one entry too many */
        stats.sample[i] = (count - i) * 10;
}

static uint32_t average(void)
{
    uint32_t sum = 0;
    for (uint32_t i = 0; i < NUM_SAMPLES; i++)
        sum += stats.sample[i];
    return sum / stats.divisor;
}

int main(void)
{
    console_puts("filling the table\n");
    fill(NUM_SAMPLES);
    console_puts("average: ");
    print_number(average());
    return 0;
}
