"""The agent's Prometheus metrics, on an injected registry, and its health resources."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from agent.failover import FAILOVER_REASONS
from agent.imds.passthrough import OUTCOMES
from agent.imds.rules import ImdsResponse
from agent.rotation import EXPIRING_ON_ARRIVAL, MALFORMED, State
from common.metrics import register_standard_collectors

if TYPE_CHECKING:
    from agent.client import NodeApiClient
    from agent.reconcile import NodeAgent
    from agent.upstream import Upstream

PROXY_REASONS = frozenset({"proxy-header", "absolute-target", "bad-host"})


def path_class(path: str) -> str:
    """A bounded label for a request path."""
    if path == "/latest/api/token":
        return "token"
    if "/iam/security-credentials" in path:
        return "credentials"
    if "/iam/" in path or path.endswith("/iam"):
        return "iam"
    if path.startswith("/latest/dynamic/"):
        return "dynamic"
    if path.startswith("/latest/meta-data"):
        return "meta-data"
    return "other"


#: Upper bounds of the metadata request latency histogram, in seconds.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25)


class AgentMetrics:
    """Every agent metric. What each guest request counts is tallied in plain integers on the
    request path (`observe`, a few dictionary and list updates) and turned into metric families
    only when Prometheus scrapes (`_ImdsCollector`): prometheus_client's own counters and
    histograms take a lock and do more per update than the answer they count."""

    def __init__(
        self, registry: CollectorRegistry, agent: NodeAgent, *, standard: bool = True
    ) -> None:
        self.registry = registry
        if standard:  # process_* and python_info, and no _created series
            register_standard_collectors(registry)
        self._agent = agent
        #: Answers by (path class, status).
        self.requests: dict[tuple[str, int], int] = {}
        #: Request latency: counts per bucket of `LATENCY_BUCKETS` (the last is +Inf), and sum.
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        #: Refusals of proxied requests, by reason.
        self.proxied: dict[str, int] = {}
        self.rate_limited = 0
        self.tokens = 0
        #: Credential documents served, by the freshness of their set.
        self.served = {"fresh": 0, "stale": 0}
        self._kinds: dict[str, str] = {}
        registry.register(_ImdsCollector(self))
        self.controller_latency = Histogram(
            "rolecall_agent_controller_call_duration_seconds",
            "Node API calls, by endpoint.",
            ["endpoint"],
            buckets=CONTROLLER_CALL_BUCKETS,
            registry=registry,
        )
        for endpoint in NODE_API_ENDPOINTS:  # present from the start
            self.controller_latency.labels(endpoint)
        Gauge(
            "rolecall_agent_instances", "Instances this agent serves.", registry=registry
        ).set_function(lambda: len(agent.slots))
        Gauge(
            "rolecall_agent_credentials_earliest_expiry_seconds",
            "Seconds until the earliest Expiration of the credentials of the instances with a"
            " profile; 0 when one has none to serve (never obtained, or dropped near expiry);"
            " NaN only when no instance has a profile.",
            registry=registry,
        ).set_function(self._earliest_expiry)
        Gauge(
            "rolecall_agent_instances_without_credentials",
            "Instances with a profile whose guests get no credentials now (as /readyz counts).",
            registry=registry,
        ).set_function(lambda: len(agent.without_credentials()))
        registry.register(_RefreshCollector(agent))
        registry.register(_PollCollector(agent))

    def _earliest_expiry(self) -> float:
        # An instance whose credentials were dropped (or never came) counts as 0 seconds left,
        # never as absent: NaN would end the expiry alerts at the moment guests lose them.
        remaining = [
            max(seconds, 0.0) if (seconds := keeper.seconds_until_expiry()) is not None else 0.0
            for keeper in self._agent.credentials
        ]
        return min(remaining) if remaining else float("nan")

    def observe(self, instance_id: str, path: str, answer: ImdsResponse, seconds: float) -> None:
        kind = self._kinds.get(path)
        if kind is None:
            kind = path_class(path)
            if len(self._kinds) < _KNOWN_PATHS:  # guests choose paths: remember a bounded few
                self._kinds[path] = kind
        status = answer.status
        key = (kind, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        self.latency_buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        reason = answer.reason
        if reason in PROXY_REASONS:
            self.proxied[reason] = self.proxied.get(reason, 0) + 1
        elif reason == "rate-limited":
            self.rate_limited += 1
        elif status == 200:
            if kind == "token":
                self.tokens += 1
            elif kind == "credentials":
                slot = self._agent.slots.get(instance_id)
                keeper = slot.credentials if slot is not None else None
                fresh = keeper is not None and keeper.state is State.FRESH
                self.served["fresh" if fresh else "stale"] += 1


_KNOWN_PATHS = 1024
#: Node API endpoints the agent calls.
NODE_API_ENDPOINTS = ("assignments", "credentials")
#: Node API call durations: a credential fetch takes milliseconds, an assignments long poll
#: up to [controller] long_poll_seconds (60 by default, 300 at most) plus the call's timeout.
CONTROLLER_CALL_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 90.0, 120.0, 180.0, 240.0, 320.0,
)  # fmt: skip
#: Refresh failure reasons shown at 0 from the start, so that alerts see their first increase
#: (others, such as NodeApiError:STATUS, appear when they first happen).
BASELINE_REFRESH_FAILURES = (
    "ControllerUnreachable",
    "FetchTimeout",
    MALFORMED,
    EXPIRING_ON_ARRIVAL,
)


class _ImdsCollector:
    """The metadata service's tallies as Prometheus metric families, at scrape time."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        metrics = self._metrics
        requests = CounterMetricFamily(
            "rolecall_agent_imds_requests",
            "Metadata requests answered, by path class and status.",
            labels=["path", "status"],
        )
        for (kind, status), count in sorted(metrics.requests.items()):
            requests.add_metric([kind, str(status)], count)
        yield requests
        cumulative, buckets = 0, []
        for bound, count in zip((*LATENCY_BUCKETS, math.inf), metrics.latency_buckets, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        yield HistogramMetricFamily(
            "rolecall_agent_imds_request_duration_seconds",
            "Time to answer a metadata request.",
            buckets=buckets,
            sum_value=metrics.latency_sum,
        )
        proxied = CounterMetricFamily(
            "rolecall_agent_imds_proxied_refused",
            "Requests refused because they came through a proxy (X-Forwarded-For, Forwarded,"
            " Via, an absolute target or a foreign Host).",
            labels=["reason"],
        )
        for reason in sorted(PROXY_REASONS | metrics.proxied.keys()):  # every reason from 0
            proxied.add_metric([reason], metrics.proxied.get(reason, 0))
        yield proxied
        yield CounterMetricFamily(
            "rolecall_agent_imds_rate_limited",
            "Requests refused with 503 by an instance's rate limit.",
            value=metrics.rate_limited,
        )
        yield CounterMetricFamily(
            "rolecall_agent_imds_tokens_issued",
            "IMDSv2 session tokens issued.",
            value=metrics.tokens,
        )
        served = CounterMetricFamily(
            "rolecall_agent_credentials_served",
            "Credential documents served to guests, by the state of their set.",
            labels=["freshness"],
        )
        for freshness, count in metrics.served.items():
            served.add_metric([freshness], count)
        yield served


class UpstreamCollector:
    """Requests forwarded to the upstream metadata service, by how they ended (each outcome
    present from 0)."""

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream

    def collect(self) -> Iterator[Any]:
        forwarded = CounterMetricFamily(
            "rolecall_agent_imds_upstream_requests",
            "Metadata requests forwarded to the upstream metadata service, by outcome"
            " (answered: a 2xx passed back; not-found; refused: another 4xx passed back;"
            " redirect, error (5xx), unreachable, too-large: 502; timeout: 504; cancelled:"
            " the guest hung up first).",
            labels=["outcome"],
        )
        outcomes = self._upstream.outcomes
        for outcome in OUTCOMES:
            forwarded.add_metric([outcome], outcomes.get(outcome, 0))
        yield forwarded


class _RefreshCollector:
    """Refresh attempts and failures by reason, summed over the instances' credential keepers."""

    def __init__(self, agent: NodeAgent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[Any]:
        attempts = CounterMetricFamily(
            "rolecall_agent_credential_refresh_attempts", "Credential fetches started."
        )
        failures = CounterMetricFamily(
            "rolecall_agent_credential_refresh_failures",
            "Credential fetches that failed, by reason.",
            labels=["reason"],
        )
        total = 0
        by_reason = dict.fromkeys(BASELINE_REFRESH_FAILURES, 0)
        for keeper in self._agent.credentials:
            total += keeper.attempts
            for reason, count in keeper.failures.items():
                by_reason[reason] = by_reason.get(reason, 0) + count
        attempts.add_metric([], total)
        for reason, count in sorted(by_reason.items()):
            failures.add_metric([reason], count)
        yield attempts
        yield failures


class _PollCollector:
    """The assignments long poll: failures by reason (every reason present from the start, so
    that the first failure is an increase) and when the controller last answered."""

    def __init__(self, agent: NodeAgent) -> None:
        self._agent = agent

    def collect(self) -> Iterator[Any]:
        failures = CounterMetricFamily(
            "rolecall_agent_node_api_poll_failures",
            "Assignments polls of the node API that failed, by reason (unreachable: no"
            " controller URL answered; refused: an HTTP error; malformed: not JSON; other).",
            labels=["reason"],
        )
        for reason, count in self._agent.poll_failures_by_reason.items():
            failures.add_metric([reason], count)
        yield failures
        last = self._agent.last_poll_success
        yield GaugeMetricFamily(
            "rolecall_agent_node_api_poll_last_success_timestamp_seconds",
            "When the controller last answered an assignments poll (Unix time; 0: never since"
            " the agent started).",
            value=last if last is not None else 0.0,
        )


class FailoverCollector:
    """Which controller URL the agent uses now, and the failovers so far by reason (each
    reason present from 0, so that the first failover is an increase)."""

    def __init__(self, client: NodeApiClient) -> None:
        self._client = client

    def collect(self) -> Iterator[Any]:
        in_use = GaugeMetricFamily(
            "rolecall_agent_node_api_controller_in_use",
            "1 for the controller URL the agent's node API calls start at now, 0 for the other"
            " URLs configured.",
            labels=["url"],
        )
        current = self._client.current
        for url in self._client.urls:
            in_use.add_metric([url], 1.0 if url == current else 0.0)
        yield in_use
        failovers = CounterMetricFamily(
            "rolecall_agent_node_api_failovers",
            "Times the agent moved to another controller URL, by why it left the one it used"
            " (unreachable: connection refused, reset or TLS failure; timeout: no connection or"
            " no answer within its bound; refused: a 5xx, or a 403 for a node it does not know,"
            " while another controller answered).",
            labels=["reason"],
        )
        counts = self._client.failovers
        for reason in FAILOVER_REASONS:
            failovers.add_metric([reason], counts.get(reason, 0))
        yield failovers
