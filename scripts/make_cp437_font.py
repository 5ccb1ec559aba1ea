#!/usr/bin/env python3
"""Regenerate vmm/data/cp437-8x13.bin, the font vmm draws text screens with (vmm.screen).

Source: the X11 "misc-fixed" 8x13 font (-misc-fixed-medium-r-normal--13-120-75-75-c-80-iso10646-1)
from Markus Kuhn's ucs-fonts, which is public domain ("Public domain font. Share and enjoy.",
font-misc-misc/COPYING). Debian ships it in the `xfonts-base` package as
/usr/share/fonts/X11/misc/8x13.pcf.gz:

    apt-get install xfonts-base
    python3 scripts/make_cp437_font.py [FONT.pcf.gz] [-o vmm/data/cp437-8x13.bin]

The output is 256 glyphs of 13 bytes each, in CP437 order (glyph n is CP437 byte n, looked up
by its Unicode code point, vmm.screen.CP437), one byte per pixel row with bit 7 the leftmost
pixel, every glyph placed in the 8x13 cell by the font's metrics (baseline 11 rows down). 0x00
and 0xff are blank. A code point the font lacks is an error.

This is a small reader of the PCF format (the tables it needs: metrics, bitmaps, encodings,
accelerators), written from the format's description in the X.Org documentation.
"""

from __future__ import annotations

import argparse
import gzip
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmm.screen import CP437, GLYPH_H, GLYPH_W  # noqa: E402

DEFAULT_FONT = "/usr/share/fonts/X11/misc/8x13.pcf.gz"
DEFAULT_OUT = ROOT / "vmm" / "data" / "cp437-8x13.bin"

PCF_ACCELERATORS, PCF_METRICS, PCF_BITMAPS = 1 << 1, 1 << 2, 1 << 3
PCF_BDF_ENCODINGS, PCF_BDF_ACCELERATORS = 1 << 5, 1 << 8
PCF_BYTE_MASK, PCF_BIT_MASK, PCF_COMPRESSED_METRICS = 1 << 2, 1 << 3, 0x100
NO_GLYPH = 0xFFFF


