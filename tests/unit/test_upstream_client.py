"""Pass-through to an upstream metadata service, the shell (`agent.upstream`) and the metadata
service's factory around it (`agent.server`).

The client is twisted.web's real `Agent` on Twisted's in-memory reactor and clock: each
connection it opens is answered here byte for byte by a scripted upstream server, so what
leaves the node (request line, headers) and every way an upstream fails (refused, silent, slow,
too large, a 5xx, a redirect) are checked deterministically, time moving only by the clock. The
factory's tests drive a guest's connection as tests/unit/test_imds_server.py does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.python.failure import Failure

from agent.imds.passthrough import NEUTRON, OUTCOMES, Outgoing, UpstreamAnswer, sign
from agent.imds.ratelimit import TokenBucket
from agent.imds.rules import NOT_FOUND_PAGE, ImdsRequest, InstanceView
from agent.imds.tree import ImdsTree
from agent.metrics import UpstreamCollector
from agent.upstream import Upstream, UpstreamClient, UpstreamService, make_upstream
from common.nodemessages import parse_instance
from tests.unit.test_imds_rules import CREDENTIALS_PATH, MINTER, make_instance, token_for
from tests.unit.test_imds_server import Endpoint, Served, split
from tests.unit.test_imds_tree import ACCOUNT_ID, INSTANCE_ID, NOW, assignment

SECRET = b"s3cret-shared-with-nova"
URL = "http://192.0.2.10:8775/metadata"
TIMEOUT = 2.0
LIMIT = 4096
META_DATA_JSON = "/openstack/latest/meta_data.json"
HOST = ("Host", "169.254.169.254")


# -- a scripted upstream server on the in-memory reactor ---------------------------------------


class Connection(StringTransport):
    """The upstream's end of one connection the client opened. Closing it (as the client
    does to drop a transfer) tells the client's protocol on the next turn, as TCP does."""

    def __init__(self, reactor: MemoryReactorClock, protocol: Any) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "192.0.2.10", 8775))
        self.reactor = reactor
        self.protocol = protocol
        self.lost = False
        protocol.makeConnection(self)

    def loseConnection(self) -> None:
        super().loseConnection()
        self._lose()

    def abortConnection(self) -> None:
        super().abortConnection()
        self._lose()

    def stopProducing(self) -> None:
        super().stopProducing()
        self._lose()  # what a TCP connection does

    def _lose(self) -> None:
        if not self.lost:
            self.lost = True
            self.reactor.callLater(0, self.protocol.connectionLost, Failure(ConnectionDone()))

    def request_head(self) -> tuple[str, list[tuple[str, str]]]:
        """The request line and header lines the client sent."""
        head = bytes(self.value()).partition(b"\r\n\r\n")[0].decode("latin-1")
        line, *lines = head.split("\r\n")
        return line, [(name, value) for name, _, value in (h.partition(": ") for h in lines)]

    def answer(self, data: bytes) -> None:
        self.protocol.dataReceived(data)


class Scripted:
    """The upstream server: each connection the client makes, accepted on demand."""

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor

    def accept(self) -> Connection:
        # (the in-memory reactor's resolver gives 127.0.0.1 for any name or address)
        host, port, factory, _, _ = self.reactor.tcpClients.pop(0)
        assert port == 8775
        return Connection(self.reactor, factory.buildProtocol(IPv4Address("TCP", host, port)))

    def refuse(self) -> None:
        _, _, factory, _, _ = self.reactor.tcpClients.pop(0)
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        # Twisted's HostnameEndpoint tries an address every 0.3 s (happy eyeballs), and gives
        # up once the next attempt is due with none left.
        self.reactor.advance(0.3)


@pytest.fixture
def reactor() -> MemoryReactorClock:
    reactor = MemoryReactorClock()
    reactor.advance(NOW)
    return reactor


@pytest.fixture
def upstream(reactor: MemoryReactorClock) -> Iterator[Upstream]:
    upstream = make_upstream(reactor, URL, NEUTRON, SECRET, timeout=TIMEOUT, max_body_bytes=LIMIT)
    yield upstream
    upstream.close()
    reactor.advance(0)


@pytest.fixture
def server(reactor: MemoryReactorClock) -> Scripted:
    return Scripted(reactor)


VIEW = make_instance()


