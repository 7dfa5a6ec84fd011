"""An agent with several controller URLs moves on when its controller dies, hangs or refuses.

`agent.failover` on its own (the choice of the next URL, what moves on, the bounds), then the
real `NodeApiClient` over a stand-in for twisted.web's Agent, and the handshake bound of
`agent.handshake` over a stand-in TLS endpoint; time moves only through `MemoryReactorClock`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.client import ResponseDone
from zope.interface import implementer

from agent.client import ControllerUnreachable, NodeApiClient, NodeApiError, NodeTLSPolicy
from agent.config import AgentConfig
from agent.failover import (
    FAILOVER_REASONS,
    Bounds,
    ConnectionNotReady,
    ControllerChoice,
    attempt_seconds,
    moves_on,
    next_url,
)
from agent.handshake import HandshakeBoundEndpoint
from agent.imds.tokens import TokenMinter, new_key
from agent.metrics import FailoverCollector
from agent.reconcile import DRAIN_SECONDS, NodeAgent
from tests.unit.test_agent_client import tls_files
from tests.unit.test_reconnect import Picks

A, B, C = "https://a.example:8775", "https://b.example:8775", "https://c.example:8775"
URLS = (A, B, C)
BOUNDS = Bounds()

# -- the pure rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "tried", "expected"),
    [
        (A, [], A),  # a call starts at the URL in use
        (A, [A], B),  # then the next in the configured order
        (A, [A, B], C),
        (A, [A, B, C], None),  # each URL at most once per call
        (B, [], B),  # the URL in use after a failover, not the first
        (B, [B], C),
        (B, [B, C], A),  # wrapping around
        (C, [A], C),  # the URL in use changed while the call waited on A: go there
        (B, [A, B], C),
    ],
)
def test_the_next_url_is_the_one_in_use_then_the_next_untried_in_order(
    current: str, tried: list[str], expected: str | None
) -> None:
    assert next_url(URLS, current, tried) == expected


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (503, "StoreUnavailable", True),  # that controller lost its database
        (503, "AuditUnavailable", True),
        (500, None, True),
        (502, None, True),  # a proxy in front of a dead controller, not JSON
        (403, "UnknownNode", True),  # this controller does not know the node: another may
        (403, "NoCertificate", True),
        (403, "NotYourInstance", False),  # the same answer from every controller
        (404, "NoRole", False),
        (409, "NotTrusted", False),
        (400, "BadRequest", False),
    ],
)
def test_only_a_controllers_own_trouble_moves_on(
    status: int, code: str | None, expected: bool
) -> None:
    assert moves_on(status, code) is expected


def test_the_url_in_use_changes_only_when_it_failed_this_call() -> None:
    choice = ControllerChoice(URLS)
    assert choice.answered(B, {C: "timeout"}) is None  # A was not tried: still in use
    assert choice.current == A
    assert choice.answered(B, {A: "timeout"}) == A
    assert choice.current == B
    assert choice.answered(B, {A: "refused"}) is None  # another call following to B
    assert choice.failovers == {"unreachable": 0, "timeout": 1, "refused": 0}


def test_a_long_poll_may_take_its_wait_and_the_answer_bound() -> None:
    assert attempt_seconds(0, BOUNDS) == BOUNDS.answer_seconds
    assert attempt_seconds(60, BOUNDS) == 60 + BOUNDS.answer_seconds
    with pytest.raises(ValueError, match="connect_seconds"):
        Bounds(connect_seconds=10, answer_seconds=5)


# -- the client ----------------------------------------------------------------------------------


class Response:
    phrase = b"Whatever"
    length = None

    def __init__(self, code: int, body: object) -> None:
        self.code = code
        self._body = body if isinstance(body, bytes) else json.dumps(body).encode()

    def deliverBody(self, protocol: Protocol) -> None:
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(self._body)
        protocol.connectionLost(Failure(ResponseDone()))


def answers(code: int, body: object) -> Callable[[], Deferred[Any]]:
    return lambda: succeed(Response(code, body))


def hangs() -> Deferred[Any]:
    """No answer; cancelled, it fails as twisted.web's requests do (the cancellation wrapped)."""

    def cancelled(request: Deferred[Any]) -> None:
        request.errback(ResponseNeverReceived([Failure(CancelledError())]))

    return Deferred(cancelled)


