"""Boards: which devices a machine has, at which ports, on which interrupt lines (DESIGN §9).

A board is data: a table of slots, each a device factory with its port range, its IRQ line (for
the interrupt controller of the next boards issue) and whether OUTs to it may be batched. The
machine builds its port bus from the table and knows nothing else about the devices: adding a
board or a device adds rows here and changes no run-loop code path.

- `p3`: the seeds' port-I/O model (docs/devices.md): console 0x42, keyboard 0x44/0x45, interval
  timer 0x46/0x47, web data 0x100-0x106 and 0x201-0x206, COM1's polled subset, the debug
  console 0xe9, the pseudo-serial port 0xf1, the exit port 0xf4. Every existing guest, trace and
  rubric runs on it, and it is the default for everything that is not a multiboot kernel. Its
  optional interrupt lines go to an 8259A pair at 0x20/0xA0 (timer fired: IRQ 0, key waiting:
  IRQ 1, COM1: IRQ 4), which takes part only once the guest has initialised the master (ICW1):
  a polled guest that never does runs exactly as on a board without one.
- `pc`: what hobby kernels expect of a PC: the VGA text screen at 0xB8000 with its registers
  0x3c0-0x3df, COM1 and COM2, the debug console 0xe9, a sink for POST codes at 0x80, and the exit
  and shutdown ports of QEMU and Bochs. It is the default for multiboot kernels, with QEMU's
  128 MiB of RAM.

The two overlap (0x42 is PIT channel 2 on a PC), so a machine has exactly one board. The board's
name is part of the machine configuration a trace records.
"""

from __future__ import annotations

from collections.abc import Callable   # not typing: ~3 ms of `vmm run` start-up

from . import devices   # devices.X: a module only the pc board uses, loaded when one is built
from .devices import (CMOS, AcpiShutdown, BochsShutdown, DebugExitPort, ExitDevice,
                      IntervalTimer, Keyboard, LineOutput, PostCodePort, Serial16550, VgaText,
                      WebDevice)
from .devices.cmos import VIRTUAL_EPOCH
from .devices.vga import MONO_BASE, MONO_COUNT, PORT_BASE as VGA_BASE, PORT_COUNT as VGA_COUNT
from .devices.web import AIR_DEVICES, HEADLINE, WEATHER_DEVICES
from .record_type import Record, factory

MiB = 1 << 20
DEFAULT_BOARD = "p3"
VGA_TEXT_BASE, VGA_TEXT_SIZE = 0xB8000, 80 * 25 * 2     # the colour text buffer: char, attribute


class BoardContext(Record):
    """What a device factory may hand its device: the input source and the output sink. No
    clock, no terminal, no network (DESIGN §2). `devices` holds the devices of the slots built
    so far, by name, for a slot that is a second port range of one device (VGA's mono ports)."""
    inputs: object
    output: Callable          # output(device, text, partial)
    devices: dict = factory(dict)
    mem_size: int = 16 * MiB  # guest RAM (the CMOS reports it, as a BIOS leaves it there)
    rtc_epoch: int = VIRTUAL_EPOCH   # the RTC's date and time at guest time 0 (Unix seconds)


class Slot(Record, frozen=True):
    make: Callable            # make(BoardContext) -> Device
    port: int
    count: int = 1
    irq: int | None = None    # the interrupt line the device drives: the controller's input
    batch: bool = False       # output only: its OUTs may be batched (coalesced PIO). Only the
                              # slot's first port is batched: a 16550's base is THR while LCR.DLAB
                              # is clear; with DLAB set the byte goes to the divisor latch, and
                              # that is still right: batched writes reach the device in order, and
                              # an LCR write (base + 3, not batched) exits, so every write before
                              # it has been delivered first.


class Board(Record, frozen=True):
    name: str
    summary: str
    slots: tuple
    default_mem: int
    screen: tuple[int, int] | None = None   # (address, bytes) of a text screen in guest RAM
    controller: str | None = None   # the device that is the interrupt controller (its .pair)
    controller_on_init: bool = False   # the controller takes part (lines brought up to date,
                                       # interrupts injected, HLT with IF=1 waits) only once the
                                       # guest has written ICW1 to the master: until then the
                                       # board behaves as one without a controller (p3)

    def build(self, context: BoardContext) -> list[tuple[Slot, object]]:
        """Each slot's device, made in table order (a slot may use an earlier one's device)."""
        built = []
        for slot in self.slots:
            device = slot.make(context)
            context.devices[device.name] = device
            built.append((slot, device))
        return built

    @property
    def batched_ports(self) -> tuple[int, ...]:
        return tuple(slot.port for slot in self.slots if slot.batch)


def _line(name: str, nonprintable: str = "drop"):
    return lambda ctx: LineOutput(name, ctx.output, nonprintable=nonprintable)


def _named(device, name: str):
    """A device instance under its own name (two of a kind on one board)."""
    device.name = name
    return device