def forward(
    upstream: Upstream, target: str, *headers: tuple[str, str], method: str = "GET"
) -> list[Any]:
    """Forward a guest's request; what it fires with (an `ImdsResponse` or a Failure), once
    it has."""
    forwarded = upstream.forward(ImdsRequest(method, target, [HOST, *headers]), VIEW)
    assert forwarded is not None
    fired: list[Any] = []
    forwarded.addBoth(fired.append)
    return fired


def ok(body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (
        content_type,
        len(body),
        body,
    )


def no_delayed_calls(reactor: MemoryReactorClock) -> None:
    reactor.advance(0)
    assert reactor.getDelayedCalls() == []


# -- what leaves the node ----------------------------------------------------------------------


def test_the_request_carries_path_query_trusted_headers_and_only_allowed_guest_headers(
    upstream: Upstream, server: Scripted
) -> None:
    fired = forward(
        upstream,
        META_DATA_JSON + "?format=json",
        ("X-Instance-ID", "i-other"),
        ("x-tenant-id", "999999999999"),
        ("X-aws-ec2-metadata-token", "guest-token"),
        ("Accept", "application/json"),
        ("User-Agent", "Cloud-Init/22.4"),
        ("Cookie", "a=b"),
    )
    connection = server.accept()
    line, headers = connection.request_head()
    assert line == f"GET /metadata{META_DATA_JSON}?format=json HTTP/1.1"
    by_name: dict[str, list[str]] = {}
    for name, value in headers:
        by_name.setdefault(name.lower(), []).append(value)
    assert by_name.pop("host") == ["192.0.2.10:8775"]
    assert by_name.pop("connection", None) in (None, ["close"], ["keep-alive"])
    assert by_name == {
        "x-instance-id": [INSTANCE_ID],
        "x-instance-id-signature": [sign(SECRET, INSTANCE_ID)],
        "x-tenant-id": [ACCOUNT_ID],
        "x-forwarded-for": ["10.1.2.3"],
        "accept": ["application/json"],
        "user-agent": ["Cloud-Init/22.4"],
    }
    sent = bytes(connection.value())
    assert b"i-other" not in sent and b"guest-token" not in sent and b"999999999999" not in sent
    assert SECRET not in sent  # only its HMAC goes
    connection.answer(ok(b'{"uuid": "x"}'))
    (answer,) = fired
    assert (answer.status, answer.body, answer.reason) == (
        200,
        b'{"uuid": "x"}',
        "upstream-answered",
    )
    assert answer.header("Content-Type") == "application/json"
    assert upstream.outcomes["answered"] == 1


def test_a_head_goes_as_head_and_its_answer_carries_the_declared_length(
    upstream: Upstream, server: Scripted
) -> None:
    fired = forward(upstream, META_DATA_JSON, method="HEAD")
    connection = server.accept()
    assert connection.request_head()[0].startswith("HEAD /metadata/openstack/")
    connection.answer(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 42\r\n\r\n"
    )
    (answer,) = fired
    assert (answer.status, answer.body, answer.header("Content-Length")) == (200, b"", "42")


def test_an_iam_path_never_opens_a_connection(
    upstream: Upstream, reactor: MemoryReactorClock
) -> None:
    request = ImdsRequest("GET", "/latest/meta-data/iam/made-up", [HOST])
    assert upstream.forward(request, VIEW) is None
    assert reactor.tcpClients == []


def test_a_kept_connection_serves_the_next_request_and_close_leaves_no_timer(
    upstream: Upstream, server: Scripted, reactor: MemoryReactorClock
) -> None:
    first = forward(upstream, META_DATA_JSON)
    connection = server.accept()
    connection.answer(ok(b"{}"))
    assert first[0].status == 200
    connection.clear()
    second = forward(upstream, "/openstack/latest/network_data.json")
    assert reactor.tcpClients == []  # no new connection
    assert connection.request_head()[0].startswith("GET /metadata/openstack/latest/network_")
    connection.answer(ok(b'{"links": []}'))
    assert second[0].body == b'{"links": []}'
    upstream.close()
    no_delayed_calls(reactor)


# -- what the guest gets back ------------------------------------------------------------------


def test_an_upstream_404_is_the_imds_404_page(upstream: Upstream, server: Scripted) -> None:
    fired = forward(upstream, META_DATA_JSON)
    server.accept().answer(
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: 9\r\n\r\nnot here!"
    )
    (answer,) = fired
    assert (answer.status, answer.body) == (404, NOT_FOUND_PAGE)
    assert upstream.outcomes["not-found"] == 1


def test_a_redirect_is_a_502_and_its_location_is_not_passed_on(
    upstream: Upstream, server: Scripted
) -> None:
    fired = forward(upstream, META_DATA_JSON)
    server.accept().answer(
        b"HTTP/1.1 302 Found\r\nLocation: http://evil.example/\r\nContent-Length: 0\r\n\r\n"
    )
    (answer,) = fired
    assert answer.status == 502
    assert answer.header("Location") is None
    assert upstream.outcomes["redirect"] == 1


@pytest.mark.parametrize("status", [b"500 Internal Server Error", b"503 Service Unavailable"])
def test_an_upstream_server_error_is_a_502(
    upstream: Upstream, server: Scripted, status: bytes
) -> None:
    fired = forward(upstream, META_DATA_JSON)
    server.accept().answer(b"HTTP/1.1 %s\r\nContent-Length: 4\r\n\r\noops" % status)
    (answer,) = fired
    assert (answer.status, answer.reason) == (502, "upstream-error")
    assert b"oops" not in answer.body


def test_connection_refused_is_a_502_at_once(
    upstream: Upstream, server: Scripted, reactor: MemoryReactorClock
) -> None:
    fired = forward(upstream, META_DATA_JSON)
    server.refuse()
    (answer,) = fired
    assert (answer.status, answer.reason) == (502, "upstream-unreachable")
    assert answer.body == b"the upstream metadata service could not be reached\n"
    assert upstream.outcomes["unreachable"] == 1
    no_delayed_calls(reactor)


def test_no_connection_within_the_timeout_is_a_504(
    upstream: Upstream, reactor: MemoryReactorClock
) -> None:
    fired = forward(upstream, META_DATA_JSON)  # the connection attempt never completes
    reactor.advance(TIMEOUT - 0.01)
    assert fired == []
    reactor.advance(0.02)
    (answer,) = fired
    assert (answer.status, answer.reason) == (504, "upstream-timeout")
    no_delayed_calls(reactor)


def test_no_answer_within_the_timeout_is_a_504_and_the_connection_is_dropped(
    upstream: Upstream, server: Scripted, reactor: MemoryReactorClock
) -> None:
    fired = forward(upstream, META_DATA_JSON)
    connection = server.accept()
    reactor.advance(TIMEOUT - 0.01)
    assert fired == []
    reactor.advance(0.02)
    (answer,) = fired
    assert answer.status == 504
    assert connection.lost
    assert upstream.outcomes["timeout"] == 1
    no_delayed_calls(reactor)


def test_a_body_trickling_past_the_deadline_is_a_504(
    upstream: Upstream, server: Scripted, reactor: MemoryReactorClock
) -> None:
    fired = forward(upstream, META_DATA_JSON)
    connection = server.accept()
    connection.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    for _ in range(5):
        reactor.advance(TIMEOUT / 4)
        if fired:
            break
        connection.answer(b"x")
    (answer,) = fired
    assert answer.status == 504
    assert connection.lost


def test_a_declared_length_over_the_limit_is_a_502_before_the_body_is_read(
    upstream: Upstream, server: Scripted, reactor: MemoryReactorClock
) -> None:
    fired = forward(upstream, META_DATA_JSON)
    connection = server.accept()
    connection.answer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1))
    (answer,) = fired
    assert (answer.status, answer.reason) == (502, "upstream-too-large")
    assert connection.lost
    no_delayed_calls(reactor)


