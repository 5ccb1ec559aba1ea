# agree/sse.s - an SSE instruction in ring 0 (issue 12: KVM cannot execute some). Prints
# "xorps next", then executes XORPS XMM0, XMM0 (0f 57 c0) with CR4.OSFXSR clear. The
# architecture says #UD (the emulator, and KVM on hardware, raise it; with no handler vmm
# reports a guest exception); a nested software hypervisor behind /dev/kvm may stop with an
# internal error instead, which vmm reports naming the instruction.

        .include "ports.inc"

        REAL_MODE_START
        PUTS    CONSOLE, "xorps next\n"
        xorps   %xmm0, %xmm0
        HALT_FOREVER
