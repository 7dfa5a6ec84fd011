"""The agent's side of the node API: HTTPS with the node certificate, failing over between
controller URLs. JSON in and out; every call has a timeout."""

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
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from agent.diagnosis import describe_failure
from common.nodemessages import parse_error

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
    """Calls the node API, trying each controller URL in turn; the last good one goes first."""

    def __init__(
        self,
        reactor: IClientReactor,
        urls: Sequence[str],
        policy: IPolicyForHTTPS,
        *,
        timeout: float = 10.0,
        observe: Callable[[str, float], None] | None = None,
        ca_file: str = "the node CA file",
    ) -> None:
        if not urls:
            raise ValueError("at least one controller URL is needed")
        self._urls = [url.rstrip("/") for url in urls]
        self._reactor = reactor
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 4
        pool.retryAutomatically = False
        self._agent = Agent(reactor, contextFactory=policy, pool=pool, connectTimeout=timeout)
        self._pool = pool
        self._timeout = timeout
        #: Told of each call: its endpoint ("assignments", "credentials") and how long it took.
        self.observe = observe
        #: Where the trusted CA came from, for the messages (this process has its contents only).
        self._ca_file = ca_file
        #: Why each URL failed last, until it answers again: each problem is logged once.
        self.problems: dict[str, str] = {}

    def assignments(self, since: int, wait: float) -> Deferred[dict[str, Any]]:
        query = urlencode({"since": since, "wait": int(wait)})
        return self._timed(
            "assignments", self._call(b"GET", f"/v1/assignments?{query}", self._timeout + wait)
        )

    def credentials(self, instance_id: str) -> Deferred[dict[str, Any]]:
        return self._timed(
            "credentials",
            self._call(b"POST", f"/v1/instances/{instance_id}/credentials", self._timeout),
        )

    def _timed(self, endpoint: str, call: Deferred[Any]) -> Deferred[Any]:
        started = self._reactor.seconds()

        def done(result: Any) -> Any:
            if self.observe is not None:
                self.observe(endpoint, self._reactor.seconds() - started)
            return result

        return call.addBoth(done)

    @inlineCallbacks
    def _call(self, method: bytes, path: str, timeout: float) -> Any:
        problems: list[str] = []
        for url in list(self._urls):
            try:
                response = yield self._agent.request(
                    method,
                    (url + path).encode("ascii"),
                    Headers({b"Accept": [b"application/json"]}),
                ).addTimeout(timeout, self._reactor)
                body = yield readBody(response).addTimeout(timeout, self._reactor)
            except CancelledError:
                raise  # the caller gave up (the agent stops): not an outage, nothing to log
            except Exception as error:  # this controller is unreachable: try the next
                problem = describe_failure(url, error, self._ca_file)
                # With one URL the caller says it (once per change); with several, which one
                # failed over is said here, once per change of its problem.
                if len(self._urls) > 1 and self.problems.get(url) != problem:
                    log.warn("{problem}", problem=problem)
                self.problems[url] = problem
                problems.append(problem)
                continue
            self.problems.pop(url, None)
            if url != self._urls[0]:
                self._urls.remove(url)
                self._urls.insert(0, url)
            if response.code != 200:
                raise NodeApiError(response.code, _error_message(body))
            # Checked by the caller, once: `parse_assignments`, `CredentialSet.from_node_api`.
            return json.loads(body)
        raise ControllerUnreachable("; ".join(problems) or "no controller URL")

    def close(self) -> Deferred[None]:
        closed: Deferred[None] = self._pool.closeCachedConnections()  # not annotated in Twisted
        return closed


def _error_message(body: bytes) -> str:
    """The message of the controller's error answer, or the start of what it sent instead."""
    try:
        return parse_error(json.loads(body)).message
    except ValueError:  # not JSON, or not an error answer (MessageError)
        return body[:200].decode("utf-8", "replace")
