"""Scripts (vmm.script, docs/scripts.md): the parser, the step validator for trace headers, and
the ScriptRunner engine driven with a fake clock."""

from __future__ import annotations

import pytest

from vmm.errors import TraceError, UsageError
from vmm.script import (DEFAULT_EXPECT_TIMEOUT_NS, ScriptRunner, load_script, parse_script,
                        unescape, validate_steps)
from vmm.trace import Trace, make_header

MS, S = 1_000_000, 1_000_000_000


def parse_error(text: str, name: str = "s.txt") -> str:
    """parse_script must refuse text with a one-line UsageError; returns the message."""
    with pytest.raises(UsageError) as info:
        parse_script(text, name)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- parsing: the steps -------------------------------------------------------------------------
def test_send():
    assert parse_script('send "hello"') == [{"op": "send", "data": "hello"}]


def test_sendline_appends_newline():
    assert parse_script('sendline "hello"') == [{"op": "send", "data": "hello\n"}]


def test_expect_text_has_default_timeout():
    assert parse_script('expect "hello"') == [
        {"op": "expect", "text": "hello", "timeout_ns": DEFAULT_EXPECT_TIMEOUT_NS}]
    assert DEFAULT_EXPECT_TIMEOUT_NS == 10 * S


def test_expect_regex():
    assert parse_script("expect /h[ae]llo/") == [
        {"op": "expect", "regex": "h[ae]llo", "timeout_ns": 10 * S}]


def test_expect_regex_may_contain_escaped_slash():
    assert parse_script(r"expect /a\/b/")[0]["regex"] == r"a\/b"


@pytest.mark.parametrize("line, key", [('expect "hello" within 2s', "text"),
                                       ("expect /hel+o/ within 2s", "regex")])
def test_expect_within(line, key):
    step = parse_script(line)[0]
    assert step["timeout_ns"] == 2 * S and key in step


def test_expect_within_fractional_duration():
    assert parse_script('expect "x" within 1.5s')[0]["timeout_ns"] == 1500 * MS


def test_wait():
    assert parse_script("wait 500ms") == [{"op": "wait", "ns": 500 * MS}]


def test_idle():
    assert parse_script("idle") == [{"op": "idle"}]


def test_comments_blank_lines_and_indentation_are_skipped():
    text = "# a comment\n\n   \n  sendline \"a\"\n\t# indented comment\n  idle  \n"
    assert parse_script(text) == [{"op": "send", "data": "a\n"}, {"op": "idle"}]


@pytest.mark.parametrize("line", ['send "a"  # note', 'sendline "a" # note', "idle # note",
                                  'expect "a" # note', 'expect "a" within 2s # note',
                                  "expect /a/ within 2s   # note"])
def test_trailing_comment_after_a_step(line):
    assert len(parse_script(line)) == 1


def test_hash_inside_a_string_is_not_a_comment():
    assert parse_script('send "a # b"') == [{"op": "send", "data": "a # b"}]


def test_steps_keep_their_order():
    text = 'send "a"\nexpect "b"\nwait 1s\nidle\nsendline "c"\n'
    assert [s["op"] for s in parse_script(text)] == ["send", "expect", "wait", "idle", "send"]


def test_empty_script_has_no_steps():
    assert parse_script("") == [] and parse_script("# only\n\n") == []


def test_trailing_comment_after_wait():
    assert parse_script("wait 500ms                    # let guest time pass") == [
        {"op": "wait", "ns": 500 * MS}]


def test_trailing_comment_with_slash_after_regex():
    assert parse_script("expect /h[ae]llo/ within 2s  # hello and/or hallo")[0]["regex"] == \
        "h[ae]llo"


