"""How soon the agent notices a controller that is back, and how often it asks a dead one.

`agent.reconnect` on its own, then the NodeAgent's long poll against a fake controller that
goes away and comes back, with time moving only through `MemoryReactorClock`.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent

from agent.client import ControllerUnreachable, NodeApiError
from agent.config import AgentConfig
from agent.imds.tokens import TokenMinter, new_key
from agent.reconcile import DRAIN_SECONDS, NodeAgent
from agent.reconnect import ReconnectPolicy, next_poll_delay, poll_wait, probe_delay
from agent.refresh import RefreshPolicy

#: The bound this design promises: a controller that is back is asked within this long.
RECOVERY_SECONDS = 5.0
STEP = 0.05
LONG_POLL = 60.0


class Picks:
    """A random source that always picks the same fraction of the range it is given."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


class Controller:
    """The node API's assignments call: refused while down; while up, answered at once unless
    it is a long poll with nothing new (then held until the agent stops)."""

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor
        self.up = True
        self.revision = 1
        self.calls: list[tuple[float, float]] = []  # (when, wait)
        self.answered: list[float] = []
        self.held: list[Deferred[Any]] = []
        self.refuse_with: Exception | None = None

    def assignments(self, since: int, wait: float) -> Deferred[Any]:
        now = self.reactor.seconds()
        self.calls.append((now, wait))
        if len(self.calls) > 10_000:
            raise AssertionError("the agent hammers the controller")
        if not self.up:
            return fail(ControllerUnreachable("Connection was refused by other side: 111"))
        if self.refuse_with is not None:
            return fail(self.refuse_with)
        if wait and since == self.revision:
            held: Deferred[Any] = Deferred()
            self.held.append(held)
            return held
        self.answered.append(now)
        return succeed({"revision": self.revision, "instances": []})

    def go_down(self) -> None:
        self.up = False
        for held in self.held:
            if not held.called:
                held.errback(ControllerUnreachable("Connection lost"))
        self.held.clear()

    def credentials(self, instance_id: str) -> Deferred[Any]:
        return Deferred()


def started(fraction: float) -> tuple[MemoryReactorClock, Controller, NodeAgent]:
    reactor = MemoryReactorClock()
    controller = Controller(reactor)
    agent = NodeAgent(
        AgentConfig(controller_urls=("https://controller.invalid:8775",)),
        reactor,
        controller,  # type: ignore[arg-type]
        TokenMinter(new_key()),
        namespaces=None,
        random=Picks(fraction),
    )
    agent.startService()
    reactor.advance(0)  # the long poll follows the first answer on the next turn
    assert agent.synced and controller.calls[-1][1] == LONG_POLL  # long-polling
    return reactor, controller, agent


def stop(reactor: MemoryReactorClock, agent: NodeAgent) -> None:
    agent.stopService()
    reactor.advance(DRAIN_SECONDS)
    assert reactor.getDelayedCalls() == [], "timers left behind"


def advance(reactor: MemoryReactorClock, seconds: float) -> None:
    for _ in range(round(seconds / STEP)):
        reactor.advance(STEP)


@pytest.mark.parametrize("outage", [20.0, 90.0, 15 * 60.0])
@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_a_controller_back_after_an_outage_is_answering_the_agent_within_the_bound(
    outage: float, fraction: float
) -> None:
    reactor, controller, agent = started(fraction)
    advance(reactor, 1.0)
    controller.go_down()
    advance(reactor, outage)
    back = reactor.seconds()
    controller.up = True
    answered_before = len(controller.answered)
    advance(reactor, RECOVERY_SECONDS + STEP)
    assert len(controller.answered) > answered_before, "not asked again in time"
    assert controller.answered[answered_before] - back <= RECOVERY_SECONDS
    # The first answer resumes the long poll at once.
    assert controller.calls[-1] == (controller.answered[answered_before], LONG_POLL)
    assert agent.poll_failures == 0
    stop(reactor, agent)


