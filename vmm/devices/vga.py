"""The VGA's text-mode registers (ports 0x3c0-0x3df, and 0x3b4/0x3b5/0x3ba), as a state machine.

The screen itself is guest RAM at 0xb8000 (80x25 cells of character + attribute); vmm reads it
from memory (vmm.screen). This device holds the registers kernels program around it, with the
values the VGA BIOS leaves in mode 3 (80x25 colour text), as under QEMU:

    0x3c0        attribute controller: index and data through one port, chosen by a flip-flop
                 (index first); reading 0x3da resets the flip-flop to "index". Read: the index.
    0x3c1        read: the attribute register selected by the index
    0x3c2        write: misc output; read: input status 0 (0)
    0x3c4/0x3c5  sequencer index / data (5 registers)
    0x3c6-0x3c9  DAC: pixel mask, read index (read: DAC state), write index, data (r, g, b
                 per entry, 6 bits each); stored, 256 entries
    0x3ca        read: feature control      0x3cc  read: misc output (reset 0x67)
    0x3ce/0x3cf  graphics controller index / data (9 registers)
    0x3d4/0x3d5  CRTC index / data (25 registers, 0x00-0x18)
    0x3da        read: input status 1; write: feature control

Only the cursor (CRTC 0x0a, 0x0b, 0x0e, 0x0f) and the start address (0x0c, 0x0d) mean something
to vmm; every other register is stored and reads back what was written. CRTC 0x11 bit 7
(protect) makes writes to CRTC 0x00-0x07 ignored, except 0x07 bit 4, as on a VGA.

Input status 1 (0x3da) has no clock behind it: its bits 3 (vertical retrace) and 0 (display
disabled) toggle together at every read, as QEMU's do: the first read gives 0x09, the next 0x00,
then 0x09, ... So a wait for retrace ("while (inb(0x3da) & 8); while (!(inb(0x3da) & 8));")
ends within two reads, and the same guest sees the same values on every run.

Misc output bit 0 selects where the CRTC and input status 1 answer: 1 (colour, the reset value)
at 0x3d4/0x3d5/0x3da, 0 (monochrome) at 0x3b4/0x3b5/0x3ba (`VgaText.mono`, a second device for
the range 0x3b4-0x3ba, sharing the registers). The set not selected reads 0xff and ignores
writes.
"""

from __future__ import annotations

from .bus import Device

COLS, ROWS = 80, 25
TEXT_BASE, TEXT_WINDOW = 0xB8000, 0x8000       # colour text memory: 0xb8000-0xbffff
PORT_BASE, PORT_COUNT = 0x3C0, 0x20            # 0x3c0-0x3df
MONO_BASE, MONO_COUNT = 0x3B4, 7              # 0x3b4-0x3ba

# offsets from 0x3c0
ATTR_INDEX, ATTR_READ, MISC_WRITE, VSE = 0x00, 0x01, 0x02, 0x03
SEQ_INDEX, SEQ_DATA = 0x04, 0x05
DAC_MASK, DAC_READ_INDEX, DAC_WRITE_INDEX, DAC_DATA = 0x06, 0x07, 0x08, 0x09
FEATURE_READ, MISC_READ = 0x0A, 0x0C
GC_INDEX, GC_DATA = 0x0E, 0x0F
CRTC_INDEX, CRTC_DATA, STATUS1 = 0x14, 0x15, 0x1A     # colour: 0x3d4, 0x3d5, 0x3da
MONO_CRTC_INDEX, MONO_CRTC_DATA, MONO_STATUS1 = 0x00, 0x01, 0x06   # offsets from 0x3b4

CRTC_CURSOR_START, CRTC_CURSOR_END = 0x0A, 0x0B
CRTC_START_HIGH, CRTC_START_LOW = 0x0C, 0x0D
CRTC_CURSOR_HIGH, CRTC_CURSOR_LOW = 0x0E, 0x0F
CRTC_VRETRACE_END, CRTC_OVERFLOW = 0x11, 0x07
CRTC_PROTECT = 0x80
CURSOR_DISABLE = 0x20
STATUS1_DISPLAY_DISABLED, STATUS1_VRETRACE = 0x01, 0x08
MISC_COLOR = 0x01
FLOATING = 0xFF                  # a port nothing drives reads all ones

# Mode 3 (80x25 colour text) as the VGA BIOS programs it.
RESET_MISC = 0x67
RESET_SEQ = bytes([0x03, 0x00, 0x03, 0x00, 0x02])
RESET_CRTC = bytes([0x5F, 0x4F, 0x50, 0x82, 0x55, 0x81, 0xBF, 0x1F, 0x00, 0x4F, 0x0D, 0x0E,
                    0x00, 0x00, 0x00, 0x00, 0x9C, 0x8E, 0x8F, 0x28, 0x1F, 0x96, 0xB9, 0xA3,
                    0xFF])
