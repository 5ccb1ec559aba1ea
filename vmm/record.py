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
from .trace import TraceWriter, encode, make_header

CHECKPOINT_EVERY = 1024   # observations between register checkpoints


class OutputDigest:
    """A running digest of every output line (device, text, partial), in order.

    Lines are hashed in batches (a digest of the concatenation is the digest of the parts fed
    one by one): one `update` per line was a third of what recording an output line cost."""

    BATCH = 256

    def __init__(self):
        self._h = hashlib.sha256()
        self._parts: list[str] = []

    def add(self, device: str, text: str, partial: bool) -> None:
        self._parts.append(f"{device}\0{text}\0{1 if partial else 0}\n")
        if len(self._parts) >= self.BATCH:
            self._update()

    def add_lines(self, device: str, texts: list[str], partial: bool) -> None:
        """add() for each of `texts` (at least one), in order: one string for them all."""
        end = "\0" + ("1" if partial else "0") + "\n"
        self._parts.append(device + "\0" + (end + device + "\0").join(texts) + end)
        if len(self._parts) >= self.BATCH:
            self._update()

    def _update(self) -> None:
        self._h.update("".join(self._parts).encode("ascii", "replace"))
        self._parts.clear()

    def hexdigest(self) -> str:
        self._update()
        return self._h.hexdigest()[:16]

    def state(self):
        """The digest so far, for a snapshot (vmm.gdb.snapshot)."""
        self._update()
        return self._h.copy()

    def from_state(self, state) -> None:
        self._parts.clear()
        self._h = state.copy()


BUDGETS = ("max_observations", "max_exits", "max_instructions")   # machine.RunConfig's


def machine_config(machine, boot_options: dict, cpuid: list[dict], clock: str,
                   max_time_ns: int | None, feeds: dict | None = None) -> dict:
    """The complete machine configuration, as recorded in a trace header (with `feeds`, the
    web-data feeds configuration: vmm.feeds.FeedsConfig.describe())."""
    image, config = machine.image, machine.config
    if image.options is not None:         # as built: the board and the RAM size resolved
        boot_options = image.options.to_dict()
    return {
        "board": image.board,
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
        **{name: getattr(config, name) for name in BUDGETS
           if getattr(config, name) is not None},
        "quantum_ns": getattr(machine.inputs, "quantum_ns", 0),
        **({"icount_ns": config.icount_ns} if config.icount_ns is not None else {}),
        **({"rtc_epoch": config.rtc_epoch} if machine.board.name == "pc" else {}),
        **({"feeds": feeds} if feeds is not None else {}),
    }


