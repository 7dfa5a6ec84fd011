"""psycopg's log records become single, redacted, unrepeated lines of the daemon's log
(controller.driverlog)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import cast

import pytest
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel

from common.logs import event_text
from controller.driverlog import REPEAT_SECONDS, DriverLogHandler, route_driver_logs

SECRET = "Sup3r-s3cret-pw"
DSN = f"host=127.0.0.1,127.0.0.1 port=1,2 dbname=rc user=rc password={SECRET}"
#: What psycopg_pool logs when it cannot connect: libpq's message spans lines, and quotes the
#: password here only to show that it is cut.
REFUSED = (
    'connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused\n'
    "\tIs the server running on that host and accepting TCP/IP connections?\n"
    f'connection to server at "127.0.0.1", port 2 failed: password={SECRET} rejected'
)


class Captured:
    def __init__(self) -> None:
        self.events: list[LogEvent] = []
        self.clock = Clock()
        self.handler = DriverLogHandler(
            [DSN],
            log=Logger(namespace="test", observer=cast(ILogObserver, self.events.append)),
            clock=self.clock.seconds,
        )

    def lines(self) -> list[str]:
        return [event_text(event) for event in self.events]


@pytest.fixture
def captured() -> Iterator[Captured]:
    seen = Captured()
    undo = route_driver_logs(seen.handler)
    try:
        yield seen
    finally:
        undo()


def pool_warning(message: str, *args: object) -> None:
    logging.getLogger("psycopg.pool").warning(message, *args)


def test_a_multi_line_pool_warning_becomes_one_line_without_the_password(
    captured: Captured,
) -> None:
    pool_warning("error connecting in %r: %s", "rolecall-store", REFUSED)
    [line] = captured.lines()
    assert "\n" not in line and SECRET not in line
    assert line.startswith("psycopg.pool: error connecting in 'rolecall-store': connection failed")
    assert "Connection refused | Is the server running" in line
    assert captured.events[0]["log_level"] == LogLevel.warn


def test_a_repeated_problem_is_logged_once_then_again_with_a_count_after_a_while(
    captured: Captured,
) -> None:
    for _ in range(30):
        pool_warning("error connecting in %r: %s", "rolecall-store", REFUSED)
        pool_warning("reconnection attempt in pool %r failed after %s sec", "rolecall-store", 0.5)
        captured.clock.advance(0.5)
    assert len(captured.lines()) == 2
    captured.clock.advance(REPEAT_SECONDS)
    pool_warning("error connecting in %r: %s", "rolecall-store", REFUSED)
    assert captured.lines()[-1].endswith("(29 more like it left out)")


def test_a_new_problem_is_logged_at_once(captured: Captured) -> None:
    pool_warning("discarding broken connection: %s", "<psycopg.Connection [BAD] at 0x7f00aa>")
    pool_warning("discarding broken connection: %s", "<psycopg.Connection [BAD] at 0x7f00bb>")
    pool_warning("error connecting in %r: %s", "rolecall-store", REFUSED)
    assert len(captured.lines()) == 2  # the second broken connection is the same problem


def test_errors_keep_their_level_and_nothing_reaches_stderr_raw(
    captured: Captured, capsys: pytest.CaptureFixture[str]
) -> None:
    logging.getLogger("psycopg").error("error ignored in rollback on %s", "a connection")
    assert captured.events[0]["log_level"] == LogLevel.error
    assert capsys.readouterr().err == ""


def test_records_are_delivered_through_the_given_call() -> None:
    calls: list[object] = []
    handler = DriverLogHandler(
        [DSN],
        log=Logger(namespace="test", observer=cast(ILogObserver, lambda event: None)),
        deliver=lambda call, *args, **kwargs: calls.append(call),
    )
    undo = route_driver_logs(handler)
    try:
        pool_warning("error connecting in %r: %s", "rolecall-store", REFUSED)
    finally:
        undo()
    assert len(calls) == 1