# --- parsing: escapes ---------------------------------------------------------------------------
@pytest.mark.parametrize("escape, char", [
    (r"\n", "\n"), (r"\r", "\r"), (r"\t", "\t"), (r"\b", "\b"), (r"\e", "\x1b"),
    (r"\0", "\0"), (r"\\", "\\"), (r"\"", '"'), (r"\x41", "A"), (r"\x7f", "\x7f"),
    (r"\xFF", "\xff"), (r"\xfe", "\xfe"),
])
def test_escape(escape, char):
    assert parse_script(f'send "<{escape}>"') == [{"op": "send", "data": f"<{char}>"}]


def test_escapes_in_expect_text():
    assert parse_script(r'expect "a\tb\\"')[0]["text"] == "a\tb\\"


def test_escaped_backslash_before_closing_quote():
    assert parse_script(r'send "a\\" # x')[0]["data"] == "a\\"


def test_unescape_lone_backslash():
    with pytest.raises(ValueError, match="lone backslash"):
        unescape("abc\\")


# --- parsing: errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("text, line, words", [
    ('send "abc', 1, "unterminated string"),
    ('# c\n\nsend "abc\\"', 3, "unterminated string"),         # a lone backslash eats the quote
    ('send "a\\qb"', 1, "unknown escape \\q"),
    ('send "\\xZZ"', 1, "bad escape"),
    ('send "\\x4"', 1, "bad escape"),
    ("send hello", 1, "double-quoted"),
    ("sendline", 1, "double-quoted"),
    ("idle\nbogus 1", 2, "unknown step 'bogus'"),
    ("wait 5", 1, "bad duration"),
    ("wait", 1, "bad duration"),
    ("wait soon", 1, "bad duration"),
    ('expect "a" within 5', 1, "bad duration"),
    ('expect "a" within', 1, "within DURATION"),
    ("expect /(/", 1, "bad regular expression"),
    ("expect /abc", 1, "unterminated /regex/"),
    ('send "a" junk', 1, "unexpected 'junk'"),
    ('sendline "a" "b"', 1, "unexpected"),
    ("idle now", 1, "unexpected 'now'"),
    ('expect "a" within 2s extra', 1, "within DURATION"),
    ('expect "a" after 2s', 1, "within DURATION"),
    ('send "\u20ac"', 1, "\\xHH"),
    ('sendline "caf\u00e9 \u20ac"', 1, "\\xHH"),
])
def test_parse_error_names_file_and_line(text, line, words):
    message = parse_error(text)
    assert message.startswith(f"s.txt:{line}: ")
    assert words in message


def test_latin1_text_is_accepted_in_send():
    assert parse_script('send "caf\u00e9"') == [{"op": "send", "data": "caf\u00e9"}]


def test_unbalanced_quote_after_expect_is_a_usage_error():
    assert parse_error("expect \"a\" 'x").startswith("s.txt:1: ")


def test_load_script_missing_file(tmp_path):
    path = tmp_path / "nope.script"
    with pytest.raises(UsageError) as info:
        load_script(str(path))
    assert "not found" in str(info.value) and str(path) in str(info.value)


def test_load_script_reads_file(tmp_path):
    path = tmp_path / "s.script"
    path.write_text('sendline "hi"\nexpect "hi" within 1s\n')
    assert load_script(str(path)) == [{"op": "send", "data": "hi\n"},
                                      {"op": "expect", "text": "hi", "timeout_ns": S}]


def test_load_script_errors_name_the_path_and_line(tmp_path):
    path = tmp_path / "s.script"
    path.write_text('idle\n\nfly "away"\n')
    with pytest.raises(UsageError) as info:
        load_script(str(path))
    assert str(info.value).startswith(f"{path}:3: ")


def test_load_script_not_utf8(tmp_path):
    path = tmp_path / "s.script"
    path.write_bytes(b'send "\xff"\n')
    with pytest.raises(UsageError) as info:
        load_script(str(path))
    assert str(path) in str(info.value)


# --- validate_steps (a trace header's script is untrusted) --------------------------------------
FULL_SCRIPT = ('sendline "root"\nsend "\\x1b[A"\nexpect "login:"\nexpect /^\\$ $/ within 2s\n'
               'wait 1.5s\nidle\n')


