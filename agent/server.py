"""The metadata service on the wire: the pure rules behind the public API's HTTP/1.1 protocol,
one factory per instance.

Each connection is a `common.http11.Http11Protocol` (httptools' parser, llhttp): request
line, headers, limits on the head, keep-alive, pipelining and the idle timeout are its, as for
the controller's API. What it hands over is answered by `MetadataFactory.answer` straight from
`agent.imds.rules.respond`: no resource tree, session or access log in between (answers are
counted in metrics instead). See docs/decisions.md, "The metadata service's HTTP layer".

The shell turns the request into an `ImdsRequest`, asks the rules, applies the IP TTL of the
token response to the connection's socket (spec line 5: the hop limit), and writes the answer;
the protocol adds ``Date`` and connection handling. The instance's view is swapped whole when
its assignment or credentials change, so a request always sees one consistent state and never
waits.

With an upstream metadata service configured (`agent.upstream`, issue 12 item 7), a request the
rules let through and the tree answered 404 for is offered to it: if it may go
(`agent.imds.passthrough`), the answer is a Deferred that fires with upstream's, which the
protocol writes when it comes (and cancels if the guest hangs up). Every other answer is still
given at once: the one cost on their path is comparing the status with 404.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from agent.imds.ratelimit import TokenBucket
from agent.imds.rules import SERVER, ImdsRequest, ImdsResponse, InstanceView, respond
from common.http11 import ConnectionLimit, Http11Protocol, HttpDates, Request, Response

log = Logger(namespace="rolecall.agent.imds")

#: The IP TTL of every other response: Linux's default.
DEFAULT_TTL = 64

#: The largest request body read. Metadata requests have none; AWS's SDKs send none, even with
#: the token PUT.
MAX_BODY_BYTES = 1024

#: What a larger body gets, before the connection is closed (400: IMDS answers no 413).
_TOO_LARGE = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n"
    b"Server: EC2ws\r\nConnection: close\r\n\r\n"
)

#: Told of every answer: instance id, request path, the answer, seconds it took.
Observer = Callable[[str, str, ImdsResponse, float], None]


class InstanceEndpoint(Protocol):
    """What one instance's socket serves: its view at a moment (from memory, never waiting),
    and its rate limit."""

    instance_id: str
    bucket: TokenBucket

    def view(self, now: float) -> InstanceView: ...


class Forwarder(Protocol):
    """An upstream metadata service (`agent.upstream.Upstream`): the answer to a request
    RoleCall's tree does not have, later; or None if the request must not leave RoleCall."""

    def forward(
        self, request: ImdsRequest, view: InstanceView
    ) -> Deferred[ImdsResponse] | None: ...


#: The answer when answering failed (a bug): no body, never a traceback.
_UNAVAILABLE = Response(503, ((b"Content-Type", b"text/plain"),))