RESET_GC = bytes([0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0E, 0x00, 0xFF])
RESET_ATTR = bytes([0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3A, 0x3B,
                    0x3C, 0x3D, 0x3E, 0x3F, 0x0C, 0x00, 0x0F, 0x08, 0x00])


class VgaText(Device):
    name = "vga"

    def __init__(self):
        self.misc = RESET_MISC
        self.seq_index = 0
        self.seq = bytearray(RESET_SEQ)
        self.gc_index = 0
        self.gc = bytearray(RESET_GC)
        self.crtc_index = 0
        self.crtc = bytearray(RESET_CRTC)
        self.attr_index = 0           # with bit 5 (palette address source)
        self.attr = bytearray(RESET_ATTR)
        self.attr_flipflop = False    # False: the next 0x3c0 write is an index
        self.feature = 0
        self.vse = 1
        self.dac_mask = 0xFF
        self.dac = bytearray(256 * 3)
        self.dac_read_index = 0       # in components: entry * 3 + (0, 1, 2)
        self.dac_write_index = 0
        self.dac_state = 0            # 0x3c7 read: 0 after a write index, 3 after a read index
        self.status1 = 0
        self.status_reads = 0
        self.mono = VgaMonoPorts(self)

    # --- what vmm reads ------------------------------------------------------------------------
    @property
    def start_address(self) -> int:
        """CRTC 0x0c/0x0d: the cell shown at the top left, counted in cells from 0xb8000."""
        return (self.crtc[CRTC_START_HIGH] << 8) | self.crtc[CRTC_START_LOW]

    @property
    def screen_address(self) -> int:
        """The guest-physical address of the top-left cell shown: 0xb8000 plus the start
        address (in cells), within the 32 KiB text window (the 4000 bytes are then read
        contiguously; wrapping at the window's end is not modelled)."""
        return TEXT_BASE + (2 * self.start_address) % TEXT_WINDOW

    @property
    def cursor_location(self) -> int:
        """CRTC 0x0e/0x0f: the cursor's cell, counted from 0xb8000."""
        return (self.crtc[CRTC_CURSOR_HIGH] << 8) | self.crtc[CRTC_CURSOR_LOW]

    @property
    def cursor_position(self) -> tuple[int, int]:
        """(row, col) of the cursor relative to the start address (rows may be outside 0-24)."""
        return divmod(self.cursor_location - self.start_address, COLS)

    @property
    def cursor_disabled(self) -> bool:
        """CRTC 0x0a bit 5: the cursor is switched off."""
        return bool(self.crtc[CRTC_CURSOR_START] & CURSOR_DISABLE)

    def cursor(self) -> tuple[int, int] | None:
        """The visible cursor's (row, col), or None if it is disabled or off the screen."""
        row, col = self.cursor_position
        if self.cursor_disabled or not 0 <= row < ROWS:
            return None
        return row, col

    @property
    def color(self) -> bool:
        return bool(self.misc & MISC_COLOR)

    # --- registers -----------------------------------------------------------------------------
    def _crtc_read(self) -> int:
        return self.crtc[self.crtc_index] if self.crtc_index < len(self.crtc) else 0

    def _crtc_write(self, value: int) -> None:
        index = self.crtc_index
        if index >= len(self.crtc):
            return
        if self.crtc[CRTC_VRETRACE_END] & CRTC_PROTECT and index <= 7:
            if index == CRTC_OVERFLOW:       # line compare bit 8 stays writable
                self.crtc[index] = (self.crtc[index] & ~0x10) | (value & 0x10)
            return
        self.crtc[index] = value

    def _status1_read(self) -> int:
        self.attr_flipflop = False
        self.status_reads += 1
        self.status1 ^= STATUS1_VRETRACE | STATUS1_DISPLAY_DISABLED
        return self.status1

    def read(self, offset: int, size: int) -> int:
        value = 0
        for i in range(size):                # a wide IN reads the following ports too
            byte = self._read8(offset + i) if offset + i < 0x20 else FLOATING
            value |= byte << (8 * i)
        return value

    def _read8(self, offset: int) -> int:
        if offset == ATTR_INDEX:
            return self.attr_index
        if offset == ATTR_READ:
            i = self.attr_index & 0x1F
            return self.attr[i] if i < len(self.attr) else 0
        if offset == MISC_WRITE:
            return 0                          # input status 0
        if offset == VSE:
            return self.vse
        if offset == SEQ_INDEX:
            return self.seq_index
        if offset == SEQ_DATA:
            return self.seq[self.seq_index] if self.seq_index < len(self.seq) else 0
        if offset == DAC_MASK:
            return self.dac_mask
        if offset == DAC_READ_INDEX:
            return self.dac_state
        if offset == DAC_WRITE_INDEX:
            return self.dac_write_index // 3
        if offset == DAC_DATA:
            value = self.dac[self.dac_read_index]
            self.dac_read_index = (self.dac_read_index + 1) % len(self.dac)
            return value
        if offset == FEATURE_READ:
            return self.feature
        if offset == MISC_READ:
            return self.misc
        if offset == GC_INDEX:
            return self.gc_index
        if offset == GC_DATA:
            return self.gc[self.gc_index] if self.gc_index < len(self.gc) else 0
        if not self.color:
            return FLOATING                   # colour addresses are off in monochrome
        if offset == CRTC_INDEX:
            return self.crtc_index
        if offset == CRTC_DATA:
            return self._crtc_read()
        if offset == STATUS1:
            return self._status1_read()
        return FLOATING

    def write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):                # a wide OUT writes the following ports too
            if offset + i < 0x20:
                self._write8(offset + i, (value >> (8 * i)) & 0xFF)

    def _write8(self, offset: int, value: int) -> None:
        if offset == ATTR_INDEX:
            if self.attr_flipflop:
                i = self.attr_index & 0x1F
                if i < len(self.attr):
                    self.attr[i] = value
            else:
                self.attr_index = value & 0x3F
            self.attr_flipflop = not self.attr_flipflop
        elif offset == MISC_WRITE:
            self.misc = value
        elif offset == VSE:
            self.vse = value & 1
        elif offset == SEQ_INDEX:
            self.seq_index = value & 0x07
        elif offset == SEQ_DATA:
            if self.seq_index < len(self.seq):
                self.seq[self.seq_index] = value
        elif offset == DAC_MASK:
            self.dac_mask = value
        elif offset == DAC_READ_INDEX:
            self.dac_read_index, self.dac_state = value * 3, 3
        elif offset == DAC_WRITE_INDEX:
            self.dac_write_index, self.dac_state = value * 3, 0
        elif offset == DAC_DATA:
            self.dac[self.dac_write_index] = value & 0x3F
            self.dac_write_index = (self.dac_write_index + 1) % len(self.dac)
        elif offset == GC_INDEX:
            self.gc_index = value & 0x0F
        elif offset == GC_DATA:
            if self.gc_index < len(self.gc):
                self.gc[self.gc_index] = value
        elif not self.color:
            return
        elif offset == CRTC_INDEX:
            self.crtc_index = value & 0x1F
        elif offset == CRTC_DATA:
            self._crtc_write(value)
        elif offset == STATUS1:
            self.feature = value

    def state(self) -> dict:
        out = super().state()
        out.pop("mono", None)                 # a view of this device, not state of its own
        return out

    def stats(self) -> dict:
        return {"status_reads": self.status_reads}


