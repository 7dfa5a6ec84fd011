"""RunInstances has limits (issue 16, item 10): tags per instance, the account's quota, node
capacity, and Placement.HostId only for the operator.

Before, 100 instances x 2,000 tags took 3 s and 36 MiB of store in one request, any tenant could
fill any node, and nodes had no capacity. The handler runs here on a real SQLite store with the
caller and the configured limits it would get from the API (authorization is the API's, tested in
tests/e2e).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller.actions import Caller, Context, Services
from controller.ec2.instances import run_instances
from controller.ec2.limits import Ec2Limits, instances_allowed, place
from controller.errors import (
    ApiError,
    InstanceLimitExceeded,
    InsufficientInstanceCapacity,
    TagLimitExceeded,
    UnauthorizedOperation,
)
from controller.store.records import Account, Instance, Node
from controller.store.sqlite import SQLiteStore

OPERATOR = "111111111111"
TENANT = "222222222222"
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def root(account_id: str) -> Caller:
    arn = f"arn:aws:iam::{account_id}:root"
    return Caller(account_id, arn, "AKIAROOT", account_id, "root")


def user(account_id: str) -> Caller:
    arn = f"arn:aws:iam::{account_id}:user/alice"
    return Caller(account_id, arn, "AKIAUSER", "AIDAALICE", "user", user_name="alice")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "rolecall.db")
    with opened.transaction() as tx:
        tx.insert_account(Account(OPERATOR, "operator", "2026-01-01T00:00:00Z"))
        tx.insert_account(Account(TENANT, "tenant", "2026-01-02T00:00:00Z"))
    try:
        yield opened
    finally:
        opened.close()


def enroll(store: SQLiteStore, name: str, capacity: int | None = None) -> None:
    with store.transaction() as tx:
        tx.insert_node(Node(name, "00", "2026-01-01T00:00:00Z", None, None, 0, capacity))


def launch(
    store: SQLiteStore,
    caller: Caller | None = None,
    limits: Ec2Limits | None = None,
    **params: Any,
) -> list[str]:
    """Run RunInstances; the node of each launched instance."""
    request = {"ImageId": "emi-1", "MinCount": 1, "MaxCount": 1, **params}
    with store.transaction() as tx:
        context = Context(
            tx,
            caller or root(TENANT),
            NOW,
            services=Services(ec2_limits=limits or Ec2Limits()),
        )
        result = run_instances(context, request)
    assert result is not None
    return [item["placement"]["hostId"] for item in result["instancesSet"]]


def tag_specification(count: int) -> list[dict[str, Any]]:
    tags = [{"Key": f"k{number}", "Value": "v"} for number in range(count)]
    return [{"ResourceType": "instance", "Tags": tags}]


# tags


def test_fifty_tags_per_instance_are_accepted(store: SQLiteStore) -> None:
    enroll(store, "hv1")
    assert launch(store, TagSpecifications=tag_specification(50)) == ["hv1"]


def test_a_fifty_first_tag_is_tag_limit_exceeded_and_nothing_is_launched(
    store: SQLiteStore,
) -> None:
    enroll(store, "hv1")
    with pytest.raises(TagLimitExceeded) as raised:
        launch(store, MaxCount=100, TagSpecifications=tag_specification(51))
    assert (raised.value.code, raised.value.status) == ("TagLimitExceeded", 400)
    assert "maximum number of tags per resource is 50" in raised.value.message
    with store.transaction() as tx:
        assert tx.account_instance_count(TENANT) == 0


def test_tags_of_several_instance_specifications_count_together(store: SQLiteStore) -> None:
    enroll(store, "hv1")
    with pytest.raises(TagLimitExceeded):
        launch(store, TagSpecifications=tag_specification(30) * 2)


# the account's quota


def test_an_account_at_its_quota_gets_instance_limit_exceeded(store: SQLiteStore) -> None:
    enroll(store, "hv1")
    limits = Ec2Limits(max_instances_per_account=3)
    assert len(launch(store, limits=limits, MinCount=3, MaxCount=3)) == 3
    with pytest.raises(InstanceLimitExceeded) as raised:
        launch(store, limits=limits)
    assert raised.value.status == 400
    assert raised.value.message.startswith(
        "You have requested more instances (4) than your current instance limit of 3 allows"
    )


def test_the_quota_launches_as_many_as_fit_above_min_count(store: SQLiteStore) -> None:
    enroll(store, "hv1")
    limits = Ec2Limits(max_instances_per_account=5)
    launch(store, limits=limits, MinCount=2, MaxCount=2)
    assert len(launch(store, limits=limits, MinCount=1, MaxCount=10)) == 3


def test_the_quota_counts_only_the_callers_account_and_not_terminated_instances(
    store: SQLiteStore,
) -> None:
    enroll(store, "hv1")
    limits = Ec2Limits(max_instances_per_account=1)
    launch(store, caller=root(OPERATOR), limits=limits)
    with store.transaction() as tx:
        (instance,) = [i for i in tx.list_instances(OPERATOR, None, 10) if i.state != "terminated"]
        tx.update_instance(_terminated(instance))
    assert launch(store, caller=root(OPERATOR), limits=limits) == ["hv1"]
    assert launch(store, caller=root(TENANT), limits=limits) == ["hv1"]


def _terminated(instance: Instance) -> Instance:
    return replace(instance, state="terminated", terminated="2026-12-07T12:00:00Z")


# node capacity and placement


def test_placement_takes_the_least_loaded_node_with_room(store: SQLiteStore) -> None:
    enroll(store, "hv1", capacity=1)
    enroll(store, "hv2")
    enroll(store, "hv3")
    placed = launch(store, limits=Ec2Limits(node_capacity=2), MinCount=5, MaxCount=5)
    assert sorted(placed) == ["hv1", "hv2", "hv2", "hv3", "hv3"]


def test_full_nodes_are_insufficient_instance_capacity_a_server_error(store: SQLiteStore) -> None:
    enroll(store, "hv1", capacity=2)
    launch(store, MinCount=2, MaxCount=2)
    with pytest.raises(InsufficientInstanceCapacity) as raised:
        launch(store)
    assert (raised.value.status, raised.value.sender_fault) == (500, False)
    assert "0 more fit" in raised.value.message


def test_capacity_launches_as_many_as_fit_above_min_count(store: SQLiteStore) -> None:
    enroll(store, "hv1", capacity=3)
    assert launch(store, MinCount=1, MaxCount=10) == ["hv1"] * 3


def test_the_configured_node_capacity_applies_to_nodes_enrolled_without_one(
    store: SQLiteStore,
) -> None:
    enroll(store, "hv1")
    limits = Ec2Limits(node_capacity=2)
    launch(store, limits=limits, MinCount=2, MaxCount=2)
    with pytest.raises(InsufficientInstanceCapacity):
        launch(store, limits=limits)


def test_a_named_node_without_room_is_insufficient_capacity(store: SQLiteStore) -> None:
    enroll(store, "hv1", capacity=1)
    enroll(store, "hv2")
    launch(store, caller=root(OPERATOR), Placement={"HostId": "hv1"})
    with pytest.raises(InsufficientInstanceCapacity):
        launch(store, caller=root(OPERATOR), Placement={"HostId": "hv1"})


# Placement.HostId is the operator's


def test_the_operators_root_may_name_the_node(store: SQLiteStore) -> None:
    enroll(store, "hv1")
    enroll(store, "hv2")
    assert launch(store, caller=root(OPERATOR), Placement={"HostId": "hv2"}) == ["hv2"]


@pytest.mark.parametrize(
    "caller",
    [user(OPERATOR), root(TENANT), user(TENANT)],
    ids=["operator-user", "tenant-root", "tenant-user"],
)
def test_anyone_else_naming_a_node_is_unauthorized(store: SQLiteStore, caller: Caller) -> None:
    enroll(store, "hv1")
    with pytest.raises(UnauthorizedOperation) as raised:
        launch(store, caller=caller, Placement={"HostId": "hv1"})
    assert raised.value.status == 403
    with store.transaction() as tx:
        assert tx.account_instance_count(caller.account_id) == 0


# the pure rules


def test_instances_allowed_is_max_count_when_the_quota_has_room() -> None:
    assert instances_allowed(running=0, min_count=1, max_count=100, limit=1000) == 100


def test_place_fills_the_least_loaded_first_and_ties_by_name() -> None:
    nodes = [Node(name, "00", "", None, None, 0) for name in ("b", "a", "c")]
    chosen = place(nodes, {"a": 2, "b": 0, "c": 1}, 10, 1, 4)
    assert chosen == ["b", "b", "c", "a"]


def test_place_with_no_nodes_says_how_to_enroll_one() -> None:
    with pytest.raises(ApiError, match="No node is enrolled"):
        place([], {}, 10, 1, 1)
