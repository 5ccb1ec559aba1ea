"""Parsing of the units written on the command line and in scripts: durations, sizes, addresses."""

from __future__ import annotations

import re

from .errors import UsageError

# A pattern, compiled (and cached) by re on first use: compiling it costs ~0.2 ms of start-up,
# and `vmm run` parses a duration only when given one.
_DURATION = r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h)\s*$"
_NS_PER = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
           "h": 3_600_000_000_000}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_MULT = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_duration(text: str) -> int:
    """'500ms', '10s', '2m', '1.5s' -> nanoseconds. A unit is required."""
    m = re.match(_DURATION, str(text))
    if not m and str(text).strip().startswith("-"):
        raise UsageError(f"bad duration {text!r}: a duration cannot be negative")
    if not m:
        raise UsageError(f"bad duration {text!r}: write a number with a unit, e.g. 500ms, 10s, 2m")
    return int(round(float(m.group(1)) * _NS_PER[m.group(2)]))


def parse_size(text: str) -> int:
    """'16M', '64KiB', '1G', '4096' -> bytes."""
    m = _SIZE.match(str(text))
    if not m and str(text).strip().startswith("-"):
        raise UsageError(f"bad size {text!r}: a size cannot be negative")
    if not m:
        raise UsageError(f"bad size {text!r}: write e.g. 16M, 512K, 1G or a number of bytes")
    unit = (m.group(2) or "").upper()[:1]
    return int(m.group(1)) * _SIZE_MULT[unit if unit != "B" else ""]


_COUNT = re.compile(r"^\s*(\d[\d_]*)\s*([kKMG]?)\s*$")
_COUNT_MULT = {"": 1, "k": 1_000, "K": 1_000, "M": 1_000_000, "G": 1_000_000_000}


def parse_count(text: str) -> int:
    """'5000', '100k', '20M', '1_000_000' -> a whole number above zero (k, M, G: powers of
    1000)."""
    m = _COUNT.match(str(text))
    if not m and str(text).strip().startswith("-"):
        raise UsageError(f"bad count {text!r}: a count cannot be negative")
    if not m or m.group(1).endswith("_"):
        raise UsageError(f"bad count {text!r}: write a whole number, e.g. 5000, 100k, 20M")
    value = int(m.group(1).replace("_", "")) * _COUNT_MULT[m.group(2)]
    if value <= 0:
        raise UsageError(f"bad count {text!r}: a budget must be above zero")
    return value


def parse_address(text: str) -> int:
    """'0x1000', '4096', '0X7C00' -> int."""
    try:
        value = int(str(text), 0)
    except ValueError:
        raise UsageError(f"bad address {text!r}: write a number such as 0x1000") from None
    if value < 0:
        raise UsageError(f"bad address {text!r}: must not be negative")
    return value


MAX_ICOUNT_NS = 1_000_000   # --icount: guest ns per instruction, at most (machine.icount_ns)
