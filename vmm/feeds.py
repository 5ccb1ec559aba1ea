"""The feeds file: where each web-data device gets its text (docs/feeds.md).

A feeds file is TOML. It names the six cities, and for the headline, the weather and the air
quality (and optionally for single devices, such as `[weather-3]`) one *source*:

    get = [{url = "...", fields = {name = "json.path"}}, ...]  and  format = "..."
                        HTTP GETs, in order; each answer's JSON fields are read into names
                        that later URLs and the format can use
    text = "..."        a fixed text
    file = "path"       a local text file (relative to the feeds file)

Templates use `{name}` placeholders: `city`, `lat`, `lon` and `n` (the city's number) for the
city devices, plus the fields read so far. The built-in defaults live in feeds_default.toml,
shipped in the package; a user's file is laid over them table by table.

A feeds file is user configuration, so it is checked here completely before a run starts:
anything malformed is one UsageError naming the file and the key. Nothing here touches the
network (that is vmm.web).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import string
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import urlsplit

from .devices.web import AIR, CITY_COUNT, DEVICE_NAMES, HEADLINE, MAX_TEXT, WEATHER
from .errors import UsageError

DEFAULT_FEEDS = "feeds_default.toml"     # in the vmm package
MAX_FEEDS_FILE = 1 << 20                 # bytes: a feeds file is small
MAX_STEPS = 4                            # requests in one fetch
MAX_FIELDS = 20                          # fields one request reads
MAX_TEMPLATE = 2000                      # characters in a URL, format or text template
CITY_VARS = ("city", "lat", "lon", "n")  # placeholders every city device has

# [settings]: key -> (kind, lowest, highest, what it is)
SETTINGS = {
    "connect_timeout": (float, 0.001, 120.0, "seconds"),
    "read_timeout": (float, 0.001, 120.0, "seconds"),
    "total_timeout": (float, 0.001, 600.0, "seconds"),
    "max_bytes": (int, 1, 64 << 20, "bytes"),
    "max_text": (int, 16, MAX_TEXT, "characters"),
}
KINDS = (HEADLINE, WEATHER, AIR)
CITY_DEVICE_TABLES = tuple(f"{kind}-{n}" for kind in (WEATHER, AIR)
                           for n in range(1, CITY_COUNT + 1))
TOP_LEVEL = ("settings", "city", *KINDS, *CITY_DEVICE_TABLES)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SPEC = re.compile(r"(?:[^{}]?[<>=^])?[-+ ]?z?#?0?[0-9]{0,3}[,_]?(?:\.[0-9]{1,2})?[a-zA-Z%]?\Z")


class _Bad(Exception):
    """A problem at a key of the feeds file; load_feeds adds the file name."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")


# --- templates --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Template:
    """A parsed `{name}` template: (literal text, placeholder name or None, format spec)."""
    source: str
    pieces: tuple[tuple[str, str | None, str], ...]

    @property
    def names(self) -> set[str]:
        return {name for _, name, _ in self.pieces if name is not None}


def parse_template(text, key: str, allowed, *, specs: bool = True) -> Template:
    """Parse a template; every placeholder must be one of `allowed` (a plain name, no
    attribute or index access, no !conversion, and a format spec only where `specs`)."""
    if not isinstance(text, str):
        raise _Bad(key, f"must be a string, not {_toml_type(text)}")
    if len(text) > MAX_TEMPLATE:
        raise _Bad(key, f"is longer than {MAX_TEMPLATE} characters")
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise _Bad(key, f"is not a valid template ({e}; write {{{{ and }}}} for braces)") from None
    pieces = []
    for literal, name, spec, conversion in parsed:
        if name is not None:
            if not _NAME.match(name):
                raise _Bad(key, f"has a bad placeholder {{{name}}}: write a plain name such as "
                                "{city}")
            if name not in allowed:
                known = ", ".join(f"{{{n}}}" for n in sorted(allowed)) or "none"
                raise _Bad(key, f"uses {{{name}}}, which is not defined here (known: {known})")
            if conversion is not None:
                raise _Bad(key, f"placeholder {{{name}!{conversion}}}: conversions are not "
                                "supported")
            if spec and (not specs or not _SPEC.match(spec)):
                raise _Bad(key, f"placeholder {{{name}:{spec}}}: "
                                + ("a format spec is not allowed here" if not specs
                                   else "write a short spec such as .1f or >5"))
        pieces.append((literal, name, spec or ""))
    return Template(text, tuple(pieces))


