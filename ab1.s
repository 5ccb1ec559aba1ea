.code16
.globl _start
_start:
 mov $0x3ff,%dx
 mov $1,%ecx
1: out %al,%dx
 dec %ecx
 jnz 1b
 hlt
