"""The port-I/O device model: small state machines that know nothing about KVM.

Each device gets its outside world injected: output goes to a sink (`emit(device, text,
partial)`), input and time come only from the input source (vmm.inputs), and the end of a run is
requested by raising vmm.outcome.StopRun. The full model is documented in docs/devices.md.

The classes are importable from here (`from vmm.devices import CMOS`); each module is loaded
when one of its names is first asked for, so that a machine loads only its board's devices
(a `vmm run` on the p3 board never loads the PC's PIC, PIT, PS/2 controller...: start-up).
"""

from __future__ import annotations

from .bus import Device, PortBus, PortConflict

_MODULES = {
    "CMOS": "cmos",
    "LineOutput": "console",
    "AcpiShutdown": "exitdev", "BochsShutdown": "exitdev", "DebugExitPort": "exitdev",
    "ExitDevice": "exitdev", "PostCodePort": "exitdev",
    "Keyboard": "keyboard",
    "PicChip": "pic", "PicPair": "pic",
    "Pit8254": "pit", "Port61": "pit",
    "SystemControlA": "port92",
    "PortAlias": "ps2", "PS2Controller": "ps2",
    "Serial16550": "serial",
    "IntervalTimer": "timer",
    "VgaText": "vga",
    "WebDevice": "web",
}

__all__ = ["Device", "PortBus", "PortConflict", "LineOutput", "ExitDevice", "Keyboard",
           "Serial16550", "IntervalTimer", "WebDevice", "VgaText", "DebugExitPort",
           "AcpiShutdown", "BochsShutdown", "PostCodePort", "PicChip", "PicPair", "Pit8254",
           "Port61", "PS2Controller", "PortAlias", "CMOS", "SystemControlA"]


def __getattr__(name: str):
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # __import__, not importlib.import_module: `python -X importtime` then lists the module
    value = getattr(__import__(f"{__name__}.{module}", fromlist=(name,)), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
