"""The metadata service's HTTP layer (`agent.server`): the API's HTTP/1.1 protocol
(`common.http11`, httptools), answered straight from the rules.

The protocol is driven through Twisted's in-memory transport and clock, byte for byte, so that
every framing rule (keep-alive, pipelining, HTTP/1.0, ``Connection: close``, HEAD, malformed
requests, the idle timeout) is checked deterministically. Real sockets in real namespaces serve
the same factory in tests/netns (curl, boto3, the aws CLI and the JS SDK as guests).
"""

from __future__ import annotations

import re
import socket
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from agent.imds.ratelimit import TokenBucket
from agent.imds.rules import NOT_FOUND_PAGE, ImdsResponse, InstanceView
from agent.server import MAX_BODY_BYTES, Forwarder, make_factory
from common.http11 import IDLE_TIMEOUT, Http11Protocol
from tests.unit.test_imds_rules import CREDENTIALS_PATH, MINTER, make_instance
from tests.unit.test_imds_tree import INSTANCE_ID, NOW, ROLE

GET = f"GET {CREDENTIALS_PATH} HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n".encode()


class Endpoint:
    """One instance as the factory sees it; `broken` makes its view raise."""

    def __init__(self, view: InstanceView | None = None) -> None:
        self.instance_id = INSTANCE_ID
        self.bucket = TokenBucket(1000, 1000)
        self._view = view if view is not None else make_instance()
        self.broken = False

    def view(self, now: float) -> InstanceView:
        if self.broken:
            raise RuntimeError("a bug")
        return self._view


class Socketed(StringTransport):
    """An in-memory transport whose `getHandle` is a real socket, to read the IP TTL set."""

    def __init__(self) -> None:
        super().__init__(
            hostAddress=IPv4Address("TCP", "169.254.169.254", 80),
            peerAddress=IPv4Address("TCP", "169.254.0.2", 40000),
        )
        self.handle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)

    def getHandle(self) -> socket.socket:
        return self.handle


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(NOW)
    return clock


class Served:
    def __init__(
        self, clock: Clock, endpoint: Endpoint | None = None, upstream: Forwarder | None = None
    ) -> None:
        self.endpoint = endpoint if endpoint is not None else Endpoint()
        self.observed: list[tuple[str, str, ImdsResponse, float]] = []
        factory = make_factory(
            self.endpoint, clock, lambda *seen: self.observed.append(seen), upstream=upstream
        )
        self.transport = Socketed()
        self.channel: Http11Protocol = factory.buildProtocol(None)
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> bytes:
        self.transport.clear()
        self.channel.dataReceived(data)
        return bytes(self.transport.value())

    def close(self) -> None:
        self.transport.handle.close()
        if not self.transport.disconnecting:
            self.channel.connectionLost(None)  # type: ignore[arg-type]


@pytest.fixture
def served(clock: Clock) -> Any:
    served = Served(clock)
    yield served
    served.close()