def dead() -> Deferred[Any]:
    return fail(ConnectionRefusedError("Connection refused"))


class Web:
    """Stands for twisted.web's Agent: each controller behaves as the test says."""

    def __init__(self) -> None:
        self.behaviour: dict[str, Callable[[], Deferred[Any]]] = {}
        self.requests: list[str] = []
        self.waiting: list[Deferred[Any]] = []

    def request(self, method: bytes, uri: bytes, *args: Any, **kwargs: Any) -> Deferred[Any]:
        url = uri.decode()
        self.requests.append(url)
        base = next(base for base in self.behaviour if url.startswith(base))
        answer = self.behaviour[base]()
        self.waiting.append(answer)
        return answer

    def asked(self) -> list[str]:
        """The controllers asked so far, in order (and forgets them)."""
        asked = [
            next(base for base in self.behaviour if url.startswith(base)) for url in self.requests
        ]
        self.requests.clear()
        return asked


CREDENTIALS = {"AccessKeyId": "ASIAEXAMPLE"}


def client_with(
    **behaviour: Callable[[], Deferred[Any]],
) -> tuple[MemoryReactorClock, Web, NodeApiClient]:
    reactor = MemoryReactorClock()
    client = NodeApiClient(reactor, URLS, NodeTLSPolicy(*tls_files()))
    web = Web()
    web.behaviour = {URLS["abc".index(name)]: act for name, act in behaviour.items()}
    client._agent = web  # type: ignore[assignment]
    return reactor, web, client


def outcome(call: Deferred[Any]) -> list[Any]:
    results: list[Any] = []
    call.addBoth(results.append)
    return results


def test_a_credential_call_to_a_hung_controller_moves_on_when_its_bound_passes() -> None:
    reactor, web, client = client_with(a=hangs, b=answers(200, CREDENTIALS), c=hangs)
    with capturedLogs() as events:
        result = outcome(client.credentials("i-1"))
        reactor.advance(BOUNDS.answer_seconds - 0.01)
        assert result == [] and web.asked() == [A]
        reactor.advance(0.01)
    assert result == [CREDENTIALS]
    assert web.asked() == [B]
    assert client.current == B
    assert client.failovers == {"unreachable": 0, "timeout": 1, "refused": 0}
    lines = [formatEvent(event) for event in events]
    assert lines == [
        f"controller {B} in use from now on, after controller {A}: no answer within 5 s"
    ]
    assert reactor.getDelayedCalls() == []


def test_a_long_poll_held_by_a_hung_controller_moves_on_after_its_wait_and_the_bound() -> None:
    reactor, web, client = client_with(a=hangs, b=answers(200, {"revision": 2}), c=hangs)
    result = outcome(client.assignments(1, 30))
    reactor.advance(30 + BOUNDS.answer_seconds - 0.01)
    assert result == []
    reactor.advance(0.01)
    assert result == [{"revision": 2}]
    assert web.asked() == [A, B]
    assert reactor.getDelayedCalls() == []


def test_a_dead_controller_is_left_at_once_and_the_agent_stays_where_it_works() -> None:
    _reactor, web, client = client_with(a=dead, b=answers(200, CREDENTIALS), c=dead)
    assert outcome(client.credentials("i-1")) == [CREDENTIALS]
    assert web.asked() == [A, B]
    web.behaviour[A] = answers(200, CREDENTIALS)  # A is back: not asked while B works
    for _ in range(3):
        assert outcome(client.credentials("i-1")) == [CREDENTIALS]
    assert web.asked() == [B, B, B]
    assert client.failovers["unreachable"] == 1


