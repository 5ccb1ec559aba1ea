"""The VGA text screen as data: 80x25 cells of (character, attribute), read from guest RAM.

The screen is the 4000 bytes at 0xb8000 (`TEXT_BASE`): for each cell, row by row, the character
byte then the attribute byte. This module knows nothing of devices or memory; the machine hands
it the bytes (and the cursor from vmm.devices.vga). Everything here is pure and deterministic.

Characters are code page 437, as a VGA's ROM font draws them: 0x20-0x7e are ASCII, 0x80-0xff
what Python's 'cp437' codec gives, and the control bytes 0x01-0x1f and 0x7f their CP437 glyphs
(0x01 is a smiley, 0x03 a heart, 0x10 a right-pointing triangle, 0x7f a house...). 0x00 draws
nothing and shows as a space; 0xff (U+00A0, no-break space) is blank too but stays U+00A0.

An attribute byte: bits 0-3 the foreground colour, bits 4-7 the background colour (bit 7 is a
bright background: vmm does not blink), in the 16 standard VGA colours (`PALETTE`).

- `Screen.from_bytes(b, cursor=None)`, `.rows()`, `.lines()`, `.text()` (the `--screen final`
  form), `.is_blank()`, `.digest()`;
- `diff_rows(a, b)`: the rows that differ; `changed_rows(prev, cur)` / `apply_rows(screen,
  rows)`: the rows that changed in the form of a `screen` trace record ([row, text,
  run-length attributes], as vmm.screenlog writes them), and its inverse;
- `render_png(screen, out)`: an image with the bundled font (vmm/data/cp437-8x13.bin, from the
  public-domain X11 misc-fixed 8x13 font; see docs/screen.md). Needs Pillow.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

COLS, ROWS = 80, 25
CELLS = COLS * ROWS
SIZE = CELLS * 2                     # 4000 bytes
TEXT_BASE = 0xB8000
BLANK_CHARS = (0x00, 0x20)

# The glyphs of the CP437 control range (0x00-0x1f) as a VGA draws them, and 0x7f.
_CONTROL_GLYPHS = (" \u263a\u263b\u2665\u2666\u2663\u2660\u2022\u25d8\u25cb\u25d9\u2642\u2640"
                   "\u266a\u266b\u263c\u25ba\u25c4\u2195\u203c\u00b6\u00a7\u25ac\u21a8\u2191"
                   "\u2193\u2192\u2190\u221f\u2194\u25b2\u25bc")
CP437 = tuple(_CONTROL_GLYPHS[b] if b < 0x20 else "\u2302" if b == 0x7F
              else bytes([b]).decode("cp437") for b in range(256))
_TO_CP437 = {ch: b for b, ch in enumerate(CP437) if b}   # ' ' is 0x20, not 0x00

# The 16 colours of VGA text mode (the BIOS's default palette; colour 6 is brown).
PALETTE = (
    (0x00, 0x00, 0x00), (0x00, 0x00, 0xAA), (0x00, 0xAA, 0x00), (0x00, 0xAA, 0xAA),
    (0xAA, 0x00, 0x00), (0xAA, 0x00, 0xAA), (0xAA, 0x55, 0x00), (0xAA, 0xAA, 0xAA),
    (0x55, 0x55, 0x55), (0x55, 0x55, 0xFF), (0x55, 0xFF, 0x55), (0x55, 0xFF, 0xFF),
    (0xFF, 0x55, 0x55), (0xFF, 0x55, 0xFF), (0xFF, 0xFF, 0x55), (0xFF, 0xFF, 0xFF),
)

FONT_FILE = "cp437-8x13.bin"
GLYPH_W, GLYPH_H = 8, 13             # one byte per glyph row, bit 7 the leftmost pixel
CURSOR_ROWS = 2                      # the PNG draws the cursor as the cell's last two rows


def decode_cp437(data: bytes) -> str:
    """Bytes as the VGA shows them (control bytes as their glyphs, NUL as a space)."""
    return "".join(CP437[b] for b in data)


def encode_cp437(text: str) -> bytes:
    """The inverse of decode_cp437 (a space is 0x20); a character CP437 lacks is an error."""
    try:
        return bytes(_TO_CP437[ch] for ch in text)
    except KeyError as e:
        raise ValueError(f"{e.args[0]!r} is not a CP437 character") from None


@dataclass(frozen=True)
class Screen:
    """One sample of the text screen: `cells` is the 4000 bytes (char, attr per cell) and
    `cursor` the visible cursor's (row, col), or None."""

    cells: bytes
    cursor: tuple[int, int] | None = None

    def __post_init__(self):
        if len(self.cells) != SIZE:
            raise ValueError(f"a text screen is {SIZE} bytes, not {len(self.cells)}")

    @classmethod
    def from_bytes(cls, data: bytes, cursor: tuple[int, int] | None = None) -> "Screen":
        """From the 4000 bytes at 0xb8000 (a longer buffer: its first 4000 bytes)."""
        if len(data) < SIZE:
            raise ValueError(f"a text screen is {SIZE} bytes, not {len(data)}")
        return cls(bytes(data[:SIZE]), tuple(cursor) if cursor is not None else None)

    @classmethod
    def blank(cls, attr: int = 0x07) -> "Screen":
        """A cleared screen: spaces in `attr` (0x07, light grey on black, as the BIOS clears)."""
        return cls(bytes([0x20, attr]) * CELLS)

    # --- cells --------------------------------------------------------------------------------
    def char(self, row: int, col: int) -> int:
        return self.cells[(row * COLS + col) * 2]

    def attr(self, row: int, col: int) -> int:
        return self.cells[(row * COLS + col) * 2 + 1]

    def row_chars(self, row: int) -> bytes:
        return self.cells[row * COLS * 2:(row + 1) * COLS * 2:2]

    def row_attrs(self, row: int) -> bytes:
        return self.cells[row * COLS * 2 + 1:(row + 1) * COLS * 2:2]

    # --- text -----------------------------------------------------------------------------------
    def rows(self) -> list[str]:
        """The 25 rows, 80 characters each, decoded as the VGA draws them."""
        return [decode_cp437(self.row_chars(r)) for r in range(ROWS)]

    def lines(self) -> list[str]:
        """The rows with trailing spaces trimmed and trailing empty rows dropped."""
        out = [row.rstrip(" ") for row in self.rows()]
        while out and not out[-1]:
            out.pop()
        return out

    def text(self) -> str:
        """The `--screen final` form: lines() each ending in a newline ("" for a blank screen)."""
        return "".join(line + "\n" for line in self.lines())

    def is_blank(self) -> bool:
        """Every cell a space or NUL, whatever its attribute."""
        return not self.cells[::2].translate(None, bytes(BLANK_CHARS))

    def digest(self) -> str:
        """sha256 of the 4000 bytes: equal screens, equal digests."""
        return hashlib.sha256(self.cells).hexdigest()


