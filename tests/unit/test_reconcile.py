"""NodeAgent's reconcile: instances set up a slice per reactor turn, each served as soon as it is
ready, a newer answer taking over mid-way, stopping mid-way, and the ownership record when the
agent dies mid-way.

Time moves through `MemoryReactorClock` (the reactor) and a fake slice timer that each namespace
preparation advances, as real work would; namespaces and the controller are fakes.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs

from agent import kept
from agent import reconcile as reconcile_module
from agent.client import ControllerUnreachable, NodeApiError
from agent.config import AgentConfig
from agent.imds.credentials import CredentialSet
from agent.imds.tokens import TokenMinter, new_key
from agent.netns import NamespaceError, Ownership, OwnershipRecord
from agent.reconcile import (
    DRAIN_SECONDS,
    RECOVERY_SPREAD_SECONDS,
    SLICE_GAP_SECONDS,
    SLICE_SECONDS,
    NodeAgent,
)
from agent.reconnect import ReconnectPolicy
from common.nodemessages import parse_assignments, parse_instance

#: Each namespace takes this long on the slice timer: three fit in a slice.
PREPARE_SECONDS = SLICE_SECONDS / 2.5
PER_SLICE = 3
PROFILE = {
    "arn": "arn:aws:iam::123456789012:instance-profile/web",
    "id": "AIPAEXAMPLEPROFILE01",
    "role_name": "web",
}


class Timer:
    """The slice timer: moves only when a fake namespace is prepared."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeNamespaces:
    """agent.netns without namespaces: records what is prepared and released."""

    def __init__(self, timer: Timer) -> None:
        self.timer = timer
        self.prepared: list[str] = []
        self.released: list[str] = []
        self.failing: set[str] = set()
        #: Namespaces with the agent's prefix that were there before it, and which it removed.
        self.orphans: list[str] = []
        self.swept: list[str] = []

    def prepare(self, name: str) -> Ownership:
        self.timer.now += PREPARE_SECONDS
        if name in self.failing:
            raise NamespaceError(f"cannot create namespace {name}: refused")
        self.prepared.append(name)
        return Ownership(name, created_namespace=True, added_address=True)

    def listen(self, name: str, port: int) -> socket.socket:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # the reactor gets its fileno

    def release(self, ownership: Ownership) -> None:
        self.released.append(ownership.namespace)

    def listed(self, prefix: str) -> list[str]:
        return [name for name in self.orphans if name.startswith(prefix)]

    def remove_if_empty(self, name: str) -> str | None:
        self.swept.append(name)
        return None


class FakeClient:
    """The node API: answers are Deferreds the test fires."""

    def __init__(self) -> None:
        self.polls: list[Deferred[Any]] = []
        self.fetched: list[str] = []
        #: The credential calls not yet answered, oldest first.
        self.pending: list[Deferred[Any]] = []

    def assignments(self, since: int, wait: float) -> Deferred[Any]:
        self.polls.append(Deferred())
        return self.polls[-1]

    def credentials(self, instance_id: str) -> Deferred[Any]:
        self.fetched.append(instance_id)
        self.pending.append(Deferred())
        return self.pending[-1]

    def refuse_credentials(self) -> None:
        """The controller is stopped: every credential call waiting fails."""
        while self.pending:
            self.pending.pop(0).errback(ControllerUnreachable("connection refused"))


def assignment(number: int, profile: bool = False) -> dict[str, Any]:
    return {
        "instance_id": f"i-{number:08x}",
        "account_id": "123456789012",
        "netns": None,
        "instance_profile": PROFILE if profile else None,
        "metadata_options": {"http_tokens": "optional"},
        "metadata": {"instance-id": f"i-{number:08x}"},
    }


def ids(*numbers: int) -> set[str]:
    return {f"i-{number:08x}" for number in numbers}