def test_a_controller_that_lost_its_database_is_left_for_one_that_answers() -> None:
    unavailable = answers(503, {"error": "StoreUnavailable", "message": "try again"})
    _reactor, web, client = client_with(a=unavailable, b=unavailable, c=answers(200, CREDENTIALS))
    assert outcome(client.credentials("i-1")) == [CREDENTIALS]
    assert web.asked() == [A, B, C]
    assert (client.current, client.failovers["refused"]) == (C, 1)


def test_a_node_every_controller_refuses_gets_the_refusal_once_per_call_not_a_loop() -> None:
    unknown = answers(403, {"error": "UnknownNode", "message": "node 'hv1' is not enrolled"})
    _reactor, web, client = client_with(a=unknown, b=dead, c=unknown)
    [failure] = outcome(client.assignments(1, 0))
    assert isinstance(failure, Failure) and failure.check(NodeApiError)
    assert (
        isinstance(failure.value, NodeApiError) and failure.value.status == 403
    )  # the caller backs off as for any error answer
    assert "not enrolled" in failure.getErrorMessage()
    assert web.asked() == [A, B, C]  # each controller once
    assert client.current == A and client.failovers == dict.fromkeys(FAILOVER_REASONS, 0)


def test_an_answer_every_controller_would_give_is_the_calls_answer() -> None:
    _reactor, web, client = client_with(
        a=answers(404, {"error": "NoRole", "message": "i-1 has no instance profile with a role"}),
        b=answers(200, CREDENTIALS),
        c=answers(200, CREDENTIALS),
    )
    [failure] = outcome(client.credentials("i-1"))
    assert failure.check(NodeApiError) and failure.value.status == 404
    assert web.asked() == [A]


def test_every_controller_unreachable_is_an_outage() -> None:
    _reactor, _web, client = client_with(a=dead, b=dead, c=dead)
    [failure] = outcome(client.credentials("i-1"))
    assert failure.check(ControllerUnreachable)
    assert all(url in failure.getErrorMessage() for url in URLS)


def test_a_long_poll_held_by_the_controller_left_follows_to_the_new_one_at_once() -> None:
    reactor, web, client = client_with(a=hangs, b=answers(200, {"revision": 1}), c=hangs)
    poll = outcome(client.assignments(1, 60))  # held by A, as a long poll is
    web.asked()
    web.behaviour[A] = answers(503, {"error": "AuditUnavailable", "message": "later"})
    credentials = outcome(client.credentials("i-1"))
    assert web.asked() == [A, B, B]  # the credentials call, then the poll, both at B
    assert credentials == [{"revision": 1}] and poll == [{"revision": 1}]
    assert client.failovers["refused"] == 1  # one failover, not one per call that followed
    assert reactor.getDelayedCalls() == []


def test_a_call_cancelled_by_its_caller_is_not_followed_elsewhere() -> None:
    reactor, web, client = client_with(a=hangs, b=answers(200, CREDENTIALS), c=hangs)
    call = client.credentials("i-1")
    result = outcome(call)
    call.cancel()
    assert web.asked() == [A]
    assert result[0].check(CancelledError)
    assert reactor.getDelayedCalls() == []


# -- the handshake bound -------------------------------------------------------------------------


@implementer(IStreamClientEndpoint)
class TlsEndpoint:
    """Stands for the TLS endpoint: TCP connects when the test says; the protocol it built is
    told of the handshake when the test says."""

    def __init__(self) -> None:
        self.connecting: Deferred[Any] = Deferred()
        self.protocol: Any = None
        self.transport = StringTransport()

    def connect(self, factory: Any) -> Deferred[Any]:
        self.protocol = factory.buildProtocol(None)
        return self.connecting

    def tcp_up(self) -> None:
        self.protocol.makeConnection(self.transport)
        self.connecting.callback(self.protocol)


class Http(Protocol):
    pass


