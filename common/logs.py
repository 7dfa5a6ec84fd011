"""Log lines for journald: one line per event, ``LEVEL namespace: message``, on stdout."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import suppress
from typing import IO

from twisted.logger import (
    LogEvent,
    LogLevel,
    formatEvent,
    globalLogBeginner,
)

# The public API logs a line for every request, so the observer is on every request's path:
# levels are compared by rank (LogLevel's own ordering sorts its constants on each comparison)
# and plain ``{name}`` formats are filled by ``str.format_map``.
_RANK = {level: rank for rank, level in enumerate(LogLevel.iterconstants())}
_NAME = {level: level.name.upper() for level in LogLevel.iterconstants()}


def event_text(event: LogEvent) -> str:
    """The event's message, as ``twisted.logger.formatEvent`` gives it."""
    log_format = event.get("log_format")
    # formatEvent reads "{name()}" as a call, and has its own way with flattened events; for the
    # rest it does what format_map does, at several times the cost. Any failure (a missing key,
    # a positional field) goes to formatEvent, which reports it its own way.
    if type(log_format) is str and "()" not in log_format and "log_flattened" not in event:
        with suppress(Exception):
            return log_format.format_map(event)
    return formatEvent(event)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


#: What a request can smuggle into a line: every control character (C0, DEL, C1) and the
#: Unicode line and paragraph separators, escaped; a newline in a message of ours becomes " | ".
_ONE_LINE = {
    code: _escape(chr(code)) for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
}
_ONE_LINE[ord("\n")] = " | "


def one_line(text: str) -> str:
    """``text`` as one journal line that shows what it held: no request can start a line of its
    own, hide text with a carriage return, or send the terminal an escape sequence."""
    if text.isprintable():  # the common case, and cheap: nothing to escape
        return text
    return text.translate(_ONE_LINE)


#: Below this, Twisted's own events are left out of the daemons' logs: a factory's repr when it
#: starts and stops, "... starting on 80" and "(TCP Port 80 Closed)" for every instance's socket
#: (a thousand lines each way on a busy node), "Main loop terminated". Its warnings and errors
#: stay.
_TWISTED_THRESHOLD = _RANK[LogLevel.warn]


def _twisted(namespace: str) -> bool:
    return namespace.startswith("twisted.") or namespace == "log_legacy"


def line_observer(stream: IO[str], level: LogLevel | None = None) -> Callable[[LogEvent], None]:
    """Writes events as lines, each flushed at once; with a ``level``, only events at that level
    or above that have a namespace (what ``LogLevelFilterPredicate`` lets through), and of
    Twisted's own only its warnings and errors."""
    threshold = None if level is None else _RANK[level]

    def observe(event: LogEvent) -> None:
        event_level = event.get("log_level")
        namespace = event.get("log_namespace")
        if threshold is not None and (
            event_level not in _RANK
            or not namespace
            or _RANK[event_level] < threshold
            or (_RANK[event_level] < _TWISTED_THRESHOLD and _twisted(namespace))
        ):
            return
        if event_level is None:
            event_level = LogLevel.info
        text = one_line(event_text(event))
        stream.write(f"{_NAME[event_level]} {namespace or '-'}: {text}\n")
        failure = event.get("log_failure")
        if failure is not None:
            stream.write(failure.getTraceback())
        stream.flush()

    return observe


def start_logging(level: LogLevel = LogLevel.info, stream: IO[str] | None = None) -> None:
    observer = line_observer(stream or sys.stdout, level)
    # A plain function is an ILogObserver (the interface is its call), as twisted.logger takes it.
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)  # type: ignore[list-item]
