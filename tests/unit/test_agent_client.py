"""The agent's TLS policy for the node API: one OpenSSL context per controller address."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from agent.client import NodeApiClient, NodeTLSPolicy
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
