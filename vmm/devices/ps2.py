"""The 8042 PS/2 controller at 0x60 (data, offset 0) and 0x64 (status/command, offset 4), with an
MF2 keyboard on port 1 and nothing on port 2 (docs/devices.md, "PS/2 controller and keyboard").

Input bytes come from the input source (`inputs.key("keyboard")`, the name the terminal, pipe and
script plumbing delivers to) and become the scancodes of a US keyboard: set 1 (what a kernel reads
with the controller's translation on, the default) or set 2 (translation off, keyboard in set 2).
Upper case and shifted symbols come wrapped in left-shift make/break, control characters in
left-ctrl make/break, Enter/Backspace/Tab/Escape are their keys, and the ANSI arrow sequences
ESC [ A..D (and ESC O A..D; H/F for Home/End) become the E0-prefixed arrow keys.

Timing and interrupts (the lead's PIC samples `irq_pending()` after each access and at injection
points): a byte enters the output buffer only at a read of 0x64, a read of 0x60 that finds the
buffer empty, a `poll()`, or at a write to 0x60/0x64 (the answer it produced, or a byte the
keyboard had already sent) — never at the read of 0x60 that takes the previous byte. So every byte shows IRQ 1 going low (after the read that takes
it) and high again (when the next is loaded): a rising edge per byte for an edge-triggered 8259.

Nothing here reads a clock, a terminal or the host; a reset request ends the run (vmm.devices.
reset). Behaviour follows the IBM/Intel 8042 and MF2 keyboard documentation as OSDev and QEMU
(hw/input/pckbd.c, ps2.c) describe it; the differences are documented in docs/devices.md.
"""

from __future__ import annotations

from collections import deque

from .bus import Device
from .reset import request_reset

# --- ports (offsets from 0x60) ----------------------------------------------------------------
DATA, STATUS = 0, 4                   # 0x60 data in/out; 0x64 status in, command out

# --- status register (0x64 read) ---------------------------------------------------------------
ST_OBF = 0x01                         # output buffer full: a byte waits at 0x60
ST_IBF = 0x02                         # input buffer full: always 0 (writes are taken at once)
ST_SYS = 0x04                         # system flag (POST passed; from the command byte, self-test)
ST_CMD = 0x08                         # the last write went to 0x64 (command), not 0x60 (data)
ST_UNLOCKED = 0x10                    # keyboard not inhibited by the key lock
ST_AUX = 0x20                         # the waiting byte is from port 2
ST_TIMEOUT = 0x40                     # the waiting byte reports a timeout (port 2: no device)
ST_PARITY = 0x80                      # parity error: never

# --- the command byte (controller RAM byte 0; read 0x20, write 0x60) ---------------------------
CB_KBD_INT = 0x01                     # IRQ 1 when a port-1 byte waits
CB_AUX_INT = 0x02                     # IRQ 12 when a port-2 byte waits
CB_SYS = 0x04                         # the system flag
CB_KBD_DISABLE = 0x10                 # port 1 clock held: the keyboard's bytes wait
CB_AUX_DISABLE = 0x20                 # port 2 clock held
CB_XLATE = 0x40                       # translate set 2 to set 1
# As a BIOS leaves it for the kernel (there is none here): translation on, IRQ 1 on, the system
# flag set, port 2 disabled.
DEFAULT_COMMAND_BYTE = CB_XLATE | CB_AUX_DISABLE | CB_SYS | CB_KBD_INT      # 0x65
RAM_SIZE = 32                         # controller RAM: 0x20-0x3f read, 0x60-0x7f write
CTRL_QUEUE_BYTES = 16                 # controller answers not yet read (an 8042 has one
                                      # register; a guest that never reads cannot grow this)

# --- the output port (0xd0 read, 0xd1 write) ---------------------------------------------------
OP_RESET = 0x01                       # the CPU reset line, active low: writing 0 resets
OP_A20 = 0x02                         # the A20 gate
OP_KBD_OBF = 0x10                     # reads: a port-1 byte waits (IRQ 1 line)
OP_AUX_OBF = 0x20                     # reads: a port-2 byte waits (IRQ 12 line)
DEFAULT_OUTPUT_PORT = 0xCF            # reset high, A20 on, the unused lines high (QEMU's value)
INPUT_PORT = 0x80                     # 0xc0: bit 7 = keyboard not inhibited

