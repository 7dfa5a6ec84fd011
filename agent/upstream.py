"""The agent's side of an upstream metadata service (issue 12, item 7): the HTTP client that
forwards what RoleCall does not answer, and the forwarder that the metadata service's factory
asks (`agent.server`).

The rules (what may go, what is sent, what the guest gets back) are
`agent.imds.passthrough`'s; this module only talks. The client is twisted.web's `Agent` with
a small pool of persistent connections (the second module allowed to import twisted.web, for
the same reason as `agent.client`: Twisted's own HTTP/1.1 client, with TLS, timeouts and
cancellation, rather than one written here). Every call has one deadline, from the first
connect to the last byte of the body; a body over the limit is refused as soon as its declared
length or its bytes pass it, and the connection is dropped. Cancelling a call (the guest hung
up) drops its connection too.

Nothing here logs the shared secret or any header sent: problems are said once per change, by
the upstream's URL (which cannot carry a user or password) and what went wrong.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

from OpenSSL import SSL
from twisted.application.service import Service
from twisted.internet import error as network
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeadlinePassed
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import RequestNotSent
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from agent.client import IClientReactor
from agent.diagnosis import cause_text
from agent.imds.passthrough import (
    OUTCOMES,
    HeaderScheme,
    Outcome,
    Outgoing,
    UpstreamAnswer,
    answer,
    classify,
    failure,
    outgoing,
    trusted_headers,
)
from agent.imds.rules import ImdsRequest, ImdsResponse, InstanceView

log = Logger(namespace="rolecall.agent.upstream")

#: Connections kept open to the upstream service between requests.
PERSISTENT_CONNECTIONS = 8
#: An idle kept connection is closed after this long (servers close theirs after a minute or
#: so; twisted.web retries a GET once on a fresh connection if a kept one was closed).
IDLE_SECONDS = 50
#: Failures that mean no answer came: not connected, TLS failed, the connection lost.
_NETWORK_FAILURES = (
    network.ConnectError,
    network.ConnectionLost,
    network.ConnectionDone,
    ResponseFailed,
    RequestTransmissionFailed,
    RequestNotSent,
    SSL.Error,
    OSError,
)


class BodyTooLarge(Exception):
    """The upstream answer's body is over the configured limit."""


class _LimitedBody(Protocol):
    """Collects a response body of at most ``limit`` bytes into ``finished``; past it, stops
    the transfer (the connection is dropped) and fails with `BodyTooLarge`."""

    def __init__(self, limit: int, finished: Deferred[bytes]) -> None:
        self._limit = limit
        self._finished: Deferred[bytes] | None = finished
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._finished is None:
            return
        self._size += len(data)
        if self._size > self._limit:
            self.stop(BodyTooLarge(f"more than {self._limit} bytes"))
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        finished, self._finished = self._finished, None
        if finished is None:
            return
        # A body that ends with the connection (HTTP/1.0, no length) is whole too.
        if reason.check(ResponseDone, PotentialDataLoss):
            finished.callback(b"".join(self._chunks))
        else:
            finished.errback(reason)

    def stop(self, why: Exception | None = None) -> None:
        """Drop the transfer; fail ``finished`` with ``why`` (when cancelled, it fails itself)."""
        finished, self._finished = self._finished, None
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]
        if finished is not None and why is not None:
            finished.errback(why)


class Fetcher(TypingProtocol):
    """What the forwarder asks of the client (tests may pass another)."""

    def fetch(self, request: Outgoing) -> Deferred[UpstreamAnswer]: ...

    def close(self) -> Deferred[None]: ...


class UpstreamClient:
    """GET and HEAD to the upstream service at ``url`` (its base: the guest's path and query
    are appended), each within ``timeout`` seconds and with a body of at most
    ``max_body_bytes``."""

    def __init__(
        self, reactor: IClientReactor, url: str, *, timeout: float, max_body_bytes: int
    ) -> None:
        self._base = url.rstrip("/").encode("ascii")
        self._reactor = reactor
        self._timeout = timeout
        self._limit = max_body_bytes
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = PERSISTENT_CONNECTIONS
        pool.cachedConnectionTimeout = IDLE_SECONDS
        self._pool = pool
        # https: the system's trust store (twisted.web's BrowserLikePolicyForHTTPS).
        self._agent = Agent(reactor, pool=pool, connectTimeout=timeout)

    def fetch(self, request: Outgoing) -> Deferred[UpstreamAnswer]:
        """The upstream's answer; fails with `BodyTooLarge`, `twisted.internet.defer.
        TimeoutError` past the deadline, a network error, or `CancelledError` if cancelled
        (the guest hung up)."""
        headers = Headers()
        for name, value in request.headers:
            headers.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
        asked: Deferred[IResponse] = self._agent.request(
            request.method.encode("ascii"), self._base + request.target.encode("ascii"), headers
        )
        read: Deferred[UpstreamAnswer] = asked.addCallback(self._read, request.method == "HEAD")
        # What the caller holds: it fires with the answer, or fails at the deadline, or when
        # cancelled; either way the transfer is dropped. (Not read itself with addTimeout:
        # cancelled, twisted.web fails it with what it was doing, e.g. ResponseNeverReceived or
        # ConnectingCancelledError, not with the cancellation.)
        cancelled = False

        def cancel(_: Deferred[UpstreamAnswer]) -> None:
            nonlocal cancelled
            cancelled = True
            read.cancel()

        call: Deferred[UpstreamAnswer] = Deferred(cancel)

        def expire() -> None:
            call.errback(DeadlinePassed(f"no answer in {self._timeout:g} s"))
            read.cancel()

        deadline = self._reactor.callLater(self._timeout, expire)

        def settle(result: UpstreamAnswer | Failure) -> None:
            if deadline.active():
                deadline.cancel()
            if call.called or cancelled:
                return  # past the deadline, or cancelled: told already
            if isinstance(result, Failure):
                call.errback(result)
            else:
                call.callback(result)

        read.addBoth(settle)
        return call

    def _read(self, response: IResponse, head: bool) -> Deferred[UpstreamAnswer]:
        types = response.headers.getRawHeaders(b"content-type")
        content_type = types[-1].decode("latin-1") if types else None
        declared = _declared_length(response, head)
        # Cancelled (the deadline, or the guest hung up): the transfer is dropped.
        finished: Deferred[bytes] = Deferred(lambda _: body.stop())
        body = _LimitedBody(self._limit, finished)
        response.deliverBody(body)
        if not head and declared is not None and declared > self._limit:
            body.stop(BodyTooLarge(f"{declared} bytes declared, more than {self._limit}"))
        return finished.addCallback(
            lambda data: UpstreamAnswer(response.code, content_type, data, declared)
        )

    def close(self) -> Deferred[None]:
        """Close the kept connections (the agent stops)."""
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed


