.code16
.globl _start
_start:
 mov $0x3ff,%dx
 mov $20000,%ecx
1: out %al,%dx
 dec %ecx
 jnz 1b
 hlt
