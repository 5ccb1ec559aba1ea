# faults/rdtsc-silent.s - real-mode raw guest for the replay checkpoint test.
#
# Loaded at 0x1000 in real mode.  Prints "reading the TSC\n", executes rdtsc and
# keeps the result in EBX/ESI without ever printing it, then does POLLS
# `in al, 0x45` reads (observations), prints "done\n" and halts.  Its output is
# the same on every run, so only a register checkpoint taken during the polls
# can show that a replay saw a different TSC: vmm replay must report the
# divergence there (record with a small --checkpoint-every).

        .include "ports.inc"

        .set POLLS, 300

        REAL_MODE_START
        PUTS    CONSOLE, "reading the TSC\n"
        rdtsc                           # EDX:EAX = TSC, differs on every run
        mov     %eax, %ebx              # keep it where checkpoints see it
        mov     %edx, %esi

        mov     $POLLS, %cx
poll:
        in      $KBD_STATUS, %al        # result ignored; each read is an observation
        loop    poll

        PUTS    CONSOLE, "done\n"
        HALT_FOREVER
