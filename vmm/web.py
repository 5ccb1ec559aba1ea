"""Fetching the web-data devices' text: the only place vmm touches the network (DESIGN §2).

Only the live input source (vmm.inputs.LiveInput) calls a `Fetcher`, at the first IN of a
fetch; what it answers is recorded in the trace, and a replay serves it from there. A fetch
follows the device's source in the feeds configuration (vmm.feeds):

- get: one or more HTTP GETs (httpx; connect and read timeouts, a deadline for the whole
  fetch, no redirects, the body streamed and refused past `max_bytes`), each answer parsed as
  JSON and the configured fields read from it; then the format turns them into the text;
- text: a fixed text; file: a local text file (read up to `max_bytes`).

Whatever happens, `fetch` answers one line of printable ASCII of at most `max_text`
characters: the text, or "<kind> unavailable: <reason>" (timeout, connection refused,
HTTP 500, bad JSON, missing field current.temperature_2m, answer too large, offline, ...).
The guest keeps running either way.

httpx is imported only when a fetch makes an HTTP request, so runs whose guest never reads a
web port do not load it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import threading
import time
from urllib.parse import quote

from . import __version__
from .devices.web import clean_text, unavailable
from .feeds import DeviceFeed, FeedsConfig, Template

POLL_S = 0.05            # how often a waiting fetch lets the run check for a stop request
# The run's watchdog and stop signals must reach the main thread (they interrupt KVM_RUN there),
# never a helper thread still waiting on the network.
MAIN_THREAD_SIGNALS = {signal.SIGALRM, signal.SIGINT, signal.SIGTERM}
_INDEX = re.compile(r"[0-9]+\Z")
HEADERS = {"User-Agent": f"vmm/{__version__} (web-data device)",
           "Accept": "application/json", "Accept-Encoding": "identity"}


class FetchFailed(Exception):
    """A fetch went wrong; `reason` is the short text after "unavailable: "."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Fetcher:
    """Answers `fetch(device)` from the feeds configuration. With `offline`, sources that need
    the network answer "<kind> unavailable: offline" without touching it."""

    def __init__(self, feeds: FeedsConfig, offline: bool = False):
        self.feeds = feeds
        self.settings = feeds.settings
        self.offline = offline
        self.requests = 0

    def fetch(self, device: str, poll=None) -> str:
        """The text for `device`. Waits for the answer at most `total_timeout` seconds; `poll`
        (if given) is called every POLL_S meanwhile and may raise to abandon the fetch (a
        stop requested by a signal or --timeout)."""
        feed = self.feeds.devices.get(device)
        if feed is None:
            return self._line(unavailable(device, "no such feed"))
        if feed.source == "get" and self.offline:
            return self._line(unavailable(device, "offline"))
        try:
            if feed.source == "text":
                text = render(feed.text, feed.vars)
            else:
                text = self._in_background(lambda: self._answer(feed), poll)
        except FetchFailed as e:
            return self._line(unavailable(device, e.reason))
        text = self._line(text)
        return text if text else self._line(unavailable(device, "empty answer"))

    def _line(self, text: str) -> str:
        return clean_text(text, self.settings.max_text)

    def _in_background(self, work, poll) -> str:
        """Run `work` in a helper thread and wait for it, at most total_timeout, calling
        `poll` meanwhile. A fetch abandoned by a timeout or a stop finishes (or times out) in
        its thread unseen; its answer is dropped."""
        box: dict = {}
        done = threading.Event()

        def target() -> None:
            try:
                signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_THREAD_SIGNALS)
                box["text"] = work()
            except FetchFailed as e:
                box["failed"] = e
            except Exception as e:          # an unexpected library error: still one line
                box["failed"] = FetchFailed(f"error ({type(e).__name__})")
            finally:
                done.set()

        deadline = time.monotonic() + self.settings.total_timeout
        threading.Thread(target=target, name="vmm-fetch", daemon=True).start()
        while not done.wait(max(0.0, min(POLL_S, deadline - time.monotonic()))):
            if poll is not None:
                poll()
            if time.monotonic() >= deadline:
                raise FetchFailed("timeout")
        if "failed" in box:
            raise box["failed"]
        return box["text"]

    # --- sources (in the helper thread) ---------------------------------------------------------
    def _answer(self, feed: DeviceFeed) -> str:
        deadline = time.monotonic() + self.settings.total_timeout
        if feed.source == "file":
            return self._read_file(feed)
        values = dict(feed.vars)
        for step in feed.steps:
            url = render(step.url, values, for_url=True)
            document = parse_json(self._http_get(url, deadline))
            for name, path in step.fields.items():
                values[name] = json_field(document, path)
        return render(feed.format, values)

    def _read_file(self, feed: DeviceFeed) -> str:
        name = render(feed.file, feed.vars)
        path = os.path.join(feed.base_dir, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)   # a FIFO must not hang the run
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise FetchFailed(f"{name} is not a regular file")
                data = f.read(self.settings.max_bytes + 1)
        except FileNotFoundError:
            raise FetchFailed(f"file {name} not found") from None
        except IsADirectoryError:
            raise FetchFailed(f"{name} is not a regular file") from None
        except OSError as e:
            raise FetchFailed(f"cannot read {name} ({e.strerror})") from None
        if len(data) > self.settings.max_bytes:
            raise FetchFailed(f"file {name} is too large (over {self.settings.max_bytes} bytes)")
        return data.decode("utf-8", "replace")

    def _http_get(self, url: str, deadline: float) -> bytes:
        try:
            import httpx
        except ImportError:
            raise FetchFailed("httpx is not installed (pip install httpx)") from None
        s = self.settings
        timeout = httpx.Timeout(connect=s.connect_timeout, read=s.read_timeout,
                                write=s.read_timeout, pool=s.connect_timeout)
        too_large = f"answer too large (over {s.max_bytes} bytes)"
        self.requests += 1
        try:
            with httpx.Client(timeout=timeout, follow_redirects=False, headers=HEADERS) as client, \
                    client.stream("GET", url) as response:
                if not 200 <= response.status_code < 300:
                    raise FetchFailed(f"HTTP {response.status_code}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > s.max_bytes:
                    raise FetchFailed(too_large)
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > s.max_bytes:
                        raise FetchFailed(too_large)
                    if time.monotonic() > deadline:
                        raise FetchFailed("timeout")
                return bytes(body)
        except httpx.TimeoutException:
            raise FetchFailed("timeout") from None
        except httpx.ConnectError as e:
            raise FetchFailed(_connect_reason(str(e))) from None
        except httpx.InvalidURL:
            raise FetchFailed("bad URL") from None
        except (httpx.HTTPError, httpx.StreamError) as e:
            raise FetchFailed(f"network error ({type(e).__name__})") from None


def _connect_reason(message: str) -> str:
    m = message.lower()
    if "refused" in m:
        return "connection refused"
    if "name" in m and ("resolution" in m or "known" in m or "resolve" in m):
        return "no network (cannot resolve the host name)"
    if "unreachable" in m:
        return "no network (unreachable)"
    if "ssl" in m or "certificate" in m:
        return "TLS error"
    return "cannot connect"


# --- JSON and templates ---------------------------------------------------------------------------
def parse_json(body: bytes):
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise FetchFailed("bad JSON") from None


def json_field(document, path: str):
    """Follow a dotted path ("current.temperature_2m", "0" for a list's first entry) to one
    value (a string, number, boolean or null)."""
    value = document
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and _INDEX.match(part) and int(part) < len(value):
            value = value[int(part)]
        else:
            raise FetchFailed(f"missing field {path}")
    if isinstance(value, (dict, list)):
        raise FetchFailed(f"field {path} is not a single value")
    return value


def show(value) -> str:
    """A JSON value as text: 14.0 -> "14", 12.3 -> "12.3", null -> "n/a", true -> "true"."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def render(template: Template, values: dict, for_url: bool = False) -> str:
    out = []
    for literal, name, spec in template.pieces:
        out.append(literal)
        if name is None:
            continue
        value = values[name]
        if spec and value is not None and not isinstance(value, bool):
            try:
                text = format(value, spec)
            except (ValueError, TypeError):
                raise FetchFailed(f"cannot format field {name} as {spec!r}") from None
        else:
            text = show(value)
        if for_url:
            text = quote(text, safe="") if text not in (".", "..") else text.replace(".", "%2E")
        out.append(text)
    return "".join(out)
