"""vmm.screen: the 80x25 text screen as rows, text, diffs, trace records and PNG pixels."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from vmm.screen import (CP437, GLYPH_H, GLYPH_W, PALETTE, SIZE, Screen, apply_rows,
                        changed_rows, decode_attrs, decode_cp437, diff_rows, encode_attrs,
                        encode_cp437, glyph, load_font, render_image, render_png)


def screen_with(cells: dict[tuple[int, int], tuple[int, int]], fill=(0x20, 0x07),
                cursor=None) -> Screen:
    data = bytearray(bytes(fill) * 2000)
    for (row, col), (ch, attr) in cells.items():
        data[(row * 80 + col) * 2:(row * 80 + col) * 2 + 2] = bytes([ch, attr])
    return Screen.from_bytes(bytes(data), cursor)


def put(text: str | bytes, row: int = 0, col: int = 0, attr: int = 0x07) -> dict:
    """Cells for `text`: CP437 bytes, or a str of the characters the screen shows."""
    data = text if isinstance(text, bytes) else encode_cp437(text)
    return {(row, col + i): (b, attr) for i, b in enumerate(data)}


# --- rows and text -----------------------------------------------------------------------------
def test_rows_are_25_by_80():
    rows = Screen.blank().rows()
    assert len(rows) == 25 and all(len(r) == 80 for r in rows)


def test_from_bytes_rejects_short_buffers_and_takes_the_first_4000():
    with pytest.raises(ValueError, match="4000"):
        Screen.from_bytes(b"\x41\x07" * 10)
    s = Screen.from_bytes(b"\x41\x07" * 2000 + b"\x42\x07" * 10)
    assert s.rows()[24] == "A" * 80


def test_rows_decode_cp437_with_control_glyphs():
    s = screen_with(put(b"\x01\x03\x10\x7f") | put(b"\xc9\xcd\xbb", row=1)
                    | put(b"\xe1\xfb", row=2))
    rows = s.rows()
    assert rows[0].startswith("☺♥►⌂")
    assert rows[1].startswith("╔═╗")
    assert rows[2].startswith("ß√")


def test_nul_shows_as_a_space():
    s = Screen.from_bytes(bytes(SIZE))
    assert s.rows()[0] == " " * 80 and s.is_blank()


def test_cp437_table_is_a_bijection_except_nul():
    assert len(CP437) == 256 and len(set(CP437)) == 255
    assert decode_cp437(bytes(range(1, 256))).encode("utf-8")
    assert encode_cp437(decode_cp437(bytes(range(1, 256)))) == bytes(range(1, 256))
    assert CP437[0x00] == CP437[0x20] == " " and CP437[0xFF] == "\u00a0"
    with pytest.raises(ValueError):
        encode_cp437("€")


def test_text_trims_trailing_blanks_and_trailing_empty_rows():
    s = screen_with(put("Hello  ", row=0) | put("world", row=2, col=3))
    assert s.lines() == ["Hello", "", "   world"]
    assert s.text() == "Hello\n\n   world\n"


def test_text_of_a_blank_screen_is_empty():
    assert Screen.blank(0x1F).text() == "" and Screen.blank().lines() == []


def test_is_blank_ignores_attributes_only():
    assert Screen.blank(0x4F).is_blank()
    assert screen_with({(0, 0): (0x00, 0x70)}).is_blank()
    assert not screen_with({(24, 79): (0xDB, 0x00)}).is_blank()   # a full block, even black
    assert not screen_with({(3, 3): (0xFF, 0x07)}).is_blank()     # 0xff is not space or NUL


def test_cells_and_digest():
    s = screen_with(put("A", row=5, col=7, attr=0x1E))
    assert (s.char(5, 7), s.attr(5, 7)) == (0x41, 0x1E)
    assert s.digest() == screen_with(put("A", row=5, col=7, attr=0x1E)).digest()
    assert s.digest() != Screen.blank().digest()


# --- diffs and trace records --------------------------------------------------------------------
def test_diff_rows_lists_the_differing_rows():
    a = screen_with(put("same", row=0) | put("old", row=3))
    b = screen_with(put("same", row=0) | put("new text", row=3) | put("x", row=24))
    assert diff_rows(a, b) == [(3, "old", "new text"), (24, "", "x")]
    assert diff_rows(a, a) == []


def test_diff_rows_with_attrs_reports_colour_only_changes():
    a = screen_with(put("hi", attr=0x07))
    b = screen_with(put("hi", attr=0x4F))
    assert diff_rows(a, b) == []
    assert diff_rows(a, b, attrs=True) == [(0, "hi", "hi")]


def test_changed_rows_is_the_screen_record_form():
    prev = Screen.blank()
    cur = screen_with(put("OK", row=1, attr=0x07) | put("R", row=2, col=79, attr=0x4F))
    rows = changed_rows(prev, cur)
    assert rows == [(1, "OK", "07*80"), (2, " " * 79 + "R", "07*79,4f*1")]
    assert changed_rows(prev, cur) == rows                  # deterministic
    assert changed_rows(cur, cur) == []
    assert json.loads(json.dumps(rows)) == [list(r) for r in rows]


def test_changed_rows_from_nothing_lists_every_row():
    assert [r for r, _, _ in changed_rows(None, Screen.blank())] == list(range(25))


def test_changed_rows_match_the_screen_log_of_a_run():
    """vmm.screenlog (what the machine records) and vmm.screen give the same rows."""
    from vmm.screenlog import ScreenLog
    memory = bytearray(0x1000) + bytearray(b"\x20\x07" * 2000)
    log, seen = ScreenLog(memory, 0x1000, SIZE), []
    log.on_change = lambda n, rows: seen.append(rows)
    before = Screen.from_bytes(memory[0x1000:])
    memory[0x1000:0x1000 + 12] = b"H\x1fi\x1f!\x4e\x00\x07\x1b\x07\x01\x07"   # ESC, 0x01
    memory[0x1000 + 160 * 24 + 158] = ord("z")
    log.sample(1)
    after = Screen.from_bytes(memory[0x1000:])
    assert [tuple(r) for r in seen[0]] == changed_rows(before, after)
    assert seen[0][0][1] == "Hi! ←☺"                        # glyphs, never control characters


def test_the_live_panel_draws_glyphs_not_control_characters():
    from vmm.screen_panel import render_rows
    cells = bytearray(b"\x20\x07" * 2000)
    cells[0:6] = b"\x1b\x07\x0a\x07\x07\x07"                    # ESC, newline, bell
    row = render_rows(bytes(cells))[0]
    assert "←◙•" in row and "\n" not in row and "\x07" not in row
    assert row.count("\x1b") == 2                           # only the colour and reset SGRs


def test_encode_and_decode_attrs():
    attrs = bytes([0x1F] * 11 + [0x07] * 69)
    assert encode_attrs(attrs) == "1f*11,07*69"
    assert decode_attrs("1f*11,07*69") == attrs


@pytest.mark.parametrize("text", ["07*79", "07*81", "07*40,07", "7*80", "zz*80", "07*0,07*80",
                                  "07*-1,07*81", "", "07*80," , 5, "07*1," * 200])
def test_decode_attrs_refuses_malformed_runs(text):
    with pytest.raises(ValueError):
        decode_attrs(text)


def test_apply_rows_rebuilds_the_screen():
    prev = Screen.blank()
    cur = screen_with(put("╔═╗ ☺ 100%", row=0, attr=0x1F)
                      | put("tail", row=24, col=76, attr=0x02)
                      | {(7, 0): (0x41, 0x70), (7, 1): (0x42, 0x07)})
    rows = changed_rows(prev, cur)
    assert apply_rows(prev, rows) == cur
    assert apply_rows(prev, json.loads(json.dumps(rows))) == cur


@pytest.mark.parametrize("entry", [(25, "x", "07*80"), (0, "x" * 81, "07*80"), (0, "x", "07*79"),
                                   (0, "€", "07*80"), ("0", "x", "07*80"), (True, "x", "07*80"),
                                   (0, "x"), "x", 7, (0, 5, "07*80")])
def test_apply_rows_refuses_malformed_rows(entry):
    with pytest.raises(ValueError, match="bad screen row"):
        apply_rows(None, [entry])


# --- the font and the PNG -----------------------------------------------------------------------
def test_font_has_256_glyphs_of_13_rows():
    assert len(load_font()) == 256 * GLYPH_H


def test_glyph_A_and_box_drawing_pixels():
    rows_a = [f"{r:08b}" for r in glyph(ord("A"))]
    assert rows_a[2:11] == ["00011000", "00100100", "01000010", "01000010", "01000010",
                            "01111110", "01000010", "01000010", "01000010"]
    assert rows_a[:2] == rows_a[11:] == ["00000000"] * 2
    double_h = [f"{r:08b}" for r in glyph(0xCD)]             # ═ reaches both cell edges
    assert double_h.count("11111111") == 2 and set(double_h) == {"00000000", "11111111"}
    vertical = glyph(0xB3)                                   # │ runs the full cell height
    assert len(set(vertical)) == 1 and vertical[0] != 0
    assert glyph(0xDB) == b"\xff" * GLYPH_H and glyph(0x00) == glyph(0x20) == bytes(GLYPH_H)


def test_png_cell_colours_and_glyph_pixels(tmp_path):
    s = screen_with(put("A", row=0, col=0, attr=0x1E)            # yellow on blue
                    | put(b"\xcd", row=2, col=5, attr=0xC0)       # black on bright red (bit 7)
                    | put(" ", row=24, col=79, attr=0x20))       # green background
    path = tmp_path / "screen.png"
    render_png(s, path)
    img = Image.open(path).convert("RGB")
    assert img.size == (80 * GLYPH_W, 25 * GLYPH_H)
    yellow, blue = PALETTE[0x0E], PALETTE[0x01]
    for y, bits in enumerate(glyph(ord("A"))):
        for x in range(GLYPH_W):
            assert img.getpixel((x, y)) == (yellow if bits & (0x80 >> x) else blue)
    x0, y0 = 5 * GLYPH_W, 2 * GLYPH_H
    column = [img.getpixel((x0 + 3, y0 + y)) for y in range(GLYPH_H)]
    assert column.count(PALETTE[0x00]) == 2                      # the two strokes of ═
    assert set(column) == {PALETTE[0x00], PALETTE[0x0C]}
    assert img.getpixel((79 * GLYPH_W + 4, 24 * GLYPH_H + 6)) == PALETTE[0x02]
    assert img.getpixel((40 * GLYPH_W, 12 * GLYPH_H)) == PALETTE[0x00]   # a blank 0x07 cell


def test_png_draws_the_cursor_and_scales():
    s = screen_with({}, cursor=(3, 10))
    img = render_image(s)
    x, y = 10 * GLYPH_W, 3 * GLYPH_H
    assert img.getpixel((x + 2, y + GLYPH_H - 1)) == PALETTE[0x07]   # underline, in fg colour
    assert img.getpixel((x + 2, y + 2)) == PALETTE[0x00]
    big = render_image(s, scale=2)
    assert big.size == (1280, 650)
    assert big.getpixel((2 * (x + 2), 2 * (y + GLYPH_H - 1))) == PALETTE[0x07]


def test_png_to_a_file_object_is_a_png():
    buf = io.BytesIO()
    render_png(Screen.blank(), buf)
    assert buf.getvalue().startswith(b"\x89PNG\r\n\x1a\n")


def test_all_16_colours_render():
    cells = {(0, i): (0xDB, i) for i in range(16)}               # full blocks in each colour
    img = render_image(screen_with(cells))
    assert [img.getpixel((i * GLYPH_W + 1, 1)) for i in range(16)] == list(PALETTE)


FONT_SOURCE = "/usr/share/fonts/X11/misc/8x13.pcf.gz"


@pytest.mark.skipif(not __import__("os").path.exists(FONT_SOURCE),
                    reason=f"{FONT_SOURCE} is missing (apt-get install xfonts-base)")
def test_the_bundled_font_regenerates_from_xfonts_base(tmp_path):
    import subprocess
    import sys
    from conftest import ROOT
    out = tmp_path / "font.bin"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_cp437_font.py"),
                           FONT_SOURCE, "-o", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == load_font()