def diff_rows(a: Screen, b: Screen, attrs: bool = False) -> list[tuple[int, str, str]]:
    """(row, a's text, b's text) for each row whose text differs (with attrs=True: or whose
    attributes differ), texts with trailing spaces trimmed, rows counted from 0."""
    out = []
    for r, (ta, tb) in enumerate(zip(a.rows(), b.rows())):
        if ta != tb or attrs and a.row_attrs(r) != b.row_attrs(r):
            out.append((r, ta.rstrip(" "), tb.rstrip(" ")))
    return out


def encode_attrs(attrs: bytes) -> str:
    """A row's attributes run-length encoded, as screen trace records hold them:
    "1f*11,07*69" is 11 cells of 0x1f, then 69 of 0x07."""
    runs, start = [], 0
    for i in range(1, len(attrs) + 1):
        if i == len(attrs) or attrs[i] != attrs[start]:
            runs.append(f"{attrs[start]:02x}*{i - start}")
            start = i
    return ",".join(runs)


def decode_attrs(text: str) -> bytes:
    """The inverse of encode_attrs, for exactly one row (80 cells); ValueError otherwise."""
    if not isinstance(text, str) or len(text) > 6 * COLS:
        raise ValueError("attributes are not a run-length string of one row")
    out = bytearray()
    for run in text.split(","):
        attr, sep, count = run.partition("*")
        if not (sep and len(attr) == 2 and count.isdigit() and 0 < int(count) <= COLS):
            raise ValueError(f"bad attribute run {run!r}")
        out += bytes.fromhex(attr) * int(count)
    if len(out) != COLS:
        raise ValueError(f"attributes for {len(out)} cells, not {COLS}")
    return bytes(out)


