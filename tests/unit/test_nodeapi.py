"""The node API on its port's protocol (`common.http11`): the node named by the TLS client
certificate the connection holds, the long poll answered later and cancelled when the node hangs
up. On a StringTransport that shows a certificate as TLS would; time moves only through a Clock.
The same API over real TLS, with credentials, is tests/e2e/test_node_api.py."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from OpenSSL.crypto import FILETYPE_PEM, X509, load_certificate
from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from controller.assignments import AssignmentHub
from controller.audit import AuditLog
from controller.keyring import KeyRingFile, ensure_key_ring
from controller.metrics import ControllerMetrics
from controller.nodeapi import NodeApi, node_api_factory
from controller.nodeca import create_ca, issue_node_certificate
from controller.sessions import Sessions
from controller.store.records import Node
from controller.store.sqlite import SQLiteStore
from tests.unit.test_api_http import Answer, parse_answers

#: 2024-05-01T12:00:00Z, the clock's time in these tests.
NOW = 1714564800.0
PEER = IPv4Address("TCP", "192.0.2.7", 40000)


class TlsTransport(StringTransport):
    """A StringTransport that shows a client certificate, as Twisted's TLS transport does."""

    def __init__(self, certificate: X509 | None) -> None:
        super().__init__(peerAddress=PEER)
        self.certificate = certificate

    def getPeerCertificate(self) -> X509 | None:
        return self.certificate


@dataclass
class Controller:
    clock: Clock
    store: SQLiteStore
    hub: AssignmentHub
    registry: CollectorRegistry
    certificate: X509
    connect: Callable[..., Connection]


@dataclass
class Connection:
    transport: TlsTransport
    protocol: Any

    def send(self, data: bytes) -> list[Answer]:
        self.protocol.dataReceived(data)
        written = self.transport.value()
        self.transport.clear()
        return parse_answers(written)


def poll(since: int, wait: int) -> bytes:
    return (
        f"GET /v1/assignments?since={since}&wait={wait} HTTP/1.1\r\nHost: controller\r\n\r\n"
    ).encode()


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    clock = Clock()
    clock.advance(NOW)
    now = datetime.fromtimestamp(NOW, UTC)
    ca_key, ca_cert = create_ca(now)
    _, cert_pem, serial = issue_node_certificate(ca_key, ca_cert, "hv-1", now)
    store = SQLiteStore(":memory:")
    with store.transaction() as tx:
        tx.insert_node(Node("hv-1", serial, "2024-05-01T00:00:00Z", None, None, 3))
    ensure_key_ring(tmp_path / "token-keys.json", now)
    hub = AssignmentHub(clock)
    registry = CollectorRegistry()
    api = NodeApi(
        store,
        hub,
        Sessions(KeyRingFile(tmp_path / "token-keys.json")),
        AuditLog(tmp_path / "audit.log"),
        clock,
        metrics=ControllerMetrics(registry),
    )
    factory = node_api_factory(api, clock)
    opened: list[Connection] = []

    def connect(certificate: X509 | None) -> Connection:
        transport = TlsTransport(certificate)
        protocol = factory.buildProtocol(PEER)
        protocol.makeConnection(transport)
        opened.append(Connection(transport, protocol))
        return opened[-1]

    certificate = load_certificate(FILETYPE_PEM, cert_pem)
    try:
        yield Controller(clock, store, hub, registry, certificate, connect)
    finally:
        for connection in opened:
            connection.protocol.connectionLost(Failure(ConnectionError("closed by the test")))
        store.close()
    assert clock.getDelayedCalls() == []


def answered(controller: Controller, status: int) -> float:
    value = controller.registry.get_sample_value(
        "rolecall_node_api_requests_total", {"endpoint": "assignments", "status": str(status)}
    )
    return value or 0.0


def test_a_poll_behind_the_nodes_revision_is_answered_at_once(controller: Controller) -> None:
    (answer,) = controller.connect(controller.certificate).send(poll(since=2, wait=60))
    assert answer.status == 200
    assert json.loads(answer.body) == {"revision": 3, "instances": []}
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["cache-control"] == "no-store"
    assert answered(controller, 200) == 1


def test_a_poll_at_the_nodes_revision_is_answered_when_it_changes(controller: Controller) -> None:
    connection = controller.connect(controller.certificate)
    assert connection.send(poll(since=3, wait=60)) == []
    assert controller.hub.waiting() == 1
    assert answered(controller, 200) == 0  # counted when answered
    change(controller)
    (answer,) = connection.send(b"")
    assert answer.status == 200
    assert answered(controller, 200) == 1
    assert not connection.transport.disconnecting


def change(controller: Controller) -> None:
    """A change to hv-1's assignments, as the API makes one: its revision, then the wake."""
    with controller.store.transaction() as tx:
        tx.bump_node_revision("hv-1")
    controller.hub.changed("hv-1")


def test_a_wake_without_a_newer_revision_waits_on_until_the_change_or_the_end(
    controller: Controller,
) -> None:
    # Another controller's late notice of a change this poll has seen, or every poll woken
    # after the database listener reconnected: no answer without a change.
    connection = controller.connect(controller.certificate)
    assert connection.send(poll(since=3, wait=60)) == []
    controller.hub.changed("hv-1")
    controller.hub.changed_all()
    assert connection.send(b"") == [] and controller.hub.waiting() == 1
    controller.clock.advance(30)
    change(controller)
    (answer,) = connection.send(b"")
    assert json.loads(answer.body)["revision"] == 4
    # And one woken without a change still ends when its wait does.
    assert connection.send(poll(since=4, wait=60)) == []
    controller.clock.advance(59)
    controller.hub.changed("hv-1")
    controller.clock.advance(1)
    (answer,) = connection.send(b"")
    assert (answer.status, json.loads(answer.body)["revision"]) == (200, 4)
    assert controller.hub.waiting() == 0


