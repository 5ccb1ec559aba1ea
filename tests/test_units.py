"""Units on the command line: durations, sizes, addresses (vmm.units)."""

from __future__ import annotations

import pytest

from vmm.errors import UsageError
from vmm.units import parse_address, parse_duration, parse_size

MS, S = 1_000_000, 1_000_000_000


# --- durations ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, ns", [
    ("500ms", 500 * MS),
    ("10s", 10 * S),
    ("2m", 120 * S),
    ("1.5s", 1500 * MS),
    ("1h", 3600 * S),
    ("250us", 250_000),
    ("7ns", 7),
    ("0.1s", 100 * MS),
    (" 10 s ", 10 * S),
    ("0s", 0),
])
def test_parse_duration(text, ns):
    assert parse_duration(text) == ns


def test_parse_duration_returns_int():
    assert type(parse_duration("1.5s")) is int


@pytest.mark.parametrize("text", ["5", "abc", "-1s", "", "s", "10x", "1e3s", "10 s s", "1,5s"])
def test_parse_duration_rejects(text):
    with pytest.raises(UsageError) as info:
        parse_duration(text)
    assert repr(text) in str(info.value)
    assert "\n" not in str(info.value)


def test_parse_duration_error_suggests_a_unit():
    with pytest.raises(UsageError, match="unit"):
        parse_duration("5")


# --- sizes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, size", [
    ("16M", 16 << 20),
    ("64K", 64 << 10),
    ("1G", 1 << 30),
    ("4096", 4096),
    ("4096B", 4096),
    ("64KiB", 64 << 10),
    ("16MiB", 16 << 20),
    ("1GiB", 1 << 30),
    ("64KB", 64 << 10),
    ("64k", 64 << 10),
    ("16mib", 16 << 20),
    ("16 M", 16 << 20),
    ("0", 0),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "1.5M", "-1M", "16T", "abc", "0x1000", "16MM",
                                  "16 MiB B", "iB"])
def test_parse_size_rejects(text):
    with pytest.raises(UsageError) as info:
        parse_size(text)
    assert repr(text) in str(info.value)
    assert "\n" not in str(info.value)


# --- addresses ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [
    ("0x1000", 0x1000),
    ("0X7C00", 0x7C00),
    ("0xf0000", 0xF0000),
    ("4096", 4096),
    ("0", 0),
])
def test_parse_address(text, value):
    assert parse_address(text) == value


@pytest.mark.parametrize("text", ["", "abc", "0x", "0xg", "ten", "1M", "0x10 0x20"])
def test_parse_address_rejects_non_numbers(text):
    with pytest.raises(UsageError) as info:
        parse_address(text)
    assert repr(text) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["-1", "-0x10"])
def test_parse_address_rejects_negative(text):
    with pytest.raises(UsageError, match="negative"):
        parse_address(text)


def test_parse_address_does_not_read_leading_zero_as_octal():
    # '010' is neither 8 nor silently 10: Python's base-0 rule refuses it.
    with pytest.raises(UsageError):
        parse_address("010")