class VgaMonoPorts(Device):
    """The monochrome addresses of a `VgaText`, for the range 0x3b4-0x3ba (offsets 0, 1 and 6
    are 0x3b4, 0x3b5 and 0x3ba): they answer only while misc output bit 0 is clear."""

    name = "vga-mono"

    def __init__(self, vga: VgaText):
        self._vga = vga

    def read(self, offset: int, size: int) -> int:
        value = 0
        for i in range(size):
            value |= self._read8(offset + i) << (8 * i)
        return value

    def _read8(self, offset: int) -> int:
        vga = self._vga
        if vga.color:
            return FLOATING
        if offset == MONO_CRTC_INDEX:
            return vga.crtc_index
        if offset == MONO_CRTC_DATA:
            return vga._crtc_read()
        if offset == MONO_STATUS1:
            return vga._status1_read()
        return FLOATING

    def write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):                # outw 0x3b4: index in AL, data in AH
            self._write8(offset + i, (value >> (8 * i)) & 0xFF)

    def _write8(self, offset: int, value: int) -> None:
        vga = self._vga
        if vga.color:
            return
        if offset == MONO_CRTC_INDEX:
            vga.crtc_index = value & 0x1F
        elif offset == MONO_CRTC_DATA:
            vga._crtc_write(value)
        elif offset == MONO_STATUS1:
            vga.feature = value

    def state(self) -> dict:
        return {}