class FakeKeeper:
    """The root process's files of kept instances: by instance id, with the writes counted."""

    def __init__(self) -> None:
        self.entries: dict[str, str] = {}
        self.writes = 0

    def keep(self, instance_id: str, entry: str) -> None:
        self.entries[instance_id] = entry
        self.writes += 1

    def forget(self, instance_id: str) -> None:
        self.entries.pop(instance_id, None)

    def credentials_of(self, instance_id: str) -> CredentialSet | None:
        return kept.decode_entry(self.entries[instance_id]).credentials


class Node:
    """An agent on fakes, with what it told `on_change`."""

    def __init__(
        self,
        record: OwnershipRecord | None = None,
        keeper: FakeKeeper | None = None,
        restored: Sequence[kept.Entry] = (),
        upstream: Any = None,
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.timer = Timer()
        self.namespaces = FakeNamespaces(self.timer)
        self.client = FakeClient()
        self.agent = NodeAgent(
            AgentConfig(controller_urls=("https://controller.invalid:8775",)),
            self.reactor,
            self.client,
            TokenMinter(new_key()),
            namespaces=self.namespaces,
            ownership=record,
            timer=self.timer,
            keeper=keeper,
            restored=restored,
            upstream=upstream,
        )
        self.changes = 0
        self.agent.on_change = self.count_change

    def count_change(self) -> None:
        self.changes += 1

    def answer(self, *entries: dict[str, Any], revision: int = 1) -> None:
        self.client.polls[-1].callback({"revision": revision, "instances": list(entries)})

    def turn(self) -> None:
        """One reactor turn: the due slice runs (the next is due after it)."""
        self.reactor.advance(SLICE_GAP_SECONDS)

    def served(self) -> set[str]:
        return {i for i, slot in self.agent.slots.items() if slot.port is not None}

    def stop(self) -> None:
        self.agent.stopService()
        self.reactor.advance(DRAIN_SECONDS)


@pytest.fixture
def node() -> Iterator[Node]:
    made = Node()
    made.agent.startService()
    yield made
    if made.agent.running:
        made.stop()
    assert made.reactor.getDelayedCalls() == [], "timers left behind"


def test_instances_are_served_a_slice_at_a_time_not_all_in_one_callback(node: Node) -> None:
    node.answer(*(assignment(number) for number in range(10)))
    assert node.served() == set()  # nothing done inside the answer's callback
    progress = []
    while node.agent._work is not None:
        node.turn()
        progress.append(len(node.served()))
    assert progress == [3, 6, 9, 10]
    assert node.served() == ids(*range(10))
    assert len(node.reactor.adoptedPorts) == 10


def test_every_instance_is_served_with_the_agents_upstream_metadata_service() -> None:
    upstream = object()  # what the factories are given; forwarding itself: test_upstream_client
    node = Node(upstream=upstream)
    node.agent.startService()
    node.answer(assignment(1), assignment(2))
    while node.agent._work is not None:
        node.turn()
    assert [factory.upstream for _, _, factory in node.reactor.adoptedPorts] == [upstream] * 2
    node.stop()
    assert Node().agent._upstream is None


def test_each_instances_credential_fetch_starts_as_soon_as_it_is_served(node: Node) -> None:
    node.answer(*(assignment(number, profile=True) for number in range(10)))
    node.turn()
    assert node.client.fetched == sorted(ids(0, 1, 2))
    node.turn()
    assert node.client.fetched == sorted(ids(*range(6)))


def test_not_ready_until_every_instance_is_set_up(node: Node) -> None:
    node.answer(*(assignment(number) for number in range(5)))
    ready, reason = node.agent.ready()
    assert not ready and reason == "setting up instances, 5 to go"
    node.turn()
    ready, reason = node.agent.ready()
    assert not ready and reason == "setting up instances, 2 to go"
    node.turn()
    assert node.agent.ready() == (True, "ready")


def credentials_until(expires: float) -> dict[str, str]:
    return {
        "AccessKeyId": "ASIA0000000000000001",
        "SecretAccessKey": "secret",
        "Token": "token",
        "Expiration": datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "RoleArn": "arn:aws:iam::123456789012:role/web",
        "InstanceProfileArn": PROFILE["arn"],
        "InstanceProfileId": PROFILE["id"],
        "AccountId": "123456789012",
    }


def test_not_ready_while_an_instance_with_a_profile_has_no_credentials_yet(node: Node) -> None:
    node.answer(assignment(0, profile=True), assignment(1))
    node.turn()
    assert node.agent.ready() == (
        False,
        "not ready: 1 instance without credentials (i-00000000: NoCredentials)",
    )
    node.client.pending.pop().callback(credentials_until(node.reactor.seconds() + 900))
    assert node.agent.ready() == (True, "ready")  # i-00000001 has no profile: needs none


def test_not_ready_once_credentials_are_dropped_with_the_controller_stopped(node: Node) -> None:
    """Issue 10: 900 s credentials, the controller stopped after they came. The agent drops the
    set 60 s before its Expiration; from then on /readyz must say so."""
    node.answer(assignment(0, profile=True), assignment(1, profile=True))
    node.turn()
    start = node.reactor.seconds()
    while node.client.pending:
        node.client.pending.pop().callback(credentials_until(start + 900))
    assert node.agent.ready() == (True, "ready")
    while node.reactor.seconds() < start + 830:  # refreshes fail; the sets are still served
        node.reactor.advance(10)
        node.client.refuse_credentials()
    assert node.agent.ready() == (True, "ready")
    node.reactor.advance(20)
    node.client.refuse_credentials()
    assert node.agent.ready() == (
        False,
        "not ready: 2 instances without credentials"
        " (i-00000000: CredentialsExpired, i-00000001: CredentialsExpired)",
    )


def test_failed_polls_are_counted_by_reason_and_an_answer_is_the_last_success(
    node: Node,
) -> None:
    assert node.agent.last_poll_success is None
    node.client.polls[-1].errback(ControllerUnreachable("connection refused"))
    node.reactor.advance(300)  # the retry
    node.client.polls[-1].errback(NodeApiError(503, "store unavailable"))
    node.reactor.advance(300)
    node.client.polls[-1].errback(ValueError("Expecting value"))
    node.reactor.advance(300)
    node.client.polls[-1].errback(ControllerUnreachable("timeout"))
    assert node.agent.poll_failures_by_reason == {
        "unreachable": 2,
        "refused": 1,
        "malformed": 1,
        "other": 0,
    }
    assert node.agent.last_poll_success is None
    node.reactor.advance(300)
    node.answer(assignment(0))
    assert node.agent.last_poll_success == node.reactor.seconds()
    node.turn()


def test_on_change_hears_once_the_whole_answer_is_applied(node: Node) -> None:
    node.answer(*(assignment(number) for number in range(7)))
    node.turn()
    node.turn()
    assert node.changes == 0
    node.turn()
    assert node.changes == 1


def test_a_newer_answer_mid_way_sets_up_only_what_it_wants_and_nothing_twice(
    node: Node,
) -> None:
    node.answer(*(assignment(number) for number in range(10)))
    node.turn()
    assert node.served() == ids(0, 1, 2)
    node.answer(*(assignment(number) for number in (0, 2, 5, 6, 42)), revision=2)
    while node.agent._work is not None:
        node.turn()
    assert node.served() == ids(0, 2, 5, 6, 42)
    assert node.namespaces.released == ["rc-i-00000001"]  # served, then no longer wanted
    assert sorted(node.namespaces.prepared) == sorted(
        f"rc-{instance_id}" for instance_id in ids(0, 1, 2, 5, 6, 42)
    )  # each once; 3, 4 and 7 to 9 never
    assert node.agent.revision == 2
    assert node.agent.ready() == (True, "ready")
    assert node.changes == 1


def test_an_answer_with_nothing_to_set_up_applies_at_once(node: Node) -> None:
    node.answer(assignment(1), assignment(2))
    node.turn()
    assert node.changes == 1
    node.answer(assignment(1), revision=2)  # a removal, queued like any other change
    assert node.served() == ids(1, 2)
    node.turn()
    assert node.served() == ids(1)
    node.answer(assignment(1), revision=3)  # nothing to do: applied inside the callback
    assert node.changes == 3


def test_a_long_poll_that_ran_out_with_the_same_revision_changes_nothing(node: Node) -> None:
    node.answer(assignment(1), assignment(2))
    node.turn()
    assert node.changes == 1
    node.answer(assignment(1), assignment(2))  # the same revision: nothing to compare or apply
    node.turn()
    assert node.changes == 1
    assert node.served() == ids(1, 2)
    node.answer(assignment(1), revision=2)  # a new revision is applied
    node.turn()
    assert (node.changes, node.served()) == (2, ids(1))


def test_an_answer_that_only_repeats_the_applied_revision_is_not_parsed_again(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[object] = []

    def counted(body: object) -> Any:
        parsed.append(body)
        return parse_assignments(body)

    monkeypatch.setattr(reconcile_module, "parse_assignments", counted)
    node.answer(assignment(1), assignment(2))
    node.turn()
    assert len(parsed) == 1
    node.answer(assignment(1), assignment(2))  # the long poll ran out: the same revision
    node.turn()
    assert len(parsed) == 1
    assert node.served() == ids(1, 2)
    node.answer(assignment(1), revision=2)
    assert len(parsed) == 2
    node.turn()
    assert node.served() == ids(1)


def test_a_failed_instance_is_retried_even_when_the_revision_is_the_same(node: Node) -> None:
    node.namespaces.failing.add("rc-i-00000001")
    node.answer(assignment(0), assignment(1))
    node.turn()
    assert set(node.agent.failed) == ids(1)
    node.namespaces.failing.clear()
    node.answer(assignment(0), assignment(1))  # the long poll ran out: same revision
    node.turn()
    assert node.served() == ids(0, 1)
    assert node.agent.failed == {}


def test_stopping_mid_way_sets_up_nothing_more(node: Node) -> None:
    node.answer(*(assignment(number) for number in range(10)))
    node.turn()
    node.stop()
    node.reactor.advance(1.0)
    assert node.namespaces.prepared == [f"rc-{i}" for i in sorted(ids(0, 1, 2))]
    assert node.agent.slots == {}
    assert node.reactor.getDelayedCalls() == []


def test_a_failed_instance_is_reported_and_retried_on_the_next_answer(node: Node) -> None:
    node.namespaces.failing.add("rc-i-00000001")
    node.answer(assignment(0), assignment(1), assignment(2))
    node.turn()
    assert node.served() == ids(0, 2)
    assert set(node.agent.failed) == ids(1)
    ready, reason = node.agent.ready()
    assert not ready and reason.startswith("1 instance(s) not served, e.g. i-00000001")
    node.namespaces.failing.clear()
    node.answer(assignment(0), assignment(1), assignment(2), revision=2)
    node.turn()
    assert node.served() == ids(0, 1, 2)
    assert node.agent.failed == {}
    assert node.agent.ready() == (True, "ready")


def test_an_agent_dying_mid_way_leaves_every_namespace_it_made_on_record(
    tmp_path: Path,
) -> None:
    record = OwnershipRecord(tmp_path / "namespaces.json")
    first = Node(record)
    first.agent.startService()
    first.answer(*(assignment(number) for number in range(10)))
    first.turn()
    first.turn()
    # Killed here, six namespaces made: no stop, no save of the whole record.
    made = [f"rc-{i}" for i in sorted(ids(*range(6)))]
    assert sorted(OwnershipRecord(record.path).load()) == made

    # The next agent hears that only instance 0 is left: it removes the other five it made,
    # and nothing it did not make.
    second = Node(OwnershipRecord(record.path))
    second.agent.startService()
    second.answer(assignment(0))
    second.turn()
    assert sorted(second.namespaces.released) == made[1:]
    assert sorted(OwnershipRecord(record.path).load()) == ["rc-i-00000000"]
    second.stop()
    assert second.reactor.getDelayedCalls() == []


def test_a_restarted_agent_folds_the_journal_in_so_a_torn_line_does_not_linger(
    tmp_path: Path,
) -> None:
    record = OwnershipRecord(tmp_path / "namespaces.json")
    record.remember(Ownership("rc-i-00000042", created_namespace=True, added_address=True))
    with record.journal.open("a", encoding="utf-8") as journal:
        journal.write('{"remember": {"namespace": "rc-i-00')  # the last agent died mid-append
    node = Node(OwnershipRecord(record.path))
    node.agent.startService()
    node.answer(*(assignment(number) for number in range(10)))
    node.turn()
    # Killed again mid-way: what both agents made is on record, nothing glued to the torn line.
    assert sorted(OwnershipRecord(record.path).load()) == [
        "rc-i-00000000",
        "rc-i-00000001",
        "rc-i-00000002",
        "rc-i-00000042",
    ]


# -- names from the controller are untrusted (issue 16, item 9) -------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("netns", "../../tmp/x"),
        ("netns", "/etc/nologin"),
        ("netns", ".."),
        ("netns", "a/b"),
        ("netns", "x" * 65),
        ("netns", ["rc-x"]),
        ("instance_id", "i-../../x"),
        ("instance_id", "i-0000000G"),
        ("instance_id", "i-000000001"),
        ("instance_id", "I-00000001"),
        ("instance_id", 42),
    ],
)
def test_an_assignment_with_a_bad_name_is_refused_once_and_the_others_served(
    node: Node, field: str, value: object
) -> None:
    bad = dict(assignment(7), **{field: value})
    with capturedLogs() as events:
        node.answer(assignment(0), bad, assignment(1))
        node.turn()
        node.answer(assignment(0), bad, assignment(1))  # asked again: said once only
        node.turn()
    assert node.served() == ids(0, 1)
    assert node.namespaces.prepared == ["rc-i-00000000", "rc-i-00000001"]
    assert node.client.fetched == []  # nothing asked of the controller for it either
    refusals = [event for event in events if "refusing" in event["log_format"]]
    assert len(refusals) == 1
    assert repr(value)[:20] in refusals[0]["error"]
    assert str(bad["instance_id"]) in node.agent.failed
    ready, reason = node.agent.ready()
    assert not ready and "1 instance(s) not served" in reason


