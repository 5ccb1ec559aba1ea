# agree/rdrand.s - RDRAND in ring 0 (issue 12: KVM cannot execute some instructions on a nested
# software hypervisor). Prints "rdrand next", executes RDRAND EAX (0f c7 f0) and halts.

        .include "ports.inc"

        REAL_MODE_START
        PUTS    CONSOLE, "rdrand next\n"
        rdrand  %eax
        HALT_FOREVER
