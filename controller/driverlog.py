"""psycopg's and psycopg_pool's own log records (the stdlib ``psycopg`` loggers), as the daemon's
log lines.

Left alone, Python's last-resort handler prints them raw on stderr: several lines each (libpq's
messages span lines), outside the daemon's format, dozens in a few seconds of database outage.
Here each becomes one line of the Twisted log (namespace ``rolecall.store.driver``), with every
password of the configured DSNs cut out, and each message is logged once while it repeats, and
again after `REPEAT_SECONDS` with the count of those left out (a new message at once), much as
`controller.compose.KeyRingRefresh` logs the key ring's problems.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable

from twisted.logger import Logger, LogLevel

from controller.store.postgresql import redact

#: The stdlib logger psycopg and psycopg_pool (``psycopg.pool``) log to.
DRIVER_LOGGER = "psycopg"
#: A message that keeps coming is logged again after this long, with how many were left out.
REPEAT_SECONDS = 60.0
#: Problems remembered at most (an outage has two or three).
MAX_PROBLEMS = 64
#: What differs between two records of one problem: objects' addresses, pool connection ids.
_VOLATILE = re.compile(r" at 0x[0-9a-f]+|\b0x[0-9a-f]{6,}\b")

_LEVELS = (
    (logging.CRITICAL, LogLevel.critical),
    (logging.ERROR, LogLevel.error),
    (logging.WARNING, LogLevel.warn),
    (logging.INFO, LogLevel.info),
)


def one_line(text: str) -> str:
    """libpq's multi-line messages on one line (`` | `` between the lines)."""
    return " | ".join(part.strip() for part in text.strip().splitlines() if part.strip())


class DriverLogHandler(logging.Handler):
    """A stdlib handler that hands records to a Twisted `Logger`, one line each, redacted and
    without repeats. Records come from the pool's threads and the reactor's: `deliver` runs the
    logging call where it belongs (``reactor.callFromThread`` in the daemon)."""

    def __init__(
        self,
        dsns: Iterable[str],
        log: Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        deliver: Callable[..., object] | None = None,
        repeat_seconds: float = REPEAT_SECONDS,
    ) -> None:
        super().__init__(logging.WARNING)
        self._dsns = [dsn for dsn in dsns if dsn]
        self._log = log or Logger(namespace="rolecall.store.driver")
        self._clock = clock
        self._deliver = deliver or (lambda call, *args, **kwargs: call(*args, **kwargs))
        self._repeat_seconds = repeat_seconds
        self._state_lock = threading.Lock()
        #: Each problem logged lately: when, and how many of it were left out since.
        self._seen: dict[str, tuple[float, int]] = {}

    def text_of(self, record: logging.LogRecord) -> str:
        """The record's message on one line, without a password."""
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not fit its format
            message = str(record.msg)
        for dsn in self._dsns:
            message = redact(message, dsn)
        return one_line(message) or record.name

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.text_of(record)
            problem = _VOLATILE.sub("", text)
            now = self._clock()
            with self._state_lock:
                logged_at, left_out = self._seen.get(problem, (None, 0))
                if logged_at is not None and now - logged_at < self._repeat_seconds:
                    self._seen[problem] = (logged_at, left_out + 1)
                    return
                if len(self._seen) >= MAX_PROBLEMS:
                    self._seen.clear()
                self._seen[problem] = (now, 0)
            level = next(
                (level for number, level in _LEVELS if record.levelno >= number), LogLevel.debug
            )
            suffix = f" ({left_out} more like it left out)" if left_out else ""
            self._deliver(
                self._log.emit,
                level,
                "{origin}: {message}{suffix}",
                origin=record.name,
                message=text,
                suffix=suffix,
            )
        except Exception:  # logging must never break the caller (the pool's worker thread)
            self.handleError(record)


def route_driver_logs(handler: DriverLogHandler) -> Callable[[], None]:
    """Send the ``psycopg`` loggers' warnings and errors to `handler` only (not to stderr raw);
    returns the undo (for tests)."""
    logger = logging.getLogger(DRIVER_LOGGER)
    previous = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False

    def undo() -> None:
        logger.removeHandler(handler)
        logger.setLevel(previous[0])
        logger.propagate = previous[1]

    return undo