def test_an_instance_that_is_not_an_assignment_is_refused_once_naming_the_field(
    node: Node,
) -> None:
    bad = assignment(7, profile=True)
    bad["metadata_options"] = {"http_tokens": 7}
    with capturedLogs() as events:
        node.answer(assignment(0), bad, assignment(1))
        node.turn()
        node.answer(assignment(0), bad, assignment(1))  # asked again: said once only
        node.turn()
    assert node.served() == ids(0, 1)
    assert node.client.fetched == []  # nothing asked of the controller for it
    refusals = [event["error"] for event in events if "refusing" in event["log_format"]]
    assert refusals == [
        'instances[1].metadata_options.http_tokens: must be "optional" or "required" (got 7)'
    ]
    assert set(node.agent.failed) == ids(7)
    ready, reason = node.agent.ready()
    assert not ready and "1 instance(s) not served, e.g. i-00000007" in reason


def test_a_served_instance_whose_new_assignment_is_broken_keeps_its_last_good_one(
    node: Node,
) -> None:
    node.answer(assignment(0), assignment(1))
    node.turn()
    served = node.agent.slots["i-00000001"].assignment
    broken = assignment(1)
    broken["metadata"] = {"instance-id": "i-00000001", "launch-time": "soon"}
    node.answer(assignment(0), broken, revision=2)
    node.turn()
    assert node.served() == ids(0, 1)
    assert node.agent.slots["i-00000001"].assignment is served  # not torn down, not changed
    assert node.namespaces.released == []
    assert node.agent.failed["i-00000001"].startswith("instances[1].metadata.launch-time: ")
    assert not node.agent.ready()[0]
    fixed = assignment(1)
    fixed["metadata_options"] = {"http_tokens": "required"}
    node.answer(assignment(0), fixed, revision=3)
    node.turn()
    assert node.agent.failed == {}
    assert node.agent.ready() == (True, "ready")
    assert node.agent.slots["i-00000001"].view(0.0).options.http_tokens == "required"


