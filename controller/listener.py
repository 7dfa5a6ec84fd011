"""PostgreSQL LISTEN/NOTIFY for a controller that shares its database with others.

Migration 0009's triggers NOTIFY when a transaction that changed a node's assignment revision
(``rolecall_assignments``, payload: the node) or a shared_state row (``rolecall_shared_state``,
payload: the row's name) commits, whichever controller or command made it. Each controller keeps
one connection of its own LISTENing to both; its socket is read on the reactor (``addReader``),
and each notification becomes `AssignmentHub.changed` (the long polls of that node answer) or
a re-read of the token key ring, on the reactor thread.

Notifications sent while the connection is down are lost: after every (re)connection the
listener wakes every waiting long poll (each answers if its node's revision moved, else waits
on: `NodeApi._wait`) and re-reads the key ring. A lost connection is retried with capped
exponential backoff and jitter. Connecting (DNS, TCP, TLS, authentication) blocks, so it runs
in a thread.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorFDSet, IReactorTime, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

if TYPE_CHECKING:
    import psycopg

log = Logger(namespace="rolecall.listener")

ASSIGNMENTS_CHANNEL = "rolecall_assignments"
SHARED_STATE_CHANNEL = "rolecall_shared_state"
#: First retry after a lost connection, and the most it waits between tries (seconds). Each try
#: is one connection attempt (cheap), and until one succeeds the long polls this controller
#: holds are not woken by other controllers' changes: the ceiling stays at a few seconds, so
#: that after a long database outage they are woken soon after the database is back.
INITIAL_DELAY = 0.5
MAX_DELAY = 2.0

#: Opens a connection (blocking; run in a thread).
Connect = Callable[[], "psycopg.Connection[Any]"]
RunInThread = Callable[[Callable[[], Any]], Deferred[Any]]


class IListenerReactor(IReactorTime, IReactorFDSet):
    """Timers (the backoff) and file descriptors (the connection's socket)."""


def _default_run_in_thread(call: Callable[[], Any]) -> Deferred[Any]:
    from twisted.internet.threads import deferToThread

    return deferToThread(call)


def retry_delay(attempt: int, draw: Callable[[], float]) -> float:
    """Seconds before try ``attempt`` (1 is the first retry): doubling from INITIAL_DELAY up to
    MAX_DELAY, each between half and all of that (``draw()`` is in [0, 1)), so controllers that
    lost the database together do not come back in step."""
    ceiling = min(MAX_DELAY, INITIAL_DELAY * 2.0 ** min(attempt - 1, 16))
    return float(ceiling * (0.5 + draw() / 2))


@implementer(IReadDescriptor)
class _Socket:
    """The connection's socket as Twisted reads it."""

    def __init__(self, descriptor: int, readable: Callable[[], None]) -> None:
        self._descriptor = descriptor
        self._readable = readable

    def fileno(self) -> int:
        return self._descriptor

    def doRead(self) -> None:
        self._readable()

    def connectionLost(self, reason: Failure) -> None:
        pass

    def logPrefix(self) -> str:
        return "rolecall-listener"


class ChangeListener(Service):
    """Keeps one LISTENing connection and turns its notifications into calls on the reactor:
    ``node_changed(node)``, ``shared_state_changed(name)``, and ``everything_changed()`` after
    each (re)connection. ``connected(bool)`` reports the state (a metric)."""

    def __init__(
        self,
        connect: Connect,
        reactor: IListenerReactor,
        node_changed: Callable[[str], None],
        shared_state_changed: Callable[[str], None],
        everything_changed: Callable[[], None],
        connected: Callable[[bool], None] = lambda _: None,
        run_in_thread: RunInThread | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._connect = connect
        self._reactor = reactor
        self._node_changed = node_changed
        self._shared_state_changed = shared_state_changed
        self._everything_changed = everything_changed
        self._connected = connected
        self._run_in_thread = run_in_thread or _default_run_in_thread
        self._draw = draw
        self._connection: psycopg.Connection[Any] | None = None
        self._socket: _Socket | None = None
        self._timer: IDelayedCall | None = None
        self._connecting = False
        self._failures = 0
        #: Connections made, and notifications handled: for tests and the benchmark.
        self.connections = 0
        self.notifications = 0

    # lifecycle

    def startService(self) -> None:
        Service.startService(self)
        self._try()

    def stopService(self) -> None:
        Service.stopService(self)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._drop()

    def is_connected(self) -> bool:
        return self._connection is not None

    def _try(self) -> None:
        self._timer = None
        if not self.running or self._connecting:
            return
        self._connecting = True
        self._run_in_thread(self._open).addCallbacks(self._opened, self._not_opened)

    def _open(self) -> psycopg.Connection[Any]:
        connection = self._connect()
        try:
            connection.autocommit = True
            connection.execute(f"LISTEN {ASSIGNMENTS_CHANNEL}")
            connection.execute(f"LISTEN {SHARED_STATE_CHANNEL}")
        except BaseException:
            connection.close()
            raise
        return connection

    def _opened(self, connection: psycopg.Connection[Any]) -> None:
        self._connecting = False
        if not self.running:  # stopped while connecting
            connection.close()
            return
        if self._failures:
            log.info("listening for changes in the database again")
        self._failures = 0
        self._connection = connection
        # A duplicate of libpq's descriptor: libpq closes its own as soon as it sees the
        # connection end, before this listener can take it off the reactor (epoll would then
        # refuse to forget it). The duplicate is closed only after it is off.
        self._socket = _Socket(os.dup(connection.pgconn.socket), self._readable)
        self._reactor.addReader(self._socket)
        self.connections += 1
        self._connected(True)
        # Whatever was announced while no one listened is lost: treat everything as changed.
        self._everything_changed()
        self._readable()  # notifications that came with LISTEN's answer

    def _not_opened(self, failure: Failure) -> None:
        self._connecting = False
        problem = _problem(failure.value or Exception())
        self._retry(f"cannot connect to listen for changes: {problem}")

    def _retry(self, problem: str) -> None:
        if not self.running:
            return
        self._failures += 1
        delay = retry_delay(self._failures, self._draw)
        if self._failures == 1:  # one line when it starts, not one per try
            log.error("{problem}; trying again", problem=problem)
        self._timer = self._reactor.callLater(delay, self._try)

    def _drop(self) -> None:
        if self._socket is not None:
            self._reactor.removeReader(self._socket)
            os.close(self._socket.fileno())
            self._socket = None
        if self._connection is not None:
            connection, self._connection = self._connection, None
            self._connected(False)
            try:
                connection.close()
            except Exception:  # a broken connection may fail to say goodbye: it is gone anyway
                log.debug("closing the listening connection failed")

    # reading

    def _readable(self) -> None:
        from psycopg import OperationalError
        from psycopg.pq import ConnStatus

        connection = self._connection
        if connection is None:
            return
        pgconn = connection.pgconn
        try:
            pgconn.consume_input()
            lost = pgconn.status != ConnStatus.OK
        except OperationalError as error:
            lost, problem = True, _problem(error)
        else:
            problem = "the server closed it"
        while (notification := pgconn.notifies()) is not None:
            self.notifications += 1
            payload = notification.extra.decode("utf-8", "replace")
            channel = notification.relname.decode("ascii", "replace")
            try:
                if channel == ASSIGNMENTS_CHANNEL:
                    self._node_changed(payload)
                elif channel == SHARED_STATE_CHANNEL:
                    self._shared_state_changed(payload)
            except Exception:  # one handler's failure must not stop the listening
                log.failure("handling a notification on {channel} failed", channel=channel)
        if lost:
            self._drop()
            self._retry(f"the connection listening for changes was lost ({problem})")


def _problem(error: BaseException) -> str:
    """What went wrong, for a log line: psycopg's and libpq's messages name the host, port,
    user and database, never a password."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
