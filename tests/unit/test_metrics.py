"""Controller metrics read back through the Prometheus exposition parser, and the health
listener's /metrics, /healthz and /readyz answered to plain requests and on its protocol."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, enable_created_metrics, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from common.health import HealthPages, health_factory
from common.http11 import Request
from controller import sigv4
from controller.accounts import ensure_first_account
from controller.api import PublicApi
from controller.assignments import AssignmentHub
from controller.compose import api_registry
from controller.health import health_pages, readiness
from controller.keyring import KeyRingFile, ensure_key_ring
from controller.metrics import ControllerMetrics
from controller.sessions import Sessions
from controller.store.base import StoreError
from controller.store.records import Node
from controller.store.sqlite import SQLiteStore

ACTIONS = (("iam", "GetRole"), ("sts", "AssumeRole"))
#: 2024-05-01T12:00:00Z: the fake clock's "now" in these tests.
NOW = 1714564800.0

Labels = frozenset[tuple[str, str]]


def samples(registry: CollectorRegistry) -> dict[tuple[str, Labels], float]:
    """Every sample of a scrape, by name and labels, as Prometheus would read it."""
    text = generate_latest(registry).decode("utf-8")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return samples(registry).get((name, frozenset(labels.items())))


def names(registry: CollectorRegistry, name: str) -> list[dict[str, str]]:
    """The label sets of every sample called ``name``."""
    return [dict(labels) for (sample, labels) in samples(registry) if sample == name]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> ControllerMetrics:
    return ControllerMetrics(registry, ACTIONS)


# --- ControllerMetrics --------------------------------------------------------------------------


def test_api_requests_are_counted_by_service_action_and_status(
    registry: CollectorRegistry, metrics: ControllerMetrics
) -> None:
    metrics.api_request("iam", "GetRole", 200, 0.002)
    metrics.api_request("iam", "GetRole", 200, 0.003)
    metrics.api_request("iam", "GetRole", 404, 0.001)
    total = "rolecall_api_requests_total"
    assert value(registry, total, service="iam", action="GetRole", status="200") == 2
    assert value(registry, total, service="iam", action="GetRole", status="404") == 1


def test_an_action_the_api_does_not_serve_is_recorded_as_unknown(
    registry: CollectorRegistry, metrics: ControllerMetrics
) -> None:
    for number in range(50):
        metrics.api_request("iam", f"Invented{number}", 400, 0.001)
    metrics.api_request("sts", "GetRole", 400, 0.001)  # a real action, of another service
    assert names(registry, "rolecall_api_requests_total") == [
        {"service": "iam", "action": "unknown", "status": "400"},
        {"service": "sts", "action": "unknown", "status": "400"},
    ]
    total = "rolecall_api_requests_total"
    assert value(registry, total, service="iam", action="unknown", status="400") == 50


def test_a_request_refused_before_its_service_and_action_were_known_is_labelled_dash(
    registry: CollectorRegistry, metrics: ControllerMetrics
) -> None:
    metrics.api_request(None, None, 403, 0.0)
    metrics.api_request("s3", None, 400, 0.0)  # a service the endpoint does not serve
    assert names(registry, "rolecall_api_requests_total") == [
        {"service": "-", "action": "-", "status": "403"},
        {"service": "-", "action": "-", "status": "400"},
    ]


def test_request_durations_fill_the_histogram_of_their_service(
    registry: CollectorRegistry, metrics: ControllerMetrics
) -> None:
    metrics.api_request("iam", "GetRole", 200, 0.0004)
    metrics.api_request("iam", "GetRole", 200, 0.003)
    metrics.api_request("iam", "GetRole", 200, 2.0)
    histogram = "rolecall_api_request_duration_seconds"
    assert value(registry, f"{histogram}_count", service="iam") == 3
    assert value(registry, f"{histogram}_sum", service="iam") == pytest.approx(2.0034)
    assert value(registry, f"{histogram}_bucket", service="iam", le="0.0005") == 1
    assert value(registry, f"{histogram}_bucket", service="iam", le="0.005") == 2
    assert value(registry, f"{histogram}_bucket", service="iam", le="1.0") == 2
    assert value(registry, f"{histogram}_bucket", service="iam", le="+Inf") == 3


def test_authentication_failures_are_counted_by_reason_and_start_at_zero(
    registry: CollectorRegistry, metrics: ControllerMetrics
) -> None:
    failures = "rolecall_api_authentication_failures_total"
    assert value(registry, failures, reason="ExpiredToken") == 0
    metrics.authentication_failed("SignatureDoesNotMatch")
    metrics.authentication_failed("SignatureDoesNotMatch")
    metrics.authentication_failed("SomethingElse")
    assert value(registry, failures, reason="SignatureDoesNotMatch") == 2
    assert value(registry, failures, reason="other") == 1
    assert value(registry, failures, reason="SomethingElse") is None


def test_credentials_issued_are_counted_by_kind_and_start_at_zero(
    registry: CollectorRegistry, metrics: ControllerMetrics
) -> None:
    issued = "rolecall_credentials_issued_total"
    for kind in ("federation", "assume-role", "session", "instance"):
        assert value(registry, issued, kind=kind) == 0
    metrics.credentials_issued("instance")
    metrics.credentials_issued("assume-role")
    metrics.credentials_issued("instance")
    assert value(registry, issued, kind="instance") == 2
    assert value(registry, issued, kind="assume-role") == 1


def test_node_api_requests_and_audit_failures_are_counted(
    registry: CollectorRegistry, metrics: ControllerMetrics
) -> None:
    metrics.node_api_request("credentials", 503)
    metrics.node_api_request("/v1/whatever", 404)
    metrics.audit_log_write_failed()
    requests = "rolecall_node_api_requests_total"
    assert value(registry, requests, endpoint="credentials", status="503") == 1
    assert value(registry, requests, endpoint="other", status="404") == 1
    assert value(registry, "rolecall_audit_log_write_failures_total") == 1


def test_metrics_stay_off_the_global_registry(metrics: ControllerMetrics) -> None:
    metrics.api_request("iam", "GetRole", 200, 0.001)
    assert REGISTRY.get_sample_value("rolecall_api_requests_total") is None
    assert not any(name.startswith("rolecall_") for name in REGISTRY._names_to_collectors)


def test_long_polls_waiting_follows_the_hub(
    registry: CollectorRegistry, metrics: ControllerMetrics
) -> None:
    clock = Clock()
    hub = AssignmentHub(clock)
    metrics.watch_long_polls(hub.waiting)
    assert value(registry, "rolecall_node_long_polls_waiting") == 0
    hub.wait("hv-1", 30)
    hub.wait("hv-2", 60)
    assert value(registry, "rolecall_node_long_polls_waiting") == 2
    clock.advance(30)
    assert value(registry, "rolecall_node_long_polls_waiting") == 1
    hub.changed("hv-2")
    assert value(registry, "rolecall_node_long_polls_waiting") == 0
    assert clock.getDelayedCalls() == []


# --- node last contact --------------------------------------------------------------------------


@dataclass
class FakeStore:
    """Just enough of a Store for the readers here: nodes, or a failure."""

    nodes: list[Node] = field(default_factory=list)
    failure: Exception | None = None
    transactions: int = 0

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        self.transactions += 1
        if self.failure is not None:
            raise self.failure
        yield self

    def run(self, work: Any) -> Any:
        with self.transaction() as tx:
            return work(tx)

    def list_nodes(self) -> list[Node]:
        return list(self.nodes)

    def list_accounts(self) -> list[Any]:
        return []


def node(name: str, last_contact: str | None, retired: str | None = None) -> Node:
    return Node(name, "01", "2024-05-01T00:00:00Z", retired, last_contact, 1)


def test_last_contact_is_seconds_since_each_node_called_read_at_scrape_time(
    registry: CollectorRegistry, metrics: ControllerMetrics
) -> None:
    clock = Clock()
    clock.advance(NOW)
    store = FakeStore([node("hv-1", "2024-05-01T11:59:50Z"), node("hv-2", "2024-05-01T11:00:00Z")])
    metrics.watch_nodes(store, clock)  # type: ignore[arg-type]
    gauge = "rolecall_node_last_contact_seconds"
    assert value(registry, gauge, node="hv-1") == 10
    assert value(registry, gauge, node="hv-2") == 3600
    clock.advance(5)
    store.nodes.append(node("hv-3", "2024-05-01T12:00:04Z"))
    assert value(registry, gauge, node="hv-1") == 15
    assert value(registry, gauge, node="hv-3") == 1


def test_last_contact_leaves_out_retired_and_never_seen_nodes(
    registry: CollectorRegistry, metrics: ControllerMetrics
) -> None:
    clock = Clock()
    clock.advance(NOW)
    store = FakeStore(
        [
            node("hv-1", "2024-05-01T11:59:00Z"),
            node("hv-new", None),
            node("hv-old", "2024-04-01T00:00:00Z", retired="2024-04-02T00:00:00Z"),
        ]
    )
    metrics.watch_nodes(store, clock)  # type: ignore[arg-type]
    assert names(registry, "rolecall_node_last_contact_seconds") == [{"node": "hv-1"}]


def test_registering_the_last_contact_collector_does_not_read_the_store(
    metrics: ControllerMetrics,
) -> None:
    store = FakeStore([node("hv-1", "2024-05-01T11:59:00Z")])
    metrics.watch_nodes(store, Clock())  # type: ignore[arg-type]
    assert store.transactions == 0


def test_a_scrape_while_the_store_fails_still_shows_the_other_metrics(
    registry: CollectorRegistry, metrics: ControllerMetrics
) -> None:
    store = FakeStore(failure=StoreError("the SQLite store is unavailable: locked"))
    metrics.watch_nodes(store, Clock())  # type: ignore[arg-type]
    metrics.credentials_issued("instance")
    assert names(registry, "rolecall_node_last_contact_seconds") == []
    assert value(registry, "rolecall_credentials_issued_total", kind="instance") == 1


# --- the public API records its requests ---------------------------------------------------------


@pytest.fixture
def api(tmp_path: Path, registry: CollectorRegistry) -> Iterator[tuple[PublicApi, Any]]:
    """An PublicApi on a real in-memory store with a root key, and that key."""
    store = SQLiteStore(":memory:")
    with store.transaction() as tx:
        root_key = ensure_first_account(tx, "111122223333", "test", "2024-05-01T00:00:00Z").root_key
    now = datetime.fromtimestamp(NOW, UTC)
    ensure_key_ring(tmp_path / "token-keys.json", now)
    sessions = Sessions(KeyRingFile(tmp_path / "token-keys.json"))
    actions = api_registry()
    clock = Clock()
    clock.advance(NOW)
    metrics = ControllerMetrics(registry, ((action.service, action.name) for action in actions))
    try:
        yield PublicApi(store, actions, clock, sessions, metrics=metrics), root_key
    finally:
        store.close()


def call(
    resource: PublicApi,
    params: dict[str, str],
    *,
    service: str | None = None,
    key: Any = None,
    secret: str | None = None,
) -> tuple[int, bytes]:
    """A form-encoded POST, signed for ``service`` with ``key`` unless ``service`` is None."""
    body = urlencode(params).encode("ascii")
    signed = sigv4.HttpRequest(
        "POST",
        "/",
        "",
        (("Host", "localhost"), ("Content-Type", "application/x-www-form-urlencoded")),
        body,
    )
    if service is not None:
        signed = sigv4.sign(
            signed,
            access_key_id=key.access_key_id,
            secret_access_key=secret or key.secret_access_key,
            region="us-east-1",
            service=service,
            now=datetime.fromtimestamp(NOW, UTC),
        )
    request = Request(
        b"POST",
        b"/",
        b"HTTP/1.1",
        [(name.encode(), header.encode()) for name, header in signed.headers],
        body,
        IPv4Address("TCP", "127.0.0.1", 40000),
        IPv4Address("TCP", "127.0.0.1", 8773),
        False,
    )
    answer = resource.answer(request)
    return answer.status, answer.body


def test_the_api_counts_an_unsigned_request_as_a_missing_token(
    api: tuple[PublicApi, Any], registry: CollectorRegistry
) -> None:
    resource, _ = api
    status, _ = call(resource, {"Action": "ListRoles", "Version": "2010-05-08"})
    assert status == 403
    assert names(registry, "rolecall_api_requests_total") == [
        {"service": "-", "action": "-", "status": "403"}
    ]
    failures = "rolecall_api_authentication_failures_total"
    assert value(registry, failures, reason="MissingAuthenticationToken") == 1
    assert value(registry, "rolecall_api_request_duration_seconds_count", service="-") == 1


def test_the_api_counts_an_ec2_auth_failure_by_its_aws_code_not_auth_failure(
    api: tuple[PublicApi, Any], registry: CollectorRegistry
) -> None:
    resource, key = api
    status, body = call(
        resource,
        {"Action": "DescribeInstances", "Version": "2016-11-15"},
        service="ec2",
        key=key,
        secret="not-the-secret",
    )
    assert status == 401
    assert b"AuthFailure" in body
    failures = "rolecall_api_authentication_failures_total"
    assert value(registry, failures, reason="SignatureDoesNotMatch") == 1


def test_the_api_counts_a_served_action_by_name_and_an_invented_one_as_unknown(
    api: tuple[PublicApi, Any], registry: CollectorRegistry
) -> None:
    resource, key = api
    ok, _ = call(resource, {"Action": "ListRoles", "Version": "2010-05-08"}, service="iam", key=key)
    bad, _ = call(resource, {"Action": "Hack1", "Version": "2010-05-08"}, service="iam", key=key)
    assert (ok, bad) == (200, 400)
    total = "rolecall_api_requests_total"
    assert value(registry, total, service="iam", action="ListRoles", status="200") == 1
    assert value(registry, total, service="iam", action="unknown", status="400") == 1
    assert value(registry, total, service="iam", action="Hack1", status="400") is None


def test_the_api_counts_credentials_an_sts_call_issued(
    api: tuple[PublicApi, Any], registry: CollectorRegistry
) -> None:
    resource, key = api
    status, _ = call(
        resource,
        {"Action": "GetFederationToken", "Version": "2011-06-15", "Name": "alice"},
        service="sts",
        key=key,
    )
    assert status == 200
    assert value(registry, "rolecall_credentials_issued_total", kind="federation") == 1
    assert value(registry, "rolecall_credentials_issued_total", kind="session") == 0


# --- the health listener ------------------------------------------------------------------------


@dataclass
class Page:
    status: int
    content_type: str
    text: str


def get(pages: HealthPages, path: str, accept: str | None = None) -> Page:
    headers = [(b"Host", b"localhost")]
    if accept is not None:
        headers.append((b"Accept", accept.encode()))
    request = Request(
        b"GET",
        path.encode(),
        b"HTTP/1.1",
        headers,
        b"",
        IPv4Address("TCP", "127.0.0.1", 40000),
        IPv4Address("TCP", "127.0.0.1", 9773),
        False,
    )
    answer = pages.answer(request)
    content_type = dict(answer.headers).get(b"Content-Type", b"").decode()
    return Page(answer.status, content_type, answer.body.decode("utf-8"))


@pytest.fixture
def key_ring(tmp_path: Path) -> Any:
    return ensure_key_ring(tmp_path / "token-keys.json", datetime.fromtimestamp(NOW, UTC))


def test_metrics_page_is_the_registrys_exposition(
    registry: CollectorRegistry, metrics: ControllerMetrics, key_ring: Any
) -> None:
    metrics.credentials_issued("session")
    page = get(health_pages(registry, FakeStore(), lambda: key_ring), "/metrics")
    assert page.status == 200
    assert page.content_type.startswith("text/plain; version=")
    families = {family.name: family for family in text_string_to_metric_families(page.text)}
    issued = families["rolecall_credentials_issued"]
    assert issued.type == "counter"
    assert any(s.labels == {"kind": "session"} and s.value == 1 for s in issued.samples)


def test_metrics_page_speaks_openmetrics_to_a_scraper_that_asks_for_it(
    registry: CollectorRegistry, metrics: ControllerMetrics, key_ring: Any
) -> None:
    metrics.credentials_issued("session")
    root = health_pages(registry, FakeStore(), lambda: key_ring)
    page = get(root, "/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert page.content_type.startswith("application/openmetrics-text")
    assert page.text.endswith("# EOF\n")
    assert 'rolecall_credentials_issued_total{kind="session"} 1.0' in page.text


def test_healthz_answers_ok_even_when_the_store_fails(
    registry: CollectorRegistry, key_ring: Any
) -> None:
    store = FakeStore(failure=StoreError("unavailable"))
    page = get(health_pages(registry, store, lambda: key_ring), "/healthz")
    assert (page.status, page.text) == (200, "ok\n")


def test_readyz_answers_200_when_the_store_answers_and_a_key_is_loaded(
    registry: CollectorRegistry, key_ring: Any
) -> None:
    page = get(health_pages(registry, FakeStore(), lambda: key_ring), "/readyz")
    assert (page.status, page.text) == (200, "ready\n")


def test_readyz_answers_503_with_the_reason_when_the_store_raises(
    registry: CollectorRegistry, key_ring: Any
) -> None:
    store = FakeStore(failure=StoreError("the SQLite store is unavailable: disk I/O error"))
    page = get(health_pages(registry, store, lambda: key_ring), "/readyz")
    assert page.status == 503
    assert page.text == "store unreachable: the SQLite store is unavailable: disk I/O error\n"


def test_readyz_answers_503_when_the_store_driver_raises_something_else(
    registry: CollectorRegistry, key_ring: Any
) -> None:
    store = FakeStore(failure=OSError("connection reset"))
    page = get(health_pages(registry, store, lambda: key_ring), "/readyz")
    assert page.status == 503
    assert page.text.startswith("store unreachable: OSError")


def test_readyz_answers_503_when_no_key_ring_is_loaded(registry: CollectorRegistry) -> None:
    page = get(health_pages(registry, FakeStore(), lambda: None), "/readyz")
    assert (page.status, page.text) == (503, "no active token key loaded\n")
    assert "\n" not in page.text.rstrip("\n")


def test_other_paths_are_404(registry: CollectorRegistry, key_ring: Any) -> None:
    root = health_pages(registry, FakeStore(), lambda: key_ring)
    assert get(root, "/secrets").status == 404
    assert get(root, "/").status == 404


def test_the_registry_shows_the_process_and_python_and_no_created_series() -> None:
    enable_created_metrics()  # as a fresh process starts: another test may have switched it off
    registry = CollectorRegistry()
    metrics = ControllerMetrics(registry, ACTIONS)
    metrics.api_request("iam", "GetRole", 200, 0.002)
    metrics.audit_log_write_failed()
    seen = {sample for (sample, _) in samples(registry)}
    assert {"process_cpu_seconds_total", "process_start_time_seconds", "python_info"} <= seen
    assert "process_resident_memory_bytes" in seen
    assert not [name for name in seen if name.endswith("_created")]


def test_a_query_string_does_not_change_the_page(
    registry: CollectorRegistry, key_ring: Any
) -> None:
    pages = health_pages(registry, FakeStore(), lambda: key_ring)
    assert (get(pages, "/healthz?probe=1").status, get(pages, "/healthz/").status) == (200, 404)


# --- the health listener on its protocol --------------------------------------------------------


def exchange(registry: CollectorRegistry, key_ring: Any, data: bytes) -> tuple[bytes, bool]:
    """What the listener writes back to ``data`` on one connection, and whether it hung up."""
    clock = Clock()
    clock.advance(NOW)
    factory = health_factory(registry, readiness(FakeStore(), lambda: key_ring), clock)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(transport)
    try:
        protocol.dataReceived(data)
    finally:
        protocol.connectionLost(Failure(ConnectionError("closed by the test")))
    assert clock.getDelayedCalls() == []
    return transport.value(), transport.disconnecting


def test_head_gets_the_headers_of_get_without_the_body(
    registry: CollectorRegistry, key_ring: Any
) -> None:
    written, _ = exchange(registry, key_ring, b"HEAD /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = written.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    assert status == "HTTP/1.1 200 OK"
    assert headers["Content-Length"] == "6"  # "ready\n", as GET would have it
    assert headers["Server"].startswith("TwistedWeb/") and "Date" in headers
    assert body == b""


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"OPTIONS"])
def test_other_methods_are_405_with_allow(
    registry: CollectorRegistry, key_ring: Any, method: bytes
) -> None:
    written, hung_up = exchange(
        registry, key_ring, method + b" /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    assert written.startswith(b"HTTP/1.1 405 ")
    assert b"\r\nAllow: GET, HEAD\r\n" in written
    assert not hung_up


def test_a_body_over_a_kib_is_refused_413_before_it_is_sent(
    registry: CollectorRegistry, key_ring: Any
) -> None:
    written, hung_up = exchange(
        registry, key_ring, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1025\r\n\r\n"
    )
    assert written.startswith(b"HTTP/1.1 413 ")
    assert written.endswith(b"a request body is at most 1024 bytes here\n")
    assert hung_up
