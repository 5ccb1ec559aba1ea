"""The HTML class report, loaded in real headless Chromium (Debian's `chromium`): it loads
with no console message, sorts, renders its histogram, and every link in it resolves."""

from __future__ import annotations

import html.parser
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from conftest import GUESTS, ROOT
from harness.grader import grade

pytestmark = pytest.mark.kvm

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                    "(make test installs it: apt-get install chromium)")
BAR = (0x2F, 0x81, 0xF7)             # the histogram's bar colour (harness/html_report.py)


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("html")
    rubric = tmp / "echo.toml"
    rubric.write_text((ROOT / "examples" / "rubrics" / "echo.toml").read_text()
                      .replace('wall_time = "5s"', 'wall_time = "1s"'))
    subs = [GUESTS / "echo.bin", GUESTS / "mutants" / "echo-one_line.bin",
            GUESTS / "mutants" / "echo-triple_fault.bin", GUESTS / "mutants" / "echo-no_ack.bin"]
    grade([str(s) for s in subs], str(rubric), str(tmp / "out"))
    return tmp / "out"


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    """Headless Chromium as root on a machine with no network and no D-Bus."""
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         *args], capture_output=True, text=True, timeout=120)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@needs_chromium
def test_the_class_report_loads_cleanly_and_sorts(graded, tmp_path):
    url = (graded / "report.html").as_uri() + "#sort=score-asc"
    r = chromium("--dump-dom", url, profile=tmp_path / "profile")
    assert r.returncode == 0, r.stderr[-2000:]
    assert console_messages(r.stderr) == []
    assert 'data-ready="yes"' in r.stdout and 'data-sorted="score-asc"' in r.stdout
    order = [line.split(">", 2)[1].split("<")[0] for line in r.stdout.split('<td><a href="')[1:]]
    assert order == ["echo-no_ack.bin", "echo-triple_fault.bin", "echo-one_line.bin",
                     "echo.bin"]


@needs_chromium
def test_the_screenshot_shows_the_histogram(graded, tmp_path):
    from PIL import Image
    shot = tmp_path / "shot.png"
    r = chromium("--window-size=1100,900", f"--screenshot={shot}",
                 (graded / "report.html").as_uri(), profile=tmp_path / "profile")
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    bar_pixels = dict((colour, n) for n, colour in image.getcolors(1 << 24)).get(BAR, 0)
    assert bar_pixels > 2000, bar_pixels     # four submissions: bars of a few thousand pixels
    page = chromium("--dump-dom", (graded / "echo-one_line.bin" / "index.html").as_uri(),
                    profile=tmp_path / "profile")
    assert console_messages(page.stderr) == [] and "83.33 / 100" in page.stdout


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.links.append(value)


def test_every_link_resolves_and_nothing_is_fetched_from_outside(graded):
    pages = sorted(graded.rglob("*.html"))
    assert len(pages) == 5                       # the class page and one per submission
    checked = 0
    for page in pages:
        parser = _Links()
        parser.feed(page.read_text())
        for link in parser.links:
            parts = urlsplit(link)
            assert not parts.scheme and not parts.netloc, (page, link)   # offline: no CDN
            if parts.path:
                target = (page.parent / unquote(parts.path)).resolve()
                assert target.exists(), (page, link)
                assert graded.resolve() in target.parents, (page, link)
                checked += 1
    assert checked >= 4 * 6 + 4 + 3                 # traces, logs, pages, reports
    assert os.path.getsize(graded / "report.html") < 200_000


def test_a_pc_board_scenario_shows_its_final_screen_as_an_image(tmp_path):
    from PIL import Image

    from test_screen_runs import VGA_GUEST
    guest = tmp_path / "vga.bin"
    guest.write_bytes(VGA_GUEST)
    rubric = tmp_path / "screen.toml"
    rubric.write_text('title = "screen"\n[boot]\nboard = "pc"\nmode = "real"\n'
                      '[[scenario]]\nname = "greets"\npoints = 1\nscript = "wait 1s"\n'
                      '[[scenario.check]]\nscreen_contains = "Hi"\n')
    report = grade([str(guest)], str(rubric), str(tmp_path / "out"))
    assert report["submissions"][0]["score"] == 1
    page = (tmp_path / "out" / "vga.bin" / "index.html").read_text()
    parser = _Links()
    parser.feed(page)
    images = [link for link in parser.links if link.endswith(".screen.png")]
    assert len(images) == 1, parser.links
    image = Image.open(tmp_path / "out" / "vga.bin" / unquote(images[0])).convert("RGB")
    assert image.getpixel((1, 1)) == (0x00, 0x00, 0xAA)        # the blue of 'H' in row 0
