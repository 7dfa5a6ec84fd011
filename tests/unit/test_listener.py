"""controller.listener on a real PostgreSQL: notifications become calls once their transaction
commits, a lost connection is noticed and made again with backoff (time on a Clock), and every
(re)connection wakes everything. The reactor is Twisted's memory reactor: the test reads the
socket when select() says it is readable, as the real reactor would."""

from __future__ import annotations

import itertools
import select
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock

from controller.listener import (
    ASSIGNMENTS_CHANNEL,
    INITIAL_DELAY,
    MAX_DELAY,
    SHARED_STATE_CHANNEL,
    ChangeListener,
    retry_delay,
)
from tests.pg import Cluster


def now_in_thread(call: Callable[[], Any]) -> Deferred[Any]:
    """The 'thread' runs the call at once: the test decides nothing overlaps."""
    try:
        return succeed(call())
    except Exception as error:
        return fail(error)


class Seen:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def node(self, name: str) -> None:
        self.events.append(("node", name))

    def state(self, name: str) -> None:
        self.events.append(("state", name))

    def everything(self) -> None:
        self.events.append(("everything", None))

    def connected(self, value: bool) -> None:
        self.events.append(("connected", value))


@pytest.fixture
def reactor() -> MemoryReactorClock:
    return MemoryReactorClock()


@pytest.fixture
def seen() -> Seen:
    return Seen()


def make_listener(
    connect: Callable[[], psycopg.Connection[Any]], reactor: MemoryReactorClock, seen: Seen
) -> ChangeListener:
    return ChangeListener(
        connect,
        reactor,
        seen.node,
        seen.state,
        seen.everything,
        seen.connected,
        run_in_thread=now_in_thread,
        draw=lambda: 0.5,
    )


@pytest.fixture
def listening(pg_dsn: str, reactor: MemoryReactorClock, seen: Seen) -> Iterator[ChangeListener]:
    listener = make_listener(lambda: psycopg.connect(pg_dsn), reactor, seen)
    listener.startService()
    try:
        yield listener
    finally:
        listener.stopService()
    assert reactor.getReaders() == [] and reactor.getDelayedCalls() == []


def read_when_readable(listener: ChangeListener, reactor: MemoryReactorClock) -> None:
    """Wait (at most 10 s) until the listener's socket is readable, then let it read."""
    readers = reactor.getReaders()
    assert len(readers) == 1
    reader = readers[0]
    ready, _, _ = select.select([reader.fileno()], [], [], 10)
    assert ready, "no notification arrived within 10 s"
    reader.doRead()


def test_a_notification_is_delivered_when_its_transaction_commits(
    listening: ChangeListener, reactor: MemoryReactorClock, seen: Seen, pg_dsn: str
) -> None:
    assert seen.events == [("connected", True), ("everything", None)]
    seen.events.clear()
    with psycopg.connect(pg_dsn) as other:
        other.execute("SELECT pg_notify(%s, 'node-7')", (ASSIGNMENTS_CHANNEL,))
        other.execute("SELECT pg_notify(%s, 'token-keys')", (SHARED_STATE_CHANNEL,))
        ready, _, _ = select.select([reactor.getReaders()[0].fileno()], [], [], 0.2)
        assert not ready  # not committed yet: nothing is sent
        other.commit()
    read_when_readable(listening, reactor)
    while len(seen.events) < 2:
        read_when_readable(listening, reactor)
    assert seen.events == [("node", "node-7"), ("state", "token-keys")]


def test_a_lost_connection_is_made_again_and_wakes_everything(
    listening: ChangeListener, reactor: MemoryReactorClock, seen: Seen, pg_cluster: Cluster
) -> None:
    seen.events.clear()
    pid = listening._connection.info.backend_pid  # type: ignore[union-attr]
    pg_cluster._superuser_sql(f"SELECT pg_terminate_backend({pid})")
    for _ in range(5):  # the server's FATAL message, then the end of the stream
        read_when_readable(listening, reactor)
        if seen.events:
            break
    assert seen.events == [("connected", False)]
    assert not listening.is_connected()
    [retry] = reactor.getDelayedCalls()
    assert retry.getTime() - reactor.seconds() == pytest.approx(INITIAL_DELAY * 0.75)
    reactor.advance(INITIAL_DELAY)
    assert listening.is_connected() and listening.connections == 2
    assert seen.events[1:] == [("connected", True), ("everything", None)]


def test_connecting_is_tried_again_with_growing_capped_delays_until_stopped(
    reactor: MemoryReactorClock, seen: Seen
) -> None:
    tries: list[float] = []

    def refused() -> psycopg.Connection[Any]:
        tries.append(reactor.seconds())
        raise psycopg.OperationalError("connection to server at 127.0.0.1, port 1 failed")

    listener = make_listener(refused, reactor, seen)
    listener.startService()
    for _ in range(12):
        [retry] = reactor.getDelayedCalls()
        reactor.advance(retry.getTime() - reactor.seconds())
    listener.stopService()
    gaps = [later - earlier for earlier, later in itertools.pairwise(tries)]
    assert gaps[:4] == [0.375, 0.75, 1.5, 1.5]
    assert max(gaps) == MAX_DELAY * 0.75
    assert reactor.getDelayedCalls() == [] and seen.events == []


def test_retry_delays_are_jittered_between_half_and_all_of_the_ceiling() -> None:
    assert retry_delay(1, lambda: 0.0) == INITIAL_DELAY / 2
    assert retry_delay(1, lambda: 0.999) < INITIAL_DELAY
    assert retry_delay(100, lambda: 0.999) < MAX_DELAY
    assert retry_delay(100, lambda: 0.0) == MAX_DELAY / 2


def test_after_a_long_outage_the_listener_tries_again_within_two_seconds() -> None:
    """Until it is back, other controllers' changes wake none of this controller's long polls:
    the ceiling is a few seconds, however long the database was gone (it was 30 s)."""
    assert MAX_DELAY == 2.0
    assert all(retry_delay(attempt, lambda: 0.999) < 2.0 for attempt in (5, 60, 10_000))


def test_the_listening_connection_gets_keepalives_unless_the_dsn_sets_its_own() -> None:
    from controller.compose import listener_connection_options

    options = listener_connection_options("host=db1 dbname=rolecall keepalives_idle=60")
    assert "keepalives_idle" not in options  # the operator's choice stands
    assert options["keepalives"] == "1" and options["keepalives_count"] == "3"
    assert options["application_name"] == "rolecall-controller listener"