# --- controller commands (0x64 write) ----------------------------------------------------------
C_READ_RAM, C_WRITE_RAM = 0x20, 0x60  # 0x20-0x3f, 0x60-0x7f: RAM byte (cmd & 0x1f)
C_AUX_DISABLE, C_AUX_ENABLE, C_AUX_TEST = 0xA7, 0xA8, 0xA9
C_SELF_TEST, C_KBD_TEST, C_KBD_DISABLE, C_KBD_ENABLE = 0xAA, 0xAB, 0xAD, 0xAE
C_READ_INPUT, C_READ_OUTPUT, C_WRITE_OUTPUT = 0xC0, 0xD0, 0xD1
C_WRITE_KBD_OUT, C_WRITE_AUX_OUT, C_WRITE_AUX = 0xD2, 0xD3, 0xD4
C_A20_OFF, C_A20_ON, C_READ_TEST = 0xDD, 0xDF, 0xE0
C_PULSE = 0xF0                        # 0xf0-0xff: pulse output lines 0-3 whose bit is 0
SELF_TEST_OK, PORT_TEST_OK = 0x55, 0x00
AUX_NO_DEVICE = 0xFE                  # a byte sent to port 2 with nothing there: timeout + 0xfe

# --- keyboard commands (0x60 write) and answers -------------------------------------------------
K_SET_LEDS, K_ECHO, K_SCANCODE_SET, K_IDENTIFY = 0xED, 0xEE, 0xF0, 0xF2
K_TYPEMATIC, K_ENABLE, K_DISABLE, K_DEFAULTS = 0xF3, 0xF4, 0xF5, 0xF6
K_SET3_FIRST, K_SET3_LAST = 0xF7, 0xFA    # set-3 key type commands: acknowledged, no effect
K_RESEND, K_RESET = 0xFE, 0xFF
ACK, RESEND, BAT_OK, ECHO = 0xFA, 0xFE, 0xAA, 0xEE
ID_BYTES = (0xAB, 0x83)               # an MF2 keyboard
ID_BYTES_TRANSLATED = (0xAB, 0x41)    # ... as the controller's translation passes them
SET_TRANSLATED = {1: 0x43, 2: 0x41, 3: 0x3F}   # "get set" answer bytes as translation passes them
DEFAULT_SET = 2
DEFAULT_TYPEMATIC = 0x2B              # 10.9 characters/s after 500 ms
KBD_QUEUE_BYTES = 16                  # the keyboard's own output buffer (as an MF2 keyboard's)

KEYBOARD_INPUT = "keyboard"           # the input source's device name for key bytes
ESC = 0x1B

# --- the key table: name -> (set-1 code, set-2 code, E0-prefixed) ------------------------------
KEYS = {
    "esc": (0x01, 0x76, False), "backspace": (0x0E, 0x66, False), "tab": (0x0F, 0x0D, False),
    "enter": (0x1C, 0x5A, False), "lctrl": (0x1D, 0x14, False), "lshift": (0x2A, 0x12, False),
    "space": (0x39, 0x29, False),
    "up": (0x48, 0x75, True), "down": (0x50, 0x72, True), "left": (0x4B, 0x6B, True),
    "right": (0x4D, 0x74, True), "home": (0x47, 0x6C, True), "end": (0x4F, 0x69, True),
}
# (unshifted, shifted, set-1, set-2) for the US layout's character keys
_CHAR_KEYS = (
    ("1", "!", 0x02, 0x16), ("2", "@", 0x03, 0x1E), ("3", "#", 0x04, 0x26),
    ("4", "$", 0x05, 0x25), ("5", "%", 0x06, 0x2E), ("6", "^", 0x07, 0x36),
    ("7", "&", 0x08, 0x3D), ("8", "*", 0x09, 0x3E), ("9", "(", 0x0A, 0x46),
    ("0", ")", 0x0B, 0x45), ("-", "_", 0x0C, 0x4E), ("=", "+", 0x0D, 0x55),
    ("q", "Q", 0x10, 0x15), ("w", "W", 0x11, 0x1D), ("e", "E", 0x12, 0x24),
    ("r", "R", 0x13, 0x2D), ("t", "T", 0x14, 0x2C), ("y", "Y", 0x15, 0x35),
    ("u", "U", 0x16, 0x3C), ("i", "I", 0x17, 0x43), ("o", "O", 0x18, 0x44),
    ("p", "P", 0x19, 0x4D), ("[", "{", 0x1A, 0x54), ("]", "}", 0x1B, 0x5B),
    ("a", "A", 0x1E, 0x1C), ("s", "S", 0x1F, 0x1B), ("d", "D", 0x20, 0x23),
    ("f", "F", 0x21, 0x2B), ("g", "G", 0x22, 0x34), ("h", "H", 0x23, 0x33),
    ("j", "J", 0x24, 0x3B), ("k", "K", 0x25, 0x42), ("l", "L", 0x26, 0x4B),
    (";", ":", 0x27, 0x4C), ("'", '"', 0x28, 0x52), ("`", "~", 0x29, 0x0E),
    ("\\", "|", 0x2B, 0x5D), ("z", "Z", 0x2C, 0x1A), ("x", "X", 0x2D, 0x22),
    ("c", "C", 0x2E, 0x21), ("v", "V", 0x2F, 0x2A), ("b", "B", 0x30, 0x32),
    ("n", "N", 0x31, 0x31), ("m", "M", 0x32, 0x3A), (",", "<", 0x33, 0x41),
    (".", ">", 0x34, 0x49), ("/", "?", 0x35, 0x4A),
)
for _plain, _shifted, _s1, _s2 in _CHAR_KEYS:
    KEYS[_plain] = (_s1, _s2, False)