# --- the configuration --------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    connect_timeout: float
    read_timeout: float
    total_timeout: float
    max_bytes: int
    max_text: int


@dataclass(frozen=True)
class City:
    name: str
    latitude: float
    longitude: float


@dataclass(frozen=True)
class Step:
    """One HTTP GET: the URL template and the JSON fields it reads (name -> dotted path)."""
    url: Template
    fields: dict[str, str]


@dataclass(frozen=True)
class DeviceFeed:
    """Where one device gets its text, resolved: its variables and its source."""
    device: str
    kind: str
    vars: dict                          # city, lat, lon, n (none for the headline)
    source: str                         # "get", "text" or "file"
    steps: tuple[Step, ...] = ()
    format: Template | None = None
    text: Template | None = None
    file: Template | None = None
    base_dir: str = "."                 # a relative `file` is relative to this

    def describe(self) -> dict:
        """The resolved settings of this device, as a trace header records them."""
        d: dict = {"source": self.source}
        if self.vars:
            d["vars"] = dict(self.vars)
        if self.source == "get":
            d["get"] = [{"url": s.url.source, "fields": dict(s.fields)} for s in self.steps]
            d["format"] = self.format.source
        elif self.source == "text":
            d["text"] = self.text.source
        else:
            d["file"] = self.file.source
        return d


@dataclass
class FeedsConfig:
    path: str | None                    # None: the built-in defaults
    sha256: str                         # of the feeds file's bytes (or the built-in file's)
    settings: Settings
    cities: tuple[City, ...]
    devices: dict[str, DeviceFeed] = field(default_factory=dict)

    def describe(self, offline: bool = False) -> dict:
        """What a trace header records: the file, its digest and the resolved settings. A
        replay never needs it (fetched text is in the trace); `vmm inspect` shows it."""
        return {"file": self.path, "sha256": self.sha256, "offline": offline,
                "settings": {k: getattr(self.settings, k) for k in SETTINGS},
                "cities": [{"name": c.name, "latitude": c.latitude, "longitude": c.longitude}
                           for c in self.cities],
                "devices": {name: feed.describe() for name, feed in self.devices.items()}}


# --- loading ------------------------------------------------------------------------------------
def default_feeds_bytes() -> bytes:
    return resources.files("vmm").joinpath(DEFAULT_FEEDS).read_bytes()


_builtin: FeedsConfig | None = None     # load_feeds(None), made once: it is only ever read