def test_validate_steps_accepts_parsed_script():
    steps = parse_script(FULL_SCRIPT)
    assert validate_steps(steps) == steps


def test_validate_steps_accepts_at_steps():
    steps = [{"op": "at", "ns": 5}, {"op": "send", "data": "a"}]
    assert validate_steps(steps) == steps


@pytest.mark.parametrize("steps", [None, {"op": "idle"}, "idle", 5])
def test_validate_steps_rejects_non_list(steps):
    with pytest.raises(ValueError, match="not a list"):
        validate_steps(steps)


@pytest.mark.parametrize("step", ["idle", ["idle"], None, 3])
def test_validate_steps_rejects_non_object_step(step):
    with pytest.raises(ValueError, match="not an object"):
        validate_steps([{"op": "idle"}, step])


@pytest.mark.parametrize("step", [
    {"op": "jump"},
    {},
    {"op": None},
    {"op": "send"},
    {"op": "send", "data": 65},
    {"op": "send", "data": b"a"},
    {"op": "expect", "text": "a"},
    {"op": "expect", "text": "a", "timeout_ns": "1s"},
    {"op": "expect", "text": "a", "timeout_ns": 1.0},
    {"op": "expect", "timeout_ns": 5},
    {"op": "expect", "text": 5, "timeout_ns": 5},
    {"op": "expect", "regex": ["a"], "timeout_ns": 5},
    {"op": "wait"},
    {"op": "wait", "ns": "1s"},
    {"op": "wait", "ns": 1.5},
    {"op": "at", "ns": None},
])
def test_validate_steps_rejects_malformed_step(step):
    with pytest.raises(ValueError, match="bad script step"):
        validate_steps([{"op": "idle"}, step])


def test_validate_steps_rejects_bad_regex_with_value_error():
    with pytest.raises(ValueError):
        validate_steps([{"op": "expect", "regex": "(", "timeout_ns": 5}])


def test_validate_steps_bad_regex_is_refused():
    with pytest.raises(Exception):
        validate_steps([{"op": "expect", "regex": "(", "timeout_ns": 5}])


def _trace_with_script(script) -> Trace:
    head = make_header(guest_name="g.bin", guest_bytes=b"\xf4", machine={}, clock="virtual",
                       script=script, info={}, vmm_version="0.1.0")
    return Trace(header=head, path="x.trace")


def test_redrive_script_rejects_malformed_script_with_trace_error():
    from vmm.replay import redrive_script
    with pytest.raises(TraceError, match="x.trace"):
        redrive_script(_trace_with_script([{"op": "send", "data": 1}]))


def test_redrive_script_rejects_bad_regex_with_trace_error():
    from vmm.replay import redrive_script
    with pytest.raises(TraceError):
        redrive_script(_trace_with_script([{"op": "expect", "regex": "(", "timeout_ns": 5}]))


def test_validate_steps_rejects_non_latin1_send():
    with pytest.raises(ValueError):
        validate_steps([{"op": "send", "data": "\u20ac"}])


@pytest.mark.parametrize("step", [{"op": "wait", "ns": True},
                                  {"op": "expect", "text": "a", "timeout_ns": True}])
def test_validate_steps_rejects_bool_for_int(step):
    with pytest.raises(ValueError):
        validate_steps([step])


# --- ScriptRunner --------------------------------------------------------------------------------
class Harness:
    """A ScriptRunner with recorded sends and step completions, and a settable unfinished line."""

    def __init__(self, steps):
        self.sent: list[tuple[bytes, int]] = []
        self.done: list[tuple[int, int]] = []
        self.partial = ""
        self.unread = 0                 # sent bytes the (pretend) guest has not read yet
        self.runner = ScriptRunner(steps, self._send)
        self.runner.step_done = lambda index, now: self.done.append((index, now))
        self.runner.unfinished = lambda: self.partial
        self.runner.input_pending = lambda: self.unread > 0

    def _send(self, data: bytes, now: int) -> None:
        self.sent.append((data, now))
        self.unread += len(data)

    def print(self, *lines: str) -> None:
        for line in lines:
            self.runner.on_output("console", line, False)

    def advance(self, now: int, idle: bool = False):
        return self.runner.advance(now, idle=idle)


