"""The agent's side of the node API: HTTPS with the node certificate, failing over between
controller URLs (`agent.failover`: the bounds, when to move on, which URL next). JSON in and
out; every attempt is bounded."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from agent.diagnosis import describe_failure, is_timeout
from agent.failover import Bounds, ControllerChoice, NoAnswer, attempt_seconds, moves_on
from agent.handshake import BoundedTLSEndpoints
from common.nodemessages import ErrorAnswer, parse_error

log = Logger(namespace="rolecall.agent.client")


class NodeApiError(Exception):
    """The controller answered, but not with success: `status` says why (403, 404, 409, …)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class ControllerUnreachable(Exception):
    """No controller URL answered; the message says why for each (`agent.diagnosis`)."""


@implementer(IPolicyForHTTPS)
class NodeTLSPolicy:
    """Trust only the node CA, and present the node certificate."""

    def __init__(self, ca_pem: str, certificate_pem: str, key_pem: str) -> None:
        self._authority = Certificate.loadPEM(ca_pem.encode("ascii"))  # PEM is ASCII
        self._identity = PrivateCertificate.loadPEM(certificate_pem + key_pem)
        #: One set of TLS options (one OpenSSL context) per controller address, made once:
        #: making a context costs more than a handshake on a reused one.
        self._creators: dict[tuple[bytes, int], IOpenSSLClientConnectionCreator] = {}

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        creator = self._creators.get((hostname, port))
        if creator is None:
            creator = self._creators[(hostname, port)] = optionsForClientTLS(
                hostname.decode("ascii"),
                trustRoot=self._authority,
                clientCertificate=self._identity,
            )
        return creator


class IClientReactor(IReactorTime, IReactorTCP, IReactorPluggableNameResolver):
    """What the client uses of the reactor: timers for its timeouts, and what twisted.web's
    `Agent` needs to connect (TCP, names resolved: `HostnameEndpoint`'s reactor)."""


