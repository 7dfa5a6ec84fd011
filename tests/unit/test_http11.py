"""Answers given later (`common.http11`): a handler may return a Deferred of its answer, as the
node API's long poll does. The answer leaves when it fires; requests pipelined behind it wait
and are answered in order; a client that hangs up cancels it; a failure is a bare 500; no
timeout closes the connection meanwhile. On a StringTransport; time moves only through a Clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure

from common import http11
from common.http11 import Http11Factory, Http11Protocol, Request, Response
from tests.unit.test_api_http import parse_answers

PEER = IPv4Address("TCP", "192.0.2.7", 40000)
Connect = Callable[[http11.Handler], "Connection"]


def get(path: str, *extra: str) -> bytes:
    lines = "".join(f"{line}\r\n" for line in ("Host: localhost", *extra))
    return f"GET {path} HTTP/1.1\r\n{lines}\r\n".encode()


@dataclass
class Handler:
    """Answers ``/now/...`` at once with its path; ``/later/...`` with a Deferred the test
    fires (kept in ``waiting`` by path); records every request it is asked, in order."""

    asked: list[str] = field(default_factory=list)
    waiting: dict[str, Deferred[Response]] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)

    def __call__(
        self, request: Request, connection: Http11Protocol
    ) -> Response | Deferred[Response]:
        path = request.uri.decode()
        self.asked.append(path)
        if path.startswith("/later/"):
            waiting: Deferred[Response] = Deferred(lambda _: self.cancelled.append(path))
            self.waiting[path] = waiting
            return waiting
        return answer(path)

    def fire(self, path: str) -> None:
        self.waiting.pop(path).callback(answer(path))


def answer(path: str) -> Response:
    return Response(200, ((b"Content-Type", b"text/plain"),), path.encode())


@dataclass
class Connection:
    clock: Clock
    handler: Handler
    transport: StringTransport
    protocol: Http11Protocol

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def bodies(self) -> list[bytes]:
        """The bodies of the answers written since last asked (the transport is emptied)."""
        written = self.transport.value()
        self.transport.clear()
        return [answer.body for answer in parse_answers(written)]

    def statuses(self) -> list[int]:
        written = self.transport.value()
        self.transport.clear()
        return [answer.status for answer in parse_answers(written)]


@pytest.fixture
def connect() -> Iterator[Connect]:
    """Opens connections to a port answered by the handler given; closes them after the test,
    which must leave no timer behind."""
    clock = Clock()
    opened: list[Connection] = []

    def open_one(handler: http11.Handler) -> Connection:
        factory = Http11Factory(
            handler, clock, refusal=lambda: http11.short_answer(413), max_body=64
        )
        transport = StringTransport(peerAddress=PEER)
        protocol = factory.buildProtocol(PEER)
        protocol.makeConnection(transport)
        opened.append(Connection(clock, Handler(), transport, protocol))
        return opened[-1]

    yield open_one
    for connection in opened:
        connection.protocol.connectionLost(Failure(ConnectionError("closed by the test")))
    assert clock.getDelayedCalls() == []


@pytest.fixture
def connection(connect: Connect) -> Connection:
    """One connection answered by a `Handler` (``connection.handler``)."""
    handler = Handler()
    opened = connect(handler)
    opened.handler = handler
    return opened


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_an_answer_given_later_is_written_when_it_comes(connection: Connection) -> None:
    connection.send(get("/later/1"))
    assert connection.bodies() == []
    connection.handler.fire("/later/1")
    assert connection.bodies() == [b"/later/1"]
    assert not connection.transport.disconnecting
    connection.send(get("/now/2"))  # and the connection serves on
    assert connection.bodies() == [b"/now/2"]


def test_an_answer_that_has_already_come_is_written_at_once(connect: Connect) -> None:
    connection = connect(lambda request, _: succeed(answer("/fired")))
    connection.send(get("/whatever") + get("/again"))
    assert connection.bodies() == [b"/fired", b"/fired"]
    assert connection.transport.producerState == "producing"


def test_requests_pipelined_behind_an_awaited_answer_are_answered_in_order(
    connection: Connection,
) -> None:
    connection.send(get("/later/1") + get("/now/2") + get("/later/3") + get("/now/4"))
    assert connection.handler.asked == ["/later/1"]  # the others wait their turn
    assert connection.bodies() == []
    connection.handler.fire("/later/1")
    assert connection.handler.asked == ["/later/1", "/now/2", "/later/3"]
    assert connection.bodies() == [b"/later/1", b"/now/2"]
    connection.handler.fire("/later/3")
    assert connection.bodies() == [b"/later/3", b"/now/4"]
    assert not connection.transport.disconnecting


def test_reading_pauses_while_requests_wait_and_resumes_once_they_are_answered(
    connection: Connection,
) -> None:
    connection.send(get("/later/1"))
    # One awaited answer alone: reading goes on, so that a client hanging up is noticed.
    assert connection.transport.producerState == "producing"
    connection.send(get("/now/2"))
    assert connection.transport.producerState == "paused"
    connection.handler.fire("/later/1")
    assert connection.bodies() == [b"/later/1", b"/now/2"]
    assert connection.transport.producerState == "producing"


def test_a_full_send_buffer_keeps_reading_paused_after_the_waiting_requests_are_answered(
    connection: Connection,
) -> None:
    connection.send(get("/later/1") + get("/now/2"))
    connection.protocol.pauseProducing()  # the transport's send buffer filled meanwhile
    connection.handler.fire("/later/1")
    assert connection.transport.producerState == "paused"
    connection.protocol.resumeProducing()
    assert connection.transport.producerState == "producing"


def test_a_request_arriving_in_pieces_behind_an_awaited_answer_waits_too(
    connection: Connection,
) -> None:
    connection.send(get("/later/1"))
    second = get("/now/2")
    connection.send(second[:10])
    connection.send(second[10:])
    assert connection.handler.asked == ["/later/1"]
    connection.handler.fire("/later/1")
    assert connection.bodies() == [b"/later/1", b"/now/2"]


def test_a_client_that_hangs_up_cancels_the_awaited_answer(
    connection: Connection, logged: list[LogEvent]
) -> None:
    connection.send(get("/later/1") + get("/now/2"))
    connection.protocol.connectionLost(Failure(ConnectionError("the client hung up")))
    assert connection.handler.cancelled == ["/later/1"]
    assert connection.handler.asked == ["/later/1"]  # the one behind it is dropped
    assert connection.transport.value() == b""
    assert not [event for event in logged if event.get("log_failure") is not None]


def test_an_answer_that_comes_after_the_client_hung_up_is_dropped(connect: Connect) -> None:
    waiting: Deferred[Response] = Deferred()  # no canceller: its work goes on, and fires
    connection = connect(lambda request, _: waiting)
    connection.send(get("/later/1"))
    connection.protocol.connectionLost(Failure(ConnectionError("the client hung up")))
    waiting.callback(answer("/late"))  # already cancelled: swallowed, as Deferred does
    assert connection.transport.value() == b""


def test_an_awaited_answer_that_fails_is_a_bare_500_and_a_close(
    connection: Connection, logged: list[LogEvent]
) -> None:
    connection.send(get("/later/1") + get("/now/2"))
    connection.handler.waiting.pop("/later/1").errback(RuntimeError("secret detail"))
    written = connection.transport.value()
    assert [answer.status for answer in parse_answers(written)] == [500]
    assert b"secret" not in written and b"Traceback" not in written
    assert connection.transport.disconnecting
    assert connection.handler.asked == ["/later/1"]
    failures = [event["log_failure"] for event in logged if "log_failure" in event]
    assert [failure.type for failure in failures] == [RuntimeError]


def test_an_awaited_answer_cancelled_by_another_while_the_client_waits_is_a_500(
    connection: Connection,
) -> None:
    connection.send(get("/later/1"))
    connection.handler.waiting.pop("/later/1").cancel()
    assert connection.statuses() == [500]
    assert connection.transport.disconnecting


def test_the_idle_timeout_waits_while_an_answer_is_awaited(connection: Connection) -> None:
    connection.send(get("/later/1"))
    connection.clock.advance(http11.IDLE_TIMEOUT * 10)
    assert not connection.transport.disconnecting
    assert connection.clock.getDelayedCalls() == []
    connection.handler.fire("/later/1")
    assert connection.bodies() == [b"/later/1"]
    # Once written, the connection idles as any other: a minute, then closed.
    connection.clock.advance(http11.IDLE_TIMEOUT - 1)
    assert not connection.transport.disconnecting
    connection.clock.advance(1)
    assert connection.transport.disconnecting


def test_the_head_timeout_waits_while_an_answer_is_awaited(connection: Connection) -> None:
    connection.send(get("/later/1") + b"GET /now/2 HTTP/1.1\r\nHost: loc")
    connection.clock.advance(http11.HEAD_TIMEOUT * 10)
    assert not connection.transport.disconnecting
    connection.handler.fire("/later/1")
    assert connection.bodies() == [b"/later/1"]
    # The unfinished head behind it has its own deadline from now on.
    connection.clock.advance(http11.HEAD_TIMEOUT)
    assert connection.statuses() == [408]
    assert connection.transport.disconnecting


def test_a_malformed_request_behind_an_awaited_answer_is_refused_after_it(
    connection: Connection,
) -> None:
    connection.send(get("/later/1") + get("/now/2") + b"GARBAGE\r\n\r\n")
    assert connection.transport.value() == b""
    assert not connection.transport.disconnecting
    connection.handler.fire("/later/1")
    assert connection.statuses() == [200, 200, 400]
    assert connection.transport.disconnecting


def test_a_body_too_large_behind_an_awaited_answer_is_refused_after_it(
    connection: Connection,
) -> None:
    connection.send(get("/later/1") + b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65\r\n\r\n")
    assert connection.transport.value() == b""
    connection.handler.fire("/later/1")
    assert connection.statuses() == [200, 413]
    assert connection.transport.disconnecting


def test_connection_close_behind_an_awaited_answer_closes_after_its_own_answer(
    connection: Connection,
) -> None:
    connection.send(get("/later/1") + get("/now/2", "Connection: close") + get("/now/3"))
    connection.handler.fire("/later/1")
    assert connection.bodies() == [b"/later/1", b"/now/2"]
    assert connection.handler.asked == ["/later/1", "/now/2"]
    assert connection.transport.disconnecting


def test_an_awaited_answer_to_connection_close_closes_once_written(connection: Connection) -> None:
    connection.send(get("/later/1", "Connection: close"))
    assert not connection.transport.disconnecting
    connection.handler.fire("/later/1")
    assert connection.bodies() == [b"/later/1"]
    assert connection.transport.disconnecting


def test_no_100_continue_is_sent_ahead_of_an_awaited_answer(connection: Connection) -> None:
    connection.send(get("/later/1"))
    connection.send(b"POST /now/2 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n")
    connection.send(b"Content-Length: 2\r\n\r\n")
    assert connection.transport.value() == b""
    connection.send(b"ok")
    connection.handler.fire("/later/1")
    assert connection.bodies() == [b"/later/1", b"/now/2"]


def test_a_head_request_answered_later_gets_no_body(connection: Connection) -> None:
    connection.send(b"HEAD /later/1 HTTP/1.1\r\nHost: x\r\n\r\n")
    connection.handler.fire("/later/1")
    written = connection.transport.value()
    assert written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert written.endswith(b"Content-Length: 8\r\n\r\n")


def test_a_handler_that_answers_a_deferred_of_something_else_is_a_500(connect: Connect) -> None:
    connection = connect(lambda request, _: succeed(None))  # type: ignore[arg-type,return-value]
    connection.send(get("/whatever"))
    assert connection.statuses() == [500]


def test_cancelling_on_hang_up_raises_no_unhandled_error(connection: Connection) -> None:
    failures: list[Failure] = []
    connection.send(get("/later/1"))
    waiting = connection.handler.waiting["/later/1"]
    waiting.addErrback(lambda failure: failures.append(failure))
    connection.protocol.connectionLost(Failure(ConnectionError("the client hung up")))
    # The protocol's own callback came first and took the CancelledError: nothing left over.
    assert failures == []
    assert waiting.called


def test_the_status_line_names_every_status_the_listeners_give() -> None:
    assert http11.status_line(431) == b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    assert http11.status_line(408) == b"HTTP/1.1 408 Request Timeout\r\n"
    assert http11.status_line(599) == b"HTTP/1.1 599 Unknown Status\r\n"


def test_cancelled_error_is_what_a_hang_up_gives_the_handler(connect: Connect) -> None:
    reasons: list[type[BaseException]] = []

    def handler(request: Request, _: Http11Protocol) -> Deferred[Response]:
        waiting: Deferred[Response] = Deferred()
        waiting.addErrback(lambda failure: reasons.append(failure.type) or failure)
        return waiting

    connection = connect(handler)
    connection.send(get("/later/1"))
    connection.protocol.connectionLost(Failure(ConnectionError("the client hung up")))
    assert reasons == [CancelledError]


def test_the_factory_names_http_1_1_for_tls_alpn() -> None:
    """Twisted's TLS fails the handshake of a client offering ALPN (curl, urllib3) when the
    wrapped factory names no protocol: the node API's port must name one."""
    factory = Http11Factory(Handler(), Clock(), refusal=lambda: b"", max_body=64)
    assert IProtocolNegotiationFactory.providedBy(factory)
    assert factory.acceptableProtocols() == [b"http/1.1"]