def expect(text=None, regex=None, timeout=10 * S) -> dict:
    step = {"op": "expect", "timeout_ns": timeout}
    step.update({"text": text} if regex is None else {"regex": regex})
    return step


def test_send_calls_back_with_bytes_and_time():
    h = Harness([{"op": "send", "data": "hi\n"}])
    assert h.advance(7) is None
    assert h.sent == [(b"hi\n", 7)]
    assert h.runner.finished


def test_send_encodes_latin1():
    h = Harness([{"op": "send", "data": "\xff\x00\xe9"}])
    h.advance(0)
    assert h.sent == [(b"\xff\x00\xe9", 0)]


def test_advance_runs_every_step_that_can_run_now():
    h = Harness([{"op": "send", "data": "a"}, {"op": "send", "data": "b"},
                 {"op": "wait", "ns": 10}, {"op": "send", "data": "c"}])
    h.advance(0)
    assert h.sent == [(b"a", 0), (b"b", 0)]
    h.advance(10)
    assert h.sent[-1] == (b"c", 10) and h.runner.finished


def test_wait_blocks_until_start_plus_duration():
    h = Harness([{"op": "wait", "ns": 100}, {"op": "send", "data": "x"}])
    h.advance(50)
    assert h.runner.next_time() == 150
    h.advance(149)
    assert h.sent == [] and h.runner.index == 0
    h.advance(150)
    assert h.sent == [(b"x", 150)] and h.runner.finished


def test_wait_measures_from_when_the_step_starts():
    h = Harness([{"op": "wait", "ns": 100}, {"op": "wait", "ns": 100}])
    h.advance(0)
    h.advance(130)                      # the first ends late; the second starts now
    assert h.runner.index == 1 and h.runner.next_time() == 230
    h.advance(229)
    assert not h.runner.finished
    h.advance(230)
    assert h.runner.finished


def test_at_waits_for_an_absolute_time():
    h = Harness([{"op": "at", "ns": 500}, {"op": "send", "data": "x"}])
    h.advance(100)
    assert h.runner.next_time() == 500 and h.sent == []
    h.advance(499)
    assert h.sent == []
    h.advance(500)
    assert h.sent == [(b"x", 500)]


def test_at_in_the_past_completes_at_once():
    h = Harness([{"op": "at", "ns": 5}, {"op": "send", "data": "x"}])
    h.advance(20)
    assert h.sent == [(b"x", 20)]


def test_expect_text_matches_printed_output():
    h = Harness([expect("hello"), {"op": "send", "data": "ok"}])
    h.advance(0)
    assert h.sent == [] and not h.runner.finished
    h.print("say hello world")
    h.advance(3)
    assert h.sent == [(b"ok", 3)] and h.runner.finished


def test_expect_regex_matches_printed_output():
    h = Harness([expect(regex=r"h[ae]llo \d+")])
    h.print("hullo 1", "hallo 42")
    h.advance(0)
    assert h.runner.finished


def test_expect_regex_is_multiline():
    h = Harness([expect(regex=r"^ready$")])
    h.print("not ready yet")
    h.advance(0)
    assert not h.runner.finished
    h.print("ready")
    h.advance(0)
    assert h.runner.finished


def test_expect_text_matches_across_two_lines():
    h = Harness([expect("abc\ndef")])
    h.print("xxabc", "defyy")
    h.advance(0)
    assert h.runner.finished


def test_expect_regex_matches_across_two_lines():
    h = Harness([expect(regex=r"c\nd")])
    h.print("abc", "def")
    h.advance(0)
    assert h.runner.finished


