"""The VGA text screen in runs (vmm.screenlog, vmm.screen_panel): sampled at reads and at the end,
recorded, verified on replay, printed with --screen, drawn live on a real pty, waited for by
scripts and sessions, checked by the grader."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time

import pytest

from conftest import records_without_info, test_backends, vmm_command
from vmm.screenlog import ScreenLog, decode_text, encode_attrs, screen_text

# Real mode, at 0x1000, on the pc board: "Hi" in white on blue at row 0, then a read of COM1's
# line status (an observation: the screen is sampled), then "!" at row 1, then HLT.
VGA_GUEST = bytes([
    0xB8, 0x00, 0xB8,                               # mov ax, 0xb800
    0x8E, 0xC0,                                     # mov es, ax
    0x26, 0xC7, 0x06, 0x00, 0x00, 0x48, 0x1F,       # mov word [es:0], 0x1f48   'H'
    0x26, 0xC7, 0x06, 0x02, 0x00, 0x69, 0x1F,       # mov word [es:2], 0x1f69   'i'
    0xBA, 0xFD, 0x03,                               # mov dx, 0x3fd
    0xEC,                                           # in al, dx
    0x26, 0xC7, 0x06, 0xA0, 0x00, 0x21, 0x07,       # mov word [es:160], 0x0721 '!' row 1
    0xF4,                                           # hlt
])


@pytest.fixture
def vga_guest(tmp_path):
    path = tmp_path / "vga.bin"
    path.write_bytes(VGA_GUEST)
    return path


# --- the model -------------------------------------------------------------------------------
def cells(text: str, attr: int = 0x07, width: int = 80) -> bytes:
    raw = text.encode("cp437").ljust(width, b" ")
    return b"".join(bytes([c, attr]) for c in raw)


def test_rows_decode_as_cp437_with_nul_as_space_and_trailing_blanks_dropped():
    row = bytes([0x48, 0x1F, 0x00, 0x07, 0xDB, 0x07, 0xC4, 0x07]) + bytes(152)
    assert decode_text(row) == "H █─"
    assert encode_attrs(row) == "1f*1,07*3,00*76"
    assert encode_attrs(cells("x")) == "07*80"


def test_final_text_drops_trailing_empty_rows_only():
    assert screen_text(["a", "", "b", "", ""]) == "a\n\nb\n"
    assert screen_text([""] * 25) == ""


def test_the_log_reports_only_changed_rows_and_starts_from_what_memory_holds():
    memory = bytearray(cells("boot") + bytes(4000 - 160))
    changes = []
    log = ScreenLog(memory, 0, 4000, on_change=lambda n, rows: changes.append((n, rows)))
    assert log.rows[0] == "boot" and not changes
    log.sample(1)
    assert not changes                                # nothing changed: no record
    memory[320:480] = cells("third row", 0x4E)
    log.sample(2)
    assert changes == [(2, [(2, "third row", "4e*80")])]
    state = log.state()
    memory[0:160] = cells("")
    log.sample(3)
    assert log.rows[0] == "" and log.changes == 2
    log.from_state(state)
    assert log.rows[0] == "boot"


# --- runs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", test_backends())
def test_screen_changes_are_recorded_at_reads_and_at_the_end_and_replay_verifies_them(
        vmm, tmp_path, vga_guest, backend):
    trace = tmp_path / "vga.trace"
    r = vmm("record", vga_guest, "--board", "pc", "--backend", backend, "-o", trace)
    assert r.returncode == 0, r
    screens = [rec for rec in records_without_info(trace) if rec["type"] == "screen"]
    assert screens == [
        {"type": "screen", "n": 1, "rows": [[0, "Hi", "1f*2,00*78"]]},
        {"type": "screen", "n": 1, "rows": [[1, "!", "07*1,00*79"]]},
    ]
    other = "emu" if backend == "kvm" else "kvm"
    for replay_backend in {backend, other} & set(test_backends()):
        r = vmm("replay", trace, "--backend", replay_backend, "--screen", "none")
        assert r.returncode == 0, r
        assert "2 screen changes" in r.stderr


def test_a_screen_that_differs_on_replay_is_a_divergence_naming_the_row(vmm, tmp_path,
                                                                        vga_guest):
    trace = tmp_path / "vga.trace"
    assert vmm("record", vga_guest, "--board", "pc", "-o", trace).returncode == 0
    lines = trace.read_text().splitlines()
    forged = [line.replace('[0,"Hi",', '[0,"Ho",') for line in lines]
    trace.write_text("\n".join(forged) + "\n")
    r = vmm("replay", trace)
    assert r.returncode == 40, r
    assert "the screen differs: at observation 1, row 0 (text): recorded 'Ho', replayed 'Hi'" \
        in r.stderr


def test_a_screen_record_in_an_old_version_or_malformed_is_a_bad_trace(vmm, tmp_path, vga_guest):
    trace = tmp_path / "vga.trace"
    assert vmm("record", vga_guest, "--board", "pc", "-o", trace).returncode == 0
    lines = trace.read_text().splitlines()
    for bad in ('{"type":"screen","n":1,"rows":[[25,"x","07*1"]]}',
                '{"type":"screen","n":1,"rows":[]}',
                '{"type":"screen","n":1,"rows":[[0,"' + "x" * 81 + '","07*1"]]}',
                '{"type":"screen","n":1,"rows":[[0,1,"07*1"]]}'):
        trace.write_text("\n".join(lines[:1] + [bad] + lines[1:]) + "\n")
        r = vmm("replay", trace)
        assert r.returncode == 14 and "(screen)" in r.stderr, (bad, r)
    header = json.loads(lines[0])
    header["version"] = 3
    trace.write_text("\n".join([json.dumps(header)] + lines[1:]) + "\n")
    r = vmm("replay", trace)
    assert r.returncode == 14 and "need trace format version 4" in r.stderr, r


def test_screen_final_prints_the_text_and_auto_does_so_off_a_terminal(vmm, vga_guest):
    for mode in ("final", "auto"):
        r = vmm("run", vga_guest, "--board", "pc", "--screen", mode)
        assert r.returncode == 0 and r.stdout == "Hi\n!\n", (mode, r)
        assert "the screen at the end of the run" in r.stderr
    r = vmm("run", vga_guest, "--board", "pc", "--screen", "none")
    assert r.stdout == ""
    assert "the guest printed nothing, but its screen holds text" in r.stderr


def test_a_board_without_a_screen_prints_none(vmm, vga_guest):
    r = vmm("run", vga_guest, "--screen", "final", "--ignore-unknown-ports")
    assert r.returncode == 0 and r.stdout == "", r


def read_pty(fd: int, proc, deadline: float) -> bytes:
    out = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out


def test_on_a_terminal_the_screen_is_drawn_in_place_with_its_colours(vga_guest):
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(vmm_command("run", str(vga_guest), "--board", "pc"),
                            stdin=secondary, stdout=secondary, stderr=secondary)
    os.close(secondary)
    try:
        out = read_pty(primary, proc, time.monotonic() + 60)
        assert proc.wait(timeout=30) == 0
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()
    text = out.decode("utf-8", "replace")
    assert "┌" + "─" * 80 + "┐" in text and "└" + "─" * 80 + "┘" in text
    assert "\x1b[97;44mHi" in text             # white on blue: attribute 0x1f
    assert "\x1b[37;40m!" in text              # light grey on black: 0x07
    assert "the screen at the end of the run" not in text    # it is on the terminal already


# --- scripts, sessions, the grader --------------------------------------------------------------
def test_script_steps_wait_for_screen_text(vmm, tmp_path, vga_guest):
    good = tmp_path / "good.vmms"
    good.write_text('expect screen "Hi"\nexpect screen /^H.$/ within 1s\n')
    r = vmm("run", vga_guest, "--board", "pc", "--script", good, "--screen", "none")
    assert r.returncode == 0, r
    bad = tmp_path / "bad.vmms"
    bad.write_text('expect screen "Bye" within 1s\n')
    r = vmm("run", vga_guest, "--board", "pc", "--script", bad, "--screen", "none")
    assert r.returncode == 34, r
    assert "expected 'Bye' on the screen within 1s of guest time; the screen shows 'Hi'" \
        in r.stderr


def test_a_session_shows_its_screen_and_expect_screen_waits_for_it(vga_guest):
    import pexpect

    from harness.session import GuestSession
    with GuestSession(str(vga_guest), board="pc") as s:
        assert s.expect_screen("Hi", timeout=1) == "Hi"
        assert s.screen[0] == "Hi"
        with pytest.raises(pexpect.TIMEOUT, match="the screen did not show 'Bye'"):
            s.expect_screen("Bye", timeout=1)     # the guest waits in its read: no more changes
        assert s.now == 1.0
    # Closed in its read: the run ends there, before the guest wrote row 1.
    assert s.reason == "session-end" and s.screen[:2] == ["Hi", ""] and s.screen_text == "Hi\n"
    with GuestSession(str(vga_guest), mode="real") as plain:
        assert plain.screen is None
        with pytest.raises(ValueError, match="has no screen"):
            plain.expect_screen("Hi")


def test_grader_screen_checks(tmp_path):
    from harness.grader import evaluate
    from harness.rubric import Check
    screen = ["Booted", "", "ticks: 42"] + [""] * 22
    assert evaluate(Check("screen_contains", "ticks: 4"), [], "", "halt", 0, screen=screen) \
        == (True, "")
    assert evaluate(Check("screen_regex", r"^ticks: \d+$"), [], "", "halt", 0,
                    screen=screen)[0]
    passed, detail = evaluate(Check("screen_contains", "panic"), [], "", "halt", 0,
                              screen=screen)
    assert not passed and detail == "the final screen shows 'Booted | ticks: 42'"
    passed, detail = evaluate(Check("screen_contains", "x"), [], "", "halt", 0, screen=None)
    assert not passed and "board has no text screen" in detail
    assert re.search("blank", evaluate(Check("screen_contains", "x"), [], "", "halt", 0,
                                       screen=[""] * 25)[1])


def test_redrive_and_goldens_compare_the_final_screen(vmm, tmp_path, vga_guest):
    from harness.golden import compare_with_golden, trace_transcript
    from harness.session import GuestSession
    from vmm.trace import read_trace
    trace = tmp_path / "vga.trace"
    assert vmm("record", vga_guest, "--board", "pc", "-o", trace).returncode == 0
    assert trace_transcript(read_trace(str(trace))) == [
        "[screen] row  0: Hi", "[screen] row  1: !", "[end] halt (exit status 0)"]
    same = vmm("replay", trace, "--guest", vga_guest, "--screen", "none")
    assert same.returncode == 0 and "left the same screen" in same.stderr, same
    other = tmp_path / "other.bin"
    other.write_bytes(VGA_GUEST.replace(bytes([0x69, 0x1F]), bytes([0x6F, 0x1F])))   # "Ho"
    r = vmm("replay", trace, "--guest", other, "--screen", "none")
    assert r.returncode == 41, r
    assert "re-drive differs: the screen differs from the recording's (row  0)" in r.stderr
    assert "-[screen] row  0: Hi" in r.stderr and "+[screen] row  0: Ho" in r.stderr
    with GuestSession(str(other), board="pc") as s:
        s.wait(1)
    comparison = compare_with_golden(s, trace)
    assert not comparison.ok
    assert comparison.summary()[0].startswith("the screen differs from the golden trace")


def test_inspect_shows_the_screen_changes_and_the_final_screen(vmm, tmp_path, vga_guest):
    trace = tmp_path / "vga.trace"
    assert vmm("record", vga_guest, "--board", "pc", "-o", trace).returncode == 0
    text = vmm("inspect", trace).stdout
    assert "2 screen changes" in text
    assert "screen    at the end of the run\n  |Hi\n  |!\n" in text
    assert "screen row 0: 'Hi'" in text
    summary = json.loads(vmm("inspect", "--json", trace).stdout)
    assert summary["screen"][:2] == ["Hi", "!"] and summary["counts"]["screen_changes"] == 2


def test_inspect_renders_the_final_screen_as_a_png(vmm, tmp_path, vga_guest):
    from PIL import Image
    trace = tmp_path / "vga.trace"
    assert vmm("record", vga_guest, "--board", "pc", "-o", trace).returncode == 0
    png = tmp_path / "screen.png"
    r = vmm("inspect", trace, "--png", png)
    assert r.returncode == 0 and "wrote the final screen" in r.stderr, r
    image = Image.open(png).convert("RGB")
    assert image.size == (80 * 8, 25 * 13)
    cell_h = {image.getpixel((x, y)) for x in range(8) for y in range(13)}
    assert cell_h == {(0x00, 0x00, 0xAA), (0xFF, 0xFF, 0xFF)}      # white 'H' on blue
    assert image.getpixel((8 * 40, 13 * 12)) == (0, 0, 0)          # the rest: black
    plain = tmp_path / "p3.trace"
    (tmp_path / "hlt.bin").write_bytes(b"\xf4")
    assert vmm("record", tmp_path / "hlt.bin", "-o", plain).returncode == 0
    r = vmm("inspect", plain, "--png", png)
    assert r.returncode == 2 and "has no screen" in r.stderr, r


def test_the_crtc_start_address_scrolls_the_screen_that_is_sampled(vmm, tmp_path):
    code = bytes([
        0xB8, 0x00, 0xB8, 0x8E, 0xC0,                   # es = 0xb800
        0x26, 0xC7, 0x06, 0x00, 0x00, 0x41, 0x07,       # 'A' at row 0
        0x26, 0xC7, 0x06, 0xA0, 0x00, 0x42, 0x07,       # 'B' at row 1
        0xBA, 0xD4, 0x03, 0xB0, 0x0C, 0xEE,             # CRTC index 0x0c (start, high)
        0x42, 0xB0, 0x00, 0xEE,                         # ... = 0
        0x4A, 0xB0, 0x0D, 0xEE,                         # CRTC index 0x0d (start, low)
        0x42, 0xB0, 0x50, 0xEE,                         # ... = 80 cells: one row down
        0xF4,
    ])
    guest = tmp_path / "scroll.bin"
    guest.write_bytes(code)
    r = vmm("run", guest, "--board", "pc", "--screen", "final")
    assert r.returncode == 0 and r.stdout == "B\n", r
    r = vmm("run", guest, "--board", "pc", "--mem", "512K", "--screen", "final")
    assert r.returncode == 24 and r.stdout == "", r    # no RAM at 0xb8000: no screen, and
    assert "outside its 512K of RAM" in r.stderr        # the write is outside RAM
