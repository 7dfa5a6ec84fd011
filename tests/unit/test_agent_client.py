"""The agent's TLS policy for the node API: one OpenSSL context per controller address."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from OpenSSL import SSL
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived

from agent.client import ControllerUnreachable, NodeApiClient, NodeTLSPolicy
from controller.nodeca import create_ca, issue_node_certificate


def tls_files() -> tuple[str, str, str]:
    """A node CA, and a node certificate and key it signed (PEM text)."""
    now = datetime.now(UTC)
    ca_key, ca_cert = create_ca(now)
    key, cert, _ = issue_node_certificate(ca_key, ca_cert, "compute1", now)
    return ca_cert.decode(), cert.decode(), key.decode()


def test_tls_options_are_made_once_per_controller_address() -> None:
    now = datetime.now(UTC)
    ca_key, ca_cert = create_ca(now)
    key, cert, _ = issue_node_certificate(ca_key, ca_cert, "compute1", now)
    policy = NodeTLSPolicy(ca_cert.decode(), cert.decode(), key.decode())
    first = policy.creatorForNetloc(b"controller.example", 8774)
    assert policy.creatorForNetloc(b"controller.example", 8774) is first
    assert policy.creatorForNetloc(b"controller2.example", 8774) is not first
    assert policy.creatorForNetloc(b"controller.example", 8775) is not first


class NeverAnswers:
    """A twisted.web Agent whose requests never answer, as a long poll in progress."""

    def request(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        return Deferred()


def test_a_call_cancelled_on_stop_is_not_logged_as_an_unreachable_controller() -> None:
    client = NodeApiClient(
        MemoryReactorClock(), ["https://controller.example:8775"], NodeTLSPolicy(*tls_files())
    )
    client._agent = NeverAnswers()  # type: ignore[assignment]
    call = client.assignments(3, 60)
    failures: list[Failure] = []
    call.addErrback(failures.append)
    with capturedLogs() as events:
        call.cancel()
    assert failures and failures[0].check(CancelledError)
    assert [event for event in events if "unreachable" in formatEvent(event)] == []


class WrongCA:
    """A twisted.web Agent whose handshakes fail as with a controller from another CA."""

    def request(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        error = SSL.Error([("SSL routines", "", "certificate verify failed")])
        return fail(ResponseNeverReceived([Failure(error)]))


def unreachable(call: Deferred[Any]) -> str:
    failures: list[Failure] = []
    call.addErrback(failures.append)
    assert failures and failures[0].check(ControllerUnreachable)
    return failures[0].getErrorMessage()


def test_a_controller_from_another_ca_is_reported_naming_the_ca_file() -> None:
    client = NodeApiClient(
        MemoryReactorClock(),
        ["https://127.0.0.1:8775"],
        NodeTLSPolicy(*tls_files()),
        ca_file="/etc/rolecall/ca.pem",
    )
    client._agent = WrongCA()  # type: ignore[assignment]
    with capturedLogs() as events:
        message = unreachable(client.assignments(0, 0))
    assert message == (
        "controller https://127.0.0.1:8775: its certificate does not verify against the CA in "
        "/etc/rolecall/ca.pem (certificate verify failed)"
    )
    assert list(events) == []  # one URL: the caller says it, once


def test_with_several_urls_each_ones_problem_is_logged_once_not_per_call() -> None:
    client = NodeApiClient(
        MemoryReactorClock(),
        ["https://a.example:8775", "https://b.example:8775"],
        NodeTLSPolicy(*tls_files()),
        ca_file="/etc/rolecall/ca.pem",
    )
    client._agent = WrongCA()  # type: ignore[assignment]
    with capturedLogs() as events:
        for _ in range(5):
            unreachable(client.assignments(0, 0))
    lines = [formatEvent(event) for event in events]
    assert len(lines) == 2
    assert all("does not verify against the CA in /etc/rolecall/ca.pem" in line for line in lines)
