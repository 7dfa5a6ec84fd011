"""The controller's Prometheus metrics, on a registry the caller owns (never the global one).

Every label value comes from a fixed set, so that no request can grow a time series: an action
name the API does not serve is recorded as ``unknown``, an unexpected reason or kind as ``other``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from common.http11 import ConnectionLimit
from common.metrics import register_standard_collectors
from controller.store.base import Store, StoreError

log = Logger(namespace="rolecall.metrics")

#: The AWS error codes that mean a request could not be authenticated.
AUTHENTICATION_FAILURE_REASONS = (
    "MissingAuthenticationToken",
    "IncompleteSignature",
    "SignatureDoesNotMatch",
    "InvalidClientTokenId",
    "ExpiredToken",
    "RequestExpired",
)
#: What temporary credentials were issued for: GetFederationToken, AssumeRole, GetSessionToken,
#: and an instance's role (node API).
CREDENTIAL_KINDS = ("federation", "assume-role", "session", "instance")
NODE_API_ENDPOINTS = ("assignments", "credentials", "other")
#: From a cached refusal (half a millisecond) to a slow policy simulation (a second).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
#: The label value when a request ended before its service or action was known.
NOT_KNOWN = "-"
UNKNOWN_ACTION = "unknown"
OTHER = "other"


#: Label sets of API requests whose metric children are kept bound.
_BOUND_CHILDREN = 4096


class ControllerMetrics:
    """The controller's counters, histogram and gauges, registered on ``registry``.

    ``actions`` are the (service, action) pairs the public API serves: only those become label
    values. ``standard`` adds :func:`register_standard_collectors` (off only where another
    daemon's metrics share the registry, as in tests).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        actions: Iterable[tuple[str, str]] = (),
        *,
        standard: bool = True,
    ) -> None:
        self.registry = registry
        if standard:
            register_standard_collectors(registry)
        self._actions = frozenset(actions)
        self._services = frozenset(service for service, _ in self._actions)
        self._api_requests = Counter(
            "rolecall_api_requests_total",
            "Public API requests answered, by service, action and HTTP status.",
            ("service", "action", "status"),
            registry=registry,
        )
        self._api_duration = Histogram(
            "rolecall_api_request_duration_seconds",
            "Time to answer a public API request, by service.",
            ("service",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._authentication_failures = Counter(
            "rolecall_api_authentication_failures_total",
            "Public API requests refused because they could not be authenticated, by AWS code.",
            ("reason",),
            registry=registry,
        )
        self._credentials_issued = Counter(
            "rolecall_credentials_issued_total",
            "Temporary credentials issued, by kind.",
            ("kind",),
            registry=registry,
        )
        self._node_api_requests = Counter(
            "rolecall_node_api_requests_total",
            "Node API requests answered, by endpoint and HTTP status.",
            ("endpoint", "status"),
            registry=registry,
        )
        self._audit_failures = Counter(
            "rolecall_audit_log_write_failures_total",
            "Audit log records that could not be written (their credentials were refused).",
            registry=registry,
        )
        self._long_polls_waiting = Gauge(
            "rolecall_node_long_polls_waiting",
            "Node assignment long polls waiting for a change now.",
            registry=registry,
        )
        self._api_children: dict[tuple[str | None, str | None, int], tuple[Any, Any]] = {}
        # Present from the start, so that rate() and alerts see the first increment.
        for reason in AUTHENTICATION_FAILURE_REASONS:
            self._authentication_failures.labels(reason)
        #: Bound once: `labels()` costs more than `inc()`, and this runs for every issue.
        self._issued_by = {kind: self._credentials_issued.labels(kind) for kind in CREDENTIAL_KINDS}

    def api_request(
        self, service: str | None, action: str | None, status: int, seconds: float
    ) -> None:
        """One public API request answered with ``status`` after ``seconds``."""
        key = (service, action, status)
        children = self._api_children.get(key)
        if children is None:  # bound once per label set: `labels()` costs more than `inc()`
            service_label = service if service in self._services else NOT_KNOWN
            if action is None:
                action_label = NOT_KNOWN
            elif (service, action) in self._actions:
                action_label = action
            else:
                action_label = UNKNOWN_ACTION
            children = (
                self._api_requests.labels(service_label, action_label, str(status)),
                self._api_duration.labels(service_label),
            )
            if len(self._api_children) < _BOUND_CHILDREN:  # unknown actions are callers' text
                self._api_children[key] = children
        children[0].inc()
        children[1].observe(max(seconds, 0.0))

    def authentication_failed(self, reason: str) -> None:
        """A request refused with one of :data:`AUTHENTICATION_FAILURE_REASONS`."""
        self._authentication_failures.labels(
            reason if reason in AUTHENTICATION_FAILURE_REASONS else OTHER
        ).inc()

    def credentials_issued(self, kind: str) -> None:
        """Temporary credentials of one of :data:`CREDENTIAL_KINDS` were handed out."""
        child = self._issued_by.get(kind)
        if child is None:
            child = self._credentials_issued.labels(OTHER)
        child.inc()

    def node_api_request(self, endpoint: str, status: int) -> None:
        """One node API request answered with ``status``."""
        endpoint_label = endpoint if endpoint in NODE_API_ENDPOINTS else OTHER
        self._node_api_requests.labels(endpoint_label, str(status)).inc()

    def audit_log_write_failed(self) -> None:
        self._audit_failures.inc()

    def watch_long_polls(self, waiting: Callable[[], int]) -> None:
        """Report ``waiting()`` (the assignment hub's count) at each scrape."""
        self._long_polls_waiting.set_function(waiting)

    def watch_last_used(self, waiting: Callable[[], int]) -> None:
        """Report ``waiting()`` (roles whose last use is not written yet) at each scrape."""
        gauge = Gauge(
            "rolecall_role_last_used_pending",
            "Roles whose last use (RoleLastUsed) waits in memory to be written.",
            registry=self.registry,
        )
        gauge.set_function(waiting)

    def watch_connections(self, limit: ConnectionLimit) -> None:
        """The public port's connections against its limit, read at each scrape."""
        self.registry.register(ConnectionLimitCollector(limit))

    def database_listener(self) -> Callable[[bool], None]:
        """The gauge of a controller on PostgreSQL whose LISTEN connection (long polls woken
        across controllers, key ring changes) is up or down; what sets it."""
        gauge = Gauge(
            "rolecall_database_listener_connected",
            "1 while this controller listens for changes other controllers make (PostgreSQL"
            " LISTEN/NOTIFY), 0 while it reconnects.",
            registry=self.registry,
        )
        gauge.set(0)
        return lambda connected: gauge.set(1 if connected else 0)

    def watch_nodes(self, store: Store, clock: IReactorTime) -> None:
        """Report each enrolled node's time since its last contact, read at each scrape."""
        self.registry.register(NodeContactCollector(store, clock))


class ConnectionLimitCollector:
    """The public API port's open connections, its limit, how often the limit paused accepting
    and how many connections it closed unserved."""

    def __init__(self, limit: ConnectionLimit) -> None:
        self._limit = limit

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        limit = self._limit
        yield GaugeMetricFamily(
            "rolecall_api_connections", "Connections open on the public API port.", limit.open
        )
        yield GaugeMetricFamily(
            "rolecall_api_connections_limit",
            "The most connections the public API port holds at once (api.max_connections).",
            limit.limit,
        )
        yield CounterMetricFamily(
            "rolecall_api_connection_limit_reached",
            "Times the public API port reached its limit and stopped accepting for a while.",
            limit.pauses,
        )
        yield CounterMetricFamily(
            "rolecall_api_connections_refused",
            "Connections closed unserved because the public API port was at its limit.",
            limit.refused,
        )


class NodeContactCollector:
    """``rolecall_node_last_contact_seconds{node}``, read from the store when scraped: nodes
    come and go, and the time since a contact grows between scrapes without anyone writing."""

    NAME = "rolecall_node_last_contact_seconds"
    DOCUMENTATION = "Seconds since each enrolled node last called the node API."

    def __init__(self, store: Store, clock: IReactorTime) -> None:
        self._store = store
        self._clock = clock

    def describe(self) -> Iterator[Metric]:
        # Registration asks for names only: the store is not read until a scrape.
        yield GaugeMetricFamily(self.NAME, self.DOCUMENTATION, labels=("node",))

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.NAME, self.DOCUMENTATION, labels=("node",))
        try:
            nodes = self._store.run(lambda tx: tx.list_nodes())
        except StoreError as error:
            # A scrape must still show the other metrics; the gap in this one is the signal.
            log.error("cannot read the nodes for metrics: {error}", error=str(error))
            nodes = []
        except Exception:  # a collector that raises fails the whole scrape
            log.failure("cannot read the nodes for metrics")
            nodes = []
        now = self._clock.seconds()
        for node in nodes:
            if node.retired is not None or node.last_contact is None:
                continue
            try:
                contact = datetime.fromisoformat(node.last_contact).timestamp()
            except ValueError:
                continue
            # Another replica's clock may run a little ahead of this one's.
            family.add_metric((node.name,), max(now - contact, 0.0))
        yield family