def test_an_answer_that_is_not_an_assignments_answer_is_a_failed_poll(node: Node) -> None:
    with capturedLogs() as events:
        node.client.polls[-1].callback({"revision": 1, "instances": "all of them"})
    assert node.agent.poll_failures_by_reason["malformed"] == 1
    assert node.agent.poll_problem == "instances: must be a list (got 'all of them')"
    assert [event["error"] for event in events if "error" in event] == [node.agent.poll_problem]
    assert not node.agent.synced and node.agent.slots == {}
    polls = len(node.client.polls)
    node.reactor.advance(0.1)
    assert len(node.client.polls) == polls  # not asked again at once, in a loop
    node.reactor.advance(ReconnectPolicy().probe_seconds)
    assert len(node.client.polls) == polls + 1
    node.answer(assignment(0))
    node.turn()
    assert node.served() == ids(0) and node.agent.poll_problem is None


def test_a_valid_seventeen_digit_id_and_a_hypervisors_own_namespace_name_are_served(
    node: Node,
) -> None:
    entry = dict(assignment(0), instance_id="i-0123456789abcdef0", netns="tap_ns.vm-7")
    node.answer(entry)
    node.turn()
    assert node.served() == {"i-0123456789abcdef0"}
    assert node.namespaces.prepared == ["tap_ns.vm-7"]


