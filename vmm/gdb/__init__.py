"""Debugging vmm runs with gdb: the remote-protocol engine (stub), the machine target with
reverse execution on replays (target), register layouts per CPU mode (arch). docs/debugging.md."""
