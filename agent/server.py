"""The metadata service on the wire: a lean HTTP layer around the pure rules, one factory per
instance.

Twisted's HTTP/1.1 channel (`twisted.web.http.HTTPChannel`) parses every request: request line,
header limits, bodies, keep-alive, pipelining and the idle timeout are its, unchanged. What it
hands over is answered by `MetadataRequest.process` straight from `agent.imds.rules.respond`:
there is no resource tree, session, default header or access log in between (answers are counted
in metrics instead), and the factory keeps no per-second timer (`twisted.web.server.Site` keeps
one per listening port, which would be a thousand wake-ups a second on a full node). See
docs/decisions.md, "The metadata service's HTTP layer".

The shell turns the request into an `ImdsRequest`, asks the rules, applies the IP TTL of the
token response to the connection's socket (spec line 5: the hop limit), and writes the answer
with a `Date` header. The instance's view is swapped whole when its assignment or credentials
change, so a request always sees one consistent state and never waits.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.web import http

from agent.imds.ratelimit import TokenBucket
from agent.imds.rules import ImdsRequest, ImdsResponse, InstanceView, respond
from controller.httpbase import AddressedChannel, BodyLimit, HttpDates

log = Logger(namespace="rolecall.agent.imds")

#: The IP TTL of every other response: Linux's default.
DEFAULT_TTL = 64

#: An idle keep-alive connection is closed after this long (twisted.web's default).
IDLE_TIMEOUT_SECONDS = 60

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


class MetadataRequest(BodyLimit):
    """One guest request, answered as soon as its headers (and any body) are in. No metadata
    request needs a body: one over `MAX_BODY_BYTES` is refused with 400 before it is read."""

    channel: MetadataChannel
    max_body = MAX_BODY_BYTES

    def refusal(self) -> bytes:
        return _TOO_LARGE

    def process(self) -> None:
        if self.refused:
            return  # answered already, and the connection is closing
        factory = self.channel.factory
        try:
            answer, seconds = factory.answer(self)
        except Exception:  # a bug must cost one answer, never the connection's reactor
            log.failure("cannot answer a metadata request")
            if not self.startedWriting:
                self.setResponseCode(http.SERVICE_UNAVAILABLE)
                self.responseHeaders.setRawHeaders(b"Content-Length", [b"0"])
            if not self.finished:
                self.finish()
            return
        observe = factory.observe
        if observe is not None:
            observe(factory.endpoint.instance_id, _path(self.uri), answer, seconds)


class MetadataChannel(AddressedChannel):
    requestFactory = MetadataRequest
    factory: MetadataFactory
    #: The IP TTL last set on this connection's socket (None: never set by us).
    ttl: int | None = None


class MetadataFactory(ServerFactory):
    """Serves one instance's socket."""

    protocol = MetadataChannel
    noisy = False

    def __init__(
        self, endpoint: InstanceEndpoint, clock: IReactorTime, observe: Observer | None = None
    ) -> None:
        self.endpoint = endpoint
        self.clock = clock
        self.observe = observe
        self._dates = HttpDates(clock)

    def buildProtocol(self, addr: Any) -> MetadataChannel:
        channel = MetadataChannel()
        channel.factory = self
        # The idle timeout runs on the injected clock, as twisted.web's HTTPFactory arranges.
        channel.callLater = self.clock.callLater  # type: ignore[attr-defined]
        channel.timeOut = IDLE_TIMEOUT_SECONDS
        return channel

    def answer(self, request: MetadataRequest) -> tuple[ImdsResponse, float]:
        """Answer `request` (and finish it); the answer and the seconds it took."""
        clock = self.clock
        started = clock.seconds()
        endpoint = self.endpoint
        answer = respond(
            ImdsRequest(
                method=request.method.decode("latin-1"),
                target=request.uri.decode("latin-1"),
                headers=[
                    (name.decode("latin-1"), value.decode("latin-1"))
                    for name, values in request.requestHeaders.getAllRawHeaders()
                    for value in values
                ],
            ),
            endpoint.view(started),
            started,
            rate_limited=not endpoint.bucket.allow(started),
        )
        _set_ttl(request, answer.ip_ttl or DEFAULT_TTL)
        # The whole answer in one write: its status line, its headers (encoded once per
        # answer), any twisted.web set on the request (`Connection: close`), Date, the body.
        request.setResponseCode(answer.status)
        extra = b"".join(
            b"%s: %s\r\n" % (name, value)
            for name, values in request.responseHeaders.getAllRawHeaders()
            for value in values
        )
        request.startedWriting = 1
        request.channel.transport.write(
            b"".join(
                (
                    _status_line(request.clientproto, answer.status),
                    answer.wire_headers,
                    extra,
                    b"Date: ",
                    self._dates.now()[0],
                    b"\r\n\r\n",
                    answer.body,
                )
            )
        )
        request.finish()
        return answer, clock.seconds() - started

    def log(self, request: http.Request) -> None:
        """No access log: every answer is counted in metrics."""


def _path(uri: bytes) -> str:
    return uri.decode("latin-1").partition("?")[0]


_STATUS_LINES = {
    (version, status): b"%s %d %s\r\n" % (version, status, http.RESPONSES[status])
    for version in (b"HTTP/1.0", b"HTTP/1.1")
    for status in (200, 400, 401, 403, 404, 405, 503)
}


def _status_line(version: bytes, status: int) -> bytes:
    line = _STATUS_LINES.get((version, status))
    if line is None:
        line = b"%s %d %s\r\n" % (version, status, http.RESPONSES.get(status, b"Unknown"))
    return line


def _set_ttl(request: MetadataRequest, ttl: int) -> None:
    """The IP TTL of this connection's next packets (the token response carries the hop limit,
    so a guest more hops away than allowed, or a container behind it, never gets it). The
    system call is made only when the connection's TTL changes."""
    channel = request.channel
    if channel.ttl == ttl:
        return
    handle: Any = getattr(channel.transport, "getHandle", lambda: None)()
    if isinstance(handle, socket.socket):
        handle.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        channel.ttl = ttl


def make_factory(
    endpoint: InstanceEndpoint, clock: IReactorTime, observe: Observer | None = None
) -> MetadataFactory:
    return MetadataFactory(endpoint, clock, observe)