def _byte_keys() -> dict[int, tuple[str, tuple[str, ...]]]:
    """Input byte -> (key, modifiers held around it)."""
    table: dict[int, tuple[str, tuple[str, ...]]] = {}
    for plain, shifted, _, _ in _CHAR_KEYS:
        table[ord(plain)] = (plain, ())
        table[ord(shifted)] = (plain, ("lshift",))
    table[ord(" ")] = ("space", ())
    for byte in range(0x01, 0x1B):                      # Ctrl-A .. Ctrl-Z
        table[byte] = (chr(0x60 + byte), ("lctrl",))
    table[0x00] = ("2", ("lctrl", "lshift"))            # Ctrl-@
    table[0x1C] = ("\\", ("lctrl",))
    table[0x1D] = ("]", ("lctrl",))
    table[0x1E] = ("6", ("lctrl", "lshift"))            # Ctrl-^
    table[0x1F] = ("-", ("lctrl", "lshift"))            # Ctrl-_
    for byte in (0x0A, 0x0D):
        table[byte] = ("enter", ())
    for byte in (0x08, 0x7F):
        table[byte] = ("backspace", ())
    table[0x09] = ("tab", ())
    table[ESC] = ("esc", ())
    return table


BYTE_KEYS = _byte_keys()
# ESC [ x and ESC O x (CSI and SS3 forms) -> key
ESCAPE_FINALS = {ord("A"): "up", ord("B"): "down", ord("C"): "right", ord("D"): "left",
                 ord("H"): "home", ord("F"): "end"}
ESCAPE_INTRODUCERS = (ord("["), ord("O"))

# where the output buffer's byte came from (ints or'ed into queued bytes: plain state). Port-1
# bytes (keys, the keyboard's answers, the controller's own answers) raise IRQ 1, port-2 bytes
# IRQ 12.
FROM_KBD, FROM_CTRL, FROM_AUX, FROM_AUX_TIMEOUT = 0x000, 0x400, 0x100, 0x300
FROM_KBD_ANSWER = 0x800
PORT2 = 0x100


def make_break(key: str, scancode_set: int) -> tuple[list[int], list[int]]:
    """The make and break codes of `key` in set 1 or set 2."""
    s1, s2, extended = KEYS[key]
    prefix = [0xE0] if extended else []
    if scancode_set == 1:
        return prefix + [s1], prefix + [s1 | 0x80]
    return prefix + [s2], prefix + [0xF0, s2]


def key_codes(key: str, modifiers: tuple[str, ...], scancode_set: int) -> list[int]:
    """The whole press of `key` with `modifiers` held: modifiers' makes, the key's make and
    break, the modifiers' breaks in reverse order."""
    out: list[int] = []
    for mod in modifiers:
        out += make_break(mod, scancode_set)[0]
    make, brk = make_break(key, scancode_set)
    out += make + brk
    for mod in reversed(modifiers):
        out += make_break(mod, scancode_set)[1]
    return out


