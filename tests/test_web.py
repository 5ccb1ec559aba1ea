"""The web-data devices (issue 4): the feeds file (vmm.feeds), the fetcher (vmm.web) against a
real HTTP server on loopback (pytest-httpserver), the devices (vmm.devices.web) with a fake
input source, fetch records in traces, and, on KVM, the monitor guest recorded with the server
up and replayed with it stopped.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from urllib.parse import parse_qs

import pytest
from pytest_httpserver import HTTPServer
from werkzeug.wrappers import Response

from conftest import ROOT, vmm_command
from vmm.devices.web import (DEVICE_NAMES, MAX_TEXT, WebDevice, clean_text, kind_of,
                             unavailable)
from vmm.errors import TraceError, UsageError
from vmm.feeds import load_feeds
from vmm.inputs import LiveInput, NullFeed, ReplayInput, VirtualClock
from vmm.outcome import StopRun
from vmm.summary import format_summary, summarize
from vmm.trace import Trace, TraceWriter, make_header, read_trace
from vmm.web import Fetcher

CITIES = ["Chennai", "New Delhi", "London", "Chicago", "San Francisco", "New York"]
LATITUDES = ["13.0827", "28.6139", "51.5072", "41.8781", "37.7749", "40.7128"]
TITLE = "Show HN: A deterministic VMM"


@pytest.fixture(autouse=True)
def no_proxy_for_loopback(monkeypatch):
    """httpx honours HTTP(S)_PROXY, as users behind a proxy need; the loopback server is never
    behind one (the subprocesses of the `vmm` fixture inherit this too)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


# --- a loopback server and feeds files pointing at it --------------------------------------------
def start_server() -> HTTPServer:
    """A real HTTP server on 127.0.0.1 (threaded: a slow answer blocks no other request)."""
    s = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    s.start()
    return s


@pytest.fixture(scope="module")
def shared_server():
    s = start_server()
    yield s
    s.clear()
    s.stop()


@pytest.fixture
def server(shared_server):
    """The module's server, with no handlers and an empty log."""
    shared_server.clear()
    yield shared_server
    shared_server.clear()


@pytest.fixture
def own_server():
    """A server of this test's own, which it may stop."""
    s = start_server()
    yield s
    s.clear()
    if s.is_running():
        s.stop()


def weather_answer(request) -> Response:
    """Open-Meteo's forecast answer, with a temperature that depends on the city asked for."""
    lat = parse_qs(request.query_string.decode())["latitude"][0]
    i = LATITUDES.index(lat)
    return Response(json.dumps({"latitude": float(lat), "current": {
        "time": "2026-01-01T12:00", "temperature_2m": 10.5 + i, "wind_speed_10m": 14.0 + i}}),
        content_type="application/json")


def air_answer(request) -> Response:
    lat = parse_qs(request.query_string.decode())["latitude"][0]
    i = LATITUDES.index(lat)
    return Response(json.dumps({"current": {"european_aqi": 20 + i, "pm2_5": 5.5,
                                            "pm10": None}}), content_type="application/json")


def serve_all(server: HTTPServer) -> None:
    server.expect_request("/v0/topstories.json").respond_with_json([4242, 17, 5])
    server.expect_request("/v0/item/4242.json").respond_with_json(
        {"id": 4242, "title": TITLE, "by": "someone"})
    server.expect_request("/v1/forecast").respond_with_handler(weather_answer)
    server.expect_request("/v1/air-quality").respond_with_handler(air_answer)


def feeds_text(base: str, *, timeout: float = 0.3, total: float = 2.0, max_bytes: int = 4096,
               max_text: int = 120, extra: str = "") -> str:
    base = base.rstrip("/")
    return f"""
[settings]
connect_timeout = {timeout}
read_timeout = {timeout}
total_timeout = {total}
max_bytes = {max_bytes}
max_text = {max_text}

[headline]
format = "HN: {{title}}"

[[headline.get]]
url = "{base}/v0/topstories.json"
fields = {{ id = "0" }}

[[headline.get]]
url = "{base}/v0/item/{{id}}.json"
fields = {{ title = "title" }}

[weather]
format = "{{city}}: {{temp}} C, wind {{wind}} km/h"

[[weather.get]]
url = "{base}/v1/forecast?latitude={{lat}}&longitude={{lon}}&current=temperature_2m,wind_speed_10m"
fields = {{ temp = "current.temperature_2m", wind = "current.wind_speed_10m" }}

[air]
format = "{{city}}: European AQI {{aqi}}, PM2.5 {{pm25}} ug/m3, PM10 {{pm10}} ug/m3"

[[air.get]]
url = "{base}/v1/air-quality?latitude={{lat}}&longitude={{lon}}&current=european_aqi,pm2_5,pm10"
fields = {{ aqi = "current.european_aqi", pm25 = "current.pm2_5", pm10 = "current.pm10" }}
{extra}
"""


