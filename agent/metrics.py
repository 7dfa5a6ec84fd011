"""The agent's Prometheus metrics, on an injected registry, and its health resources."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.web import server
from twisted.web.resource import Resource

from agent.imds.rules import ImdsResponse

if TYPE_CHECKING:
    from agent.service import NodeAgent

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


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry, agent: NodeAgent) -> None:
        self.registry = registry
        self._agent = agent
        self.requests = Counter(
            "rolecall_agent_imds_requests",
            "Metadata requests answered, by path class and status.",
            ["path", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "rolecall_agent_imds_request_duration_seconds",
            "Time to answer a metadata request.",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25),
            registry=registry,
        )
        self.proxied = Counter(
            "rolecall_agent_imds_proxied_refused",
            "Requests refused because they came through a proxy (X-Forwarded-For, Forwarded,"
            " Via, an absolute target or a foreign Host).",
            ["reason"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "rolecall_agent_imds_rate_limited",
            "Requests refused with 503 by an instance's rate limit.",
            registry=registry,
        )
        self.tokens = Counter(
            "rolecall_agent_imds_tokens_issued", "IMDSv2 session tokens issued.", registry=registry
        )
        self.served = Counter(
            "rolecall_agent_credentials_served",
            "Credential documents served to guests, by the state of their set.",
            ["freshness"],
            registry=registry,
        )
        self.controller_latency = Histogram(
            "rolecall_agent_controller_call_duration_seconds",
            "Node API calls, by endpoint.",
            ["endpoint"],
            registry=registry,
        )
        Gauge(
            "rolecall_agent_instances", "Instances this agent serves.", registry=registry
        ).set_function(lambda: len(agent.slots))
        Gauge(
            "rolecall_agent_credentials_earliest_expiry_seconds",
            "Seconds until the earliest Expiration of the credentials held (absent: none held).",
            registry=registry,
        ).set_function(self._earliest_expiry)
        registry.register(_RefreshCollector(agent))

    def _earliest_expiry(self) -> float:
        remaining = [
            seconds
            for keeper in self._agent.credentials
            if (seconds := keeper.seconds_until_expiry()) is not None
        ]
        return min(remaining) if remaining else float("nan")

    def observe(self, instance_id: str, path: str, answer: ImdsResponse, seconds: float) -> None:
        kind = path_class(path)
        self.requests.labels(kind, str(answer.status)).inc()
        self.latency.observe(seconds)
        if answer.reason in PROXY_REASONS:
            self.proxied.labels(answer.reason).inc()
        elif answer.reason == "rate-limited":
            self.rate_limited.inc()
        elif kind == "token" and answer.status == 200:
            self.tokens.inc()
        elif kind == "credentials" and answer.status == 200:
            slot = self._agent.slots.get(instance_id)
            keeper = slot.credentials if slot is not None else None
            state = keeper.state.name.lower() if keeper is not None else "unknown"
            self.served.labels("fresh" if state == "fresh" else "stale").inc()


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
        by_reason: dict[str, int] = {}
        for keeper in self._agent.credentials:
            total += keeper.attempts
            for reason, count in keeper.failures.items():
                by_reason[reason] = by_reason.get(reason, 0) + count
        attempts.add_metric([], total)
        for reason, count in sorted(by_reason.items()):
            failures.add_metric([reason], count)
        yield attempts
        yield failures


class _Text(Resource):
    isLeaf = True

    def __init__(self, answer: Any) -> None:
        super().__init__()
        self._answer = answer

    def render_GET(self, request: server.Request) -> bytes:
        status, content_type, body = self._answer()
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", content_type)
        return body  # type: ignore[no-any-return]


def health_site(agent: NodeAgent, registry: CollectorRegistry) -> server.Site:
    root = Resource()

    def ready() -> tuple[int, bytes, bytes]:
        ok, reason = agent.ready()
        return (200 if ok else 503), b"text/plain", reason.encode() + b"\n"

    root.putChild(
        b"metrics", _Text(lambda: (200, CONTENT_TYPE_LATEST.encode(), generate_latest(registry)))
    )
    root.putChild(b"healthz", _Text(lambda: (200, b"text/plain", b"ok\n")))
    root.putChild(b"readyz", _Text(ready))
    site = server.Site(root)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    return site