class PortAlias(Device):
    """One device seen at a second port range: reads and writes go to `device` at `offset` +
    the access's offset (the 8042 is at 0x60 and 0x64, with 0x61 between them belonging to
    another device). Its state is the device's, kept once."""

    def __init__(self, device: Device, offset: int):
        self._device = device
        self._offset = offset
        self.name = device.name

    def read(self, offset: int, size: int) -> int:
        return self._device.read(self._offset + offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self._device.write(self._offset + offset, size, value)

    def state(self) -> dict:
        return {}

    def from_state(self, state: dict) -> None:
        pass


class PS2Controller(Device):
    """The 8042 with a keyboard on port 1. `inputs` is the input source (key, idle)."""

    name = "ps2"

    def __init__(self, inputs):
        self._inputs = inputs
        # controller
        self.ram = bytearray(RAM_SIZE)
        self.ram[0] = DEFAULT_COMMAND_BYTE
        self.sys_flag = True               # status bit 2: POST passed (self-test sets it too)
        self.last_was_command = False      # status bit 3
        self.output_port = DEFAULT_OUTPUT_PORT
        self.a20 = True                    # the output port's A20 gate (bit 1)
        self.expect = 0                    # a controller command waiting for its data byte
        self.out_byte = 0                  # what 0x60 reads (the last byte stays readable)
        self.out_from = FROM_KBD
        self.obf = False
        self.ctrl_queue = deque()          # controller answers: byte | FROM_*, ahead of the kbd
        # keyboard
        self.kbd_queue = deque()           # bytes the keyboard has sent, not yet in the buffer
        self.kbd_expect = 0                # a keyboard command waiting for its data byte
        self.scanning = True
        self.scancode_set = DEFAULT_SET
        self.leds = 0
        self.typematic = DEFAULT_TYPEMATIC
        self.last_sent = ACK               # for the resend command
        self.held = bytearray()            # an escape sequence's start, while reading ahead
        # stats
        self.keys = 0                      # input bytes taken from the input source
        self.unmapped = 0                  # input bytes with no key (>= 0x80): dropped
        self.scancodes = 0                 # key scancode bytes the guest read from 0x60
        self.commands = 0                  # controller commands (0x64 writes)
        self.kbd_commands = 0              # bytes written to the keyboard
        self.unknown_commands = 0          # controller commands vmm ignores
        self.overruns = 0                  # answers dropped: a queue was full
        self.aux_writes = 0                # bytes sent to port 2 (no device: timeouts)

    # --- what the board and the PIC ask -----------------------------------------------------
    @property
    def command_byte(self) -> int:
        return self.ram[0]

    def irq_pending(self) -> bool:
        """IRQ 1: a byte from port 1 (or a controller answer) waits and the command byte enables
        the interrupt. Sample it after each access and at injection points."""
        return self.obf and not self.out_from & PORT2 and bool(self.ram[0] & CB_KBD_INT)

    def aux_irq_pending(self) -> bool:
        """IRQ 12: a port-2 byte (0xd3's loopback, a no-device timeout) waits, if enabled."""
        return self.obf and bool(self.out_from & PORT2) and bool(self.ram[0] & CB_AUX_INT)

    def poll(self) -> bool:
        """At an injection point (HLT, an interrupt window): let the next byte into an empty
        output buffer, taking an input byte if the keyboard can send one. Returns
        irq_pending()."""
        self._refill(pull=True)
        return self.irq_pending()

    # --- port I/O ---------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == STATUS:
            self._look()
            return self._status()
        if offset == DATA:
            if not self.obf:
                self._look()
            value = self.out_byte
            if self.obf:
                self.obf = False
                if self.out_from == FROM_KBD:
                    self.scancodes += 1
            return value
        return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == STATUS:
            self.last_was_command = True
            self._command(value)
        elif offset == DATA:
            self.last_was_command = False
            self._data(value)
        self._refill(pull=False)           # an answer goes to an empty buffer at once

    def _status(self) -> int:
        value = ST_UNLOCKED
        if self.sys_flag:
            value |= ST_SYS
        if self.last_was_command:
            value |= ST_CMD
        if self.obf:
            value |= ST_OBF
            if self.out_from & PORT2:
                value |= ST_AUX
            if self.out_from == FROM_AUX_TIMEOUT:
                value |= ST_TIMEOUT
        return value

    def _look(self) -> None:
        """A read that wants a byte: load one; if none is there, this read is an idle point
        (the input source may advance time or release input), then look once more."""
        self._refill(pull=True)
        if not self.obf:
            self._inputs.idle()
            self._refill(pull=True)

    # --- the output buffer ------------------------------------------------------------------
    def _refill(self, pull: bool) -> None:
        if self.obf:
            return
        if self.ctrl_queue:
            item = self.ctrl_queue.popleft()
            self._load(item & 0xFF, item & ~0xFF)
            return
        if self.ram[0] & CB_KBD_DISABLE:
            return                          # port 1's clock is held: the keyboard waits
        if not self.kbd_queue and pull:
            self._take_input()
        if self.kbd_queue:
            item = self.kbd_queue.popleft()
            self._load(item & 0xFF, item & ~0xFF)

    def _load(self, byte: int, source: int) -> None:
        self.out_byte, self.out_from, self.obf = byte, source, True

    def _answer(self, byte: int, source: int = FROM_CTRL) -> None:
        """A controller answer (or a byte it was told to place): ahead of the keyboard's."""
        if len(self.ctrl_queue) >= CTRL_QUEUE_BYTES:
            self.overruns += 1
            return
        self.ctrl_queue.append(byte | source)

    # --- the controller ---------------------------------------------------------------------
    def _command(self, cmd: int) -> None:
        self.commands += 1
        self.expect = 0
        if C_READ_RAM <= cmd < C_READ_RAM + RAM_SIZE:
            self._answer(self.ram[cmd - C_READ_RAM])
        elif C_WRITE_RAM <= cmd < C_WRITE_RAM + RAM_SIZE or \
                cmd in (C_WRITE_OUTPUT, C_WRITE_KBD_OUT, C_WRITE_AUX_OUT, C_WRITE_AUX):
            self.expect = cmd
        elif cmd == C_AUX_DISABLE:
            self.ram[0] |= CB_AUX_DISABLE
        elif cmd == C_AUX_ENABLE:
            self.ram[0] &= ~CB_AUX_DISABLE
        elif cmd in (C_AUX_TEST, C_KBD_TEST):
            self._answer(PORT_TEST_OK)
        elif cmd == C_SELF_TEST:
            self.sys_flag = True
            self._answer(SELF_TEST_OK)
        elif cmd == C_KBD_DISABLE:
            self.ram[0] |= CB_KBD_DISABLE
        elif cmd == C_KBD_ENABLE:
            self.ram[0] &= ~CB_KBD_DISABLE
        elif cmd == C_READ_INPUT:
            self._answer(INPUT_PORT)
        elif cmd == C_READ_OUTPUT:
            value = self.output_port & ~(OP_KBD_OBF | OP_AUX_OBF)
            if self.obf:
                value |= OP_AUX_OBF if self.out_from & PORT2 else OP_KBD_OBF
            self._answer(value)
        elif cmd == C_A20_OFF:
            self._set_output_port(self.output_port & ~OP_A20)
        elif cmd == C_A20_ON:
            self._set_output_port(self.output_port | OP_A20)
        elif cmd == C_READ_TEST:
            self._answer(0x00)
        elif cmd >= C_PULSE:
            if not cmd & OP_RESET:
                request_reset(f"8042 command {cmd:#04x} pulsed the reset line")
        else:
            self.unknown_commands += 1     # vendor commands: ignored, as QEMU does

    def _data(self, value: int) -> None:
        cmd, self.expect = self.expect, 0
        if C_WRITE_RAM <= cmd < C_WRITE_RAM + RAM_SIZE:
            self.ram[cmd - C_WRITE_RAM] = value
            if cmd == C_WRITE_RAM:
                self.sys_flag = bool(value & CB_SYS)
        elif cmd == C_WRITE_OUTPUT:
            self._set_output_port(value)
            if not value & OP_RESET:
                request_reset(f"8042 output port written {value:#04x}: reset line low")
        elif cmd == C_WRITE_KBD_OUT:
            self._answer(value, FROM_CTRL)
        elif cmd == C_WRITE_AUX_OUT:
            self._answer(value, FROM_AUX)
        elif cmd == C_WRITE_AUX:
            self.aux_writes += 1
            self._answer(AUX_NO_DEVICE, FROM_AUX_TIMEOUT)   # nothing on port 2
        else:
            self._keyboard_command(value)

    def _set_output_port(self, value: int) -> None:
        self.output_port = value & ~(OP_KBD_OBF | OP_AUX_OBF)
        self.a20 = bool(value & OP_A20)

    # --- the keyboard -----------------------------------------------------------------------
    @property
    def output_set(self) -> int:
        """The scancode set the guest sees: 1 through translation (or in set 1), else 2 (set 3
        is accepted but sends set-2 codes)."""
        return 1 if self.ram[0] & CB_XLATE or self.scancode_set == 1 else 2

    def _send(self, *data: int, source: int = FROM_KBD_ANSWER) -> None:
        """The keyboard sends bytes: its answers (the default) or a key's scancodes."""
        for byte in data:
            if len(self.kbd_queue) >= KBD_QUEUE_BYTES:
                self.overruns += 1
                continue
            self.kbd_queue.append(byte | source)
            self.last_sent = byte

    def _defaults(self) -> None:
        self.scancode_set = DEFAULT_SET
        self.typematic = DEFAULT_TYPEMATIC
        self.leds = 0
        self.kbd_queue.clear()             # the keyboard clears its output buffer

    def _keyboard_command(self, value: int) -> None:
        self.kbd_commands += 1
        cmd, self.kbd_expect = self.kbd_expect, 0
        translate = bool(self.ram[0] & CB_XLATE)
        if cmd == K_SET_LEDS:
            self.leds = value & 0x07
            self._send(ACK)
        elif cmd == K_TYPEMATIC:
            self.typematic = value & 0x7F
            self._send(ACK)
        elif cmd == K_SCANCODE_SET:
            if value == 0:
                current = self.scancode_set
                self._send(ACK, SET_TRANSLATED[current] if translate else current)
            elif value in (1, 2, 3):
                self.scancode_set = value
                self._send(ACK)
            else:
                self._send(RESEND)
        elif value in (K_SET_LEDS, K_TYPEMATIC, K_SCANCODE_SET):
            self.kbd_expect = value
            self._send(ACK)
        elif value == K_ECHO:
            self._send(ECHO)
        elif value == K_IDENTIFY:
            self._send(ACK, *(ID_BYTES_TRANSLATED if translate else ID_BYTES))
        elif value == K_ENABLE:
            self.kbd_queue.clear()
            self.scanning = True
            self._send(ACK)
        elif value == K_DISABLE:
            self._defaults()
            self.scanning = False
            self._send(ACK)
        elif value == K_DEFAULTS:
            self._defaults()
            self._send(ACK)
        elif K_SET3_FIRST <= value <= K_SET3_LAST:
            self._send(ACK)
        elif value == K_RESEND:
            self._send(self.last_sent)
        elif value == K_RESET:
            self._defaults()
            self.scanning = True
            self._send(ACK, BAT_OK)
        else:
            self._send(RESEND)

    # --- input bytes -> scancodes -----------------------------------------------------------
    def _next_byte(self) -> int | None:
        byte = self._inputs.key(KEYBOARD_INPUT)
        if byte is not None:
            self.keys += 1
        return byte

    def _take_input(self) -> None:
        """Turn input into one key press in the keyboard's queue (which is empty), if the
        keyboard is scanning. An escape sequence is read ahead only as far as input is there
        now: a partial one (ESC, ESC [ or ESC O with nothing after it) is plain keys at once,
        so a lone ESC is never held back. Terminals and scripts deliver a sequence whole; a
        pipe under the virtual clock releases one byte per idle point, so there an arrow's
        sequence arrives as the keys ESC, [, A (docs/devices.md)."""
        if not self.scanning:
            return
        while not self.kbd_queue:
            if self.held:
                self._continue_escape()
                continue
            byte = self._next_byte()
            if byte is None:
                return
            if byte == ESC:
                self.held.append(byte)
            else:
                self._press_byte(byte)

    def _continue_escape(self) -> None:
        """With an escape sequence's start held: finish it, or make its bytes plain keys."""
        byte = self._next_byte()
        if byte is None:
            self._flush_held()             # a lone ESC (or ESC [): plain keys
            return
        if len(self.held) == 1 and byte in ESCAPE_INTRODUCERS:
            self.held.append(byte)
            return
        if len(self.held) == 2 and byte in ESCAPE_FINALS:
            self.held.clear()
            self._send(*key_codes(ESCAPE_FINALS[byte], (), self.output_set), source=FROM_KBD)
            return
        # not a sequence we know: the keys held, then this byte afresh
        self._flush_held()
        if byte == ESC:
            self.held.append(byte)
        else:
            self._press_byte(byte)

    def _flush_held(self) -> None:
        held, self.held = bytes(self.held), bytearray()
        for byte in held:
            self._press_byte(byte)

    def _press_byte(self, byte: int) -> None:
        entry = BYTE_KEYS.get(byte)
        if entry is None:
            self.unmapped += 1
            return
        key, modifiers = entry
        self._send(*key_codes(key, modifiers, self.output_set), source=FROM_KBD)

    def stats(self) -> dict:
        return {"keys": self.keys, "scancodes": self.scancodes, "commands": self.commands,
                "keyboard_commands": self.kbd_commands, "unmapped": self.unmapped,
                "overruns": self.overruns, "a20": self.a20}