class TraceRecorder(Observer):
    """Writes a live run's trace as it happens.

    The hot paths, a key and a line of output, come right after an exit of the guest, when
    the host has just run the guest and Python's code and data are cold in the caches (on this
    project's nested KVM host, a register digest that takes 2.4 us in a loop took ~40 us at a
    checkpoint). So they only append to `held`, the records not yet handed over, in order:
    - an encoded record (bytes): every other kind, encoded where it happens;
    - a key (a tuple n, at, device, byte), appended by vmm.inputs.LiveInput itself;
    - an output run (a list n, device, partial): the output records after it, up to the next
      run, belong to this observation, device and partial flag;
    - an output text (str), of the output run last begun.
    `_hand_over` encodes them a batch at a time (_encode: consecutive texts of a run and their
    output-digest lines in one join) and hands them to the TraceWriter: when another record
    finds BATCH held (a key does not look), at every watchdog tick, and at once for the rare
    kinds (fetches, steps, the end). The bytes are those of trace.encode() of each record
    (tests/test_fast_paths.py)."""

    wants_ticks = True        # held records reach the file at every watchdog tick
    BATCH = 256

    def __init__(self, path: str):
        self.writer = TraceWriter(path)
        self.outputs = OutputDigest()
        self.held: list = []                      # records not yet handed over (see above)
        self._out = [None, None, None]            # the output run last begun
        self._run = self._out                     # the output run the next batch begins in
        self._devices: dict[str, str] = {}        # device name -> its JSON string
        self._key_templates: dict[str, bytes] = {}  # device name -> its key record's format
        self.started = time.monotonic_ns()
        self.inputs = None

    def _hand_over(self) -> None:
        held = self.held
        if held:
            lines = self._encode(held)     # (which feeds the output digest: once per record)
            held.clear()
            self.writer.write_lines(lines)

    def _write(self, record: dict) -> None:
        self.held.append(encode(record))
        self._hand_over()

    def _encode(self, held: list) -> list[bytes]:
        lines: list[bytes] = []
        run = self._run
        texts_from = -1                           # where the texts of `run` being read begin
        templates = self._key_templates
        for i, item in enumerate(held):
            kind = item.__class__
            if kind is str:
                if texts_from < 0:
                    texts_from = i
                continue
            if texts_from >= 0:
                lines.append(self._encode_outputs(run, held[texts_from:i]))
                texts_from = -1
            if kind is bytes:
                lines.append(item)
            elif kind is tuple:                   # a key
                template = templates.get(item[2])
                if template is None:
                    template = self._key_template(item[2])
                lines.append(template % (item[0], item[1], item[3]))
            elif kind is list:                    # an output run begins
                run = item
            else:
                raise TypeError(f"not a held record: {item!r}")
        if texts_from >= 0:
            lines.append(self._encode_outputs(run, held[texts_from:]))
        self._run = run
        return lines

    def _key_template(self, device: str) -> bytes:
        # The fields are all integers and a device name from vmm's own table: no JSON escaping.
        template = self._key_templates[device] = (
            b'{"type":"key","n":%%d,"at":%%d,"dev":"%s","byte":%%d}\n' % device.encode("ascii"))
        return template

    def _encode_outputs(self, run: list, texts: list[str]) -> bytes:
        """Output records of one run, hand-formatted: the same bytes as trace.encode({"type":
        "out", "n": n, "dev": device, "text": text[, "partial": true]}) for each (json.dumps
        of the record, as encode, costs several times more); and their output-digest lines."""
        n, device, partial = run
        self.outputs.add_lines(device, texts, partial)
        dev = self._devices.get(device)
        if dev is None:
            dev = self._devices[device] = _json_string(device)
        head = '{"type":"out","n":%d,"dev":%s,"text":' % (n, dev)
        tail = ',"partial":true}\n' if partial else "}\n"
        joined = "".join(texts)
        if len(_json_string(joined)) == len(joined) + 2:
            # Nothing to escape (each escape lengthens the string): each text's JSON string is
            # the text in quotes, and the records are one join.
            block = head + '"' + ('"' + tail + head + '"').join(texts) + '"' + tail
        else:
            block = "".join([head + _json_string(text) + tail for text in texts])
        return block.encode("ascii")

    def _held_one(self, line: bytes) -> None:
        held = self.held
        held.append(line)
        if len(held) >= self.BATCH:
            self._hand_over()

    def write_header(self, machine, *, boot_options: dict, cpuid: list[dict], clock: str,
                     script: list[dict] | None, max_time_ns: int | None,
                     guest_path: str | None = None, feeds: dict | None = None) -> None:
        self.inputs = machine.inputs
        uname = os.uname()
        info = {"created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "host": uname.nodename, "platform": f"{uname.sysname} {uname.release} {uname.machine}",
                "python": sys.version.split()[0], "backend": machine.backend.name}
        # First, before anything the devices recorded while the machine was built (the PIT
        # reads the time when port 0x61 sets its gate).
        self.held.insert(0, encode(make_header(
            guest_name=machine.image.guest_name, guest_bytes=machine.image.guest_bytes,
            machine=machine_config(machine, boot_options, cpuid, clock, max_time_ns, feeds),
            clock=clock, script=script, info=info, vmm_version=__version__,
            guest_path=guest_path)))
        self._hand_over()

    # --- what happens during the run (the input source calls these) -------------------------
    def key(self, n: int, at: int, device: str, byte: int) -> None:
        """A key a device took at a read. (vmm.inputs.LiveInput appends the tuple to `held`
        itself: the hot path of typed input.)"""
        self.held.append((n, at, device, byte))

    def key_at(self, n: int, at: int, device: str, byte: int, point: str) -> None:
        """A key a device took at an interrupt point (its poll there): the point is kept."""
        self._held_one(b'{"type":"key","n":%d,"at":%d,"dev":"%s","byte":%d,"point":"%s"}\n'
                       % (n, at, device.encode("ascii"), byte, point.encode("ascii")))

    def timer(self, n: int, at: int, count: int) -> None:
        self._held_one(b'{"type":"timer","n":%d,"at":%d,"count":%d}\n' % (n, at, count))

    def timer_at(self, n: int, at: int, count: int, point: str) -> None:
        """Timer periods a device found ended at an interrupt point (its poll there)."""
        self._held_one(b'{"type":"timer","n":%d,"at":%d,"count":%d,"point":"%s"}\n'
                       % (n, at, count, point.encode("ascii")))

    def time(self, n: int, at: int) -> None:
        self._held_one(b'{"type":"time","n":%d,"at":%d}\n' % (n, at))

    def edge(self, n: int, at: int, line: int, count: int, point: str) -> None:
        self._held_one(b'{"type":"edge","n":%d,"at":%d,"line":%d,"count":%d,"point":"%s"}\n'
                       % (n, at, line, count, point.encode()))

    def icount(self, n: int, at: int, count: int) -> None:
        """An instruction point (icount mode): the run stopped at instruction `count`."""
        self._held_one(b'{"type":"icount","n":%d,"at":%d,"count":%d}\n' % (n, at, count))

    def on_interrupt(self, n: int, at: int, vector: int, point: str) -> None:
        self.interrupt(n, at, vector, point)

    def interrupt(self, n: int, at: int, vector: int, point: str) -> None:
        self._held_one(b'{"type":"irq","n":%d,"at":%d,"vector":%d,"point":"%s"}\n'
                       % (n, at, vector, point.encode("ascii")))

    def fetch(self, n: int, at: int, device: str, text: str) -> None:
        self._write({"type": "fetch", "n": n, "at": at, "dev": device, "text": text})

    def step_done(self, index: int, now: int) -> None:
        self._write({"type": "step", "n": self.inputs.obs, "at": now, "index": index})

    def on_output(self, n: int, device: str, text: str, partial: bool) -> None:
        # The hot path of an output-heavy recording: the text is held, after its run.
        held = self.held
        out = self._out
        if n != out[0] or device is not out[1] or partial is not out[2]:
            out = self._out = [n, device, partial]
            held.append(out)
        held.append(text)
        if len(held) >= self.BATCH:
            self._hand_over()

    def on_screen(self, n: int, rows: list) -> None:
        self._held_one(encode({"type": "screen", "n": n, "rows": [list(r) for r in rows]}))

    def tick(self) -> None:
        self._hand_over()
        self.writer.flush()

    def on_checkpoint(self, n: int, backend) -> None:
        self._held_one(b'{"type":"cp","n":%d,"regs":"%s"}\n'
                       % (n, backend.register_digest().encode("ascii")))

    def finish(self, end, machine) -> None:
        self._hand_over()                       # the output digest then holds every line
        self._write(end_record(end, machine, self.outputs.hexdigest(), {
            "exits": end.stats.get("exits"),
            "wall_ns": time.monotonic_ns() - self.started}))
        self.writer.close()

    def close(self) -> None:
        self._hand_over()
        self.writer.close()