def row_record(screen: Screen, row: int) -> tuple[int, str, str]:
    """(row, text with trailing spaces trimmed, run-length attributes): one row of a screen
    trace record."""
    return row, decode_cp437(screen.row_chars(row)).rstrip(" "), \
        encode_attrs(screen.row_attrs(row))


def changed_rows(prev: Screen | None, cur: Screen) -> list[tuple[int, str, str]]:
    """The rows of `cur` whose cells differ from `prev`'s (every row if prev is None), as
    [(row, text, attributes)] (row_record): the rows of a `screen` trace record. Plain data,
    JSON-ready, the same for the same screens."""
    return [row_record(cur, r) for r in range(ROWS)
            if prev is None or prev.cells[r * COLS * 2:(r + 1) * COLS * 2]
            != cur.cells[r * COLS * 2:(r + 1) * COLS * 2]]


def apply_rows(screen: Screen | None, rows, cursor=None) -> Screen:
    """The screen that `rows` (from changed_rows, or a trace record's rows as JSON lists) make
    of `screen` (None: a screen of zero bytes, as RAM starts). Trimmed spaces come back as
    spaces. Raises ValueError on a malformed row."""
    cells = bytearray(screen.cells if screen is not None else bytes(SIZE))
    for entry in rows:
        try:
            row, text, attrs_text = entry
            if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < ROWS:
                raise ValueError("the row is not 0-24")
            chars = encode_cp437(text)
            if len(chars) > COLS:
                raise ValueError("more than 80 characters")
            attrs = decode_attrs(attrs_text)
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad screen row {entry!r:.60}: {e}") from None
        base = row * COLS * 2
        cells[base:base + COLS * 2:2] = chars.ljust(COLS, b" ")
        cells[base + 1:base + COLS * 2:2] = attrs
    return Screen(bytes(cells), cursor)


# --- the PNG ------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def load_font() -> bytes:
    """The bundled CP437 font: 256 glyphs of GLYPH_H bytes (bit 7 = leftmost pixel)."""
    from importlib.resources import files
    data = files("vmm").joinpath("data", FONT_FILE).read_bytes()
    if len(data) != 256 * GLYPH_H:
        raise ValueError(f"vmm/data/{FONT_FILE} is {len(data)} bytes, not {256 * GLYPH_H}")
    return data


def glyph(byte: int) -> bytes:
    """The GLYPH_H row bytes of CP437 character `byte`."""
    return load_font()[byte * GLYPH_H:(byte + 1) * GLYPH_H]


def render_image(screen: Screen, scale: int = 1):
    """A Pillow RGB image of the screen: 640x325 pixels (8x13 per cell) times `scale`."""
    from PIL import Image
    font = load_font()
    spans: dict[tuple[int, int, int], bytes] = {}

    def span(bits: int, fg: int, bg: int) -> bytes:
        key = (bits, fg, bg)
        if key not in spans:
            spans[key] = bytes(fg if bits & (0x80 >> i) else bg for i in range(GLYPH_W))
        return spans[key]

    width = COLS * GLYPH_W
    pixels = bytearray(width * ROWS * GLYPH_H)
    cells = screen.cells
    for row in range(ROWS):
        for col in range(COLS):
            ch, attr = cells[(row * COLS + col) * 2], cells[(row * COLS + col) * 2 + 1]
            fg, bg = attr & 0x0F, attr >> 4
            rows = font[ch * GLYPH_H:(ch + 1) * GLYPH_H]
            if screen.cursor == (row, col):
                rows = rows[:GLYPH_H - CURSOR_ROWS] + b"\xff" * CURSOR_ROWS
            at = row * GLYPH_H * width + col * GLYPH_W
            for bits in rows:
                pixels[at:at + GLYPH_W] = span(bits, fg, bg)
                at += width
    image = Image.frombytes("P", (width, ROWS * GLYPH_H), bytes(pixels))
    image.putpalette([c for rgb in PALETTE for c in rgb])
    image = image.convert("RGB")
    if scale != 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    return image


def render_png(screen: Screen, out, scale: int = 1) -> None:
    """Write the screen as a PNG to `out`, a path or a binary file object."""
    render_image(screen, scale).save(out, format="PNG")