def test_a_plug_names_the_assignments_namespace_or_the_prefix_and_id_before_one_comes(
    node: Node,
) -> None:
    assert node.agent.namespace_of("i-0123456789abcdef0") == "rc-i-0123456789abcdef0"
    node.answer(dict(assignment(0), instance_id="i-0123456789abcdef0", netns="tap_ns.vm-7"))
    node.turn()
    assert node.agent.namespace_of("i-0123456789abcdef0") == "tap_ns.vm-7"


# -- what the agent keeps across its restart, and what it finds when it starts ---------------


def kept_entry(number: int, expires: float | None = None) -> kept.Entry:
    """An instance as the agent before this one kept it, with a set expiring at `expires`."""
    held = None
    if expires is not None:
        issued = datetime.fromtimestamp(0, UTC)  # the fake reactor's start
        held = CredentialSet.from_node_api(credentials_until(expires), issued)
    entry = parse_instance(assignment(number, profile=expires is not None))
    return kept.Entry(f"i-{number:08x}", entry, held)


def finish(node: Node) -> None:
    while node.agent._work is not None:
        node.turn()


def test_kept_instances_are_served_with_their_set_before_the_controller_answers() -> None:
    reactor_start = MemoryReactorClock().seconds()
    node = Node(
        keeper=FakeKeeper(),
        restored=[kept_entry(1, expires=reactor_start + 3 * 3600), kept_entry(2)],
    )
    node.agent.startService()
    finish(node)
    assert node.served() == ids(1, 2)
    served = node.agent.slots["i-00000001"].credentials
    assert served is not None and served.current() is not None
    assert served.current().access_key_id == "ASIA0000000000000001"  # type: ignore[union-attr]
    assert node.client.fetched == []  # its refresh is not due yet
    assert node.changes == 1  # systemd hears READY=1 now
    assert node.agent.ready() == (False, "not yet synced with the controller")
    node.stop()