def test_a_dead_controller_is_probed_at_most_every_three_seconds_over_fifteen_minutes() -> None:
    reactor, controller, agent = started(0.0)  # the shortest delays the jitter allows
    controller.go_down()
    before = len(controller.calls)
    advance(reactor, 15 * 60.0)
    probes = controller.calls[before:]
    assert len(probes) <= 15 * 60 / 3 + 5
    assert all(wait == 0 for _, wait in probes)  # probes: answered at once when it is back
    stop(reactor, agent)


def test_an_outage_is_logged_once_per_problem_and_the_recovery_once() -> None:
    reactor, controller, agent = started(0.5)
    with capturedLogs() as events:
        controller.go_down()
        advance(reactor, 60.0)
        controller.up = True
        advance(reactor, RECOVERY_SECONDS + STEP)
    lines = [formatEvent(event) for event in events]
    # Once per change of problem (the long poll lost, then each probe refused), not per probe.
    assert [line for line in lines if "unavailable" in line] == [
        "assignments unavailable: Connection lost; asking again every 5 s at most",
        "assignments unavailable: Connection was refused by other side: 111; "
        "asking again every 5 s at most",
    ]
    assert len([line for line in lines if "answers again" in line]) == 1
    stop(reactor, agent)


def test_a_controller_that_refuses_the_node_is_asked_with_the_long_backoff() -> None:
    reactor, controller, agent = started(1.0)
    controller.refuse_with = NodeApiError(403, "node retired")
    controller.go_down()
    controller.up = True
    advance(reactor, 15 * 60.0)
    assert len(controller.calls) < 20  # 1, 2, 4, ... 300 s: not a probe every few seconds
    stop(reactor, agent)


def test_probe_delays_ramp_up_to_the_probe_interval_and_never_past_it() -> None:
    policy = ReconnectPolicy()
    assert [probe_delay(attempt, policy, Picks(1.0)) for attempt in range(5)] == [
        1.0,
        2.0,
        4.0,
        5.0,
        5.0,
    ]
    assert probe_delay(1000, policy, Picks(0.0)) == pytest.approx(3.0)
    assert probe_delay(3, policy, Picks(7.0)) == 5.0  # a misbehaving source is clamped


def test_the_next_poll_is_immediate_after_an_answer_and_a_probe_while_unreachable() -> None:
    policy, backoff = ReconnectPolicy(), RefreshPolicy()
    assert next_poll_delay(0, False, policy, backoff, Picks(1.0)) == 0.0
    assert next_poll_delay(50, False, policy, backoff, Picks(1.0)) == 5.0
    assert next_poll_delay(50, True, policy, backoff, Picks(1.0)) == 300.0
    assert poll_wait(True, 0, LONG_POLL) == LONG_POLL
    assert poll_wait(True, 1, LONG_POLL) == 0.0
    assert poll_wait(False, 0, LONG_POLL) == 0.0


def test_a_reconnect_policy_with_a_first_probe_past_the_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="first_probe_seconds"):
        ReconnectPolicy(first_probe_seconds=10.0, probe_seconds=5.0)


def test_an_agent_that_cannot_verify_the_controller_says_so_once_and_on_readiness() -> None:
    wrong_ca = (
        "controller https://127.0.0.1:8775: its certificate does not verify against the CA in "
        "/etc/rolecall/ca.pem (certificate verify failed)"
    )
    reactor = MemoryReactorClock()
    controller = Controller(reactor)
    controller.up = False
    agent = NodeAgent(
        AgentConfig(controller_urls=("https://127.0.0.1:8775",)),
        reactor,
        controller,  # type: ignore[arg-type]
        TokenMinter(new_key()),
        namespaces=None,
        random=Picks(0.0),
    )
    controller.assignments = lambda since, wait: fail(  # type: ignore[method-assign]
        ControllerUnreachable(wrong_ca)
    )
    with capturedLogs() as events:
        agent.startService()
        advance(reactor, 60.0)
    lines = [formatEvent(event) for event in events if event.get("log_level").name == "warn"]
    assert lines == [f"assignments unavailable: {wrong_ca}; asking again every 5 s at most"]
    assert agent.ready() == (False, f"not yet synced with the controller: {wrong_ca}")
    stop(reactor, agent)