def load_feeds(path: str | None = None) -> FeedsConfig:
    """The built-in feeds, with the feeds file at `path` (if any) laid over them."""
    global _builtin
    if path is None and _builtin is not None:
        return _builtin             # (a process that records many runs parses the TOML once)
    default_raw = default_feeds_bytes()
    data = _parse_toml(default_raw, "the built-in feeds file")
    raw, base_dir, name = default_raw, ".", "the built-in feeds file"
    if path is not None:
        raw = _read_file(path)
        user = _parse_toml(raw, path)
        for key, value in user.items():
            if key == "settings" and isinstance(value, dict):
                data["settings"] = {**data["settings"], **value}
            else:
                data[key] = value
        base_dir, name = os.path.dirname(os.path.abspath(path)), path
    try:
        feeds = _build(data, path, hashlib.sha256(raw).hexdigest(), base_dir)
    except _Bad as e:
        raise UsageError(f"feeds file {name}: {e}") from None
    if path is None:
        _builtin = feeds
    return feeds


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FEEDS_FILE + 1)
    except FileNotFoundError:
        raise UsageError(f"feeds file not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"feeds file {path} is a directory") from None
    except OSError as e:
        raise UsageError(f"cannot read feeds file {path}: {e.strerror}") from None
    if len(raw) > MAX_FEEDS_FILE:
        raise UsageError(f"feeds file {path} is larger than {MAX_FEEDS_FILE} bytes")
    return raw


def _parse_toml(raw: bytes, name: str) -> dict:
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"feeds file {name} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"feeds file {name} is not valid TOML: {e}") from None
    except RecursionError:
        raise UsageError(f"feeds file {name} is nested too deeply") from None


def _toml_type(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"


def _table(value, key: str) -> dict:
    if not isinstance(value, dict):
        raise _Bad(key, f"must be a table, not {_toml_type(value)}")
    return value


def _no_unknown(table: dict, key: str, known) -> None:
    for k in table:
        if k not in known:
            where = f"{key}.{k}" if key else k
            raise _Bad(where, "unknown key (expected one of: " + ", ".join(known) + ")")


def _number(value, key: str, kind, low, high, unit: str):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(key, f"must be a number of {unit}, not {_toml_type(value)}")
    if kind is int and not isinstance(value, int):
        raise _Bad(key, f"must be a whole number of {unit}, not {value!r}")
    if not (isinstance(value, int) or math.isfinite(value)) or not low <= value <= high:
        raise _Bad(key, f"must be between {low:g} and {high:g} {unit}, not {value!r}")
    return kind(value)


def _printable(value, key: str, longest: int) -> str:
    if not isinstance(value, str):
        raise _Bad(key, f"must be a string, not {_toml_type(value)}")
    if not value or len(value) > longest or not all(" " <= c <= "~" for c in value):
        raise _Bad(key, f"must be 1 to {longest} printable ASCII characters")
    return value


def _build(data: dict, path: str | None, digest: str, base_dir: str) -> FeedsConfig:
    _no_unknown(data, "", TOP_LEVEL)
    settings_table = _table(data.get("settings", {}), "settings")
    _no_unknown(settings_table, "settings", SETTINGS)
    missing = [k for k in SETTINGS if k not in settings_table]
    if missing:
        raise _Bad(f"settings.{missing[0]}", "missing")
    settings = Settings(**{k: _number(settings_table[k], f"settings.{k}", *SETTINGS[k])
                           for k in SETTINGS})
    cities = _cities(data.get("city"))
    devices: dict[str, DeviceFeed] = {}
    for kind in KINDS:
        if kind not in data:
            raise _Bad(kind, "missing: each of " + ", ".join(KINDS) + " needs a source")
        kind_table = _table(data[kind], kind)
        if kind == HEADLINE:
            devices[HEADLINE] = _device(HEADLINE, kind, kind_table, kind, {}, base_dir)
            continue
        for n, city in enumerate(cities, start=1):
            name = f"{kind}-{n}"
            table, key = (_table(data[name], name), name) if name in data else (kind_table, kind)
            variables = {"city": city.name, "lat": city.latitude, "lon": city.longitude, "n": n}
            devices[name] = _device(name, kind, table, key, variables, base_dir)
    return FeedsConfig(path, digest, settings, cities,
                       {name: devices[name] for name in DEVICE_NAMES})


def _cities(value) -> tuple[City, ...]:
    if not isinstance(value, list) or len(value) != CITY_COUNT:
        raise _Bad("city", f"must be exactly {CITY_COUNT} [[city]] tables (one per port, in "
                           "order)" + ("" if not isinstance(value, list)
                                       else f", not {len(value)}"))
    cities = []
    for i, entry in enumerate(value):
        key = f"city[{i}]"
        entry = _table(entry, key)
        _no_unknown(entry, key, ("name", "latitude", "longitude"))
        for k in ("name", "latitude", "longitude"):
            if k not in entry:
                raise _Bad(f"{key}.{k}", "missing")
        cities.append(City(_printable(entry["name"], f"{key}.name", 40),
                           _number(entry["latitude"], f"{key}.latitude", float, -90, 90,
                                   "degrees"),
                           _number(entry["longitude"], f"{key}.longitude", float, -180, 180,
                                   "degrees")))
    return tuple(cities)


def _device(device: str, kind: str, table: dict, key: str, variables: dict,
            base_dir: str) -> DeviceFeed:
    _no_unknown(table, key, ("get", "format", "text", "file"))
    sources = [s for s in ("get", "text", "file") if s in table]
    if len(sources) != 1:
        raise _Bad(key, "needs exactly one source: get (with format), text or file"
                        + (f"; it has {' and '.join(sources)}" if sources else ""))
    source = sources[0]
    names = set(variables)
    if source != "get":
        if "format" in table:
            raise _Bad(f"{key}.format", f"applies to get only; a {source} source is used as is")
        template = parse_template(table[source], f"{key}.{source}", names,
                                  specs=source == "text")
        return DeviceFeed(device, kind, variables, source, base_dir=base_dir,
                          **{source: template})
    steps_value = table["get"]
    if not isinstance(steps_value, list) or not 1 <= len(steps_value) <= MAX_STEPS:
        raise _Bad(f"{key}.get", f"must be 1 to {MAX_STEPS} [[{key}.get]] tables (requests)")
    steps = []
    for i, step in enumerate(steps_value):
        where = f"{key}.get[{i}]"
        step = _table(step, where)
        _no_unknown(step, where, ("url", "fields"))
        for k in ("url", "fields"):
            if k not in step:
                raise _Bad(f"{where}.{k}", "missing")
        url = parse_template(step["url"], f"{where}.url", names, specs=False)
        _check_url(url, f"{where}.url")
        fields = _table(step["fields"], f"{where}.fields")
        if not 1 <= len(fields) <= MAX_FIELDS:
            raise _Bad(f"{where}.fields", f"must name 1 to {MAX_FIELDS} fields")
        for name, json_path in fields.items():
            fkey = f"{where}.fields.{name}"
            if not _NAME.match(name):
                raise _Bad(fkey, "a field name must be letters, digits and _")
            if name in names:
                raise _Bad(fkey, f"{{{name}}} is already defined")
            if not isinstance(json_path, str) or not json_path or len(json_path) > 200 or \
                    "" in json_path.split("."):
                raise _Bad(fkey, 'must be a JSON path such as "current.temperature_2m" or "0"')
        names |= set(fields)
        steps.append(Step(url, dict(fields)))
    if "format" not in table:
        raise _Bad(f"{key}.format", "missing: a get source needs a format for its text")
    fmt = parse_template(table["format"], f"{key}.format", names)
    return DeviceFeed(device, kind, variables, "get", steps=tuple(steps), format=fmt,
                      base_dir=base_dir)


def _check_url(url: Template, key: str) -> None:
    """The scheme and the host must be written out in the template, before any placeholder:
    what a server answers can fill in a path or a query, never choose the host."""
    head = ""
    for literal, name, _ in url.pieces:
        head += literal
        if name is not None:
            break
    try:
        parts = urlsplit(head)
    except ValueError:
        parts = None
    ok = parts is not None and parts.scheme in ("http", "https") and bool(parts.netloc) \
        and head.lower().startswith(parts.scheme + "://")
    if ok and url.names:
        after_host = len(parts.scheme) + 3 + len(parts.netloc)
        ok = len(head) > after_host and head[after_host] in "/?"
    if not ok:
        raise _Bad(key, "must start with http:// or https:// and a host name written out "
                        "(placeholders may only follow the host, in the path or the query)")
    if "@" in parts.netloc or not all("!" <= c <= "~" for c in url.source):
        raise _Bad(key, "has characters a URL cannot have (spaces, non-ASCII, or "
                        "user:password@ before the host)")