def _declared_length(response: IResponse, head: bool) -> int | None:
    """The body's length as upstream declared it: ``Content-Length`` (twisted.web keeps it in
    the headers of a HEAD answer only, and gives the length of others)."""
    if not head:
        length = response.length
        return length if isinstance(length, int) else None
    values = response.headers.getRawHeaders(b"content-length") or []
    if len(values) == 1 and values[0].isdigit() and len(values[0]) <= 18:
        return int(values[0])
    return None


class Upstream:
    """Forwards the requests RoleCall answers 404 for, as `agent.imds.passthrough` allows, and
    tallies how each ended (`outcomes`, by label, for metrics)."""

    def __init__(self, fetcher: Fetcher, scheme: HeaderScheme, secret: bytes, url: str) -> None:
        if not secret:
            raise ValueError("the upstream metadata service needs a shared secret")
        self._fetcher = fetcher
        self._scheme = scheme
        self._secret = secret
        self.url = url
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        #: What went wrong last, while it goes wrong (said once per change).
        self.problem: str | None = None

    def __repr__(self) -> str:  # never the secret
        return f"Upstream({self.url!r})"

    def forward(self, request: ImdsRequest, view: InstanceView) -> Deferred[ImdsResponse] | None:
        """The answer from upstream to ``request``, made in ``view``'s instance; ``None`` if
        the request must not leave RoleCall (then RoleCall's own 404 stands). The Deferred
        always fires with an answer, unless cancelled."""
        metadata = view.tree.metadata
        trusted = trusted_headers(
            self._scheme, self._secret, view.instance_id, metadata.account_id, metadata.local_ipv4
        )
        sent = outgoing(request, trusted)
        if sent is None:
            return None
        head = request.method == "HEAD"
        fetched = self._fetcher.fetch(sent)
        return fetched.addCallbacks(
            self._answered, self._failed, callbackArgs=(head,), errbackArgs=(head,)
        )

    def close(self) -> Deferred[None]:
        return self._fetcher.close()

    def _answered(self, upstream: UpstreamAnswer, head: bool) -> ImdsResponse:
        outcome = classify(upstream.status)
        self.outcomes[outcome.label] += 1
        status = upstream.status
        if outcome in (Outcome.ANSWERED, Outcome.NOT_FOUND):
            self._fine()
        elif outcome is not Outcome.REFUSED:
            self._trouble(f"it answered {status}; guests get 502")
        elif status in (400, 401, 403):
            # To a request the agent signed: the secret or the header names are not what the
            # upstream service expects.
            self._trouble(
                f"it answered {status} (check the shared secret and the header names); guests"
                f" get that {status}"
            )
        return answer(upstream, head)

    def _failed(self, reason: Failure, head: bool) -> ImdsResponse | Failure:
        if reason.check(CancelledError):
            self.outcomes[Outcome.CANCELLED.label] += 1
            return reason  # the guest hung up: nobody to answer
        if reason.check(DeadlinePassed, network.TimeoutError):
            outcome, problem = Outcome.TIMEOUT, "no answer in time"
        elif reason.check(BodyTooLarge):
            outcome, problem = Outcome.TOO_LARGE, f"an answer too large ({reason.value})"
        elif reason.check(*_NETWORK_FAILURES):
            cause = cause_text(reason.value) if reason.value is not None else "no answer"
            outcome, problem = Outcome.UNREACHABLE, f"unreachable ({cause})"
        else:  # a bug: still an answer to the guest
            log.failure("forwarding a metadata request failed", reason)
            outcome, problem = Outcome.ERROR, f"failed ({type(reason.value).__name__})"
        self.outcomes[outcome.label] += 1
        self._trouble(f"{problem}; guests get {outcome.status}")
        return failure(outcome, head)

    def _trouble(self, problem: str) -> None:
        """Say ``problem`` (what went wrong and what guests get), unless it was said last."""
        if problem != self.problem:
            log.warn("upstream metadata service {url}: {problem}", url=self.url, problem=problem)
        self.problem = problem

    def _fine(self) -> None:
        if self.problem is not None:
            log.info("upstream metadata service {url} answers again", url=self.url)
        self.problem = None


class UpstreamService(Service):
    """Closes the kept connections to the upstream service when the agent stops."""

    name = "upstream"

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return self.upstream.close()


def make_upstream(
    reactor: IClientReactor,
    url: str,
    scheme: HeaderScheme,
    secret: bytes,
    *,
    timeout: float,
    max_body_bytes: int,
) -> Upstream:
    """The forwarder for the agent's configuration, on twisted.web's client."""
    client = UpstreamClient(reactor, url, timeout=timeout, max_body_bytes=max_body_bytes)
    return Upstream(client, scheme, secret, url)
