"""ModifyInstancePlacement (issue 13): moving an instance to another node, as a live migration
does, on a real SQLite store with the caller and limits the API would give the handler
(authorization is the API's, tested in tests/e2e/test_ec2_placement.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller.actions import Caller, Context, Services
from controller.ec2.instances import run_instances
from controller.ec2.limits import Ec2Limits
from controller.ec2.placement import modify_instance_placement
from controller.errors import (
    IncorrectInstanceState,
    InsufficientInstanceCapacity,
    InvalidInstanceIDNotFound,
    InvalidParameterValue,
    UnauthorizedOperation,
)
from controller.identity import IdentitySigner, create_identity_key
from controller.store.records import Account, Instance, Node
from controller.store.sqlite import SQLiteStore
from tests.unit.callers import root, user

OPERATOR = "111111111111"
TENANT = "222222222222"
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
SIGNER = IdentitySigner(*create_identity_key(NOW, "us-east-1"))


class Waker:
    """The assignment hub's side: which nodes' long polls were woken, in order."""

    def __init__(self) -> None:
        self.woken: list[str] = []

    def changed(self, node: str) -> None:
        self.woken.append(node)


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


def enroll(
    store: SQLiteStore, name: str, capacity: int | None = None, subnet: str | None = None
) -> None:
    with store.transaction() as tx:
        tx.insert_node(Node(name, "00", "2026-01-01T00:00:00Z", None, None, 0, capacity, subnet))


def launch(store: SQLiteStore, node: str | None, caller: Caller | None = None) -> Instance:
    """Run RunInstances, on `node` (the operator's choice) or the least loaded."""
    placement = {"Placement": {"HostId": node}} if node is not None else {}
    with store.transaction() as tx:
        context = Context(
            tx,
            caller or root(OPERATOR),
            NOW,
            services=Services(identity_signer=SIGNER),
        )
        result = run_instances(
            context, {"ImageId": "emi-1", "MinCount": 1, "MaxCount": 1, **placement}
        )
        assert result is not None
        instance = tx.get_instance(result["instancesSet"][0]["instanceId"])
    assert instance is not None
    return instance


def move(
    store: SQLiteStore,
    instance_id: str,
    node: str,
    caller: Caller | None = None,
    limits: Ec2Limits | None = None,
    waker: Waker | None = None,
) -> Any:
    """Run ModifyInstancePlacement and, as the API does once it has committed, the wake-ups."""
    with store.transaction() as tx:
        context = Context(
            tx,
            caller or root(OPERATOR),
            NOW,
            services=Services(assignments=waker, ec2_limits=limits),
        )
        result = modify_instance_placement(context, {"InstanceId": instance_id, "HostId": node})
    for announce in context.on_commit:
        announce()
    return result


def current(store: SQLiteStore, instance_id: str) -> Instance:
    with store.transaction() as tx:
        instance = tx.get_instance(instance_id)
    assert instance is not None
    return instance


def revisions(store: SQLiteStore, *names: str) -> list[int]:
    with store.transaction() as tx:
        nodes = [tx.get_node(name) for name in names]
    return [node.revision if node else -1 for node in nodes]


def listed(store: SQLiteStore, node: str) -> list[str]:
    with store.transaction() as tx:
        return [instance.instance_id for instance in tx.list_node_instances(node)]


def test_a_move_changes_the_node_and_keeps_address_mac_and_signed_identity(
    store: SQLiteStore,
) -> None:
    enroll(store, "hv1")
    enroll(store, "hv2")
    before = launch(store, "hv1")
    assert before.identity_signature is not None
    assert move(store, before.instance_id, "hv2") == {"return": True}
    after = current(store, before.instance_id)
    assert (after.node_name, after.previous_node) == ("hv2", "hv1")
    assert after == replace(before, node_name="hv2", previous_node="hv1")
    assert listed(store, "hv1") == [] and listed(store, "hv2") == [before.instance_id]


def test_a_move_bumps_both_revisions_and_wakes_both_nodes_once_committed(
    store: SQLiteStore,
) -> None:
    enroll(store, "hv1")
    enroll(store, "hv2")
    enroll(store, "hv3")
    instance = launch(store, "hv1")
    before = revisions(store, "hv1", "hv2", "hv3")
    waker = Waker()
    move(store, instance.instance_id, "hv2", waker=waker)
    after = revisions(store, "hv1", "hv2", "hv3")
    assert after[0] > before[0] and after[1] > before[1] and after[2] == before[2]
    assert sorted(waker.woken) == ["hv1", "hv2"]


def test_moving_to_the_node_it_is_on_succeeds_and_changes_nothing(store: SQLiteStore) -> None:
    enroll(store, "hv1", capacity=1)
    instance = launch(store, "hv1")
    before = revisions(store, "hv1")
    waker = Waker()
    assert move(store, instance.instance_id, "hv1", waker=waker) == {"return": True}
    assert current(store, instance.instance_id) == instance
    assert revisions(store, "hv1") == before and waker.woken == []


def test_a_terminated_instance_is_incorrect_instance_state(store: SQLiteStore) -> None:
    enroll(store, "hv1")
    enroll(store, "hv2")
    instance = launch(store, "hv1")
    with store.transaction() as tx:
        tx.update_instance(replace(instance, state="terminated", terminated="2026-12-07T12:00:00Z"))
    with pytest.raises(IncorrectInstanceState) as raised:
        move(store, instance.instance_id, "hv2")
    assert raised.value.message == (
        f"The instance '{instance.instance_id}' is not in a state from which it can be modified."
    )
    assert current(store, instance.instance_id).node_name == "hv1"


@pytest.mark.parametrize("retired", [False, True], ids=["unknown", "retired"])
def test_an_unknown_or_retired_node_is_invalid_parameter_value_as_run_instances_says(
    store: SQLiteStore, retired: bool
) -> None:
    enroll(store, "hv1")
    enroll(store, "gone")
    if retired:
        with store.transaction() as tx:
            node = tx.get_node("gone")
            assert node is not None
            tx.update_node(replace(node, retired="2026-12-07T11:00:00Z"))
    instance = launch(store, "hv1")
    name = "gone" if retired else "nowhere"
    with pytest.raises(InvalidParameterValue) as raised:
        move(store, instance.instance_id, name)
    assert raised.value.message == (
        f"Value ({name}) for parameter hostId is invalid. No enrolled node has that name."
    )
    assert current(store, instance.instance_id).node_name == "hv1"


def test_a_full_node_is_insufficient_instance_capacity(store: SQLiteStore) -> None:
    enroll(store, "hv1")
    enroll(store, "hv2", capacity=1)
    launch(store, "hv2")
    instance = launch(store, "hv1")
    with pytest.raises(InsufficientInstanceCapacity) as raised:
        move(store, instance.instance_id, "hv2")
    assert (raised.value.status, raised.value.sender_fault) == (500, False)
    assert "0 more fit" in raised.value.message
    assert current(store, instance.instance_id).node_name == "hv1"


def test_the_configured_capacity_applies_to_a_node_without_its_own(store: SQLiteStore) -> None:
    enroll(store, "hv1")
    enroll(store, "hv2")
    launch(store, "hv2")
    instance = launch(store, "hv1")
    with pytest.raises(InsufficientInstanceCapacity):
        move(store, instance.instance_id, "hv2", limits=Ec2Limits(node_capacity=1))


def test_a_node_whose_subnet_cannot_hold_the_address_is_refused(store: SQLiteStore) -> None:
    enroll(store, "hv1", subnet="10.1.0.0/24")
    enroll(store, "hv2", subnet="10.2.0.0/24")
    instance = launch(store, "hv1")
    with pytest.raises(InvalidParameterValue) as raised:
        move(store, instance.instance_id, "hv2")
    assert raised.value.message == (
        "Value (hv2) for parameter hostId is invalid. The instance's private address"
        f" {instance.private_ip} is not one the node's subnet 10.2.0.0/24 gives, and a"
        " live-migrated instance keeps its address."
    )
    assert current(store, instance.instance_id) == instance


def test_an_address_the_destination_reserves_is_refused(store: SQLiteStore) -> None:
    """10.1.1.2 is an ordinary address of 10.1.0.0/16, but the DNS address of 10.1.1.0/24."""
    enroll(store, "hv1", subnet="10.1.0.0/16")
    enroll(store, "hv2", subnet="10.1.1.0/24")
    instance = launch(store, "hv1")
    with store.transaction() as tx:
        tx.update_instance(replace(instance, private_ip="10.1.1.2"))
    with pytest.raises(InvalidParameterValue, match=r"10\.1\.1\.2 is not one the node's subnet"):
        move(store, instance.instance_id, "hv2")


def test_a_destination_subnet_holding_the_address_takes_the_instance(store: SQLiteStore) -> None:
    enroll(store, "hv1", subnet="10.1.1.0/24")
    enroll(store, "hv2", subnet="10.1.0.0/16")
    instance = launch(store, "hv1")
    move(store, instance.instance_id, "hv2")
    after = current(store, instance.instance_id)
    assert (after.node_name, after.private_ip, after.subnet) == (
        "hv2",
        instance.private_ip,
        "10.1.0.0/16",
    )
    # The address stays taken in the subnet it moved into: the next launch there skips it.
    assert launch(store, "hv2").private_ip != instance.private_ip


@pytest.mark.parametrize(
    "caller",
    [user(OPERATOR, "alice"), root(TENANT), user(TENANT, "alice")],
    ids=["operator-user", "tenant-root", "tenant-user"],
)
def test_only_the_operators_root_may_choose_the_node(store: SQLiteStore, caller: Caller) -> None:
    enroll(store, "hv1")
    enroll(store, "hv2")
    instance = launch(store, None, caller=root(caller.account_id))  # hv1: the least loaded
    with pytest.raises(UnauthorizedOperation) as raised:
        move(store, instance.instance_id, "hv2", caller=caller)
    assert raised.value.status == 403
    assert "HostId chooses the node" in raised.value.message
    assert current(store, instance.instance_id).node_name == "hv1"


def test_the_operator_moves_a_tenants_instance(store: SQLiteStore) -> None:
    enroll(store, "hv1")
    enroll(store, "hv2")
    instance = launch(store, None, caller=root(TENANT))
    assert move(store, instance.instance_id, "hv2") == {"return": True}
    after = current(store, instance.instance_id)
    assert (after.node_name, after.account_id) == ("hv2", TENANT)


def test_a_tenant_may_not_move_the_operators_instance(store: SQLiteStore) -> None:
    enroll(store, "hv1")
    enroll(store, "hv2")
    instance = launch(store, "hv1")
    with pytest.raises(UnauthorizedOperation):
        move(store, instance.instance_id, "hv2", caller=root(TENANT))
    assert current(store, instance.instance_id).node_name == "hv1"


def test_moving_back_remembers_the_node_last_left(store: SQLiteStore) -> None:
    enroll(store, "hv1")
    enroll(store, "hv2")
    instance = launch(store, "hv1")
    move(store, instance.instance_id, "hv2")
    move(store, instance.instance_id, "hv1")
    after = current(store, instance.instance_id)
    assert (after.node_name, after.previous_node) == ("hv1", "hv2")


def test_an_unknown_instance_is_not_found(store: SQLiteStore) -> None:
    enroll(store, "hv1")
    with pytest.raises(InvalidInstanceIDNotFound) as raised:
        move(store, "i-0123456789abcdef0", "hv1")
    assert raised.value.message == "The instance ID 'i-0123456789abcdef0' does not exist"
