"""Log lines for journald: one line per event, ``LEVEL namespace: message``, on stdout."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)


def line_observer(stream: IO[str]) -> Callable[[LogEvent], None]:
    def observe(event: LogEvent) -> None:
        level = event.get("log_level", LogLevel.info).name.upper()
        namespace = event.get("log_namespace", "-")
        text = formatEvent(event).replace("\n", " | ")
        stream.write(f"{level} {namespace}: {text}\n")
        failure = event.get("log_failure")
        if failure is not None:
            stream.write(failure.getTraceback())
        stream.flush()

    return observe


def start_logging(level: LogLevel = LogLevel.info, stream: IO[str] | None = None) -> None:
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    observer = FilteringLogObserver(line_observer(stream or sys.stdout), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