class MetadataFactory(ServerFactory):
    """Serves one instance's socket: an `Http11Protocol` per connection."""

    noisy = False

    def __init__(
        self,
        endpoint: InstanceEndpoint,
        clock: IReactorTime,
        observe: Observer | None = None,
        limits: tuple[ConnectionLimit, ...] = (),
        upstream: Forwarder | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.clock = clock
        self.observe = observe
        #: The instance's own connection limit and the one all instances share.
        self.limits = limits
        #: Where the paths RoleCall does not serve are asked for, if anywhere.
        self.upstream = upstream
        self._dates = HttpDates(clock)

    def buildProtocol(self, addr: Any) -> Http11Protocol | None:
        for limit in self.limits:
            if not limit.admits():
                return None  # accepted in the same batch past a limit: closed at once
        protocol = Http11Protocol(
            self._answer,
            self.clock,
            self._date,
            SERVER.encode("ascii"),
            self._too_large,
            MAX_BODY_BYTES,
        )
        protocol.factory = self
        protocol.limits = self.limits
        return protocol

    def _date(self) -> bytes:
        return self._dates.now()[0]

    @staticmethod
    def _too_large() -> bytes:
        return _TOO_LARGE

    def _answer(self, request: Request, protocol: Http11Protocol) -> Response | Deferred[Response]:
        try:
            answer, seconds = self.answer(request, protocol)
            upstream = self.upstream
            if upstream is not None and answer.status == 404:
                forwarded = self._forward(upstream, request)
                if forwarded is not None:
                    return forwarded
        except Exception:  # a bug must cost one answer, never the connection
            log.failure("cannot answer a metadata request")
            return _UNAVAILABLE
        observe = self.observe
        if observe is not None:
            observe(self.endpoint.instance_id, _path(request.uri), answer, seconds)
        return Response(answer.status, answer.raw_headers, answer.body)

    def _forward(self, upstream: Forwarder, request: Request) -> Deferred[Response] | None:
        """Upstream's answer to a request RoleCall's tree answered 404 for (the rules passed
        it), later; None if it must not leave RoleCall."""
        clock = self.clock
        started = clock.seconds()
        endpoint = self.endpoint
        forwarded = upstream.forward(_imds_request(request), endpoint.view(started))
        if forwarded is None:
            return None
        path = _path(request.uri)

        def answered(answer: ImdsResponse) -> Response:
            observe = self.observe
            if observe is not None:
                observe(endpoint.instance_id, path, answer, clock.seconds() - started)
            return Response(answer.status, answer.raw_headers, answer.body)

        return forwarded.addCallback(answered)

    def answer(self, request: Request, protocol: Http11Protocol) -> tuple[ImdsResponse, float]:
        """The metadata service's answer to `request`, and the seconds it took."""
        clock = self.clock
        started = clock.seconds()
        endpoint = self.endpoint
        answer = respond(
            ImdsRequest(
                method=request.method.decode("latin-1"),
                target=request.uri.decode("latin-1"),
                headers=[
                    (name.decode("latin-1"), value.decode("latin-1"))
                    for name, value in request.headers
                ],
            ),
            endpoint.view(started),
            started,
            rate_limited=not endpoint.bucket.allow(started),
        )
        self._set_ttl(protocol, answer.ip_ttl or DEFAULT_TTL)
        return answer, clock.seconds() - started

    def _set_ttl(self, protocol: Http11Protocol, ttl: int) -> None:
        """The IP TTL of this connection's next packets (the token response carries the hop
        limit, so a guest more hops away than allowed, or a container behind it, never gets
        it). The system call is made only when the connection's TTL changes.

        It never rises again on a connection: a token answer may still sit in the send buffer
        (or be retransmitted) when the next request's answer is made, and the socket's TTL
        applies to every packet that leaves after the change, the token's included."""
        if protocol.ttl is not None and ttl >= protocol.ttl:
            return
        handle: Any = getattr(protocol.transport, "getHandle", lambda: None)()
        if isinstance(handle, socket.socket):
            handle.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            protocol.ttl = ttl


def _imds_request(request: Request) -> ImdsRequest:
    """The request as the rules read it (`MetadataFactory.answer` builds it inline, on the
    path every request takes): text, decoded as ISO-8859-1, lossless for any byte."""
    return ImdsRequest(
        method=request.method.decode("latin-1"),
        target=request.uri.decode("latin-1"),
        headers=[
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers
        ],
    )


def _path(uri: bytes) -> str:
    return uri.decode("latin-1").partition("?")[0]


def make_factory(
    endpoint: InstanceEndpoint,
    clock: IReactorTime,
    observe: Observer | None = None,
    limits: tuple[ConnectionLimit, ...] = (),
    upstream: Forwarder | None = None,
) -> MetadataFactory:
    return MetadataFactory(endpoint, clock, observe, limits, upstream)


class ConnectionLimitsCollector:
    """The metadata service's connections against its limits, read at each scrape: those open
    in all, how often a limit was reached (accepting paused) and how many connections were
    closed unserved, by which limit (``instance``: one instance's own; ``all``)."""

    def __init__(self, everyone: ConnectionLimit, instances: dict[str, int]) -> None:
        self._everyone = everyone
        self._instances = instances

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        everyone, instances = self._everyone, self._instances
        yield GaugeMetricFamily(
            "rolecall_agent_imds_connections",
            "Metadata connections open, all instances together.",
            everyone.open,
        )
        yield GaugeMetricFamily(
            "rolecall_agent_imds_connections_limit",
            "The most metadata connections of all instances together (imds.max_connections).",
            everyone.limit,
        )
        reached = CounterMetricFamily(
            "rolecall_agent_imds_connection_limit_reached",
            "Times a connection limit was reached and its sockets stopped accepting for a while.",
            labels=("limit",),
        )
        reached.add_metric(("instance",), instances["reached"])
        reached.add_metric(("all",), everyone.pauses)
        yield reached
        refused = CounterMetricFamily(
            "rolecall_agent_imds_connections_refused",
            "Connections closed unserved because a connection limit was reached.",
            labels=("limit",),
        )
        refused.add_metric(("instance",), instances["refused"])
        refused.add_metric(("all",), everyone.refused)
        yield refused
