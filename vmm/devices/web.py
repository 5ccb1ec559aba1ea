"""The web-data devices: the top headline (port 0x100), the weather (0x101-0x106) and the air
quality (0x201-0x206) of six cities (docs/devices.md, "Web data").

Each port is one device holding a line of text. An IN (of any size) returns the next character
of the text in the low byte, the other bytes 0; after the text, one IN returns 0, and the IN
after that starts a fresh fetch. The first IN of a fetch asks the input source —
`inputs.fetch(name)` — and waits for the answer: live, the VMM fetches it (vmm.web); replayed,
it comes from the trace. The device itself knows nothing about HTTP, files or feeds.

The input source already hands over printable ASCII within a length cap; the device reduces the
text once more (`clean_text`), so whatever answers it, the guest can only ever see
MAX_TEXT printable characters and then the terminating 0.
"""

from __future__ import annotations

from .bus import Device

CITY_COUNT = 6
HEADLINE = "headline"
WEATHER = "weather"
AIR = "air"
# The device names, in port order: "headline", "weather-1".."weather-6", "air-1".."air-6".
WEATHER_DEVICES = tuple(f"{WEATHER}-{n}" for n in range(1, CITY_COUNT + 1))
AIR_DEVICES = tuple(f"{AIR}-{n}" for n in range(1, CITY_COUNT + 1))
DEVICE_NAMES = (HEADLINE, *WEATHER_DEVICES, *AIR_DEVICES)
# What each kind is called in the "<label> unavailable: <reason>" lines.
LABELS = {HEADLINE: "headline", WEATHER: "weather", AIR: "air quality"}

MAX_TEXT = 1000          # the longest text a guest is ever given (a feeds file sets less)

# Common typography that has a plain-ASCII spelling; anything else non-ASCII becomes '?'.
_ASCII_FOR = {"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
              "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"',
              "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-",
              "\u2212": "-", "\u2026": "...", "\u2022": "*", "\u00d7": "x",
              "\u00b0": " deg ", "\u00b5": "u", "\u03bc": "u"}


def kind_of(device: str) -> str:
    """"weather-3" -> "weather"."""
    return device.split("-", 1)[0]


def unavailable(device: str, reason: str) -> str:
    """The line a guest gets when a fetch fails: "weather unavailable: timeout"."""
    return f"{LABELS.get(kind_of(device), kind_of(device))} unavailable: {reason}"


def clean_text(text: str, limit: int = MAX_TEXT) -> str:
    """One line of printable ASCII, at most `limit` characters: whitespace runs (newlines
    included) become one space, accented letters lose their accents, other characters outside
    0x20-0x7e become '?', and a text over the limit is cut and ends in "..."."""
    import unicodedata      # here: off the start-up path of guests that never fetch
    out = []
    for ch in unicodedata.normalize("NFKD", text):
        if " " <= ch <= "~":
            out.append(ch)
        elif ch.isspace():
            out.append(" ")
        elif ch in _ASCII_FOR:
            out.append(_ASCII_FOR[ch])
        elif unicodedata.combining(ch):
            continue                         # the accent of a decomposed letter
        else:
            out.append("?")
    line = " ".join("".join(out).split())
    if len(line) > limit:
        line = line[:max(0, limit - 3)].rstrip() + "..."
        line = line[:limit]
    return line


class WebDevice(Device):
    """One web-data port: the text of its current fetch and the position in it."""

    def __init__(self, name: str, inputs):
        self.name = name
        self._inputs = inputs
        self._text = b""
        self._pos: int | None = None         # None: the next IN starts a fetch
        self.fetches = 0

    def read(self, offset: int, size: int) -> int:
        if self._pos is None:
            self._text = clean_text(self._inputs.fetch(self.name)).encode("ascii")
            self._pos = 0
            self.fetches += 1
        if self._pos >= len(self._text):
            self._pos = None                 # the terminating 0; the next IN fetches again
            return 0
        ch = self._text[self._pos]
        self._pos += 1
        return ch

    def stats(self) -> dict:
        return {"fetches": self.fetches} if self.fetches else {}
