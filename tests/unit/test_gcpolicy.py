"""The agent's garbage-collector policy (`agent.gcpolicy`), on a `Clock`, with the real `gc`."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from agent.gcpolicy import CHECK_SECONDS, FreezeAfterChanges


class Agent:
    def __init__(self) -> None:
        self.revision = -1
        self.is_ready = False

    def ready(self) -> tuple[bool, str]:
        return self.is_ready, "ready" if self.is_ready else "not yet"


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # never leave the test process frozen


def started(agent: Agent, clock: Clock, refreeze: float = 600.0) -> FreezeAfterChanges:
    policy = FreezeAfterChanges(agent, clock, refreeze=refreeze)
    policy.startService()
    return policy


def test_the_first_full_pass_is_made_at_start_and_changes_wait_for_readiness() -> None:
    clock, agent = Clock(), Agent()
    policy = started(agent, clock)
    assert policy.refreezes == 1  # at start, before any instance is served
    assert gc.get_freeze_count() > 0
    agent.revision = 3
    clock.advance(CHECK_SECONDS * 3)
    assert policy.refreezes == 1  # not ready yet
    policy.stopService()


def test_an_applied_change_freezes_what_is_new_without_thawing() -> None:
    clock, agent = Clock(), Agent()
    policy = started(agent, clock)
    agent.revision, agent.is_ready = 3, True
    clock.advance(CHECK_SECONDS)
    assert policy.refreezes == 2
    first = gc.get_freeze_count()
    assert first > 0
    clock.advance(CHECK_SECONDS * 10)
    assert policy.refreezes == 2  # nothing changed
    kept = [[number] for number in range(1000)]  # new long-lived objects
    agent.revision = 4
    clock.advance(CHECK_SECONDS)
    assert policy.refreezes == 3
    assert gc.get_freeze_count() >= first + len(kept)  # the earlier ones stayed frozen
    policy.stopService()
    assert clock.getDelayedCalls() == []


def test_a_change_while_instances_are_still_being_set_up_waits() -> None:
    clock, agent = Clock(), Agent()
    policy = started(agent, clock)
    agent.revision, agent.is_ready = 3, True
    clock.advance(CHECK_SECONDS)
    agent.revision, agent.is_ready = 4, False
    clock.advance(CHECK_SECONDS * 3)
    assert policy.refreezes == 2
    agent.is_ready = True
    clock.advance(CHECK_SECONDS)
    assert policy.refreezes == 3
    policy.stopService()


def test_frozen_cyclic_garbage_is_collected_at_the_next_refreeze() -> None:
    clock, agent = Clock(), Agent()
    policy = started(agent, clock, refreeze=60.0)

    class Node:
        partner: object = None

    first, second = Node(), Node()
    first.partner, second.partner = second, first
    watch = weakref.ref(first)
    agent.revision, agent.is_ready = 1, True
    clock.advance(CHECK_SECONDS)
    del first, second  # a cycle, frozen: no collection frees it while frozen
    gc.collect()
    assert watch() is not None
    agent.revision = 2  # a change freezes again without thawing: still there
    clock.advance(CHECK_SECONDS)
    assert (policy.refreezes, watch() is not None) == (3, True)
    clock.advance(60.0)  # nothing changed since, but the full refreeze is due
    assert policy.refreezes == 4
    assert watch() is None
    policy.stopService()


def test_a_check_that_fails_is_logged_and_the_next_one_still_runs() -> None:
    class Broken(Agent):
        failing = True

        def ready(self) -> tuple[bool, str]:
            if self.failing:
                raise RuntimeError("a bug")
            return super().ready()

    clock, agent = Clock(), Broken()
    policy = started(agent, clock)
    agent.revision, agent.is_ready = 3, True
    with capturedLogs() as events:
        clock.advance(CHECK_SECONDS)
    assert [event["log_format"] for event in events if "log_failure" in event] == [
        "the collector's check failed; checking again in {seconds} s"
    ]
    agent.failing = False
    clock.advance(CHECK_SECONDS)
    assert policy.refreezes == 2  # the loop survived, and froze the change
    policy.stopService()
