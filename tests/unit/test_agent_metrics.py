"""The agent's metadata-service metrics: tallied on the request path, exposed by
prometheus_client's real exposition at scrape time."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, enable_created_metrics, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from agent.client import ControllerUnreachable
from agent.imds.rules import ImdsResponse
from agent.metrics import LATENCY_BUCKETS, AgentMetrics
from agent.reconcile import POLL_FAILURE_REASONS
from agent.rotation import CredentialCache, State


class Keeper:
    def __init__(self, state: State, expiry: float | None = 3600.0) -> None:
        self.state = state
        self.expiry = expiry
        self.attempts = 1
        self.failures: dict[str, int] = {}

    def seconds_until_expiry(self) -> float | None:
        return self.expiry


class Slot:
    def __init__(self, state: State) -> None:
        self.credentials = Keeper(state)


class Agent:
    def __init__(self) -> None:
        self.slots: dict[str, Slot] = {"i-fresh": Slot(State.FRESH), "i-stale": Slot(State.STALE)}
        self.credentials: Any = []
        #: What NodeAgent.without_credentials answers.
        self.without: list[tuple[str, str]] = []
        self.poll_failures_by_reason = dict.fromkeys(POLL_FAILURE_REASONS, 0)
        self.last_poll_success: float | None = None

    def without_credentials(self) -> list[tuple[str, str]]:
        return self.without


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


EXPIRY = "rolecall_agent_credentials_earliest_expiry_seconds"


def test_the_expiry_gauge_is_the_earliest_expiry_of_the_credentials_held() -> None:
    agent = Agent()
    agent.credentials = [Keeper(State.FRESH, 5000.0), Keeper(State.FRESH, 2000.0)]
    metrics = AgentMetrics(CollectorRegistry(), agent)  # type: ignore[arg-type]
    assert samples(metrics.registry)[(EXPIRY, ())] == 2000.0


def test_the_expiry_gauge_is_nan_only_when_no_instance_has_a_profile() -> None:
    metrics = AgentMetrics(CollectorRegistry(), Agent())  # type: ignore[arg-type]
    assert math.isnan(samples(metrics.registry)[(EXPIRY, ())])


def test_an_instance_with_a_profile_but_no_credentials_makes_the_expiry_gauge_zero() -> None:
    agent = Agent()
    agent.credentials = [Keeper(State.FRESH, 5000.0), Keeper(State.EMPTY, None)]
    metrics = AgentMetrics(CollectorRegistry(), agent)  # type: ignore[arg-type]
    assert samples(metrics.registry)[(EXPIRY, ())] == 0.0


def test_the_expiry_gauge_stays_a_number_when_credentials_are_dropped_near_expiry() -> None:
    """Issue 10: 900 s credentials, then the controller stopped. The set is dropped 60 s
    before its Expiration; the gauge must go to 0 there, not NaN (which no alert matches)."""
    clock = Clock()
    clock.advance(1_795_000_000.0)
    expiration = datetime.fromtimestamp(clock.seconds() + 900, UTC)
    body = {
        "AccessKeyId": "ASIA0000000000000001",
        "SecretAccessKey": "secret",
        "Token": "token",
        "Expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "RoleArn": "arn:aws:iam::123456789012:role/web",
        "InstanceProfileArn": "arn:aws:iam::123456789012:instance-profile/web",
        "InstanceProfileId": "AIPAEXAMPLEPROFILE01",
        "AccountId": "123456789012",
    }
    answers: list[Deferred[Any]] = [succeed(body)]

    def fetch() -> Deferred[Any]:
        return answers.pop(0) if answers else fail(ControllerUnreachable("connection refused"))

    cache = CredentialCache(clock)
    keeper = cache.add("i-1", fetch)
    clock.advance(0)  # the first answer is handed over on the next tick
    agent = Agent()
    agent.credentials = cache
    metrics = AgentMetrics(CollectorRegistry(), agent)  # type: ignore[arg-type]
    assert samples(metrics.registry)[(EXPIRY, ())] == pytest.approx(900, abs=1)
    while clock.seconds() < expiration.timestamp() - 70:
        clock.advance(10)
    assert keeper.held is not None
    assert samples(metrics.registry)[(EXPIRY, ())] == pytest.approx(70, abs=1)
    clock.advance(20)
    assert keeper.state is State.EXPIRED and keeper.held is None
    assert samples(metrics.registry)[(EXPIRY, ())] == 0.0
    cache.stop()
    assert clock.getDelayedCalls() == []


def test_instances_without_credentials_are_counted() -> None:
    agent = Agent()
    agent.without = [("i-1", "CredentialsExpired"), ("i-2", "NoCredentials")]
    metrics = AgentMetrics(CollectorRegistry(), agent)  # type: ignore[arg-type]
    assert samples(metrics.registry)[("rolecall_agent_instances_without_credentials", ())] == 2


POLL_FAILURES = "rolecall_agent_node_api_poll_failures_total"
LAST_POLL = "rolecall_agent_node_api_poll_last_success_timestamp_seconds"


def test_poll_failures_show_every_reason_at_zero_and_no_success_as_timestamp_zero() -> None:
    metrics = AgentMetrics(CollectorRegistry(), Agent())  # type: ignore[arg-type]
    seen = samples(metrics.registry)
    for reason in ("unreachable", "refused", "malformed", "other"):
        assert seen[(POLL_FAILURES, (("reason", reason),))] == 0
    assert seen[(LAST_POLL, ())] == 0


def test_poll_failures_and_the_last_success_are_read_from_the_agent_at_scrape_time() -> None:
    agent = Agent()
    metrics = AgentMetrics(CollectorRegistry(), agent)  # type: ignore[arg-type]
    agent.poll_failures_by_reason["unreachable"] = 7
    agent.last_poll_success = 1_795_000_000.5
    seen = samples(metrics.registry)
    assert seen[(POLL_FAILURES, (("reason", "unreachable"),))] == 7
    assert seen[(LAST_POLL, ())] == 1_795_000_000.5


def test_failure_counters_that_alerts_read_are_present_at_zero_from_the_start(
    metrics: AgentMetrics,
) -> None:
    seen = samples(metrics.registry)
    for reason in ("proxy-header", "absolute-target", "bad-host"):
        assert seen[("rolecall_agent_imds_proxied_refused_total", (("reason", reason),))] == 0
    failures = "rolecall_agent_credential_refresh_failures_total"
    for reason in ("ControllerUnreachable", "FetchTimeout"):
        assert seen[(failures, (("reason", reason),))] == 0


def test_a_sixty_second_long_poll_lands_in_a_finite_bucket(metrics: AgentMetrics) -> None:
    metrics.controller_latency.labels("assignments").observe(60.2)
    seen = samples(metrics.registry)
    name = "rolecall_agent_controller_call_duration_seconds_bucket"
    bounds = sorted(float(dict(labels)["le"]) for (sample, labels) in seen if sample == name)
    assert bounds[-2] >= 120  # the last is +Inf
    assert seen[(name, (("endpoint", "assignments"), ("le", "60.0")))] == 0
    assert seen[(name, (("endpoint", "assignments"), ("le", "90.0")))] == 1
    assert seen[(name, (("endpoint", "credentials"), ("le", "+Inf")))] == 0  # present from 0


def test_the_agent_registry_shows_the_process_and_python_and_no_created_series() -> None:
    enable_created_metrics()  # as a fresh process starts: another test may have switched it off
    metrics = AgentMetrics(CollectorRegistry(), Agent())  # type: ignore[arg-type]
    metrics.controller_latency.labels("assignments").observe(1.0)
    seen = {sample for (sample, _) in samples(metrics.registry)}
    assert {"process_cpu_seconds_total", "process_open_fds", "python_info"} <= seen
    assert not [name for name in seen if name.endswith("_created")]