def test_a_chunked_body_growing_past_the_limit_is_a_502_and_the_transfer_stops(
    upstream: Upstream, server: Scripted, reactor: MemoryReactorClock
) -> None:
    fired = forward(upstream, META_DATA_JSON)
    connection = server.accept()
    connection.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (1024, b"x" * 1024)
    for _ in range(4):
        connection.answer(chunk)
    assert fired == []  # exactly the limit so far
    connection.answer(b"1\r\nx\r\n")
    (answer,) = fired
    assert (answer.status, answer.reason) == (502, "upstream-too-large")
    assert connection.lost
    no_delayed_calls(reactor)


def test_a_body_at_the_limit_and_one_ended_by_the_connection_are_whole(
    upstream: Upstream, server: Scripted, reactor: MemoryReactorClock
) -> None:
    fired = forward(upstream, META_DATA_JSON)
    connection = server.accept()
    connection.answer(ok(b"y" * LIMIT, b"text/plain"))
    assert fired[0].body == b"y" * LIMIT
    connection.clear()
    fired = forward(upstream, "/openstack/latest/user_data")  # on the kept connection
    connection.answer(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
    connection.protocol.connectionLost(Failure(ConnectionDone()))
    assert (fired[0].status, fired[0].body) == (200, b"until the end")


@pytest.mark.parametrize("when", ["before the answer", "during the body"])
def test_a_cancelled_forward_drops_the_upstream_connection_and_answers_nothing(
    upstream: Upstream, server: Scripted, reactor: MemoryReactorClock, when: str
) -> None:
    forwarded = upstream.forward(ImdsRequest("GET", META_DATA_JSON, [HOST]), VIEW)
    assert forwarded is not None
    failures: list[Failure] = []
    forwarded.addErrback(failures.append)
    connection = server.accept()
    if when == "during the body":
        connection.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
    forwarded.cancel()  # what the protocol does when the guest hangs up
    assert len(failures) == 1
    assert connection.lost
    assert upstream.outcomes["cancelled"] == 1
    no_delayed_calls(reactor)


# -- what is said ------------------------------------------------------------------------------


def said(events: Sequence[LogEvent]) -> list[str]:
    return [formatEvent(event) for event in events]


def test_a_problem_is_said_once_while_it_lasts_and_its_end_once(
    upstream: Upstream, server: Scripted
) -> None:
    with capturedLogs() as events:
        for _ in range(3):
            forward(upstream, META_DATA_JSON)
            server.refuse()
        forward(upstream, META_DATA_JSON)
        server.accept().answer(ok(b"{}"))
        forward(upstream, META_DATA_JSON)
    lines = said(events)
    assert [line for line in lines if "unreachable" in line] == [
        f"upstream metadata service {URL}: unreachable (Connection was refused by other"
        " side.); guests get 502"
    ]
    assert [line for line in lines if "answers again" in line] == [
        f"upstream metadata service {URL} answers again"
    ]


def test_an_upstream_refusing_the_signature_is_said_and_its_403_passed_back(
    upstream: Upstream, server: Scripted
) -> None:
    with capturedLogs() as events:
        fired = forward(upstream, META_DATA_JSON)
        server.accept().answer(
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 31\r\n\r\n"
            b"Invalid proxy request signature"
        )
    (answer,) = fired
    assert (answer.status, answer.body) == (403, b"Invalid proxy request signature")
    assert said(events) == [
        f"upstream metadata service {URL}: it answered 403 (check the shared secret and the"
        " header names); guests get that 403"
    ]


def test_the_secret_is_never_logged_nor_shown(
    upstream: Upstream, server: Scripted, reactor: MemoryReactorClock
) -> None:
    with capturedLogs() as events:
        forward(upstream, META_DATA_JSON)
        server.refuse()
        forward(upstream, META_DATA_JSON)
        server.accept()
        reactor.advance(TIMEOUT + 1)
        forward(upstream, META_DATA_JSON)
        server.accept().answer(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    assert events
    text = "\n".join(said(events)) + repr(events)
    assert SECRET.decode() not in text
    assert sign(SECRET, INSTANCE_ID) not in text
    assert SECRET.decode() not in repr(upstream)


def test_an_upstream_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="shared secret"):
        Upstream(Fetcher(), NEUTRON, b"", URL)


def test_the_outcomes_are_metrics_each_present_from_zero(
    upstream: Upstream, server: Scripted
) -> None:
    registry = CollectorRegistry()
    registry.register(UpstreamCollector(upstream))
    forward(upstream, META_DATA_JSON)
    server.refuse()
    text = generate_latest(registry).decode()
    found = {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "rolecall_agent_imds_upstream_requests_total"
    }
    assert found == {outcome: (1.0 if outcome == "unreachable" else 0.0) for outcome in OUTCOMES}


def test_stopping_closes_the_kept_connections(
    upstream: Upstream, server: Scripted, reactor: MemoryReactorClock
) -> None:
    forward(upstream, META_DATA_JSON)
    connection = server.accept()
    connection.answer(ok(b"{}"))
    service = UpstreamService(upstream)
    service.startService()
    service.stopService()
    reactor.advance(0)
    assert connection.disconnecting
    no_delayed_calls(reactor)


# -- the metadata service's factory with an upstream -------------------------------------------


class Fetcher:
    """An upstream that records what it is asked and answers when told."""

    def __init__(self) -> None:
        self.asked: list[Outgoing] = []
        self.pending: list[Deferred[UpstreamAnswer]] = []
        self.cancelled = 0

    def fetch(self, request: Outgoing) -> Deferred[UpstreamAnswer]:
        self.asked.append(request)
        fetched: Deferred[UpstreamAnswer] = Deferred(lambda _: self._cancel())
        self.pending.append(fetched)
        return fetched

    def _cancel(self) -> None:
        self.cancelled += 1

    def close(self) -> Deferred[None]:
        return succeed(None)


@pytest.fixture
def fetcher() -> Fetcher:
    return Fetcher()


@pytest.fixture
def clock() -> MemoryReactorClock:
    clock = MemoryReactorClock()
    clock.advance(NOW)
    return clock


def serve(clock: MemoryReactorClock, fetcher: Fetcher, view: InstanceView | None = None) -> Served:
    return Served(clock, Endpoint(view), upstream=Upstream(fetcher, NEUTRON, SECRET, URL))


def request(target: str, *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 169.254.169.254", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


UPSTREAM_ONLY = "/latest/meta-data/something-upstream"


def test_a_path_rolecall_lacks_is_answered_from_upstream_when_it_answers(
    clock: MemoryReactorClock, fetcher: Fetcher
) -> None:
    served = serve(clock, fetcher)
    try:
        assert served.send(request(UPSTREAM_ONLY)) == b""  # nothing yet: upstream is asked
        (asked,) = fetcher.asked
        assert asked.target == UPSTREAM_ONLY
        clock.advance(0.25)
        fetcher.pending[0].callback(UpstreamAnswer(200, "text/plain", b"from upstream"))
        status, headers, body = split(bytes(served.transport.value()))
        assert (status, body) == ("HTTP/1.1 200 OK", b"from upstream")
        assert (headers["Content-Type"], headers["Server"]) == ("text/plain", "EC2ws")
        ((instance_id, path, answer, seconds),) = served.observed
        assert (instance_id, path, answer.reason) == (
            INSTANCE_ID,
            UPSTREAM_ONLY,
            "upstream-answered",
        )
        assert seconds == pytest.approx(0.25)
    finally:
        served.close()


def test_what_rolecall_serves_is_answered_at_once_and_never_asked_upstream(
    clock: MemoryReactorClock, fetcher: Fetcher
) -> None:
    served = serve(clock, fetcher)
    try:
        for target in (CREDENTIALS_PATH, "/latest/meta-data/instance-id", "/", "/latest/"):
            status = split(served.send(request(target)))[0]
            assert status == "HTTP/1.1 200 OK", target
        assert fetcher.asked == []
    finally:
        served.close()


def rate_limited_view() -> Endpoint:
    endpoint = Endpoint()
    endpoint.bucket = TokenBucket(0.001, 1)
    endpoint.bucket.allow(NOW)  # the one token spent
    return endpoint


@pytest.mark.parametrize(
    ("view", "headers", "status"),
    [
        (make_instance(http_tokens="required"), (), "401 Unauthorized"),
        (
            make_instance(http_tokens="required"),
            ("X-aws-ec2-metadata-token: forged",),
            "401 Unauthorized",
        ),
        (make_instance(), ("X-aws-ec2-metadata-token: forged",), "401 Unauthorized"),
        (make_instance(http_endpoint="disabled"), (), "403 Forbidden"),
        (make_instance(), ("X-Forwarded-For: 10.0.0.9",), "403 Forbidden"),
        (make_instance(), ("Via: 1.1 squid",), "403 Forbidden"),
        (make_instance(), ("Forwarded: for=10.0.0.9",), "403 Forbidden"),
    ],
    ids=[
        "token-required",
        "token-forged-required",
        "token-forged-optional",
        "disabled",
        "x-forwarded-for",
        "via",
        "forwarded",
    ],
)
def test_a_request_the_rules_refuse_is_never_forwarded(
    clock: MemoryReactorClock,
    fetcher: Fetcher,
    view: InstanceView,
    headers: tuple[str, ...],
    status: str,
) -> None:
    served = serve(clock, fetcher, view)
    try:
        assert split(served.send(request(UPSTREAM_ONLY, *headers)))[0] == f"HTTP/1.1 {status}"
        assert fetcher.asked == []
    finally:
        served.close()


def test_a_foreign_host_or_an_absolute_target_is_never_forwarded(
    clock: MemoryReactorClock, fetcher: Fetcher
) -> None:
    served = serve(clock, fetcher)
    try:
        rebinding = f"GET {UPSTREAM_ONLY} HTTP/1.1\r\nHost: evil.example\r\n\r\n".encode()
        assert split(served.send(rebinding))[0] == "HTTP/1.1 403 Forbidden"
        absolute = request(f"http://169.254.169.254{UPSTREAM_ONLY}")
        assert split(served.send(absolute))[0] == "HTTP/1.1 403 Forbidden"
        assert fetcher.asked == []
    finally:
        served.close()


def test_a_rate_limited_request_is_never_forwarded(
    clock: MemoryReactorClock, fetcher: Fetcher
) -> None:
    endpoint = rate_limited_view()
    served = Served(clock, endpoint, upstream=Upstream(fetcher, NEUTRON, SECRET, URL))
    try:
        assert split(served.send(request(UPSTREAM_ONLY)))[0] == "HTTP/1.1 503 Service Unavailable"
        assert fetcher.asked == []
    finally:
        served.close()


@pytest.mark.parametrize(
    "raw",
    [
        request("/latest/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 60", method="PUT"),
        request("/openstack/latest/password", method="PUT"),
        request("/openstack/latest/password", "Content-Length: 2", method="POST"),
        request("/latest/api/token"),
        request("/2021-03-23/api/token"),
        request("/latest/meta-data/iam/no-such-thing"),
        request("/latest/meta-data/iam/security-credentials/nobody"),
        request("/latest//meta-data/%69am/info2"),
    ],
    ids=[
        "token-put",
        "put",
        "post",
        "token-get",
        "dated-token-get",
        "iam-unknown",
        "iam-unknown-role",
        "iam-spelled",
    ],
)
def test_iam_tokens_and_other_methods_never_leave_rolecall(
    clock: MemoryReactorClock, fetcher: Fetcher, raw: bytes
) -> None:
    served = serve(clock, fetcher)
    try:
        answer = served.send(raw + (b"hi" if b"POST" in raw else b""))
        assert answer.startswith(b"HTTP/1.1 ")  # answered at once, by RoleCall
        assert fetcher.asked == []
    finally:
        served.close()


def test_with_tokens_required_a_valid_token_is_checked_then_not_sent_upstream(
    clock: MemoryReactorClock, fetcher: Fetcher
) -> None:
    served = serve(clock, fetcher, make_instance(http_tokens="required"))
    try:
        token = token_for()
        served.send(
            request(
                UPSTREAM_ONLY,
                f"X-aws-ec2-metadata-token: {token}",
                "X-Instance-ID: i-other",
                "User-Agent: curl/8",
            )
        )
        (asked,) = fetcher.asked
        assert ("X-Instance-ID", INSTANCE_ID) in asked.headers
        assert ("User-Agent", "curl/8") in asked.headers
        assert all(token not in value and value != "i-other" for _, value in asked.headers)
    finally:
        served.close()


def test_the_guest_hanging_up_cancels_the_upstream_request(
    clock: MemoryReactorClock, fetcher: Fetcher
) -> None:
    upstream = Upstream(fetcher, NEUTRON, SECRET, URL)
    served = Served(clock, Endpoint(), upstream=upstream)
    served.send(request(UPSTREAM_ONLY))
    assert fetcher.cancelled == 0
    served.close()
    assert fetcher.cancelled == 1
    assert upstream.outcomes["cancelled"] == 1
    assert served.observed == []


def test_requests_pipelined_behind_a_forwarded_one_are_answered_in_order(
    clock: MemoryReactorClock, fetcher: Fetcher
) -> None:
    served = serve(clock, fetcher)
    try:
        answered = served.send(request(UPSTREAM_ONLY) + request("/latest/meta-data/instance-id"))
        assert answered == b""  # the second waits its turn
        fetcher.pending[0].callback(UpstreamAnswer(200, "text/plain", b"first"))
        answers = bytes(served.transport.value())
        assert answers.index(b"first") < answers.index(INSTANCE_ID.encode())
    finally:
        served.close()


def test_an_upstream_that_fails_gives_the_guest_the_documented_status(
    clock: MemoryReactorClock, fetcher: Fetcher
) -> None:
    served = serve(clock, fetcher)
    try:
        served.send(request(UPSTREAM_ONLY))
        fetcher.pending[0].errback(ConnectionRefusedError())
        status, _, body = split(bytes(served.transport.value()))
        assert status == "HTTP/1.1 502 Bad Gateway"
        assert body == b"the upstream metadata service could not be reached\n"
        assert not served.transport.disconnecting  # the connection stays
    finally:
        served.close()


def test_a_bug_while_forwarding_is_a_502_not_a_hang(
    clock: MemoryReactorClock, fetcher: Fetcher
) -> None:
    served = serve(clock, fetcher)
    try:
        served.send(request(UPSTREAM_ONLY))
        with capturedLogs():
            fetcher.pending[0].errback(ZeroDivisionError())
        assert split(bytes(served.transport.value()))[0] == "HTTP/1.1 502 Bad Gateway"
    finally:
        served.close()


def test_the_upstream_client_joins_its_base_url_and_the_guests_target(
    reactor: MemoryReactorClock, server: Scripted
) -> None:
    client = UpstreamClient(reactor, "http://192.0.2.10:8775/", timeout=1, max_body_bytes=10)
    fetched: list[Any] = []
    client.fetch(Outgoing("GET", "/openstack?x=1", ())).addBoth(fetched.append)
    connection = server.accept()
    assert connection.request_head()[0] == "GET /openstack?x=1 HTTP/1.1"
    connection.answer(ok(b"{}"))
    assert fetched == [UpstreamAnswer(200, "application/json", b"{}", 2)]
    client.close()
    no_delayed_calls(reactor)


def test_an_instance_without_account_or_address_sends_neither_header(
    clock: MemoryReactorClock, fetcher: Fetcher
) -> None:
    body = assignment(account_id=None)
    for item in ("local-ipv4", "account-id"):
        del body["metadata"][item]
    parsed = parse_instance(body)
    view = InstanceView(INSTANCE_ID, parsed.metadata_options, ImdsTree.for_instance(parsed), MINTER)
    served = serve(clock, fetcher, view)
    try:
        served.send(request(UPSTREAM_ONLY))
        (asked,) = fetcher.asked
        assert [name for name, _ in asked.headers] == ["X-Instance-ID", "X-Instance-ID-Signature"]
    finally:
        served.close()


# -- the serving process's services ------------------------------------------------------------


def test_the_agent_with_an_upstream_serves_it_counts_it_and_closes_it_on_stop(
    reactor: MemoryReactorClock,
) -> None:
    from dataclasses import replace

    from agent.compose import make_agent_service
    from agent.config import AgentConfig
    from tests.unit.test_agent_client import tls_files

    plain = AgentConfig(controller_urls=("https://127.0.0.1:8775",))
    forwarding = replace(plain, upstream_url=URL, upstream_shared_secret_file=Path("/s"))
    tls = tls_files()
    registry = CollectorRegistry()
    root = make_agent_service(
        forwarding, reactor, tls=tls, namespaces=None, ownership=None, registry=registry,
        upstream_secret=SECRET,
    )  # fmt: skip
    service = root.getServiceNamed("upstream")
    assert isinstance(service, UpstreamService)
    assert service.upstream is root.getServiceNamed("agent")._upstream
    assert "rolecall_agent_imds_upstream_requests_total" in generate_latest(registry).decode()
    without = make_agent_service(
        plain, reactor, tls=tls, namespaces=None, ownership=None, registry=CollectorRegistry()
    )
    assert "upstream" not in {child.name for child in without}
    with pytest.raises(ValueError, match="shared secret"):
        make_agent_service(forwarding, reactor, tls=tls, namespaces=None, ownership=None)