def split(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return status, headers, body


def test_a_get_is_answered_with_the_rules_bytes_and_a_date(served: Served) -> None:
    status, headers, body = split(served.send(GET))
    assert status == "HTTP/1.1 200 OK"
    assert headers["Content-Type"] == "text/plain"
    assert headers["Server"] == "EC2ws"
    assert headers["Content-Length"] == str(len(body))
    assert headers["Date"].endswith(" GMT")
    assert body.startswith(b'{\n  "Code" : "Success"')
    assert not served.transport.disconnecting


def test_the_observer_hears_the_path_without_its_query_and_the_answer(served: Served) -> None:
    served.send(GET.replace(CREDENTIALS_PATH.encode(), CREDENTIALS_PATH.encode() + b"?x=1"))
    ((instance_id, path, answer, seconds),) = served.observed
    assert (instance_id, path, answer.status) == (INSTANCE_ID, CREDENTIALS_PATH, 200)
    assert seconds >= 0


def test_keep_alive_and_pipelined_requests_are_answered_in_order(served: Served) -> None:
    missing = GET.replace(ROLE.encode(), b"nobody")
    answers = served.send(GET + missing + GET)
    # Bodies end without a line break, so a status line follows the previous body directly.
    statuses = re.findall(rb"HTTP/1\.1 \d{3} [A-Za-z ]+\r\n", answers)
    ok, missing_status = b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 404 Not Found\r\n"
    assert statuses == [ok, missing_status, ok]
    assert NOT_FOUND_PAGE in answers
    assert not served.transport.disconnecting


def test_http_1_0_is_answered_and_the_connection_closes(served: Served) -> None:
    status, headers, body = split(served.send(GET.replace(b"HTTP/1.1", b"HTTP/1.0")))
    assert status == "HTTP/1.1 200 OK"  # the server's version, as RFC 9110 has it
    assert int(headers["Content-Length"]) == len(body) > 0
    assert served.transport.disconnecting


def test_connection_close_is_echoed_and_honoured(served: Served) -> None:
    request = GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    status, headers, _ = split(served.send(request))
    assert status == "HTTP/1.1 200 OK"
    assert headers["Connection"] == "close"
    assert served.transport.disconnecting


def test_head_has_the_get_length_and_no_body(served: Served) -> None:
    _, get_headers, get_body = split(served.send(GET))
    status, headers, body = split(served.send(GET.replace(b"GET", b"HEAD", 1)))
    assert status == "HTTP/1.1 200 OK"
    assert headers["Content-Length"] == get_headers["Content-Length"] == str(len(get_body))
    assert body == b""


def test_a_refusal_keeps_the_connection(served: Served) -> None:
    proxied = GET.replace(b"\r\n\r\n", b"\r\nX-Forwarded-For: 10.1.2.3\r\n\r\n")
    status, headers, body = split(served.send(proxied))
    assert (status, headers["Content-Length"], body) == ("HTTP/1.1 403 Forbidden", "0", b"")
    assert split(served.send(GET))[0] == "HTTP/1.1 200 OK"


def test_a_malformed_request_line_is_a_400_and_the_connection_closes(served: Served) -> None:
    answer = served.send(b"GET /latest/meta-data/\r\nHost: 169.254.169.254\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request")
    assert served.transport.disconnecting
    assert served.observed == []


def test_an_idle_connection_is_closed_on_the_clock(clock: Clock, served: Served) -> None:
    served.send(GET)
    clock.advance(IDLE_TIMEOUT - 1)
    assert not served.transport.disconnecting
    clock.advance(2)
    assert served.transport.disconnecting


def test_the_token_answer_carries_the_hop_limit_as_ip_ttl(clock: Clock) -> None:
    served = Served(clock, Endpoint(make_instance(hop_limit=3)))
    try:
        put = (
            b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n"
            b"X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n"
        )
        status, _, token = split(served.send(put))
        assert status == "HTTP/1.1 200 OK"
        assert MINTER.check(token.decode(), INSTANCE_ID, NOW)
        assert served.transport.handle.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == 3
    finally:
        served.close()


def ttl(served: Served) -> int:
    """The IP TTL of the served connection's socket."""
    return int(served.transport.handle.getsockopt(socket.IPPROTO_IP, socket.IP_TTL))


def test_a_connection_that_carried_a_token_never_raises_its_ttl_again(clock: Clock) -> None:
    """The token may still be in the send buffer, or be retransmitted, when the next answer is
    made: raising the TTL for that answer would carry the token past the hop limit too."""
    served = Served(clock, Endpoint(make_instance(hop_limit=2)))
    fresh = Served(clock, Endpoint(make_instance(hop_limit=2)))
    try:
        assert split(served.send(GET))[0] == "HTTP/1.1 200 OK"
        assert ttl(served) == 64  # answers before any token leave with the default
        put = (
            b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n"
            b"X-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n"
        )
        assert split(served.send(put))[0] == "HTTP/1.1 200 OK"
        assert ttl(served) == 2
        for _ in range(3):
            assert split(served.send(GET))[0] == "HTTP/1.1 200 OK"
            assert ttl(served) == 2
        answers = served.send(put + GET)  # a token and a request pipelined in one segment
        assert answers.count(b"HTTP/1.1 200 OK") == 2
        assert ttl(served) == 2
        assert split(fresh.send(GET))[0] == "HTTP/1.1 200 OK"
        assert ttl(fresh) == 64  # another connection starts afresh
    finally:
        served.close()
        fresh.close()


def test_a_bug_behind_the_rules_costs_one_503_not_the_connection(clock: Clock) -> None:
    served = Served(clock)
    try:
        served.endpoint.broken = True
        status, headers, body = split(served.send(GET))
        assert (status, headers["Content-Length"], body) == (
            "HTTP/1.1 503 Service Unavailable",
            "0",
            b"",
        )
        assert "a bug" not in served.transport.value().decode("latin-1")
        served.endpoint.broken = False
        assert split(served.send(GET))[0] == "HTTP/1.1 200 OK"
    finally:
        served.close()


def test_a_body_over_the_limit_is_refused_unread_and_the_connection_closes(
    served: Served,
) -> None:
    put = (
        b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n"
        b"X-aws-ec2-metadata-token-ttl-seconds: 60\r\n"
        b"Content-Length: %d\r\n\r\n" % (10 * 2**30)
    )
    status, headers, body = split(served.send(put + b"x" * 4096))
    assert (status, headers["Content-Length"], body) == ("HTTP/1.1 400 Bad Request", "0", b"")
    assert headers["Connection"] == "close"
    assert served.transport.disconnecting
    assert served.observed == []


def test_a_chunked_body_growing_past_the_limit_is_refused(served: Served) -> None:
    put = (
        b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n"
        b"X-aws-ec2-metadata-token-ttl-seconds: 60\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (MAX_BODY_BYTES, b"x" * MAX_BODY_BYTES)
    answer = served.send(put + chunk + chunk)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert served.transport.disconnecting


def test_a_small_body_is_read_and_the_request_answered(served: Served) -> None:
    put = (
        b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n"
        b"X-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 2\r\n\r\nhi"
    )
    status, _, token = split(served.send(put))
    assert status == "HTTP/1.1 200 OK"
    assert MINTER.check(token.decode(), INSTANCE_ID, NOW)
