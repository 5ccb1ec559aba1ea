"""Recording: the observer that writes a trace while a live run happens (DESIGN §6)."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii as _json_string

from . import __version__
from .machine import Observer
from .trace import TraceWriter, make_header

CHECKPOINT_EVERY = 1024   # observations between register checkpoints


class OutputDigest:
    """A running digest of every output line (device, text, partial), in order."""

    def __init__(self):
        self._h = hashlib.sha256()

    def add(self, device: str, text: str, partial: bool) -> None:
        self._h.update(f"{device}\0{text}\0{int(partial)}\n".encode("ascii", "replace"))

    def hexdigest(self) -> str:
        return self._h.hexdigest()[:16]


def machine_config(machine, boot_options: dict, cpuid: list[dict], clock: str,
                   max_time_ns: int | None, feeds: dict | None = None) -> dict:
    """The complete machine configuration, as recorded in a trace header (with `feeds`, the
    web-data feeds configuration: vmm.feeds.FeedsConfig.describe())."""
    image, config = machine.image, machine.config
    return {
        "boot": boot_options,
        "kind": image.kind,
        "mem": image.mem_size,
        "mode": image.entry.mode,
        "entry": image.entry.to_dict(),
        "load_map": image.load_map,
        "devices": machine.bus.describe(),
        "cpuid": cpuid,
        "max_output": config.max_output,
        "ignore_unknown_ports": config.ignore_unknown_ports,
        "checkpoint_every": config.checkpoint_every,
        "max_time_ns": max_time_ns,
        **({"feeds": feeds} if feeds is not None else {}),
    }


class TraceRecorder(Observer):
    wants_ticks = True        # buffered records reach the file at every watchdog tick

    def __init__(self, path: str):
        self.writer = TraceWriter(path)
        self.outputs = OutputDigest()
        self.started = time.monotonic_ns()
        self.inputs = None

    def write_header(self, machine, *, boot_options: dict, cpuid: list[dict], clock: str,
                     script: list[dict] | None, max_time_ns: int | None,
                     guest_path: str | None = None, feeds: dict | None = None) -> None:
        self.inputs = machine.inputs
        uname = os.uname()
        info = {"created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "host": uname.nodename, "platform": f"{uname.sysname} {uname.release} {uname.machine}",
                "python": sys.version.split()[0], "backend": machine.backend.name}
        self.writer.write(make_header(
            guest_name=machine.image.guest_name, guest_bytes=machine.image.guest_bytes,
            machine=machine_config(machine, boot_options, cpuid, clock, max_time_ns, feeds),
            clock=clock, script=script, info=info, vmm_version=__version__,
            guest_path=guest_path))

    # --- what happens during the run (the input source calls key/timer) --------------------------
    def key(self, n: int, at: int, device: str, byte: int) -> None:
        # Hand-formatted: this is the hot path of recording; the fields are all integers and
        # a device name from vmm's own table, so no JSON escaping is needed.
        self.writer.write_line(b'{"type":"key","n":%d,"at":%d,"dev":"%s","byte":%d}\n'
                               % (n, at, device.encode("ascii"), byte))

    def timer(self, n: int, at: int, count: int) -> None:
        self.writer.write_line(b'{"type":"timer","n":%d,"at":%d,"count":%d}\n' % (n, at, count))

    def fetch(self, n: int, at: int, device: str, text: str) -> None:
        self.writer.write({"type": "fetch", "n": n, "at": at, "dev": device, "text": text})

    def step_done(self, index: int, now: int) -> None:
        self.writer.write({"type": "step", "n": self.inputs.obs, "at": now, "index": index})

    def on_output(self, n: int, device: str, text: str, partial: bool) -> None:
        # Hand-formatted too (a line of output is a record): the same bytes as
        # trace.encode({"type": "out", "n": n, "dev": device, "text": text[, "partial": true]}).
        self.writer.write_line(b'{"type":"out","n":%d,"dev":%s,"text":%s%s}\n' % (
            n, _json_string(device).encode("ascii"), _json_string(text).encode("ascii"),
            b',"partial":true' if partial else b""))
        self.outputs.add(device, text, partial)

    def tick(self) -> None:
        self.writer.flush()

    def on_checkpoint(self, n: int, cpu) -> None:
        self.writer.write({"type": "cp", "n": n, "regs": cpu.digest()})

    def finish(self, end, machine) -> None:
        self.writer.write(end_record(end, machine, self.outputs.hexdigest(), {
            "exits": end.stats.get("exits"),
            "wall_ns": time.monotonic_ns() - self.started}))
        self.writer.close()

    def close(self) -> None:
        self.writer.close()


# Ends caused by the host: unless they happened at a read, where the guest was is chance.
HOST_REASONS = frozenset({"timeout", "interrupted", "terminated", "quit"})


def end_record(end, machine, output_digest: str, info: dict) -> dict:
    # A host-side stop that could not wait for a read (a guest computing without I/O) leaves
    # the guest wherever it happened to be: its registers and memory then say nothing
    # reproducible, and are left out, so that the trace stays deterministic.
    by_chance = end.reason in HOST_REASONS and not end.at_read
    return {"type": "end", "n": end.observation, "at": machine.inputs.now(),
            "at_read": end.at_read, "reason": end.reason, "exit_code": end.exit_code,
            "message": end.message,
            "regs": end.cpu.digest() if end.cpu is not None and not by_chance else None,
            "mem": None if by_chance else machine.backend.memory_digest(),
            "output": output_digest, "info": info}