def write_feeds(tmp_path, text: str, name: str = "feeds.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def fetcher_for(tmp_path, base: str, offline: bool = False, **kw) -> Fetcher:
    return Fetcher(load_feeds(write_feeds(tmp_path, feeds_text(base, **kw))), offline=offline)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the fetcher against the loopback server ------------------------------------------------------
def test_weather_success(server, tmp_path):
    serve_all(server)
    f = fetcher_for(tmp_path, server.url_for("/"))
    assert f.fetch("weather-3") == "London: 12.5 C, wind 16 km/h"
    assert f.fetch("weather-1") == "Chennai: 10.5 C, wind 14 km/h"
    request, _ = server.log[-1]
    assert request.args["longitude"] == "80.2707"       # the city's coordinates went out


def test_air_quality_success_shows_null_as_n_a(server, tmp_path):
    serve_all(server)
    f = fetcher_for(tmp_path, server.url_for("/"))
    assert f.fetch("air-6") == "New York: European AQI 25, PM2.5 5.5 ug/m3, PM10 n/a ug/m3"


def test_two_step_headline(server, tmp_path):
    serve_all(server)
    f = fetcher_for(tmp_path, server.url_for("/"))
    assert f.fetch("headline") == f"HN: {TITLE}"
    assert [r.path for r, _ in server.log] == ["/v0/topstories.json", "/v0/item/4242.json"]


def test_slow_answer_is_a_timeout(server, tmp_path):
    def slow(request):
        time.sleep(1.0)
        return Response("{}", content_type="application/json")
    server.expect_request("/v1/forecast").respond_with_handler(slow)
    f = fetcher_for(tmp_path, server.url_for("/"), timeout=0.3)
    start = time.monotonic()
    assert f.fetch("weather-2") == "weather unavailable: timeout"
    assert time.monotonic() - start < 0.9


def test_a_trickling_answer_is_cut_by_the_total_timeout(server, tmp_path):
    def trickle(request):
        def body():
            yield b'{"current": {'
            for _ in range(30):
                time.sleep(0.1)
                yield b" "
            yield b"}}"
        return Response(body(), content_type="application/json")
    server.expect_request("/v1/forecast").respond_with_handler(trickle)
    f = fetcher_for(tmp_path, server.url_for("/"), timeout=0.5, total=0.6)
    start = time.monotonic()
    assert f.fetch("weather-2") == "weather unavailable: timeout"
    assert time.monotonic() - start < 1.5


def test_http_500(server, tmp_path):
    server.expect_request("/v1/forecast").respond_with_data("oops", status=500)
    assert fetcher_for(tmp_path, server.url_for("/")).fetch("weather-3") == \
        "weather unavailable: HTTP 500"


def test_redirects_are_not_followed(server, tmp_path):
    server.expect_request("/v1/forecast").respond_with_data(
        "", status=302, headers={"Location": "http://example.com/"})
    assert fetcher_for(tmp_path, server.url_for("/")).fetch("weather-3") == \
        "weather unavailable: HTTP 302"


@pytest.mark.parametrize("body", ["{not json", "", "[" * 100_000],
                         ids=["garbage", "empty", "deeply-nested"])
def test_malformed_json(server, tmp_path, body):
    server.expect_request("/v1/forecast").respond_with_data(body)
    assert fetcher_for(tmp_path, server.url_for("/"), max_bytes=1 << 20).fetch("weather-3") == \
        "weather unavailable: bad JSON"


def test_missing_field(server, tmp_path):
    server.expect_request("/v1/forecast").respond_with_json({"current": {"temperature_2m": 3}})
    assert fetcher_for(tmp_path, server.url_for("/")).fetch("weather-3") == \
        "weather unavailable: missing field current.wind_speed_10m"


def test_a_field_that_is_not_a_single_value(server, tmp_path):
    server.expect_request("/v1/forecast").respond_with_json(
        {"current": {"temperature_2m": [1, 2], "wind_speed_10m": 3}})
    assert fetcher_for(tmp_path, server.url_for("/")).fetch("weather-3") == \
        "weather unavailable: field current.temperature_2m is not a single value"


def test_headline_with_no_stories_is_a_missing_field(server, tmp_path):
    server.expect_request("/v0/topstories.json").respond_with_json([])
    assert fetcher_for(tmp_path, server.url_for("/")).fetch("headline") == \
        "headline unavailable: missing field 0"


def test_huge_body_with_a_declared_length(server, tmp_path):
    server.expect_request("/v1/forecast").respond_with_data("x" * 100_000)
    assert fetcher_for(tmp_path, server.url_for("/"), max_bytes=4096).fetch("weather-3") == \
        "weather unavailable: answer too large (over 4096 bytes)"


def test_huge_streamed_body_is_cut_at_the_cap(server, tmp_path):
    sent = []

    def endless(request):
        def body():
            for _ in range(10_000):              # 640 MB if anyone read it all
                sent.append(1)
                yield b"x" * 65536
        return Response(body(), content_type="application/json")
    server.expect_request("/v1/air-quality").respond_with_handler(endless)
    start = time.monotonic()
    assert fetcher_for(tmp_path, server.url_for("/"), max_bytes=4096).fetch("air-1") == \
        "air quality unavailable: answer too large (over 4096 bytes)"
    assert time.monotonic() - start < 2
    assert len(sent) < 1000


def test_connection_refused(tmp_path):
    f = fetcher_for(tmp_path, f"http://127.0.0.1:{closed_port()}")
    assert f.fetch("weather-4") == "weather unavailable: connection refused"
    assert f.fetch("headline") == "headline unavailable: connection refused"


def test_answer_text_is_printable_ascii_and_capped(server, tmp_path):
    server.expect_request("/v0/topstories.json").respond_with_json([1])
    server.expect_request("/v0/item/1.json").respond_with_json(
        {"title": "Caf\u00e9 \u2013 na\u00efve \u201cquotes\u201d\n\x00\x1b[31m \u4e2d "
                  + "x" * 500})
    text = fetcher_for(tmp_path, server.url_for("/"), max_text=60).fetch("headline")
    assert text.startswith('HN: Cafe - naive "quotes" ??[31m ? xxx')
    assert len(text) == 60 and text.endswith("...")
    assert all(" " <= c <= "~" for c in text)


def test_fields_in_a_url_are_percent_encoded(server, tmp_path):
    server.expect_request("/v0/topstories.json").respond_with_json(["a/../b?c d"])
    server.expect_request(re.compile("/v0/item/.*")).respond_with_json({"title": "ok"})
    assert fetcher_for(tmp_path, server.url_for("/")).fetch("headline") == "HN: ok"
    request, _ = server.log[-1]
    assert request.environ["RAW_URI"] == "/v0/item/a%2F..%2Fb%3Fc%20d.json"


def test_format_spec(server, tmp_path):
    serve_all(server)
    extra = ('[weather-3]\nformat = "{city} {temp:.0f}/{wind:>5.1f}"\n'
             '[[weather-3.get]]\nurl = "' + server.url_for("/v1/forecast")
             + '?latitude={lat}"\nfields = { temp = "current.temperature_2m", '
               'wind = "current.wind_speed_10m" }\n')
    f = fetcher_for(tmp_path, server.url_for("/"), extra=extra)
    assert f.fetch("weather-3") == "London 12/ 16.0"
    assert f.fetch("weather-2") == "New Delhi: 11.5 C, wind 15 km/h"


def test_a_format_spec_that_does_not_fit_the_value(server, tmp_path):
    server.expect_request("/v0/topstories.json").respond_with_json([1])
    server.expect_request("/v0/item/1.json").respond_with_json({"title": "words"})
    text = feeds_text(server.url_for("/")).replace('format = "HN: {title}"',
                                                   'format = "{title:.2f}"')
    f = Fetcher(load_feeds(write_feeds(tmp_path, text)))
    assert f.fetch("headline") == "headline unavailable: cannot format field title as '.2f'"


def test_offline_touches_no_network(server, tmp_path):
    serve_all(server)
    f = fetcher_for(tmp_path, server.url_for("/"), offline=True)
    assert f.fetch("headline") == "headline unavailable: offline"
    assert f.fetch("weather-1") == "weather unavailable: offline"
    assert f.fetch("air-2") == "air quality unavailable: offline"
    assert server.log == [] and f.requests == 0


def test_a_stop_request_abandons_a_waiting_fetch(server, tmp_path):
    def slow(request):
        time.sleep(1.0)
        return Response("{}")
    server.expect_request("/v1/forecast").respond_with_handler(slow)
    f = fetcher_for(tmp_path, server.url_for("/"), timeout=5, total=5)
    calls = []

    def poll():
        calls.append(1)
        if len(calls) == 3:
            raise StopRun("interrupted", "interrupted (SIGINT)")
    start = time.monotonic()
    with pytest.raises(StopRun):
        f.fetch("weather-1", poll=poll)
    assert time.monotonic() - start < 0.5


# --- offline sources: fixed text and local files --------------------------------------------------
def test_fixed_text_and_files(tmp_path):
    (tmp_path / "news.txt").write_text("Local news:\n  all   quiet\u2026\n")
    (tmp_path / "air-3.txt").write_text("London air: fine")
    feeds = write_feeds(tmp_path, """
[headline]
file = "news.txt"
[weather]
text = "{city} (#{n}): sunny, {lat:.1f}N"
[air]
file = "air-{n}.txt"
[weather-6]
text = "New York: snow"
""")
    f = Fetcher(load_feeds(feeds), offline=True)       # no network needed: served offline too
    assert f.fetch("headline") == "Local news: all quiet..."
    assert f.fetch("weather-3") == "London (#3): sunny, 51.5N"
    assert f.fetch("weather-6") == "New York: snow"
    assert f.fetch("air-3") == "London air: fine"
    assert f.fetch("air-1") == "air quality unavailable: file air-1.txt not found"


def test_file_sources_refuse_big_files_and_non_files(tmp_path):
    (tmp_path / "big.txt").write_text("x" * 5000)
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    feeds = write_feeds(tmp_path, '[settings]\nmax_bytes = 1000\n[headline]\nfile = "big.txt"\n'
                                  '[weather]\nfile = "dir"\n[air]\nfile = "fifo"\n')
    f = Fetcher(load_feeds(feeds))
    assert f.fetch("headline") == \
        "headline unavailable: file big.txt is too large (over 1000 bytes)"
    assert f.fetch("weather-1") == "weather unavailable: dir is not a regular file"
    assert f.fetch("air-1") == "air quality unavailable: fifo is not a regular file"


def test_an_empty_answer_is_unavailable(tmp_path):
    (tmp_path / "empty.txt").write_text(" \n\t")
    f = Fetcher(load_feeds(write_feeds(tmp_path, '[headline]\nfile = "empty.txt"\n')))
    assert f.fetch("headline") == "headline unavailable: empty answer"


def test_the_built_in_feeds():
    feeds = load_feeds()
    assert feeds.path is None and list(feeds.devices) == list(DEVICE_NAMES)
    assert [c.name for c in feeds.cities] == CITIES
    weather = feeds.devices["weather-3"].describe()
    assert weather["vars"] == {"city": "London", "lat": 51.5072, "lon": -0.1276, "n": 3}
    assert weather["get"][0]["url"].startswith("https://api.open-meteo.com/v1/forecast?")
    assert feeds.devices["air-1"].describe()["get"][0]["url"].startswith(
        "https://air-quality-api.open-meteo.com/v1/air-quality?")
    assert [s["url"] for s in feeds.devices["headline"].describe()["get"]] == [
        "https://hacker-news.firebaseio.com/v0/topstories.json",
        "https://hacker-news.firebaseio.com/v0/item/{id}.json"]
    described = feeds.describe(offline=True)
    assert described["file"] is None and described["offline"] is True
    assert json.loads(json.dumps(described)) == described


def test_a_user_file_is_laid_over_the_defaults(tmp_path):
    feeds = load_feeds(write_feeds(tmp_path, '[settings]\nmax_text = 40\n[weather]\ntext = "x"\n'))
    assert feeds.settings.max_text == 40 and feeds.settings.read_timeout == 5.0
    assert feeds.devices["weather-1"].source == "text"
    assert feeds.devices["air-1"].source == "get"          # untouched tables keep the default


def test_the_web_module_does_not_import_httpx_until_a_request():
    code = ("import sys; from vmm import cli, runner, machine, inputs, web, feeds; "
            "f = web.Fetcher(feeds.load_feeds(), offline=True); f.fetch('weather-1'); "
            "assert 'httpx' not in sys.modules, 'httpx imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --- feeds-file errors: one UsageError naming the file and the key --------------------------------
@pytest.mark.parametrize("text, key, problem", [
    ("[settings\n", None, "is not valid TOML"),
    ("wether = 1\n", "wether", "unknown key"),
    ('[settings]\nread_timeout = "fast"\n', "settings.read_timeout", "must be a number"),
    ("[settings]\nread_timeout = true\n", "settings.read_timeout", "must be a number"),
    ("[settings]\nmax_bytes = 0\n", "settings.max_bytes", "must be between"),
    ("[settings]\nmax_bytes = 1.5\n", "settings.max_bytes", "whole number"),
    ("[settings]\ntotal_timeout = nan\n", "settings.total_timeout", "must be between"),
    ("[settings]\nspeed = 1\n", "settings.speed", "unknown key"),
    ("settings = 3\n", "settings", "must be a table"),
    ('[[city]]\nname = "A"\nlatitude = 1\nlongitude = 2\n', "city", "exactly 6"),
    ("city = 5\n", "city", "exactly 6"),
    ("[headline]\n", "headline", "needs exactly one source"),
    ('[headline]\ntext = "a"\nfile = "b"\n', "headline", "it has text and file"),
    ('[headline]\ntext = "{city}"\n', "headline.text", "uses {city}, which is not defined"),
    ('[headline]\ntext = "a"\nformat = "b"\n', "headline.format", "applies to get only"),
    ('[headline]\ntext = 5\n', "headline.text", "must be a string"),
    ('[weather]\ntext = "{city.__class__}"\n', "weather.text", "bad placeholder"),
    ('[weather]\ntext = "{city!r}"\n', "weather.text", "conversions are not supported"),
    ('[weather]\ntext = "{lat:>{lon}}"\n', "weather.text", "short spec"),
    ('[weather]\ntext = "{lat:>999999999}"\n', "weather.text", "short spec"),
    ('[weather]\ntext = "{"\n', "weather.text", "not a valid template"),
    ('[weather]\nfile = "{lat:.1f}"\n', "weather.file", "not allowed here"),
    ('[weather]\nformat = "{pressure}"\n[[weather.get]]\nurl = "https://h/x"\n'
     'fields = { t = "a" }\n', "weather.format", "uses {pressure}"),
    ('[weather]\n[[weather.get]]\nurl = "https://h/x"\nfields = { t = "a" }\n',
     "weather.format", "missing"),
    ('[weather]\nformat = "x"\nget = []\n', "weather.get", "1 to 4"),
    ('[weather]\nformat = "x"\n[[weather.get]]\nurl = "https://{city}.example/"\n'
     'fields = { t = "a" }\n', "weather.get[0].url", "host name written out"),
    ('[weather]\nformat = "x"\n[[weather.get]]\nurl = "https://example.com{city}"\n'
     'fields = { t = "a" }\n', "weather.get[0].url", "host name written out"),
    ('[weather]\nformat = "x"\n[[weather.get]]\nurl = "ftp://example.com/"\n'
     'fields = { t = "a" }\n', "weather.get[0].url", "http:// or https://"),
    ('[weather]\nformat = "x"\n[[weather.get]]\nurl = "https://u:p@example.com/"\n'
     'fields = { t = "a" }\n', "weather.get[0].url", "user:password@"),
    ('[weather]\nformat = "x"\n[[weather.get]]\nurl = "https://example.com/a b"\n'
     'fields = { t = "a" }\n', "weather.get[0].url", "characters a URL cannot have"),
    ('[weather]\nformat = "x"\n[[weather.get]]\nurl = "https://h/{t}"\n'
     'fields = { t = "a" }\n', "weather.get[0].url", "uses {t}, which is not defined"),
    ('[weather]\nformat = "x"\n[[weather.get]]\nurl = "https://h/"\nfields = { city = "a" }\n',
     "weather.get[0].fields.city", "already defined"),
    ('[weather]\nformat = "x"\n[[weather.get]]\nurl = "https://h/"\nfields = { t = "a..b" }\n',
     "weather.get[0].fields.t", "JSON path"),
    ('[weather]\nformat = "x"\n[[weather.get]]\nurl = "https://h/"\nfields = {}\n',
     "weather.get[0].fields", "1 to 20"),
    ('[weather]\nformat = "x"\n[[weather.get]]\nurl = "https://h/"\n', "weather.get[0].fields",
     "missing"),
    ('[weather]\nformat = "x"\n[[weather.get]]\nurl = "https://h/"\nfields = { t = "a" }\n'
     'method = "POST"\n', "weather.get[0].method", "unknown key"),
    ('[weather-7]\ntext = "x"\n', "weather-7", "unknown key"),
    ('[air-2]\ntext = "x"\nfile = "y"\n', "air-2", "needs exactly one source"),
])
def test_feeds_file_errors(tmp_path, text, key, problem):
    path = write_feeds(tmp_path, text, "bad-feeds.toml")
    with pytest.raises(UsageError) as info:
        load_feeds(path)
    message = str(info.value)
    assert "bad-feeds.toml" in message and problem in message, message
    if key is not None:
        assert f": {key}:" in message, message
    assert "\n" not in message


def test_bad_cities(tmp_path):
    cities = "".join(f'[[city]]\nname = "C{i}"\nlatitude = 1.0\nlongitude = 2\n' for i in range(5))
    for entry, key, problem in [
            ('[[city]]\nname = "X"\nlatitude = 100\nlongitude = 0\n', "city[5].latitude",
             "between -90 and 90"),
            ('[[city]]\nname = "X"\nlatitude = 0\n', "city[5].longitude", "missing"),
            ('[[city]]\nname = ""\nlatitude = 0\nlongitude = 0\n', "city[5].name", "printable"),
            ('[[city]]\nname = "Z\u00fcrich"\nlatitude = 0\nlongitude = 0\n', "city[5].name",
             "printable ASCII"),
            ('[[city]]\nname = "X"\nlatitude = 0\nlongitude = 0\npop = 1\n', "city[5].pop",
             "unknown key")]:
        path = write_feeds(tmp_path, cities + entry)
        with pytest.raises(UsageError, match=re.escape(f"feeds.toml: {key}: ") + f".*{problem}"):
            load_feeds(path)


@pytest.mark.parametrize("setup, problem", [
    (lambda p: None, "feeds file not found"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: p.write_bytes(b"[headline]\ntext = \"\xff\"\n"), "is not UTF-8 text"),
    (lambda p: p.write_bytes(b"#" * (2 << 20)), "is larger than"),
])
def test_unreadable_feeds_files(tmp_path, setup, problem):
    path = tmp_path / "feeds.toml"
    setup(path)
    with pytest.raises(UsageError, match=problem):
        load_feeds(str(path))


def test_a_bad_feeds_file_on_the_command_line_is_one_line_and_exit_2(tmp_path, vmm, guests):
    path = write_feeds(tmp_path, "[settings]\nmax_text = 5\n")
    for command in ("run", "record"):
        extra = ["-o", str(tmp_path / "t.trace")] if command == "record" else []
        r = vmm(command, guests / "monitor.bin", "--feeds", path, *extra)
        assert r.returncode == 2, r
        assert r.stderr.splitlines() == [
            f"vmm: error: feeds file {path}: settings.max_text: must be between 16 and 1000 "
            "characters, not 5"], r
    assert not (tmp_path / "t.trace").exists()           # refused before anything was written
    r = vmm("run", guests / "monitor.bin", "--feeds", tmp_path / "nope.toml")
    assert r.returncode == 2 and "feeds file not found" in r.stderr, r


# --- the device, with a fake input source ---------------------------------------------------------
class FetchingInput:
    """An input source that answers fetches from a list and logs when it is asked."""

    def __init__(self, *texts: str):
        self.texts = list(texts)
        self.calls: list[str] = []

    def fetch(self, device: str) -> str:
        self.calls.append(device)
        return self.texts.pop(0)


def read_text(device: WebDevice, size: int = 2) -> list[int]:
    values = []
    while True:
        values.append(device.read(0, size))
        if values[-1] == 0:
            return values


@pytest.mark.parametrize("size", [1, 2, 4])
def test_device_returns_the_text_then_0_and_fetches_again(size):
    inputs = FetchingInput("Hi!", "Second")
    dev = WebDevice("weather-3", inputs)
    assert read_text(dev, size) == [ord("H"), ord("i"), ord("!"), 0]
    assert inputs.calls == ["weather-3"]                  # one fetch, at the first IN
    assert bytes(read_text(dev, size)[:-1]) == b"Second"
    assert inputs.calls == ["weather-3", "weather-3"]
    assert dev.stats() == {"fetches": 2}


def test_device_high_byte_is_zero_and_fetch_happens_only_at_the_first_read():
    inputs = FetchingInput("ab")
    dev = WebDevice("headline", inputs)
    assert dev.stats() == {} and inputs.calls == []       # nothing before the guest reads
    assert dev.read(0, 2) == ord("a") and dev.read(0, 2) < 0x100


def test_device_reduces_whatever_it_is_given():
    inputs = FetchingInput("a\x00b\nc\u00e9\x7f" + "z" * 5000, "")
    dev = WebDevice("air-1", inputs)
    text = bytes(read_text(dev, 1)[:-1]).decode()
    assert text.startswith("a?b ce?zz") and len(text) == MAX_TEXT
    assert read_text(dev) == [0]                          # an empty text: 0 at once


def test_clean_text_and_unavailable_lines():
    assert clean_text("  two\r\n lines\t ") == "two lines"
    assert clean_text("\u00c5ngstr\u00f6m \u201cok\u201d 5\u00b0C \u03bcg") == \
        'Angstrom "ok" 5 deg C ug'
    assert clean_text("abcdefghij" * 3, 16) == "abcdefghijabc..."
    assert clean_text(clean_text("x" * 50, 20), 20) == clean_text("x" * 50, 20)
    assert kind_of("weather-3") == "weather"
    assert unavailable("air-2", "timeout") == "air quality unavailable: timeout"
    assert unavailable("headline", "HTTP 500") == "headline unavailable: HTTP 500"


# --- the input sources ----------------------------------------------------------------------------
class FakeFetcher:
    def __init__(self):
        self.calls = []

    def fetch(self, device, poll=None):
        self.calls.append(device)
        return f"{device} text"


class FakeRecorder:
    def __init__(self):
        self.records = []

    def fetch(self, n, at, device, text):
        self.records.append((n, at, device, text))


def test_live_input_fetch_records_and_takes_no_virtual_time():
    clock, fetcher, recorder = VirtualClock(), FakeFetcher(), FakeRecorder()
    clock.advance_to(5_000)
    inputs = LiveInput(NullFeed(), clock, record=recorder, fetcher=fetcher)
    inputs.obs = 7
    assert inputs.fetch("weather-2") == "weather-2 text"
    assert recorder.records == [(7, 5_000, "weather-2", "weather-2 text")]
    assert clock.now() == 5_000


def test_live_input_serves_canned_answers_in_order_without_fetching():
    fetcher = FakeFetcher()
    inputs = LiveInput(NullFeed(), VirtualClock(), fetcher=fetcher,
                       fetch_answers={"weather-1": ["one", "two"]})
    assert [inputs.fetch("weather-1"), inputs.fetch("weather-1")] == ["one", "two"]
    assert inputs.fetch("weather-1") == "weather unavailable: not in the recording"
    assert inputs.fetch("headline") == "headline unavailable: not in the recording"
    assert fetcher.calls == []


def test_live_input_without_a_fetcher():
    assert LiveInput(NullFeed(), VirtualClock()).fetch("air-4") == \
        "air quality unavailable: no feeds configured"


def fetch_event(n, dev="weather-3", text="London: 12 C"):
    return {"type": "fetch", "n": n, "at": 0, "dev": dev, "text": text}


def test_replay_input_serves_the_recorded_fetch_at_its_stamp():
    inputs = ReplayInput([fetch_event(2)], None, None)
    inputs.observe()
    inputs.observe()
    assert inputs.fetch("weather-3") == "London: 12 C"


def test_replay_input_a_fetch_the_trace_does_not_hold_diverges():
    inputs = ReplayInput([fetch_event(2)], None, None)
    inputs.observe()
    with pytest.raises(StopRun) as info:
        inputs.fetch("weather-3")
    assert info.value.reason == "diverged" and "observation 1" in info.value.message
    inputs.observe()
    with pytest.raises(StopRun) as info:
        inputs.fetch("weather-4")                         # the right stamp, another device
    assert info.value.reason == "diverged" and "weather-4" in info.value.message


def test_replay_input_a_recorded_fetch_the_guest_skips_diverges():
    inputs = ReplayInput([fetch_event(1)], None, None)
    inputs.observe()
    with pytest.raises(StopRun) as info:
        inputs.observe()
    assert info.value.reason == "diverged"
    assert "the weather-3 fetch 'London: 12 C' at observation 1" in info.value.message


# --- fetch records in traces ----------------------------------------------------------------------
GUEST = b"\xf4"
MACHINE = {"kind": "raw", "mode": "real", "mem": 1 << 20, "devices": []}
END = {"type": "end", "n": 5, "at": 0, "at_read": True, "reason": "halt", "exit_code": 0}


def write_trace(path, records, version=None) -> str:
    header = make_header(guest_name="g.bin", guest_bytes=GUEST, machine=MACHINE,
                         clock="virtual", script=None, info={}, vmm_version="0")
    if version is not None:
        header["version"] = version
    w = TraceWriter(str(path))
    for record in [header, *records, END]:
        w.write(record)
    w.close()
    return str(path)


def test_fetch_records_round_trip(tmp_path):
    trace = read_trace(write_trace(tmp_path / "t.trace", [fetch_event(3)]))
    assert trace.header["version"] >= 2          # fetch records: version 2 on
    assert trace.inputs() == [fetch_event(3)]


def test_version_1_traces_are_still_read(tmp_path):
    key = {"type": "key", "n": 1, "at": 0, "dev": "com1", "byte": 50}
    trace = read_trace(write_trace(tmp_path / "t.trace", [key], version=1))
    assert trace.inputs() == [key]


@pytest.mark.parametrize("record, version, problem", [
    (fetch_event(3), 1, "fetch records need trace format version 2"),
    (fetch_event(3, dev="weather-9"), None, "names no web device"),
    (fetch_event(3, text="tab\there"), None, "printable ASCII"),
    (fetch_event(3, text="x" * (MAX_TEXT + 1)), None, "printable ASCII"),
    ({"type": "fetch", "n": 3, "at": 0, "dev": "headline"}, None, "lacks a valid 'text'"),
    ({"type": "fetch", "n": 3, "dev": "headline", "text": "x"}, None, "lacks a valid 'at'"),
])
def test_bad_fetch_records_are_refused(tmp_path, record, version, problem):
    path = write_trace(tmp_path / "t.trace", [record], version=version)
    with pytest.raises(TraceError, match=problem):
        read_trace(path)


def test_inspect_shows_fetches_and_the_feeds():
    header = make_header(guest_name="g.bin", guest_bytes=GUEST,
                         machine=dict(MACHINE, feeds=load_feeds().describe(offline=True)),
                         clock="virtual", script=None, info={}, vmm_version="0")
    trace = Trace(header=header, records=[fetch_event(3)], end=END, path="t.trace")
    s = summarize(trace)
    assert s["counts"]["fetches"] == 1
    assert s["timeline"][0]["what"] == "fetch weather-3: London: 12 C"
    assert s["machine"]["feeds"]["offline"] is True
    text = format_summary(s)
    assert "1 web fetches" in text
    assert "feeds     built-in  sha256 " in text and text.count(", offline") == 1


# --- on KVM: the monitor guest --------------------------------------------------------------------
def walk_script() -> str:
    """Every web entry of the monitor's menu: the headline, each city's weather and air
    quality, and one invalid city; then halt."""
    steps = ['expect "Choice: "', 'send "2"', 'expect "Choice: "']
    for entry in "34":
        for city in "123456":
            steps += [f'send "{entry}"', 'expect "City: "', f'send "{city}"',
                      'expect "Choice: "']
    steps += ['send "3"', 'expect "City: "', 'send "9"', 'expect "Invalid city: 9"',
              'expect "Choice: "', 'send "h"', 'expect "Halted."']
    return "\n".join(steps) + "\n"


EXPECTED_WEB_LINES = (
    [f"HN: {TITLE}"]
    + [f"{c}: {10.5 + i:g} C, wind {14 + i} km/h" for i, c in enumerate(CITIES)]
    + [f"{c}: European AQI {20 + i}, PM2.5 5.5 ug/m3, PM10 n/a ug/m3"
       for i, c in enumerate(CITIES)])


def after_fetching(lines: list[str]) -> list[str]:
    return [lines[i + 1] for i, line in enumerate(lines) if line == "Fetching, please wait..."]


@pytest.mark.kvm
def test_record_with_the_server_up_and_replay_with_it_stopped(own_server, tmp_path, guests, vmm):
    server = own_server
    serve_all(server)
    feeds = write_feeds(tmp_path, feeds_text(server.url_for("/")))
    script = tmp_path / "walk.script"
    script.write_text(walk_script())
    trace = tmp_path / "web.trace"
    rec = vmm("record", guests / "monitor.bin", "--feeds", feeds, "--script", script,
              "-o", trace)
    assert rec.returncode == 0, rec
    assert after_fetching(rec.lines) == EXPECTED_WEB_LINES
    assert "Invalid city: 9" in rec.lines and rec.lines[-1] == "Halted."
    assert len(server.log) == 2 + 12

    server.stop()                                         # no network from here on
    os.remove(feeds)                                      # and no feeds file either
    rep = vmm("replay", trace)
    assert rep.returncode == 0, rep
    assert rep.stdout == rec.stdout
    assert "replay identical" in rep.stderr

    redrive = vmm("replay", trace, "--guest", guests / "monitor.bin")
    assert redrive.returncode == 0, redrive
    assert redrive.stdout == rec.stdout and "re-drive identical" in redrive.stderr

    records = read_trace(str(trace))
    fetches = [r for r in records.records if r["type"] == "fetch"]
    assert [r["text"] for r in fetches] == EXPECTED_WEB_LINES
    assert [r["dev"] for r in fetches] == list(DEVICE_NAMES)
    assert records.header["machine"]["feeds"]["file"] == feeds
    inspect = vmm("inspect", trace, "--limit", "0")
    assert inspect.returncode == 0, inspect
    assert "fetch weather-3: London: 12.5 C, wind 16 km/h" in inspect.stdout
    assert "13 web fetches" in inspect.stdout


@pytest.mark.kvm
def test_a_replay_whose_guest_fetches_elsewhere_diverges(server, tmp_path, guests, vmm):
    serve_all(server)
    feeds = write_feeds(tmp_path, feeds_text(server.url_for("/")))
    trace = tmp_path / "web.trace"
    rec = vmm("record", guests / "monitor.bin", "--feeds", feeds, "-o", trace, input=b"2h")
    assert rec.returncode == 0, rec
    lines = trace.read_text().splitlines()
    edited = [line.replace('"dev":"headline"', '"dev":"weather-1"') for line in lines]
    trace.write_text("\n".join(edited) + "\n")
    rep = vmm("replay", trace)
    assert rep.returncode == 40, rep
    assert "headline fetch" in rep.stderr


@pytest.mark.kvm
def test_with_the_server_unreachable_the_guest_prints_unavailable_lines(tmp_path, guests, vmm):
    feeds = write_feeds(tmp_path, feeds_text(f"http://127.0.0.1:{closed_port()}"))
    start = time.monotonic()
    r = vmm("run", guests / "monitor.bin", "--feeds", feeds, input=b"23\n34\n6h")
    assert r.returncode == 0, r
    assert time.monotonic() - start < 20
    assert after_fetching(r.lines) == ["headline unavailable: connection refused",
                                       "weather unavailable: connection refused",
                                       "air quality unavailable: connection refused"]
    assert r.lines[-1] == "Halted."


@pytest.mark.kvm
def test_offline_flag(guests, vmm):
    r = vmm("run", guests / "monitor.bin", "--offline", input=b"23135h")
    assert r.returncode == 0, r
    assert after_fetching(r.lines) == ["headline unavailable: offline",
                                       "weather unavailable: offline",
                                       "weather unavailable: offline"]


@pytest.mark.kvm
def test_a_slow_server_times_out_and_the_guest_keeps_running(server, tmp_path, guests, vmm):
    def slow(request):
        time.sleep(1.0)
        return Response("{}")
    server.expect_request("/v1/forecast").respond_with_handler(slow)
    feeds = write_feeds(tmp_path, feeds_text(server.url_for("/"), timeout=0.3))
    r = vmm("run", guests / "monitor.bin", "--feeds", feeds, input=b"32h")
    assert r.returncode == 0, r
    assert after_fetching(r.lines)[0] == "weather unavailable: timeout"


@pytest.mark.kvm
def test_the_run_timeout_stops_a_run_waiting_for_a_fetch(server, tmp_path, guests, vmm):
    def slow(request):
        time.sleep(3.0)
        return Response("{}")
    server.expect_request("/v1/forecast").respond_with_handler(slow)
    feeds = write_feeds(tmp_path, feeds_text(server.url_for("/"), timeout=10, total=10))
    start = time.monotonic()
    r = vmm("run", guests / "monitor.bin", "--feeds", feeds, "--timeout", "500ms",
            input=b"31")
    assert r.returncode == 28, r
    assert time.monotonic() - start < 2.5
    assert r.lines[-1] == "Fetching, please wait..."


@pytest.mark.kvm
def test_invalid_city_returns_to_the_menu(guests, vmm):
    r = vmm("run", guests / "monitor.bin", "--offline", input=b"40\n3xh")
    assert r.returncode == 0, r
    assert "Invalid city: 0" in r.lines and "Invalid city: x" in r.lines
    i = r.lines.index("Invalid city: 0")
    assert r.lines[i + 1] == "Menu:"
    assert "Fetching, please wait..." not in r.lines and r.lines[-1] == "Halted."


@pytest.mark.kvm
def test_runs_that_never_read_a_web_port_do_not_import_httpx(guests):
    code = ("import sys; from vmm.cli import main; "
            f"rc = main(['run', {str(guests / 'reset-hello.bin')!r}, '--entry', 'reset']); "
            "assert rc == 0 and 'httpx' not in sys.modules, (rc, 'httpx' in sys.modules)")
    subprocess.run(vmm_command()[:1] + ["-c", code], check=True, cwd=ROOT,
                   capture_output=True)
