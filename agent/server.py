"""The metadata service on the wire: one twisted.web resource per instance around `respond`.

This is the thin shell: it turns a twisted.web request into an `ImdsRequest`, asks the pure
rules, applies the IP TTL of the token response to the connection's socket (spec line 5: the
hop limit), and writes the answer. The instance's view is swapped whole when its assignment or
credentials change, so a request always sees one consistent state and never waits.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.web import server
from twisted.web.resource import Resource

from agent.imds.ratelimit import TokenBucket
from agent.imds.rules import ImdsRequest, ImdsResponse, InstanceView, respond

#: The IP TTL of every other response: Linux's default.
DEFAULT_TTL = 64

#: Told of every answer: instance id, request path, the answer, seconds it took.
Observer = Callable[[str, str, ImdsResponse, float], None]


class InstanceEndpoint(Protocol):
    """What one instance's socket serves: its view at a moment (from memory, never waiting),
    and its rate limit."""

    instance_id: str
    bucket: TokenBucket

    def view(self, now: float) -> InstanceView: ...


class ImdsResource(Resource):
    isLeaf = True

    def __init__(
        self, endpoint: InstanceEndpoint, clock: IReactorTime, observe: Observer | None = None
    ) -> None:
        super().__init__()
        self._endpoint = endpoint
        self._clock = clock
        self._observe = observe

    def render(self, request: server.Request) -> bytes:
        started = self._clock.seconds()
        endpoint = self._endpoint
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
        request.setResponseCode(answer.status)
        for name, value in answer.headers:
            request.setHeader(name, value)
        if self._observe is not None:
            path = request.path.decode("latin-1")
            self._observe(endpoint.instance_id, path, answer, self._clock.seconds() - started)
        return answer.body


def _set_ttl(request: server.Request, ttl: int) -> None:
    """The IP TTL of this connection's next packets (the token response carries the hop limit,
    so a guest more hops away than allowed, or a container behind it, never gets it)."""
    handle: Any = getattr(request.channel.transport, "getHandle", lambda: None)()
    if isinstance(handle, socket.socket):
        handle.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)


def make_site(resource: ImdsResource) -> server.Site:
    site = server.Site(resource)
    site.noisy = False
    site.displayTracebacks = False
    site.log = lambda request: None  # type: ignore[method-assign]  # counted in metrics instead
    return site
