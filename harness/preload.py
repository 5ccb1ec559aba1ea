"""What the grader's forkserver loads once, before it forks a process for each scenario
(harness.grader._scenario_context): the modules every scenario imports, and the emulator
started once, so that its library, its first Unicorn instance's set-up and vmm's discovery of
Unicorn's context layout are paid here rather than in every scenario (with capstone, which
the instruction budget decodes blocks with, ~170 ms; a scenario itself takes ~40). Nothing here touches KVM or starts a thread."""

from __future__ import annotations

import harness.grader  # noqa: F401
import harness.sandbox  # noqa: F401
import vmm.machine  # noqa: F401
import vmm.runner  # noqa: F401


def _warm_emulator() -> None:
    try:
        import capstone  # noqa: F401  (the instruction budget decodes blocks with it: ~90 ms)
        from vmm.cpu.emu_backend import EmuBackend
        EmuBackend(1 << 20).close()
    except Exception:          # no unicorn here: scenarios then run on KVM, or say why not
        pass


_warm_emulator()