def test_expect_sees_partial_output_lines():
    h = Harness([expect("$ ")])
    h.runner.on_output("console", "$ ", True)
    h.advance(0)
    assert h.runner.finished


def test_expect_matches_inside_unfinished_line():
    h = Harness([expect("login: ")])
    h.partial = "login: "
    h.advance(0)
    assert h.runner.finished


def test_cursor_stays_valid_when_unfinished_line_is_completed():
    h = Harness([expect("login: "), expect("login: "), expect("root")])
    h.partial = "login: "
    h.advance(0)
    assert h.runner.index == 1
    h.partial = ""
    h.print("login: root")              # the same line, now finished
    h.advance(1)
    assert h.runner.index == 1          # the prompt was already matched; it appears only once
    h.print("login: root")
    h.advance(2)
    assert h.runner.finished


def test_expect_text_twice_needs_it_printed_twice():
    h = Harness([expect("hello"), expect("hello")])
    h.print("hello")
    h.advance(0)
    assert h.runner.index == 1
    h.advance(1)
    assert h.runner.index == 1
    h.print("hello")
    h.advance(2)
    assert h.runner.finished


def test_expect_searches_after_the_previous_match():
    h = Harness([expect("b"), expect("a")])
    h.print("a b")
    h.advance(0)
    assert h.runner.index == 1          # the 'a' before the 'b' does not count
    h.print("a")
    h.advance(0)
    assert h.runner.finished


def test_regex_expect_searches_after_the_previous_match():
    h = Harness([expect(regex=r"\d"), expect(regex=r"\d")])
    h.print("x1y")
    h.advance(0)
    assert h.runner.index == 1
    h.print("2")
    h.advance(0)
    assert h.runner.finished


def test_expect_timeout_reports_pattern_and_output():
    h = Harness([expect("ready", timeout=100)])
    h.advance(10)
    assert h.runner.next_time() == 110
    h.print("booting")
    assert h.advance(109) is None
    failure = h.advance(110)
    assert isinstance(failure, str)
    assert "'ready'" in failure and "booting" in failure and "step 1" in failure
    assert not h.runner.finished


def test_regex_expect_timeout_names_the_regex():
    h = Harness([{"op": "send", "data": "x"}, expect(regex=r"rea+dy", timeout=S)])
    h.advance(0)
    h.print("nothing")
    failure = h.advance(S)
    assert "/rea+dy/" in failure and "step 2" in failure and "1s" in failure


def test_expect_timeout_quotes_only_output_since_last_match():
    h = Harness([expect("one"), expect("two", timeout=5)])
    h.print("zero one", "three")
    h.advance(0)
    failure = h.advance(5)
    assert "three" in failure and "zero" not in failure


def test_expect_matching_at_the_deadline_succeeds():
    h = Harness([expect("ok", timeout=100)])
    h.advance(0)
    h.print("ok")
    assert h.advance(100) is None and h.runner.finished


def test_expect_timeout_quotes_unfinished_line():
    h = Harness([expect("login:", timeout=100)])
    h.partial = "Password: "
    h.advance(0)
    failure = h.advance(100)
    assert "Password: " in failure


def test_idle_completes_only_at_an_idle_point():
    h = Harness([{"op": "idle"}, {"op": "send", "data": "x"}])
    h.advance(0)
    h.advance(5)
    assert h.sent == [] and h.runner.index == 0
    h.advance(6, idle=True)
    assert h.sent == [(b"x", 6)] and h.runner.finished


def test_one_idle_point_satisfies_one_idle_step():
    h = Harness([{"op": "idle"}, {"op": "idle"}])
    h.advance(0, idle=True)
    assert h.runner.index == 1
    h.advance(1, idle=True)
    assert h.runner.finished


