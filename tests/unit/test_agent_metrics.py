"""The agent's metadata-service metrics: tallied on the request path, exposed by
prometheus_client's real exposition at scrape time."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.credentials import State
from agent.imds.rules import ImdsResponse
from agent.metrics import LATENCY_BUCKETS, AgentMetrics


class Keeper:
    def __init__(self, state: State) -> None:
        self.state = state

    def seconds_until_expiry(self) -> float:
        return 3600.0


class Slot:
    def __init__(self, state: State) -> None:
        self.credentials = Keeper(state)


class Agent:
    def __init__(self) -> None:
        self.slots: dict[str, Slot] = {"i-fresh": Slot(State.FRESH), "i-stale": Slot(State.STALE)}
        self.credentials: list[Keeper] = []


def answer(status: int, reason: str = "ok") -> ImdsResponse:
    return ImdsResponse(status, (), b"", None, reason)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def metrics() -> Any:
    registry = CollectorRegistry()
    return AgentMetrics(registry, Agent())  # type: ignore[arg-type]


CREDENTIALS = "/latest/meta-data/iam/security-credentials/web"


def test_answers_are_counted_by_path_class_and_status(metrics: AgentMetrics) -> None:
    metrics.observe("i-fresh", CREDENTIALS, answer(200), 0.0002)
    metrics.observe("i-fresh", CREDENTIALS, answer(200), 0.0002)
    metrics.observe("i-fresh", "/latest/api/token", answer(200, "token"), 0.0001)
    metrics.observe("i-fresh", "/nowhere", answer(404, "not-found"), 0.0001)
    seen = samples(metrics.registry)
    total = "rolecall_agent_imds_requests_total"
    assert seen[(total, (("path", "credentials"), ("status", "200")))] == 2
    assert seen[(total, (("path", "token"), ("status", "200")))] == 1
    assert seen[(total, (("path", "other"), ("status", "404")))] == 1
    assert seen[("rolecall_agent_imds_tokens_issued_total", ())] == 1


def test_latency_is_a_cumulative_histogram_with_le_buckets(metrics: AgentMetrics) -> None:
    for seconds in (0.0001, 0.0003, 0.0003, 0.002, 1.0):
        metrics.observe("i-fresh", CREDENTIALS, answer(200), seconds)
    seen = samples(metrics.registry)
    name = "rolecall_agent_imds_request_duration_seconds"

    def bucket(le: str) -> float:
        return seen[(f"{name}_bucket", (("le", le),))]

    assert bucket("0.0001") == 1  # a bound is inclusive
    assert bucket("0.0005") == 3
    assert bucket("0.0025") == 4
    assert bucket("0.25") == 4
    assert bucket("+Inf") == seen[(f"{name}_count", ())] == 5
    assert seen[(f"{name}_sum", ())] == pytest.approx(1.0027)
    assert len([key for key in seen if key[0] == f"{name}_bucket"]) == len(LATENCY_BUCKETS) + 1


def test_refusals_and_served_credentials_are_counted_by_reason(metrics: AgentMetrics) -> None:
    metrics.observe("i-fresh", "/", answer(403, "proxy-header"), 0.0001)
    metrics.observe("i-fresh", "/", answer(403, "bad-host"), 0.0001)
    metrics.observe("i-fresh", "/", answer(403, "bad-host"), 0.0001)
    metrics.observe("i-fresh", "/", answer(503, "rate-limited"), 0.0001)
    metrics.observe("i-fresh", CREDENTIALS, answer(200), 0.0001)
    metrics.observe("i-stale", CREDENTIALS, answer(200), 0.0001)
    metrics.observe("i-gone", CREDENTIALS, answer(200), 0.0001)
    seen = samples(metrics.registry)
    refused = "rolecall_agent_imds_proxied_refused_total"
    assert seen[(refused, (("reason", "proxy-header"),))] == 1
    assert seen[(refused, (("reason", "bad-host"),))] == 2
    assert seen[("rolecall_agent_imds_rate_limited_total", ())] == 1
    served = "rolecall_agent_credentials_served_total"
    assert seen[(served, (("freshness", "fresh"),))] == 1
    assert seen[(served, (("freshness", "stale"),))] == 2


def test_a_guest_choosing_endless_paths_does_not_grow_the_agent(metrics: AgentMetrics) -> None:
    for number in range(5000):
        metrics.observe("i-fresh", f"/latest/meta-data/x{number}", answer(404, "not-found"), 0.0)
    assert len(metrics._kinds) <= 1024
    seen = samples(metrics.registry)
    assert (
        seen[("rolecall_agent_imds_requests_total", (("path", "meta-data"), ("status", "404")))]
        == 5000
    )