# Ends caused by the host: unless they happened at a read, where the guest was is chance.
# Ends found at a host-timed moment, between reads: a replay's final state is not compared.
# ("spin" is found at a watchdog tick: the loop never ends, but which of its states was seen
# depends on when the host looked.)
HOST_REASONS = frozenset({"timeout", "interrupted", "terminated", "quit", "spin"})


def ended_by_chance(reason: str, at_read: bool, icount: int | None) -> bool:
    """An end found at a host-timed moment between reads (HOST_REASONS), which a replay cannot
    find again exactly; not one at an instruction point (icount mode), found by its count."""
    return reason in HOST_REASONS and not at_read and icount is None


def end_record(end, machine, output_digest: str, info: dict) -> dict:
    # A host-side stop that could not wait for a read (a guest computing without I/O) leaves
    # the guest wherever it happened to be: its registers and memory then say nothing
    # reproducible, and are left out, so that the trace stays deterministic.
    by_chance = ended_by_chance(end.reason, end.at_read, end.icount)
    return {"type": "end", "n": end.observation, "at": machine.inputs.now(),
            "at_read": end.at_read, "reason": end.reason, "exit_code": end.exit_code,
            "message": end.message,
            "regs": end.cpu.digest() if end.cpu is not None and not by_chance else None,
            "mem": None if by_chance else machine.backend.memory_digest(),
            "output": output_digest, "info": info,
            **({"icount": end.icount} if end.icount is not None else {})}
