"""The log line observer: Twisted's formatting and level filter, one flushed line per event."""

from __future__ import annotations

import io
import unicodedata
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure

from common.logs import event_text, line_observer


class Point:
    x = 3

    def __repr__(self) -> str:
        return "Point(3)"


@pytest.mark.parametrize(
    "event",
    [
        {"log_format": "{line}", "line": "sts:AssumeRole 200 key=AKIA error=-"},
        {"log_format": "plain text, no fields"},
        {"log_format": "{a!r} {b:>6}|{c.x}|{d[k]}", "a": "q", "b": 7, "c": Point(), "d": {"k": 1}},
        {"log_format": "{{braces}} {a}", "a": 1},
        {"log_format": "{call()} is called", "call": lambda: "the value"},
        {"log_format": "{missing} field"},
        {"log_format": "{0} positional"},
        {"log_format": "{a", "a": 1},
        {"log_format": None},
        {},
    ],
    ids=lambda event: repr(event.get("log_format")),
)  # fmt: skip
def test_event_text_is_what_twisted_formats(event: dict[str, Any]) -> None:
    assert event_text(dict(event)) == formatEvent(dict(event))


def event(level: LogLevel, text: str = "hello", namespace: str | None = "rolecall.api") -> Any:
    made: dict[str, Any] = {"log_format": "{text}", "text": text, "log_level": level}
    if namespace is not None:
        made["log_namespace"] = namespace
    return made


class Stream(io.StringIO):
    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_each_event_is_one_flushed_line_naming_its_level_and_namespace() -> None:
    stream = Stream()
    observe = line_observer(stream, LogLevel.info)
    observe(event(LogLevel.info, "first"))
    observe(event(LogLevel.error, "two\nlines", "rolecall.store"))
    assert stream.getvalue() == ("INFO rolecall.api: first\nERROR rolecall.store: two | lines\n")
    assert stream.flushes == 2


def test_events_below_the_level_or_without_a_namespace_or_level_are_left_out() -> None:
    stream = Stream()
    observe = line_observer(stream, LogLevel.warn)
    observe(event(LogLevel.info))
    observe(event(LogLevel.debug))
    observe(event(LogLevel.error, namespace=None))
    observe({"log_format": "no level", "log_namespace": "rolecall.api"})
    observe(event(LogLevel.warn, "kept"))
    observe(event(LogLevel.critical, "kept too"))
    assert stream.getvalue() == "WARN rolecall.api: kept\nCRITICAL rolecall.api: kept too\n"


def test_without_a_level_every_event_is_written() -> None:
    stream = Stream()
    observe = line_observer(stream)
    observe(event(LogLevel.debug))
    observe({"log_format": "bare"})
    assert stream.getvalue() == "DEBUG rolecall.api: hello\nINFO -: bare\n"


def test_a_failure_is_followed_by_its_traceback() -> None:
    stream = Stream()
    try:
        raise ValueError("the cause")
    except ValueError:
        failure = Failure()
    observe = line_observer(stream, LogLevel.info)
    observe({**event(LogLevel.critical, "it failed"), "log_failure": failure})
    first, rest = stream.getvalue().split("\n", 1)
    assert first == "CRITICAL rolecall.api: it failed"
    assert "ValueError: the cause" in rest


def test_a_request_cannot_forge_a_line_hide_text_or_drive_the_terminal() -> None:
    stream = Stream()
    observe = line_observer(stream, LogLevel.info)
    action = "GetRole\rINFO rolecall.api: forged\x1b[2J\u2028next\x85line\x00"
    observe(event(LogLevel.info, f"iam:{action} 400"))
    assert stream.getvalue() == (
        "INFO rolecall.api: iam:GetRole\\x0dINFO rolecall.api: forged\\x1b[2J\\u2028next"
        "\\x85line\\x00 400\n"
    )


@given(st.text())
def test_any_message_is_one_line_of_printable_text(text: str) -> None:
    stream = Stream()
    line_observer(stream, LogLevel.info)(event(LogLevel.info, text))
    line = stream.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    assert not any(
        unicodedata.category(char) == "Cc" or char in "\u2028\u2029" for char in line[:-1]
    )


def test_twisteds_own_chatter_is_left_out_but_its_warnings_and_ours_stay() -> None:
    """Issue 17, item 7: "starting on 80" and "(TCP Port 80 Closed)" for every instance's socket
    were a third of the agent's journal."""
    stream = Stream()
    observe = line_observer(stream, LogLevel.info)
    observe(event(LogLevel.info, "MetadataFactory starting on 80", "twisted.internet.tcp"))
    observe(event(LogLevel.info, "(TCP Port 80 Closed)", "log_legacy"))
    observe(event(LogLevel.info, "Starting factory <_HTTP11ClientFactory>", "twisted.web.client"))
    observe(event(LogLevel.warn, "a port could not be closed", "twisted.internet.tcp"))
    observe(event(LogLevel.info, "serving i-0123456789abcdef0", "rolecall.agent"))
    observe(event(LogLevel.info, "twisted.example.com answered", "rolecall.api"))
    assert stream.getvalue() == (
        "WARN twisted.internet.tcp: a port could not be closed\n"
        "INFO rolecall.agent: serving i-0123456789abcdef0\n"
        "INFO rolecall.api: twisted.example.com answered\n"
    )