def test_idle_after_send_needs_a_later_idle_point():
    h = Harness([expect("login: "), {"op": "send", "data": "root\n"}, {"op": "idle"}])
    h.partial = "login: "               # a prompt: seen only at the idle point
    h.advance(0, idle=True)
    assert h.sent == [(b"root\n", 0)]
    assert h.runner.index == 2          # the guest has not read "root\n" yet


def test_next_time_none_with_nothing_scheduled():
    assert Harness([{"op": "idle"}]).runner.next_time() is None
    h = Harness([{"op": "idle"}])
    h.advance(0)
    assert h.runner.next_time() is None


def test_next_time_cleared_after_expect_matches():
    h = Harness([expect("a", timeout=100), {"op": "idle"}])
    h.advance(0)
    assert h.runner.next_time() == 100
    h.print("a")
    h.advance(1)
    assert h.runner.next_time() is None


def test_next_time_reports_wait_after_expect():
    h = Harness([expect("a", timeout=100), {"op": "wait", "ns": 30}])
    h.print("a")
    h.advance(10)
    assert h.runner.next_time() == 40


def test_step_done_gets_each_index_and_time():
    h = Harness([{"op": "send", "data": "a"}, {"op": "wait", "ns": 10}, expect("z"),
                 {"op": "idle"}])
    h.advance(0)
    h.advance(10)
    h.print("z")
    h.advance(12)
    h.unread = 0                        # the guest has read what was sent
    h.advance(15, idle=True)
    assert h.done == [(0, 0), (1, 10), (2, 12), (3, 15)]


def test_finished_flag():
    assert Harness([]).runner.finished
    h = Harness([{"op": "send", "data": "a"}])
    assert not h.runner.finished
    h.advance(0)
    assert h.runner.finished
    assert h.advance(1) is None and h.sent == [(b"a", 0)]      # nothing runs twice


def test_runner_runs_a_parsed_script():
    h = Harness(parse_script('sendline "hi"\nexpect /h.$/ within 1s\nwait 2s\nidle\n'))
    h.advance(0)
    assert h.sent == [(b"hi\n", 0)]
    h.print("hi")
    h.advance(100)
    assert h.runner.next_time() == 100 + 2 * S
    h.advance(100 + 2 * S)
    h.unread = 0                        # the guest has read "hi\n"
    h.advance(100 + 2 * S, idle=True)
    assert h.runner.finished
    assert [i for i, _ in h.done] == [0, 1, 2, 3]


def test_wait_ticks_parses_with_and_without_a_limit():
    from vmm.script import DEFAULT_TICKS_TIMEOUT_NS, parse_script, validate_steps
    steps = parse_script("wait 4 ticks\nwait 1 tick within 2s\nwait 3s\n")
    assert steps == [{"op": "ticks", "count": 4, "timeout_ns": DEFAULT_TICKS_TIMEOUT_NS},
                     {"op": "ticks", "count": 1, "timeout_ns": 2_000_000_000},
                     {"op": "wait", "ns": 3_000_000_000}]
    assert validate_steps(steps) == steps
    with pytest.raises(UsageError, match="1 to 1000000 ticks"):
        parse_script("wait 0 ticks")
    with pytest.raises(ValueError):
        validate_steps([{"op": "ticks", "count": 0, "timeout_ns": 1}])


def test_wait_ticks_waits_for_the_guests_own_timer_whatever_its_period(vmm):
    from conftest import GUESTS
    for guest, expected in (("echo.bin", 4), ("periods/echo-5000ms.bin", 4)):
        r = vmm("run", GUESTS / guest, "--script", "/dev/stdin",
                input=b'sendline "x"\nwait 4 ticks within 30s\n')
        assert r.returncode == 0 and r.lines == ["x"] * expected, (guest, r)
    r = vmm("run", GUESTS / "mutants" / "echo-no_timer.bin", "--script", "/dev/stdin",
            input=b'sendline "x"\nwait 2 ticks within 3s\n')
    assert r.returncode == 34, r
    assert "waited for 2 timer firings within 3s of guest time; the guest's timer fired 0 " \
           "times" in r.stderr