class NodeApiClient:
    """Calls the node API at the controller URL in use, moving on to the next when one is dead,
    hangs past a bound or refuses (`agent.failover` decides; this is its I/O)."""

    def __init__(
        self,
        reactor: IClientReactor,
        urls: Sequence[str],
        policy: IPolicyForHTTPS,
        *,
        bounds: Bounds | None = None,
        observe: Callable[[str, float], None] | None = None,
        ca_file: str = "the node CA file",
    ) -> None:
        if not urls:
            raise ValueError("at least one controller URL is needed")
        self._choice = ControllerChoice([url.rstrip("/") for url in urls])
        self._reactor = reactor
        self._bounds = bounds if bounds is not None else Bounds()
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 4
        pool.retryAutomatically = False
        self._agent = Agent.usingEndpointFactory(
            reactor,
            BoundedTLSEndpoints(reactor, policy, self._bounds.connect_seconds),
            pool=pool,
        )
        self._pool = pool
        #: Told of each call: its endpoint ("assignments", "credentials") and how long it took.
        self.observe = observe
        #: Where the trusted CA came from, for the messages (this process has its contents only).
        self._ca_file = ca_file
        #: Why each URL failed last, until it answers again: each problem is logged once.
        self.problems: dict[str, str] = {}
        #: Attempts waiting on each URL, given up when the agent fails over away from it (a
        #: long poll held by a controller that another call found hung or refusing).
        self._waiting: dict[str, set[Deferred[Any]]] = {}
        self._abandoned: set[Deferred[Any]] = set()

    @property
    def urls(self) -> tuple[str, ...]:
        return self._choice.urls

    @property
    def current(self) -> str:
        """The controller URL calls start at."""
        return self._choice.current

    @property
    def failovers(self) -> dict[str, int]:
        """Failovers since the start, by the reason the URL left failed (`FAILOVER_REASONS`)."""
        return dict(self._choice.failovers)

    def assignments(self, since: int, wait: float) -> Deferred[dict[str, Any]]:
        query = urlencode({"since": since, "wait": int(wait)})
        return self._timed("assignments", self._call(b"GET", f"/v1/assignments?{query}", wait))

    def credentials(self, instance_id: str) -> Deferred[dict[str, Any]]:
        return self._timed(
            "credentials", self._call(b"POST", f"/v1/instances/{instance_id}/credentials", 0.0)
        )

    def _timed(self, endpoint: str, call: Deferred[Any]) -> Deferred[Any]:
        started = self._reactor.seconds()

        def done(result: Any) -> Any:
            if self.observe is not None:
                self.observe(endpoint, self._reactor.seconds() - started)
            return result

        return call.addBoth(done)

    @inlineCallbacks
    def _call(self, method: bytes, path: str, wait: float) -> Any:
        tried: list[str] = []
        #: URL -> why it was left (a `FAILOVER_REASONS` value), and the problems in order.
        failed: dict[str, str] = {}
        problems: list[tuple[str, str]] = []
        refusal: int | None = None
        while (url := self._choice.next(tried)) is not None:
            tried.append(url)
            attempt = self._attempt(url, method, path, wait)
            waiting = self._waiting.setdefault(url, set())
            waiting.add(attempt)
            try:
                status, body = yield attempt
            except CancelledError:
                if attempt not in self._abandoned:
                    raise  # the caller gave up (the agent stops): not an outage, not logged
                continue  # another call left this URL: follow it
            except Exception as error:  # this controller is dead or hangs: try the next
                failed[url] = "timeout" if is_timeout(error) else "unreachable"
                problems.append((url, self._describe(url, error)))
                continue
            finally:
                waiting.discard(attempt)
                self._abandoned.discard(attempt)
            error_answer = _error_answer(body) if status != 200 else None
            if error_answer is not None and moves_on(status, error_answer.error):
                failed[url] = "refused"
                problems.append((url, f"controller {url}: {status} {_said(error_answer)}"))
                refusal = status if refusal is None else refusal
                continue
            self.problems.pop(url, None)
            self._answered(url, failed, problems)
            if error_answer is not None:
                raise NodeApiError(status, _said(error_answer))
            # Checked by the caller, once: `parse_assignments`, `CredentialSet.from_node_api`.
            return json.loads(body)
        self._unanswered(problems)
        message = "; ".join(problem for _, problem in problems) or "no controller URL"
        if refusal is not None:
            # Every controller refused or could not be reached, and one refused: the caller
            # backs off as for an error answer (a retired node is refused by all of them).
            raise NodeApiError(refusal, message)
        raise ControllerUnreachable(message)

    def _attempt(self, url: str, method: bytes, path: str, wait: float) -> Deferred[Any]:
        """One request to one URL, its answer read whole within `attempt_seconds`: fails with
        `NoAnswer` when that bound passes, with `CancelledError` when cancelled (whatever
        twisted.web wrapped the cancellation in)."""

        @inlineCallbacks
        def exchange() -> Any:
            response = yield self._agent.request(
                method, (url + path).encode("ascii"), Headers({b"Accept": [b"application/json"]})
            )
            body = yield readBody(response)
            return response.code, body

        seconds = attempt_seconds(wait, self._bounds)
        ended: list[str] = []  # "timeout" or "cancelled", once

        def cancel(_: Deferred[Any]) -> None:
            ended.append("cancelled")
            inner.cancel()

        def give_up() -> None:
            ended.append("timeout")
            inner.cancel()

        outer: Deferred[Any] = Deferred(cancel)
        inner: Deferred[Any] = exchange()
        timer = self._reactor.callLater(seconds, give_up)

        def settle(result: Any) -> None:
            if timer.active():
                timer.cancel()
            if outer.called:
                return None
            if isinstance(result, Failure) and ended:
                outer.errback(NoAnswer(seconds) if ended[0] == "timeout" else CancelledError())
            elif isinstance(result, Failure):
                outer.errback(result)
            else:
                outer.callback(result)
            return None

        inner.addBoth(settle)
        return outer

    def _describe(self, url: str, error: BaseException) -> str:
        if isinstance(error, NoAnswer):
            return f"controller {url}: {error}"
        return describe_failure(url, error, self._ca_file)

    def _answered(self, url: str, failed: dict[str, str], problems: list[tuple[str, str]]) -> None:
        """`url` answered: a failover if the URL in use failed this call. Then one line says
        so, and calls still waiting on the URL left follow to this one."""
        left = self._choice.answered(url, failed)
        for failed_url, problem in problems:
            self.problems[failed_url] = problem
        if left is None:
            return
        log.warn(
            "controller {url} in use from now on, after {problems}",
            url=url,
            problems="; ".join(problem for _, problem in problems),
        )
        for attempt in list(self._waiting.get(left, ())):
            self._abandoned.add(attempt)
            attempt.cancel()

    def _unanswered(self, problems: list[tuple[str, str]]) -> None:
        """No URL answered. With one URL the caller says it (once per change); with several,
        each URL's problem is said here, once per change."""
        for url, problem in problems:
            if len(self._choice.urls) > 1 and self.problems.get(url) != problem:
                log.warn("{problem}", problem=problem)
            self.problems[url] = problem

    def close(self) -> Deferred[None]:
        closed: Deferred[None] = self._pool.closeCachedConnections()  # not annotated in Twisted
        return closed


def _error_answer(body: bytes) -> ErrorAnswer:
    """The controller's error answer, or the start of what it sent instead as its message."""
    try:
        return parse_error(json.loads(body))
    except ValueError:  # not JSON, or not an error answer (MessageError)
        return ErrorAnswer("", body[:200].decode("utf-8", "replace"))


def _said(answer: ErrorAnswer) -> str:
    return f"{answer.error}: {answer.message}" if answer.error else answer.message