def test_kept_instances_never_make_the_agent_remove_anything(tmp_path: Path) -> None:
    record = OwnershipRecord(tmp_path / "namespaces.json")
    record.save({"rc-i-000000ff": Ownership("rc-i-000000ff", True, True)})
    keeper = FakeKeeper()
    node = Node(record=record, keeper=keeper, restored=[kept_entry(1)])
    node.namespaces.orphans = ["rc-i-000000fe"]
    node.agent.startService()
    finish(node)
    assert node.served() == ids(1)
    assert node.namespaces.released == [] and node.namespaces.swept == []
    node.answer(assignment(2))  # the controller's word: 1 is gone, 2 is new
    finish(node)
    assert node.served() == ids(2)
    assert sorted(node.namespaces.released) == ["rc-i-00000001", "rc-i-000000ff"]
    assert node.namespaces.swept == ["rc-i-000000fe"]
    assert set(keeper.entries) == ids(2)
    node.stop()


def test_a_kept_set_of_another_profile_is_not_served() -> None:
    start = MemoryReactorClock().seconds()
    node = Node(restored=[kept_entry(1, expires=start + 3 * 3600)])
    node.agent.startService()
    changed = assignment(1, profile=True)
    changed["instance_profile"] = dict(PROFILE, arn=PROFILE["arn"] + "-2")
    node.answer(changed)  # before the kept instance was set up
    finish(node)
    served = node.agent.slots["i-00000001"].credentials
    assert served is not None and served.current() is None
    assert node.client.fetched == ["i-00000001"]
    node.stop()