def _web_slots() -> tuple:
    slots = [Slot(lambda ctx: WebDevice(HEADLINE, ctx.inputs), 0x100)]
    for first, names in ((0x101, WEATHER_DEVICES), (0x201, AIR_DEVICES)):
        for i, name in enumerate(names):
            slots.append(Slot(lambda ctx, name=name: WebDevice(name, ctx.inputs), first + i))
    return tuple(slots)


P3 = Board(
    name="p3",
    summary="the seeds' port-I/O devices: console 0x42, keyboard 0x44, timer 0x46, web data, "
            "COM1, debug console 0xe9, pseudo-serial 0xf1, exit 0xf4; optional 8259 PICs at "
            "0x20/0xA0 (timer IRQ 0, keyboard IRQ 1)",
    slots=(
        Slot(lambda ctx: devices.PicPair().master, 0x20, 2),
        Slot(lambda ctx: ctx.devices["pic-master"].pair.slave, 0xA0, 2),
        Slot(_line("console"), 0x42, batch=True),
        Slot(lambda ctx: Keyboard(ctx.inputs), 0x44, 2, irq=1),
        Slot(lambda ctx: IntervalTimer(ctx.inputs), 0x46, 2, irq=0),
        Slot(_line("debugcon"), 0xE9, batch=True),
        Slot(_line("serial", "dot"), 0xF1, batch=True),
        Slot(lambda ctx: ExitDevice(), 0xF4),
        Slot(lambda ctx: Serial16550(ctx.inputs, ctx.output), 0x3F8, 8, irq=4, batch=True),
    ) + _web_slots(),
    default_mem=16 * MiB,
    controller="pic-master",
    controller_on_init=True,
)

PC = Board(
    name="pc",
    summary="a PC for multiboot kernels: 8259 PICs, 8254 PIT, 8042 PS/2 keyboard, CMOS clock, "
            "VGA text at 0xB8000, COM1 0x3f8, COM2 0x2f8, debug console 0xe9, POST 0x80, exit "
            "and shutdown ports",
    slots=(
        Slot(lambda ctx: devices.PicPair().master, 0x20, 2),
        Slot(lambda ctx: ctx.devices["pic-master"].pair.slave, 0xA0, 2),
        Slot(lambda ctx: devices.Pit8254(ctx.inputs.device_time), 0x40, 4, irq=0),
        Slot(lambda ctx: devices.Port61(ctx.devices["pit"]), 0x61),
        Slot(lambda ctx: devices.PS2Controller(ctx.inputs), 0x60, 1, irq=1),
        Slot(lambda ctx: _named(devices.PortAlias(ctx.devices["ps2"], 4), "ps2-64"), 0x64),
        Slot(lambda ctx: CMOS(ctx.inputs.device_time, epoch=ctx.rtc_epoch,
                              mem_size=ctx.mem_size, idle=ctx.inputs.idle), 0x70, 2, irq=8),
        Slot(lambda ctx: devices.SystemControlA(), 0x92),
        Slot(lambda ctx: PostCodePort(), 0x80, batch=True),
        Slot(_line("debugcon"), 0xE9, batch=True),
        Slot(lambda ctx: ExitDevice(), 0xF4),                       # isa-debug-exit (QEMU -device)
        Slot(lambda ctx: _named(DebugExitPort(0x501), "debug-exit-501"), 0x501, 2),  # Bochs/Pintos
        Slot(lambda ctx: _named(AcpiShutdown(0x604), "acpi-pm-604"), 0x604, 2),     # QEMU q35/piix
        Slot(lambda ctx: _named(AcpiShutdown(0xB004), "acpi-pm-b004"), 0xB004, 2),  # older QEMU
        Slot(lambda ctx: BochsShutdown(), 0x8900),
        Slot(lambda ctx: Serial16550(ctx.inputs, ctx.output, name="com1", waiting_rbr=False),
             0x3F8, 8, irq=4, batch=True),
        Slot(lambda ctx: Serial16550(ctx.inputs, ctx.output, name="com2", waiting_rbr=False,
                                     receives=False), 0x2F8, 8, irq=3, batch=True),
        Slot(lambda ctx: VgaText(), VGA_BASE, VGA_COUNT),
        Slot(lambda ctx: ctx.devices["vga"].mono, MONO_BASE, MONO_COUNT),
    ),
    default_mem=128 * MiB,
    screen=(VGA_TEXT_BASE, VGA_TEXT_SIZE),
    controller="pic-master",
)

BOARDS = {board.name: board for board in (P3, PC)}


def get_board(name: str) -> Board:
    from .errors import UsageError
    try:
        return BOARDS[name]
    except (KeyError, TypeError):
        raise UsageError(f"unknown board {name!r}: choose one of {', '.join(BOARDS)} "
                         "(docs/devices.md)") from None
