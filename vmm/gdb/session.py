"""`vmm run GUEST --gdb [HOST:]PORT`, `vmm replay TRACE --gdb [HOST:]PORT` and
`vmm replay TRACE --stop-at N`: build the run, wait for gdb, serve it, report the end.

The machine is built before gdb connects, so gdb sees the guest loaded and the CPU at its first
instruction. When gdb detaches (`detach`, or `quit`, which detaches because vmm reports the
target as attached), the run goes on to its end without the debugger and vmm reports it as
usual. `kill` ends the run at once. If the connection drops without either (gdb crashed, or
`disconnect`), vmm keeps the guest stopped and waits for gdb to connect again on the same port,
so `disconnect` + `target remote` reloads the target description (after a mode switch) and
nothing is lost. Ctrl-C or SIGTERM to vmm end the session whenever they come: while the guest
runs the run ends as without gdb; while gdb holds it stopped, or while vmm waits for gdb, at
once (the stub looks for the stop request every IDLE_POLL_S).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile

from ..errors import EXIT_CODES, GdbSetupError, UsageError
from .stub import GdbStub, accept, listen
from .target import MachineTarget, RunSpec

DEFAULT_HOST = "127.0.0.1"


def parse_listen(text: str) -> tuple[str, int]:
    """`PORT` or `HOST:PORT` (an IPv6 host in brackets: `[::1]:1234`)."""
    host, port = DEFAULT_HOST, text
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1:close + 2] != ":":
            raise UsageError(f"bad --gdb {text!r}: use PORT or HOST:PORT")
        host, port = text[1:close], text[close + 2:]
    elif ":" in text:
        host, port = text.rsplit(":", 1)
    if not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise UsageError(f"bad --gdb {text!r}: use PORT or HOST:PORT, PORT from 0 to 65535")
    return host, int(port)


# --- the runs ------------------------------------------------------------------------------------
def replay_spec(path: str, backend: str | None, log) -> tuple[RunSpec, object]:
    """A RunSpec that builds the exact replay of `path`, as `vmm replay` does, without a
    wall-clock timeout (a debugged replay waits for the user)."""
    from ..machine import Machine, RunConfig
    from ..replay import exact_verdict, recorded_rtc_epoch, replay_machine_parts, replay_streams
    from ..runner import create_backend
    from ..trace import open_trace

    trace = open_trace(path)
    image, cpuid = replay_machine_parts(trace)
    machine_cfg = trace.header["machine"]
    max_output = machine_cfg.get("max_output")
    every = machine_cfg.get("checkpoint_every")
    log_once = _once(log)            # every re-execution builds a backend: say things once

    def build(sink):
        config = RunConfig(timeout_ns=None,
                           max_output=max_output if isinstance(max_output, int) else None,
                           ignore_unknown_ports=bool(machine_cfg.get("ignore_unknown_ports")),
                           checkpoint_every=every if isinstance(every, int) and every > 0 else 0,
                           coalesce_after=None, rtc_epoch=recorded_rtc_epoch(machine_cfg))
        inputs, verifier = replay_streams(trace)
        machine = Machine(image, create_backend(backend, image.mem_size, log_once),
                          inputs, sink, log, config, cpuid, observer=verifier)
        machine.verifier = verifier
        return machine

    def finish(machine, end, diverged) -> list[str]:
        verdict = exact_verdict(trace, machine.verifier, end, machine)
        if diverged:
            finish.exit_code = EXIT_CODES["debugger"]
            return ["vmm: replay diverged by the debugger: gdb wrote registers or memory, so "
                    "the run left its trace (not a failure of vmm); " + end.message]
        finish.exit_code = verdict.exit_code
        return verdict.lines

    finish.exit_code = 0
    spec = RunSpec(build=build, replay=True, finish=finish)
    return spec, trace


def live_spec(run, feed, log) -> RunSpec:
    """A RunSpec for `vmm run` (vmm.runner.LiveRun `run`): one execution, never rebuilt."""
    from ..boot import load_guest
    from ..cpu.cpuid import cpuid_table
    from ..inputs import LiveInput, RealClock, VirtualClock
    from ..machine import Machine, RunConfig
    from ..runner import DEFAULT_MAX_TIME_NS, _FetcherOnDemand, create_backend

    image = load_guest(run.guest, run.boot)
    clock_name = run.clock or ("virtual" if run.script is not None else "real")
    max_time = ((run.max_time_ns or DEFAULT_MAX_TIME_NS) if clock_name == "virtual" else None)

    def build(sink):
        backend = create_backend(run.backend, image.mem_size, log)
        cpuid = cpuid_table(run.cpuid, backend.supported_cpuid())
        clock = VirtualClock() if clock_name == "virtual" else RealClock()
        inputs = LiveInput(feed, clock, script=run.script, max_time_ns=max_time,
                           fetcher=_FetcherOnDemand(run.offline))
        config = RunConfig(timeout_ns=None, max_output=run.max_output or None,
                           ignore_unknown_ports=run.ignore_unknown_ports, coalesce_after=None)
        return Machine(image, backend, inputs, sink, log, config, cpuid)

    def finish(machine, end, diverged) -> list[str]:
        finish.exit_code = end.exit_code
        return []

    finish.exit_code = 0
    path = os.path.abspath(run.guest) if image.kind.startswith("elf") else None
    return RunSpec(build=build, replay=False, exec_path=path, finish=finish)


def _once(log):
    said = set()

    def log_once(text: str) -> None:
        if text not in said:
            said.add(text)
            log(text)
    return log_once


# --- serving gdb ---------------------------------------------------------------------------------
def serve(spec: RunSpec, where: str, output, log, guest_bytes: bytes | None = None) -> int:
    host, port = parse_listen(where)
    try:
        sock = listen(host, port)
    except OSError as e:
        reason = "the port is in use" if e.errno == 98 else (e.strerror or str(e))
        raise GdbSetupError(f"cannot listen for gdb on {host}:{port}: {reason}") from None
    with contextlib.ExitStack() as stack:
        stack.callback(sock.close)
        if spec.exec_path is None and guest_bytes is not None and guest_bytes[:4] == b"\x7fELF":
            # A replay's guest lives in the trace: give gdb a copy of it for its symbols.
            tmp = tempfile.NamedTemporaryFile(prefix="vmm-guest-", suffix=".elf", delete=False)
            stack.callback(os.unlink, tmp.name)
            with tmp:
                tmp.write(guest_bytes)
            spec.exec_path = tmp.name
        target = MachineTarget(spec, output=output, log=log)
        stack.callback(lambda: target.ex.close())
        port = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        symbols = f"gdb {spec.exec_path} " if spec.exec_path else "gdb "
        log(f"vmm: waiting for gdb on {shown}:{port} before the first instruction; connect with:")
        log(f"vmm:   {symbols}-ex 'target remote {shown}:{port}'")
        how = "disconnect"
        while how == "disconnect":
            try:
                with _interruptible():
                    conn = accept(sock)
            except OSError as e:
                raise GdbSetupError(f"cannot accept gdb's connection: {e}") from None
            log("vmm: gdb connected")
            stub = GdbStub(conn, target, log)
            try:
                how = stub.serve()
            finally:
                conn.close()
            if stub.bad_packets:
                log(f"vmm: {stub.bad_packets} malformed packets from gdb were refused")
            if how == "disconnect":
                if target.ended is not None and not spec.replay:
                    break
                log(f"vmm: gdb disconnected without detaching; the guest stays stopped: "
                    f"connect again on {shown}:{port}, or press Ctrl-C to end")
        if how == "signal":
            stop = target.stop_requested()
            log(f"vmm: {stop.message}: the debugging session ends")
            return stop.exit_code
        if how == "kill":
            log("vmm: gdb killed the run")
            end = target.ended
            return EXIT_CODES["interrupted"] if end is None else spec.finish.exit_code
        if target.ended is None:
            log("vmm: gdb detached; the run goes on to its end")
            target.run_to_end()
        return spec.finish.exit_code


@contextlib.contextmanager
def _interruptible():
    """While vmm waits for gdb, Ctrl-C and SIGTERM end the session (a run that has started
    has its own handlers installed, which would only note the request)."""
    from ..errors import Terminated

    def terminated(signum, frame):
        raise Terminated("terminated (SIGTERM)")

    saved = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
             signal.SIGTERM: signal.signal(signal.SIGTERM, terminated)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def stop_at(spec: RunSpec, n: int, out=sys.stdout) -> int:
    """`vmm replay TRACE --stop-at N`: replay to observation N (the point just after its read)
    and print the registers, the screen, the device state and the next events."""
    target = MachineTarget(spec, output=None)
    try:
        text = target.command(f"seek {n}")
        lines = [line for line in text.splitlines() if "stale" not in line]
        regs = target.read_registers()
        arch = target.arch()
        print("\n".join(lines), file=out)
        print(f"registers ({arch.name}):", file=out)
        names = [name for name, _ in arch.registers if not name.startswith(("st", "f"))]
        row = []
        for name in names:
            row.append(f"{name}={arch.value_of(name, regs):#x}")
            if len(row) == 6:
                print("  " + " ".join(row), file=out)
                row = []
        if row:
            print("  " + " ".join(row), file=out)
        print("  " + " ".join(f"{c}={regs[c]:#x}" for c in ("cr0", "cr2", "cr3", "cr4", "efer")),
              file=out)
        print("screen:", file=out)
        print(_indent(target.command("screen")), file=out)
        print("devices:", file=out)
        print(_indent(target.command("devices")), file=out)
        print("next input events:", file=out)
        print(_indent(target.command("trace")), file=out)
        return 0 if target.ex.position[0] == n else EXIT_CODES["stop-at-unreached"]
    finally:
        target.ex.close()


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.rstrip("\n").splitlines())


__all__ = ["serve", "stop_at", "replay_spec", "live_spec", "parse_listen", "GdbSetupError"]