def test_what_is_kept_follows_each_instance_and_is_not_rewritten_unchanged() -> None:
    keeper = FakeKeeper()
    node = Node(keeper=keeper)
    node.agent.startService()
    node.answer(assignment(1, profile=True), assignment(2))
    finish(node)
    assert set(keeper.entries) == ids(1, 2)
    assert keeper.credentials_of("i-00000001") is None
    start = node.reactor.seconds()
    node.client.pending.pop().callback(credentials_until(start + 900))
    assert keeper.credentials_of("i-00000001") is not None
    writes = keeper.writes
    node.answer(assignment(1, profile=True), assignment(2), revision=2)
    finish(node)
    assert keeper.writes == writes  # nothing changed
    node.reactor.advance(900 - 60)  # refreshes fail; the set is dropped before its expiry
    node.client.refuse_credentials()
    node.reactor.advance(1)
    node.client.refuse_credentials()
    assert keeper.credentials_of("i-00000001") is None  # no expired secret left on disk
    node.answer(assignment(2), revision=3)
    finish(node)
    assert set(keeper.entries) == ids(2)
    node.stop()


def test_orphans_are_looked_for_once_after_the_first_answer(node: Node) -> None:
    node.namespaces.orphans = ["rc-i-00000001", "rc-i-00000002", "vm-7"]
    node.answer(assignment(1))
    finish(node)
    assert node.namespaces.swept == ["rc-i-00000002"]  # 1 is wanted, vm-7 not the agent's
    node.answer(assignment(1), revision=2)
    finish(node)
    assert node.namespaces.swept == ["rc-i-00000002"]


def test_credential_retries_hurry_once_the_controller_answers_again(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    hurried: list[float] = []
    monkeypatch.setattr(node.agent.credentials, "hurry", hurried.append)
    node.answer(assignment(1))
    finish(node)
    assert hurried == []  # a normal answer
    node.client.polls[-1].errback(ControllerUnreachable("connection refused"))
    node.reactor.advance(5)
    node.answer(assignment(1), revision=2)
    assert hurried == [RECOVERY_SPREAD_SECONDS]
    finish(node)