def test_a_stopping_controller_answers_every_poll_with_what_it_has(
    controller: Controller,
) -> None:
    connection = controller.connect(controller.certificate)
    assert connection.send(poll(since=3, wait=60)) == []
    controller.hub.stop()
    (answer,) = connection.send(b"")
    assert (answer.status, json.loads(answer.body)["revision"]) == (200, 3)


def test_a_poll_is_answered_when_its_wait_runs_out(controller: Controller) -> None:
    connection = controller.connect(controller.certificate)
    assert connection.send(poll(since=3, wait=120)) == []
    controller.clock.advance(119)  # past the protocol's idle timeout: the poll holds it
    assert connection.send(b"") == []
    controller.clock.advance(1)
    (answer,) = connection.send(b"")
    assert (answer.status, json.loads(answer.body)["revision"]) == (200, 3)


def test_a_node_that_hangs_up_on_its_poll_stops_waiting_and_is_not_counted(
    controller: Controller,
) -> None:
    connection = controller.connect(controller.certificate)
    connection.send(poll(since=3, wait=60))
    assert controller.hub.waiting() == 1
    connection.protocol.connectionLost(Failure(ConnectionError("the node hung up")))
    assert controller.hub.waiting() == 0
    assert answered(controller, 200) == 0
    controller.hub.changed("hv-1")  # nothing left to wake
    assert connection.transport.value() == b""


def test_a_request_pipelined_behind_a_poll_is_answered_after_it(controller: Controller) -> None:
    connection = controller.connect(controller.certificate)
    assert connection.send(poll(since=3, wait=60) + poll(since=-1, wait=0)) == []
    change(controller)
    assert [answer.status for answer in connection.send(b"")] == [200, 200]
    assert controller.hub.waiting() == 0


def test_a_connection_without_a_certificate_is_403(controller: Controller) -> None:
    (answer,) = controller.connect(None).send(poll(since=-1, wait=0))
    assert answer.status == 403
    assert json.loads(answer.body)["error"] == "NoCertificate"


def test_a_certificate_whose_serial_is_not_the_enrolled_one_is_403(
    controller: Controller, tmp_path: Path
) -> None:
    now = datetime.fromtimestamp(NOW, UTC)
    ca_key, ca_cert = create_ca(now)
    _, other, _ = issue_node_certificate(ca_key, ca_cert, "hv-1", now)
    (answer,) = controller.connect(load_certificate(FILETYPE_PEM, other)).send(poll(-1, 0))
    assert answer.status == 403
    assert json.loads(answer.body)["error"] == "UnknownNode"


def test_a_call_records_the_nodes_last_contact(controller: Controller) -> None:
    controller.connect(controller.certificate).send(poll(since=-1, wait=0))
    with controller.store.transaction() as tx:
        node = tx.get_node("hv-1")
    assert node is not None and node.last_contact == "2024-05-01T12:00:00Z"


def test_last_contact_is_written_only_when_the_stored_one_is_15_seconds_old(
    controller: Controller,
) -> None:
    """Every node API call would otherwise be a write, and a write empties every controller's
    read cache: the contact is kept to a 15-second resolution."""

    def contact() -> str | None:
        node = controller.store.run(lambda tx: tx.get_node("hv-1"))
        assert node is not None
        return node.last_contact

    connection = controller.connect(controller.certificate)
    connection.send(poll(since=-1, wait=0))
    assert contact() == "2024-05-01T12:00:00Z"
    controller.clock.advance(14)
    controller.connect(controller.certificate).send(poll(since=-1, wait=0))
    assert contact() == "2024-05-01T12:00:00Z"
    controller.clock.advance(1)
    controller.connect(controller.certificate).send(poll(since=-1, wait=0))
    assert contact() == "2024-05-01T12:00:15Z"


def test_an_unknown_endpoint_is_a_404_in_json(controller: Controller) -> None:
    (answer,) = controller.connect(controller.certificate).send(
        b"GET /v1/nothing HTTP/1.1\r\nHost: controller\r\n\r\n"
    )
    assert answer.status == 404
    assert json.loads(answer.body)["error"] == "NotFound"


def test_a_body_over_the_limit_is_refused_413_with_the_apis_error_xml(
    controller: Controller,
) -> None:
    connection = controller.connect(controller.certificate)
    (answer,) = connection.send(
        b"POST /v1/instances/i-1/credentials HTTP/1.1\r\nHost: controller\r\n"
        b"Content-Length: 2000000\r\n\r\n"
    )
    assert answer.status == 413
    assert answer.error_code() == "RequestEntityTooLarge"
    assert connection.transport.disconnecting


@pytest.mark.parametrize("query", ["since=3;wait=0", "since=3&wait", "since=3&wait=0&=5"])
def test_query_arguments_are_read_as_before(controller: Controller, query: str) -> None:
    """``;`` separates arguments too, and a name without ``=`` is left out (wait: 0)."""
    connection = controller.connect(controller.certificate)
    request = f"GET /v1/assignments?{query} HTTP/1.1\r\nHost: controller\r\n\r\n"
    assert [answer.status for answer in connection.send(request.encode())] == [200]


def test_a_node_that_hangs_up_while_its_poll_waits_on_is_forgotten(
    controller: Controller,
) -> None:
    connection = controller.connect(controller.certificate)
    connection.send(poll(since=3, wait=60))
    controller.hub.changed("hv-1")  # woken without a change: waits on
    assert controller.hub.waiting() == 1
    connection.protocol.connectionLost(Failure(ConnectionError("the node hung up")))
    assert controller.hub.waiting() == 0
    assert answered(controller, 200) == 0
