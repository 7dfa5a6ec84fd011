"""Whether the database answers, and when a call may try it again while it does not (pure).

The store's calls run on the controller's reactor thread. While the database has no primary, a
call that waited for a connection would hold every request, the node API and ``/healthz`` with
it. So once the server was found unreachable (no connection within the wait, or the pool's
reconnection failing in its own thread), the store is *down*: a call goes ahead only when the
pool holds an idle connection (the pool reconnected in its thread: a cheap look), or as the one
*trial* allowed per `RETRY_INTERVAL`, which waits only briefly for a connection and lets the
pool start a new attempt; every other call fails at once (`StoreUnavailable`). Any call that
succeeds makes it *up* again.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable

#: While down, at most one call per this many seconds waits (briefly) for a connection.
RETRY_INTERVAL = 0.5


class Admission(enum.Enum):
    """What a call may do."""

    #: Up: wait for a connection as long as the store's connection timeout.
    WAIT = "wait"
    #: Down, but worth a try (an idle connection, or the interval's trial): wait briefly.
    TRY = "try"
    #: Down: fail at once.
    REFUSE = "refuse"


class Availability:
    """The up/down state of one store. Thread-safe: the pool's thread reports failed
    reconnections, the reactor thread (and the audit writer's) makes calls."""

    def __init__(
        self,
        retry_interval: float = RETRY_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._retry_interval = retry_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._last_try = 0.0
        self._last_success = float("-inf")
        #: Why it is down (one line, no secret), or "" when up.
        self.problem = ""

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def admit(self, idle_connection: Callable[[], bool]) -> Admission:
        """What a call may do now; `idle_connection()`: whether the pool holds one ready (only
        asked while down)."""
        if self._down_since is None:  # the common case: no lock on every call
            return Admission.WAIT
        if idle_connection():
            return Admission.TRY
        with self._lock:
            now = self._clock()
            if now - self._last_try >= self._retry_interval:
                self._last_try = now
                return Admission.TRY
            return Admission.REFUSE

    def failed(self, problem: str) -> bool:
        """The server was found unreachable; True when that makes the store down (it was up).
        The next trial comes one interval later."""
        with self._lock:
            self.problem = problem
            self._last_try = self._clock()
            if self._down_since is not None:
                return False
            self._down_since = self._last_try
            return True

    def failed_in_background(self, problem: str, attempt_seconds: float) -> bool:
        """The pool's thread gave up connecting after trying for `attempt_seconds`: as
        `failed`, unless a call succeeded meanwhile (the report is older than that success)."""
        with self._lock:
            if self._clock() - self._last_success < attempt_seconds:
                return False
        return self.failed(problem)

    def succeeded(self) -> float | None:
        """A call had its connection; how long the store was down (None: it was up)."""
        self._last_success = self._clock()
        if self._down_since is None:  # the common case: no lock on every call
            return None
        with self._lock:
            since, self._down_since = self._down_since, None
            self.problem = ""
            return None if since is None else self._clock() - since
