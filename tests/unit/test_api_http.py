"""The public port's HTTP layer (ApiFactory, common.http11) on a StringTransport.

httptools parses; each request goes straight to the API. These tests hold what the port did
when it was a twisted.web Site: keep-alive, pipelining, the early 413, 400 for a malformed
request, HEAD, and the headers of every answer; and what the parser's protocol adds: 100
Continue, the head's limits, refused upgrades. Time moves only through a Clock.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from common import http11
from controller import sigv4
from controller.accounts import ensure_first_account
from controller.api import ApiFactory, PublicApi
from controller.compose import api_registry
from controller.keyring import KeyRingFile, ensure_key_ring
from controller.metrics import ControllerMetrics
from controller.sessions import Sessions
from controller.store.sqlite import SQLiteStore

ACCOUNT_ID = "111122223333"
#: 2024-05-01T12:00:00Z, the clock's time in these tests.
NOW = 1714564800.0
FORM = "application/x-www-form-urlencoded; charset=utf-8"
PEER = IPv4Address("TCP", "192.0.2.7", 40000)


@dataclass
class Api:
    resource: PublicApi
    clock: Clock
    key: Any


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    store = SQLiteStore(":memory:")
    with store.transaction() as tx:
        key = ensure_first_account(tx, ACCOUNT_ID, "test", "2024-05-01T00:00:00Z").root_key
    ensure_key_ring(tmp_path / "token-keys.json", datetime.fromtimestamp(NOW, UTC))
    actions = api_registry()
    clock = Clock()
    clock.advance(NOW)
    metrics = ControllerMetrics(
        CollectorRegistry(), ((action.service, action.name) for action in actions)
    )
    sessions = Sessions(KeyRingFile(tmp_path / "token-keys.json"))
    try:
        yield Api(PublicApi(store, actions, clock, sessions, metrics=metrics), clock, key)
    finally:
        store.close()


class Connection:
    """One client connection to the port: bytes in, answers out."""

    def __init__(self, factory: ApiFactory) -> None:
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8773), peerAddress=PEER
        )
        self.protocol = factory.buildProtocol(PEER)
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> list[Answer]:
        """Feed ``data``; the answers it completed (the transport is emptied)."""
        self.protocol.dataReceived(data)
        written = self.transport.value()
        self.transport.clear()
        return parse_answers(written)

    def close(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionError("closed by the test")))


@pytest.fixture
def connect(api: Api) -> Iterator[Any]:
    """Opens connections to a port on ``api``; closes them, and checks no timer is left."""
    opened: list[Connection] = []

    def open_one(max_body: int = 1024 * 1024) -> Connection:
        connection = Connection(ApiFactory(api.resource, api.clock, max_body))
        opened.append(connection)
        return connection

    yield open_one
    for connection in opened:
        connection.close()
    assert api.clock.getDelayedCalls() == []


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error_code(self) -> str:
        root = ElementTree.fromstring(self.body)
        return next(element.text or "" for element in root.iter() if element.tag.endswith("Code"))


def parse_answers(data: bytes, *, head_only: bool = False) -> list[Answer]:
    """Every complete answer in ``data``, bodies read by Content-Length (none with head_only)."""
    answers = []
    while data:
        head, separator, rest = data.partition(b"\r\n\r\n")
        assert separator, f"an incomplete answer: {data!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_only else int(headers.get("content-length", "0"))
        answers.append(Answer(int(status_line.split(" ")[1]), headers, rest[:length]))
        data = rest[length:]
    return answers


def signed(api: Api, params: dict[str, str], extra_headers: str = "") -> bytes:
    """A POST signed with the account's root key, as the wire carries it."""
    body = urlencode(params).encode("ascii")
    request = sigv4.sign(
        sigv4.HttpRequest("POST", "/", "", (("Host", "localhost"), ("Content-Type", FORM)), body),
        access_key_id=api.key.access_key_id,
        secret_access_key=api.key.secret_access_key,
        region="us-east-1",
        service="sts",
        now=datetime.fromtimestamp(NOW, UTC),
    )
    head = "".join(f"{name}: {value}\r\n" for name, value in request.headers)
    return (
        f"POST / HTTP/1.1\r\n{head}{extra_headers}Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


WHO_AM_I = {"Action": "GetCallerIdentity", "Version": "2011-06-15"}
UNSIGNED = b"GET /?Action=ListRoles&Version=2010-05-08 HTTP/1.1\r\nHost: localhost\r\n\r\n"


def test_a_signed_request_is_answered_200_with_the_query_xml(api: Api, connect: Any) -> None:
    (answer,) = connect().send(signed(api, WHO_AM_I))
    assert answer.status == 200
    assert b"<GetCallerIdentityResult>" in answer.body
    assert f"<Account>{ACCOUNT_ID}</Account>".encode() in answer.body


def test_every_answer_carries_the_headers_the_site_sent(api: Api, connect: Any) -> None:
    for answer in connect().send(signed(api, WHO_AM_I) + UNSIGNED):
        assert answer.headers["content-type"] == "text/xml"
        assert answer.headers["content-length"] == str(len(answer.body))
        assert answer.headers["server"].startswith("TwistedWeb/")
        assert answer.headers["date"] == "Wed, 01 May 2024 12:00:00 GMT"
        request_id = uuid.UUID(answer.headers["x-amzn-requestid"])
        assert request_id.version == 4
        assert str(request_id) == answer.headers["x-amzn-requestid"]
        assert f"<RequestId>{request_id}</RequestId>".encode() in answer.body


def test_the_date_header_follows_the_clock(api: Api, connect: Any) -> None:
    connection = connect()
    connection.send(UNSIGNED)
    api.clock.advance(42)
    (answer,) = connection.send(UNSIGNED)
    assert answer.headers["date"] == "Wed, 01 May 2024 12:00:42 GMT"


def test_an_idle_connection_is_closed_after_a_minute_as_twisted_web_does(
    api: Api, connect: Any
) -> None:
    connection = connect()
    connection.send(UNSIGNED)
    api.clock.advance(59)
    assert not connection.transport.disconnecting
    api.clock.advance(1)
    assert connection.transport.disconnecting


def test_two_requests_on_one_connection_are_both_answered_and_it_stays_open(
    api: Api, connect: Any
) -> None:
    connection = connect()
    first = connection.send(signed(api, WHO_AM_I))
    assert [answer.status for answer in first] == [200]
    assert not connection.transport.disconnecting
    second = connection.send(UNSIGNED)
    assert [answer.status for answer in second] == [403]
    assert second[0].error_code() == "MissingAuthenticationToken"
    assert not connection.transport.disconnecting
    assert first[0].headers["x-amzn-requestid"] != second[0].headers["x-amzn-requestid"]


def test_pipelined_requests_are_answered_in_order(api: Api, connect: Any) -> None:
    answers = connect().send(UNSIGNED + signed(api, WHO_AM_I) + UNSIGNED)
    assert [answer.status for answer in answers] == [403, 200, 403]


def test_a_request_split_across_reads_is_answered_once_complete(api: Api, connect: Any) -> None:
    connection = connect()
    request = signed(api, WHO_AM_I)
    assert connection.send(request[:37]) == []
    assert connection.send(request[37:-5]) == []
    assert [answer.status for answer in connection.send(request[-5:])] == [200]


def test_connection_close_is_honoured_after_the_answer(api: Api, connect: Any) -> None:
    connection = connect()
    (answer,) = connection.send(signed(api, WHO_AM_I, "Connection: close\r\n"))
    assert answer.status == 200
    assert answer.headers["connection"] == "close"
    assert connection.transport.disconnecting


def test_an_http_1_0_request_is_answered_then_the_connection_closes(connect: Any) -> None:
    connection = connect()
    (answer,) = connection.send(UNSIGNED.replace(b"HTTP/1.1", b"HTTP/1.0"))
    assert answer.status == 403
    assert connection.transport.disconnecting


@pytest.mark.parametrize(
    "request_line",
    [b"GARBAGE", b"GET /", b"GET / HTTP/1.1 extra", b"GET / SPDY/3"],
)
def test_a_malformed_request_line_is_answered_400_and_the_connection_closed(
    connect: Any, request_line: bytes
) -> None:
    connection = connect()
    (answer,) = connection.send(request_line + b"\r\nHost: localhost\r\n\r\n")
    assert answer.status == 400
    assert connection.transport.disconnecting


def test_a_malformed_header_is_answered_400_and_the_connection_closed(connect: Any) -> None:
    connection = connect()
    (answer,) = connection.send(b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n")
    assert answer.status == 400
    assert connection.transport.disconnecting


def test_an_announced_oversized_body_is_refused_413_before_it_is_sent(
    api: Api, connect: Any
) -> None:
    connection = connect(max_body=2048)
    head = (
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: " + FORM.encode() + b"\r\n"
        b"Content-Length: 4096\r\n\r\n"
    )
    (answer,) = connection.send(head)
    assert answer.status == 413
    assert answer.error_code() == "RequestEntityTooLarge"
    assert answer.headers["connection"] == "close"
    assert connection.transport.disconnecting
    # The body that arrives anyway is read no further and answered nothing more.
    assert connection.send(b"a" * 4096) == []


def test_a_chunked_body_growing_past_the_limit_is_refused_413(connect: Any) -> None:
    connection = connect(max_body=2048)
    head = b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert connection.send(head) == []
    assert connection.send(b"400\r\n" + b"a" * 1024 + b"\r\n") == []
    (answer,) = connection.send(b"800\r\n" + b"a" * 2048 + b"\r\n0\r\n\r\n")
    assert answer.status == 413
    assert connection.transport.disconnecting


def test_a_body_at_the_limit_is_read(api: Api, connect: Any) -> None:
    request = signed(api, WHO_AM_I)
    body_length = len(request.partition(b"\r\n\r\n")[2])
    (answer,) = connect(max_body=body_length).send(request)
    assert answer.status == 200


def test_head_gets_the_headers_of_its_405_without_the_body(connect: Any) -> None:
    connection = connect()
    connection.protocol.dataReceived(b"HEAD / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    (answer,) = parse_answers(connection.transport.value(), head_only=True)
    assert answer.status == 405
    assert answer.headers["allow"] == "GET, POST"
    assert int(answer.headers["content-length"]) > 0  # the length of the 405's XML
    assert connection.transport.value().endswith(b"\r\n\r\n")  # and not one byte of it
    assert not connection.transport.disconnecting


@pytest.mark.parametrize("method", [b"PUT", b"DELETE", b"OPTIONS"])
def test_other_methods_are_405_with_allow_and_the_aws_error(connect: Any, method: bytes) -> None:
    (answer,) = connect().send(method + b" / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert answer.status == 405
    assert answer.headers["allow"] == "GET, POST"
    assert answer.error_code() == "MethodNotAllowed"


def test_a_request_sees_the_connections_peer_and_that_it_is_not_tls(api: Api, connect: Any) -> None:
    seen: list[tuple[str, bool]] = []

    class Recorder:
        def answer(self, request: http11.Request) -> http11.Response:
            seen.append((request.peer.host, request.secure))  # type: ignore[attr-defined]
            return http11.Response(200, (), b"<ok/>")

    connection = Connection(ApiFactory(Recorder(), api.clock))  # type: ignore[arg-type]
    try:
        connection.send(UNSIGNED + UNSIGNED)
    finally:
        connection.close()
    assert seen == [(PEER.host, False), (PEER.host, False)]


def test_a_failure_outside_the_api_is_an_internal_failure_xml_not_a_traceback(
    api: Api, connect: Any
) -> None:
    class Broken:
        def answer(self, request: http11.Request) -> http11.Response:
            raise RuntimeError("a log observer or a metric failed")

    connection = Connection(ApiFactory(Broken(), api.clock))  # type: ignore[arg-type]
    try:
        (answer,) = connection.send(UNSIGNED)
    finally:
        connection.close()
    assert answer.status == 500
    assert answer.error_code() == "InternalFailure"
    assert b"failed because of an unknown error, exception or failure." in answer.body
    assert b"Traceback" not in answer.body and b"RuntimeError" not in answer.body
    assert not connection.transport.disconnecting


# -- what the port's own protocol (common.http11) adds to the parser ------------------------


def test_expect_100_continue_is_answered_before_the_body_then_the_request(
    api: Api, connect: Any
) -> None:
    connection = connect()
    request = signed(api, WHO_AM_I, "Expect: 100-continue\r\n")
    head, _, body = request.partition(b"\r\n\r\n")
    connection.protocol.dataReceived(head + b"\r\n\r\n")
    assert connection.transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    connection.transport.clear()
    (answer,) = connection.send(body)
    assert answer.status == 200
    assert not connection.transport.disconnecting


def test_expect_100_continue_over_the_body_limit_is_413_without_a_100(connect: Any) -> None:
    connection = connect(max_body=2048)
    head = (
        b"POST / HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
        b"Content-Length: 4096\r\n\r\n"
    )
    connection.protocol.dataReceived(head)
    written = connection.transport.value()
    assert written.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in written
    assert connection.transport.disconnecting


def test_expect_100_continue_from_http_1_0_gets_no_100(connect: Any) -> None:
    connection = connect()
    head = (
        b"POST / HTTP/1.0\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    )
    connection.protocol.dataReceived(head)
    assert connection.transport.value() == b""


def test_a_head_over_16_kib_is_refused_431_and_the_connection_closed(connect: Any) -> None:
    connection = connect()
    big = b"X-Filler: " + b"a" * (16 * 1024) + b"\r\n"
    (answer,) = connection.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n" + big + b"\r\n")
    assert answer.status == 431
    assert connection.transport.disconnecting


def test_many_headers_under_16_kib_are_still_refused_431_past_100(connect: Any) -> None:
    connection = connect()
    lines = b"".join(b"X-H%d: v\r\n" % number for number in range(101))
    assert len(lines) < 16 * 1024
    (answer,) = connection.send(b"GET / HTTP/1.1\r\n" + lines + b"\r\n")
    assert answer.status == 431
    assert connection.transport.disconnecting


def test_a_hundred_headers_are_accepted(connect: Any) -> None:
    connection = connect()
    lines = b"".join(b"X-H%d: v\r\n" % number for number in range(99))
    (answer,) = connection.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n" + lines + b"\r\n")
    assert answer.status == 403  # the API's answer: unsigned
    assert not connection.transport.disconnecting


def test_one_header_growing_across_reads_is_refused_431_before_it_ends(connect: Any) -> None:
    connection = connect()
    assert connection.send(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Filler: ") == []
    answers: list[Answer] = []
    for _ in range(20):  # 20 KiB of one value, never finished
        answers += connection.send(b"a" * 1024)
        if connection.transport.disconnecting:
            break
    assert [answer.status for answer in answers] == [431]
    assert connection.transport.disconnecting


def test_a_url_over_16_kib_is_refused_414(connect: Any) -> None:
    connection = connect()
    (answer,) = connection.send(b"GET /?" + b"a" * (16 * 1024) + b" HTTP/1.1\r\n\r\n")
    assert answer.status == 414
    assert connection.transport.disconnecting


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
        b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n\r\n",
    ],
)
def test_an_upgrade_is_refused_400_and_the_connection_closed(
    connect: Any, request_head: bytes
) -> None:
    connection = connect()
    (answer,) = connection.send(request_head + UNSIGNED)
    assert answer.status == 400
    assert connection.transport.disconnecting


def test_a_parser_error_after_a_good_request_answers_it_then_400_and_closes(
    connect: Any,
) -> None:
    connection = connect()
    bad_chunk = b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
    answers = connection.send(UNSIGNED + bad_chunk)
    assert [answer.status for answer in answers] == [403, 400]
    assert connection.transport.disconnecting
    assert connection.send(UNSIGNED) == []  # nothing more is read


def test_a_request_smuggling_pair_of_lengths_is_a_parser_error(connect: Any) -> None:
    connection = connect()
    (answer,) = connection.send(
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    assert answer.status == 400
    assert connection.transport.disconnecting


@pytest.mark.parametrize("line_end", [b"\r\n", b"\n"])
def test_a_one_line_http_0_9_request_is_answered_400_at_once(connect: Any, line_end: bytes) -> None:
    connection = connect()
    (answer,) = connection.send(b"GET /path" + line_end)
    assert answer.status == 400
    assert connection.transport.disconnecting


@pytest.mark.parametrize(
    "pieces",
    [
        [b"GET /path ", b"HTTP/1.1\r\n", b"Host: localhost\r\n\r\n"],
        [b"GET /path HT", b"TP/1.1\r\nHost: localhost\r\n", b"\r\n"],
        [b"GET /pa", b"th HTTP/1.0\r\n", b"\r\n"],
    ],
)
def test_a_request_line_in_pieces_is_not_taken_for_http_0_9(
    connect: Any, pieces: list[bytes]
) -> None:
    connection = connect()
    for piece in pieces[:-1]:
        assert connection.send(piece) == []
        assert not connection.transport.disconnecting
    (answer,) = connection.send(pieces[-1])
    assert answer.status != 400


def test_an_http_2_request_line_is_answered_400(connect: Any) -> None:
    connection = connect()
    (answer,) = connection.send(b"GET / HTTP/2.0\r\nHost: localhost\r\n\r\n")
    assert answer.status == 400
    assert connection.transport.disconnecting


def test_requests_pipelined_after_connection_close_are_not_answered(api: Api, connect: Any) -> None:
    connection = connect()
    answers = connection.send(signed(api, WHO_AM_I, "Connection: close\r\n") + UNSIGNED)
    assert [answer.status for answer in answers] == [200]
    assert connection.transport.disconnecting


def test_http_1_0_keep_alive_is_kept_and_said(connect: Any) -> None:
    connection = connect()
    request = UNSIGNED.replace(b"HTTP/1.1", b"HTTP/1.0").replace(
        b"\r\n\r\n", b"\r\nConnection: keep-alive\r\n\r\n"
    )
    (answer,) = connection.send(request)
    assert answer.headers["connection"] == "keep-alive"
    assert not connection.transport.disconnecting


def test_a_kept_alive_connection_times_out_a_minute_after_its_last_read(
    api: Api, connect: Any
) -> None:
    """Between requests the idle timeout rules, restarted by each read; inside a request head
    the head timeout does, which reads do not extend (below)."""
    connection = connect()
    assert connection.send(signed(api, WHO_AM_I))[0].status == 200
    api.clock.advance(50)
    assert connection.send(signed(api, WHO_AM_I))[0].status == 200
    api.clock.advance(50)
    assert not connection.transport.disconnecting
    api.clock.advance(10)
    assert connection.transport.disconnecting


def test_a_timed_out_connection_that_will_not_close_is_aborted_15_s_later(
    api: Api, connect: Any
) -> None:
    connection = connect()
    api.clock.advance(60)
    assert connection.transport.disconnecting and not connection.transport.disconnected
    api.clock.advance(15)
    assert connection.transport.disconnected


def test_reading_pauses_while_the_send_buffer_is_full(connect: Any) -> None:
    connection = connect()
    assert connection.transport.producer is connection.protocol
    connection.protocol.pauseProducing()
    assert connection.transport.producerState == "paused"
    connection.protocol.resumeProducing()
    assert connection.transport.producerState == "producing"


def test_closing_unregisters_from_the_transport_so_the_close_completes(connect: Any) -> None:
    connection = connect()
    connection.send(UNSIGNED.replace(b"HTTP/1.1", b"HTTP/1.0"))
    assert connection.transport.disconnecting
    assert connection.transport.producer is None


def test_a_failure_in_the_handler_itself_is_a_bare_500_and_a_close(api: Api) -> None:
    clock = Clock()
    transport = StringTransport(peerAddress=PEER)

    def broken(request: http11.Request, protocol: http11.Http11Protocol) -> bytes:
        raise RuntimeError("secret detail")

    protocol = http11.Http11Protocol(broken, clock, lambda: b"date", b"server", lambda: b"", 1024)
    protocol.makeConnection(transport)
    try:
        protocol.dataReceived(UNSIGNED)
    finally:
        protocol.connectionLost(Failure(ConnectionError("closed by the test")))
    (answer,) = parse_answers(transport.value())
    assert answer.status == 500
    assert b"secret" not in transport.value() and b"Traceback" not in transport.value()
    assert transport.disconnecting
    assert clock.getDelayedCalls() == []


def test_a_head_still_incomplete_after_the_head_timeout_is_408_however_bytes_drip_in(
    api: Api, connect: Any
) -> None:
    connection = connect()
    assert connection.send(b"POST / HTTP/1.1\r\nHost: localhost\r\n") == []
    for second in range(1, int(http11.HEAD_TIMEOUT)):
        api.clock.advance(1)
        assert connection.send(b"X-Drip-%d: x\r\n" % second) == []  # no reprieve
        assert not connection.transport.disconnecting
    api.clock.advance(1)
    (answer,) = parse_answers(connection.transport.value())
    assert answer.status == 408
    assert connection.transport.disconnecting


def test_a_head_completed_in_pieces_in_time_is_answered_and_leaves_no_deadline(
    api: Api, connect: Any
) -> None:
    connection = connect()
    request = signed(api, WHO_AM_I)
    head_end = request.index(b"\r\n\r\n")
    assert connection.send(request[:20]) == []
    api.clock.advance(http11.HEAD_TIMEOUT - 1)
    (answer,) = connection.send(request[20:])
    assert answer.status == 200
    assert head_end > 20
    assert len(api.clock.getDelayedCalls()) == 1  # the idle timeout alone
    api.clock.advance(5)
    assert not connection.transport.disconnecting


def test_a_head_that_arrives_whole_starts_no_deadline(api: Api, connect: Any) -> None:
    connection = connect()
    (answer,) = connection.send(signed(api, WHO_AM_I))
    assert answer.status == 200
    assert len(api.clock.getDelayedCalls()) == 1  # the idle timeout alone


class Port:
    """A listening port as the limit sees it: whether it accepts."""

    def __init__(self) -> None:
        self.reading = True

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


def test_a_connection_limit_pauses_its_ports_at_the_limit_and_resumes_below_it() -> None:
    limit = http11.ConnectionLimit(2)
    first, second = Port(), Port()
    limit.watch(first)
    limit.watch(second)
    limit.opened()
    assert first.reading and second.reading
    limit.opened()
    assert not first.reading and not second.reading
    late = Port()
    limit.watch(late)  # a port added while the limit is reached starts paused
    assert not late.reading
    assert not limit.admits() and limit.refused == 1
    limit.closed()
    assert first.reading and second.reading and late.reading
    assert limit.admits() and (limit.open, limit.pauses) == (1, 1)


def test_the_public_port_holds_no_more_connections_than_its_limit(api: Api) -> None:
    limit = http11.ConnectionLimit(2)
    port = Port()
    limit.watch(port)
    factory = ApiFactory(api.resource, api.clock, limit=limit)
    connections = [Connection(factory), Connection(factory)]
    assert not port.reading and limit.open == 2
    assert factory.buildProtocol(PEER) is None  # accepted in the same batch: closed at once
    (answer,) = connections[0].send(signed(api, WHO_AM_I))
    assert answer.status == 200  # those it holds are served as ever
    connections[1].close()
    assert port.reading and limit.open == 1
    connections[0].close()
    assert limit.open == 0
    for call in api.clock.getDelayedCalls():
        call.cancel()


def test_the_default_limit_keeps_half_the_descriptors_for_everything_else() -> None:
    from controller.config import ControllerConfig, config_from_string

    assert ControllerConfig().api_connection_limit(65536) == 32768
    assert ControllerConfig().api_connection_limit(20) == 16
    assert config_from_string("[api]\nmax_connections = 500\n").api_connection_limit(65536) == 500
