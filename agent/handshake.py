"""Connections to the controller that count as made only once their TLS handshake is done, and
must be made (TCP and TLS together) within a bound.

Twisted's TLS endpoint hands the HTTP client its connection as soon as TCP is up; against a
controller that hangs (SIGSTOP: the kernel still completes TCP, nothing answers the handshake)
the request would then wait for its whole answer bound, a long poll's included. Here the
connection is handed over at `IHandshakeListener.handshakeCompleted` instead, and given up
(aborted) when the bound passes first, so the client moves to the next controller in seconds.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import URI
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from agent.failover import ConnectionNotReady


@implementer(IHandshakeListener)
class _HandshakeWatcher(Protocol):
    """Stands between the TLS layer and the HTTP protocol until the handshake is done: tells
    `ready`, then only passes bytes and the end of the connection on."""

    def __init__(self, inner: IProtocol, ready: Deferred[Any]) -> None:
        self.inner = inner
        self._ready = ready

    def makeConnection(self, transport: Any) -> None:
        Protocol.makeConnection(self, transport)
        self.inner.makeConnection(transport)  # the HTTP protocol writes to TLS directly

    def handshakeCompleted(self) -> None:
        if not self._ready.called:
            self._ready.callback(self.inner)

    def dataReceived(self, data: bytes) -> None:
        self.inner.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._ready.called:
            self._ready.errback(reason)
        self.inner.connectionLost(reason)


class _WatchingFactory(Factory):
    noisy = False  # one per connection: "Starting factory" lines would say nothing

    def __init__(self, factory: IProtocolFactory, ready: Deferred[Any]) -> None:
        self._factory = factory
        self._ready = ready
        self.watcher: _HandshakeWatcher | None = None

    def buildProtocol(self, addr: Any) -> Protocol | None:
        inner = self._factory.buildProtocol(addr)
        if inner is None:
            return None
        self.watcher = _HandshakeWatcher(inner, self._ready)
        return self.watcher


@implementer(IStreamClientEndpoint)
class HandshakeBoundEndpoint:
    """A TLS client endpoint (`tls`) whose `connect` fires once the handshake is done, and
    fails with `ConnectionNotReady` if that takes longer than `seconds` from the start."""

    def __init__(self, reactor: IReactorTime, tls: IStreamClientEndpoint, seconds: float) -> None:
        self._reactor = reactor
        self._tls = tls
        self._seconds = seconds

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        connecting: list[Deferred[Any]] = []

        def give_up(_: Deferred[Any]) -> None:
            # Cancelled (the bound passed, or the caller gave up): stop connecting, or drop the
            # connection whose handshake is still going.
            if connecting and not connecting[0].called:
                connecting[0].cancel()
            elif factory.watcher is not None and factory.watcher.transport is not None:
                transport: Any = factory.watcher.transport  # TLS over TCP: it can abort
                transport.abortConnection()

        ready: Deferred[Any] = Deferred(give_up)
        factory = _WatchingFactory(protocolFactory, ready)
        started = self._tls.connect(factory)
        connecting.append(started)

        def failed(failure: Failure) -> None:
            if not ready.called:
                ready.errback(failure)

        started.addErrback(failed)
        timed_out = False

        def on_timeout() -> None:
            nonlocal timed_out
            timed_out = True
            ready.cancel()

        timer = self._reactor.callLater(self._seconds, on_timeout)

        def settle(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            if timed_out and isinstance(result, Failure):
                raise ConnectionNotReady(self._seconds)
            return result

        return ready.addBoth(settle)


@implementer(IAgentEndpointFactory)
class BoundedTLSEndpoints:
    """Endpoints for twisted.web's `Agent`: TCP, then TLS with the node's policy, ready within
    `seconds` (the TCP connect alone is bounded the same)."""

    def __init__(self, reactor: Any, policy: IPolicyForHTTPS, seconds: float) -> None:
        self._reactor = reactor
        self._policy = policy
        self._seconds = seconds

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        if uri.scheme != b"https":
            raise ValueError(f"the node API is https only (got {uri.scheme!r})")
        tcp = HostnameEndpoint(
            self._reactor, uri.host.decode("ascii"), uri.port, timeout=self._seconds
        )
        tls = wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port), tcp)
        return HandshakeBoundEndpoint(self._reactor, tls, self._seconds)