def test_a_connection_whose_handshake_never_completes_is_aborted_at_the_bound() -> None:
    reactor = MemoryReactorClock()
    tls = TlsEndpoint()
    endpoint = HandshakeBoundEndpoint(reactor, tls, BOUNDS.connect_seconds)
    result = outcome(endpoint.connect(Factory.forProtocol(Http)))
    tls.tcp_up()  # the kernel accepted: the controller's process is stopped
    reactor.advance(BOUNDS.connect_seconds - 0.01)
    assert result == [] and not tls.transport.disconnecting
    reactor.advance(0.01)
    assert result[0].check(ConnectionNotReady)
    assert tls.transport.disconnecting  # aborted, not left open
    assert reactor.getDelayedCalls() == []


def test_a_connection_counts_as_made_once_its_handshake_is_done() -> None:
    reactor = MemoryReactorClock()
    tls = TlsEndpoint()
    endpoint = HandshakeBoundEndpoint(reactor, tls, BOUNDS.connect_seconds)
    result = outcome(endpoint.connect(Factory.forProtocol(Http)))
    tls.tcp_up()
    assert result == []  # TCP alone is not a connection yet
    tls.protocol.handshakeCompleted()
    assert len(result) == 1 and isinstance(result[0], Http)
    assert result[0].transport is tls.transport  # the HTTP protocol writes to TLS itself
    assert reactor.getDelayedCalls() == []


def test_a_connect_that_never_completes_is_cancelled_at_the_bound() -> None:
    reactor = MemoryReactorClock()
    tls = TlsEndpoint()
    endpoint = HandshakeBoundEndpoint(reactor, tls, BOUNDS.connect_seconds)
    result = outcome(endpoint.connect(Factory.forProtocol(Http)))
    reactor.advance(BOUNDS.connect_seconds)
    assert result[0].check(ConnectionNotReady)
    assert tls.connecting.called  # the TCP attempt was cancelled


# -- what Prometheus sees ------------------------------------------------------------------------


def samples(registry: CollectorRegistry) -> dict[str, float]:
    found = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


def test_metrics_name_the_controller_in_use_and_count_failovers_from_zero() -> None:
    _reactor, _web, client = client_with(a=dead, b=answers(200, CREDENTIALS), c=dead)
    registry = CollectorRegistry()
    registry.register(FailoverCollector(client))
    before = samples(registry)
    assert before[f'rolecall_agent_node_api_controller_in_use{{url="{A}"}}'] == 1
    assert before[f'rolecall_agent_node_api_controller_in_use{{url="{B}"}}'] == 0
    assert all(
        before[f'rolecall_agent_node_api_failovers_total{{reason="{reason}"}}'] == 0
        for reason in FAILOVER_REASONS
    )
    outcome(client.credentials("i-1"))
    after = samples(registry)
    assert after[f'rolecall_agent_node_api_controller_in_use{{url="{A}"}}'] == 0
    assert after[f'rolecall_agent_node_api_controller_in_use{{url="{B}"}}'] == 1
    assert after['rolecall_agent_node_api_failovers_total{reason="unreachable"}'] == 1


# -- the long poll over the client ---------------------------------------------------------------


def test_a_retired_node_refused_by_every_controller_polls_with_backoff_not_in_a_loop() -> None:
    unknown = answers(403, {"error": "UnknownNode", "message": "node 'hv1' is not enrolled"})
    reactor, web, client = client_with(a=unknown, b=dead, c=unknown)
    agent = NodeAgent(
        AgentConfig(controller_urls=URLS),
        reactor,
        client,
        TokenMinter(new_key()),
        namespaces=None,
        random=Picks(0.5),  # every backoff half its ceiling: the jitter's mean
    )
    agent.startService()
    for _ in range(15 * 60 * 10):
        reactor.advance(0.1)
    asked = web.asked()
    # Polls at 0, then after 0.5, 1, 2, ... 128, then 150 s each: 14 in 15 minutes, each asking
    # each controller once (as one controller alone would be asked 14 times).
    assert len(asked) == 3 * 14
    assert agent.poll_failures_by_reason["refused"] == 14
    assert client.current == A
    agent.stopService()
    reactor.advance(DRAIN_SECONDS)
    assert reactor.getDelayedCalls() == []
