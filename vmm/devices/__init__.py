"""The port-I/O device model: small state machines that know nothing about KVM.

Each device gets its outside world injected: output goes to a sink (`emit(device, text,
partial)`), input and time come only from the input source (vmm.inputs), and the end of a run is
requested by raising vmm.outcome.StopRun. The full model is documented in docs/devices.md.
"""

from .bus import Device, PortBus, PortConflict
from .console import LineOutput
from .exitdev import AcpiShutdown, BochsShutdown, DebugExitPort, ExitDevice, PostCodePort
from .keyboard import Keyboard
from .serial import Serial16550
from .timer import IntervalTimer
from .vga import VgaText
from .web import WebDevice

__all__ = ["Device", "PortBus", "PortConflict", "LineOutput", "ExitDevice", "Keyboard",
           "Serial16550", "IntervalTimer", "WebDevice", "VgaText", "DebugExitPort",
           "AcpiShutdown", "BochsShutdown", "PostCodePort"]