class PcfFont:
    def __init__(self, data: bytes):
        if data[:4] != b"\x01fcp":
            raise ValueError("not a PCF font")
        (count,) = struct.unpack_from("<i", data, 4)
        self.data = data
        self.tables = {}
        for i in range(count):
            kind, fmt, size, offset = struct.unpack_from("<iiii", data, 8 + 16 * i)
            self.tables[kind] = (fmt, offset)
        self.metrics = self._metrics()
        self.bitmaps = self._bitmaps()
        self.encoding = self._encoding()
        self.ascent = self._ascent()

    def _table(self, kind: int) -> tuple[int, int, str]:
        """(format, offset just past the format word, struct byte-order prefix)."""
        fmt, offset = self.tables[kind]
        (fmt2,) = struct.unpack_from("<i", self.data, offset)
        return fmt2, offset + 4, ">" if fmt2 & PCF_BYTE_MASK else "<"

    def _metrics(self) -> list[tuple[int, int, int, int, int]]:
        fmt, at, bo = self._table(PCF_METRICS)
        out = []
        if fmt & PCF_COMPRESSED_METRICS:
            (n,) = struct.unpack_from(bo + "h", self.data, at)
            at += 2
            for i in range(n):
                out.append(tuple(b - 0x80 for b in self.data[at + 5 * i:at + 5 * i + 5]))
        else:
            (n,) = struct.unpack_from(bo + "i", self.data, at)
            at += 4
            for i in range(n):
                out.append(struct.unpack_from(bo + "hhhhh", self.data, at + 12 * i))
        return out          # (left bearing, right bearing, width, ascent, descent)

    def _bitmaps(self) -> list[bytes]:
        fmt, at, bo = self._table(PCF_BITMAPS)
        (n,) = struct.unpack_from(bo + "i", self.data, at)
        offsets = struct.unpack_from(bo + f"{n}i", self.data, at + 4)
        sizes = struct.unpack_from(bo + "4i", self.data, at + 4 + 4 * n)
        base = at + 4 + 4 * n + 16
        self.row_pad = 1 << (fmt & 3)
        self.msbit_first = bool(fmt & PCF_BIT_MASK)
        self.scan_unit = 1 << ((fmt >> 4) & 3)
        self.msbyte_first = bool(fmt & PCF_BYTE_MASK)
        total = sizes[fmt & 3]
        blob = self.data[base:base + total]
        ends = list(offsets[1:]) + [total]
        return [blob[o:e] for o, e in zip(offsets, ends)]

    def _encoding(self) -> dict[int, int]:
        fmt, at, bo = self._table(PCF_BDF_ENCODINGS)
        min2, max2, min1, max1, _default = struct.unpack_from(bo + "5h", self.data, at)
        cols = max2 - min2 + 1
        n = cols * (max1 - min1 + 1)
        indices = struct.unpack_from(bo + f"{n}H", self.data, at + 10)
        out = {}
        for i, glyph in enumerate(indices):
            if glyph != NO_GLYPH:
                out[((min1 + i // cols) << 8) | (min2 + i % cols)] = glyph
        return out

    def _ascent(self) -> int:
        kind = PCF_BDF_ACCELERATORS if PCF_BDF_ACCELERATORS in self.tables else PCF_ACCELERATORS
        fmt, at, bo = self._table(kind)
        (ascent,) = struct.unpack_from(bo + "i", self.data, at + 8)
        return ascent

    def _row_bits(self, raw: bytes) -> int:
        """A bitmap row as an int whose bit (width-1-x) is pixel x."""
        if self.scan_unit > 1 and self.msbyte_first != self.msbit_first:
            unit = self.scan_unit     # bytes within a scan unit are in the other order
            raw = b"".join(raw[i:i + unit][::-1] for i in range(0, len(raw), unit))
        if not self.msbit_first:
            raw = bytes(int(f"{b:08b}"[::-1], 2) for b in raw)
        return int.from_bytes(raw, "big")

    def cell(self, codepoint: int, width: int, height: int) -> list[int]:
        """The glyph for `codepoint` in a width x height cell: one int per row, bit
        (width-1) the leftmost pixel."""
        if codepoint not in self.encoding:
            raise KeyError(f"the font has no glyph for U+{codepoint:04X}")
        index = self.encoding[codepoint]
        left, right, _, ascent, descent = self.metrics[index]
        bitmap = self.bitmaps[index]
        stride = ((right - left + 7) // 8 + self.row_pad - 1) // self.row_pad * self.row_pad
        rows = [0] * height
        for r in range(ascent + descent):
            y = self.ascent - ascent + r
            raw = bitmap[r * stride:(r + 1) * stride]
            bits = self._row_bits(raw) >> (stride * 8 - (right - left))
            if not 0 <= y < height:
                if bits:
                    raise ValueError(f"U+{codepoint:04X} does not fit the {width}x{height} cell")
                continue
            shift = width - left - (right - left)
            rows[y] = (bits << shift if shift >= 0 else bits >> -shift) & ((1 << width) - 1)
        return rows


def build(font: PcfFont) -> bytes:
    out = bytearray()
    for byte, ch in enumerate(CP437):
        if byte in (0x00, 0xFF) or ch == " ":
            out += bytes(GLYPH_H)
            continue
        out += bytes(font.cell(ord(ch), GLYPH_W, GLYPH_H))
    return bytes(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("font", nargs="?", default=DEFAULT_FONT, help=f"default {DEFAULT_FONT}")
    ap.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    raw = Path(args.font).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        data = build(PcfFont(raw))
    except (ValueError, KeyError, struct.error) as e:
        print(f"make_cp437_font: {args.font}: {e}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(data)
    print(f"wrote {args.output} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
