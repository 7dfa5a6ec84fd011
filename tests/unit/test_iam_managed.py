"""Managed policies below the API (controller/iam/managed.py), run as the API runs handlers (one
store transaction per call) on a real SQLite store: what needs groups or permissions boundaries,
which other parts of issue 15 make through the API. End to end: tests/e2e/test_managed_policies.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller import awsmanaged
from controller.actions import Caller, Context, Result
from controller.authorize import authorize
from controller.errors import AccessDenied, DeleteConflict, LimitExceeded, NoSuchEntity
from controller.iam import managed, roles, users
from controller.store.records import Account, Group
from controller.store.sqlite import SQLiteStore
from tests.unit.callers import root, user

ACCOUNT = "111111111111"
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:*"}
        ],
    }
)


def document(effect: str, action: str) -> str:
    statement = {"Effect": effect, "Action": action, "Resource": "*"}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


class Api:
    def __init__(self, store: SQLiteStore, caller: Caller) -> None:
        self.store, self.caller = store, caller

    def __call__(self, handler: Callable[[Context, dict[str, Any]], Result], **params: Any) -> Any:
        with self.store.transaction() as tx:
            return handler(Context(tx, self.caller, NOW), params)

    def action(self, name: str, **params: Any) -> Any:
        found = managed.registry.get("iam", name)
        assert found is not None
        return self(found.handler, **params)

    def policy(self, name: str, text: str) -> str:
        created = self(managed.create_policy, PolicyName=name, PolicyDocument=text)
        return str(created["Policy"]["Arn"])


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    store = SQLiteStore(tmp_path / "rolecall.db")
    with store.transaction() as tx:
        tx.insert_account(Account(ACCOUNT, "first", "2026-01-01T00:00:00Z"))
        tx.insert_group(Group("AGPADEVS", ACCOUNT, "devs", "/team/", "2026-01-01T00:00:00Z"))
    try:
        yield Api(store, root(ACCOUNT))
    finally:
        store.close()


def test_a_policy_attached_to_a_group_applies_to_its_members_until_detached(api: Api) -> None:
    arn = api.policy("list-roles", document("Allow", "iam:ListRoles"))
    api(users.create_user, UserName="alice")
    with api.store.transaction() as tx:
        alice = tx.get_user(ACCOUNT, "alice")
        assert alice is not None
        tx.add_group_member("AGPADEVS", alice.user_id)
    api.action("AttachGroupPolicy", GroupName="DEVS", PolicyArn=arn)
    listed = api.action("ListAttachedGroupPolicies", GroupName="devs", PathPrefix="/")
    assert listed["AttachedPolicies"] == [{"PolicyName": "list-roles", "PolicyArn": arn}]
    as_alice = replace(user(ACCOUNT, "alice"), issuer_user_id=alice.user_id)
    with api.store.transaction() as tx:
        authorize(Context(tx, as_alice, NOW), "iam:ListRoles", "*")
    entities = api.action("ListEntitiesForPolicy", PolicyArn=arn)
    assert entities["PolicyGroups"] == [{"GroupName": "devs", "GroupId": "AGPADEVS"}]
    assert api(managed.get_policy, PolicyArn=arn)["Policy"]["AttachmentCount"] == 1
    api.action("DetachGroupPolicy", GroupName="devs", PolicyArn=arn)
    with api.store.transaction() as tx, pytest.raises(AccessDenied):
        authorize(Context(tx, as_alice, NOW), "iam:ListRoles", "*")


def test_a_group_holds_ten_managed_policies_at_most(api: Api) -> None:
    for index in range(10):
        arn = api.policy(f"p{index}", document("Allow", f"s3:Get{index}"))
        api.action("AttachGroupPolicy", GroupName="devs", PolicyArn=arn)
    extra = api.policy("p10", document("Allow", "s3:Get10"))
    with pytest.raises(LimitExceeded) as raised:
        api.action("AttachGroupPolicy", GroupName="devs", PolicyArn=extra)
    assert raised.value.message == "Cannot exceed quota for PoliciesPerGroup: 10"
    with pytest.raises(NoSuchEntity, match=r"^The group with name nobody cannot be found\.$"):
        api.action("AttachGroupPolicy", GroupName="nobody", PolicyArn=extra)


def test_a_policy_used_as_a_boundary_is_counted_listed_and_not_deleted(api: Api) -> None:
    arn = api.policy("bound", document("Allow", "s3:*"))
    api(roles.create_role, RoleName="bounded", AssumeRolePolicyDocument=TRUST)
    with api.store.transaction() as tx:
        role = tx.get_role(ACCOUNT, "bounded")
        assert role is not None
        tx.update_role(replace(role, permissions_boundary=arn))
    shape = api(managed.get_policy, PolicyArn=arn)["Policy"]
    assert (shape["AttachmentCount"], shape["PermissionsBoundaryUsageCount"]) == (0, 1)
    used = api.action(
        "ListEntitiesForPolicy", PolicyArn=arn, PolicyUsageFilter="PermissionsBoundary"
    )
    assert used["PolicyRoles"] == [{"RoleName": "bounded", "RoleId": role.role_id}]
    attached = api.action(
        "ListEntitiesForPolicy", PolicyArn=arn, PolicyUsageFilter="PermissionsPolicy"
    )
    assert attached["PolicyRoles"] == []
    listed = api(managed.list_policies, PolicyUsageFilter="PermissionsBoundary")["Policies"]
    assert [policy["Arn"] for policy in listed] == [arn]
    with pytest.raises(DeleteConflict, match=r"^Cannot delete a policy attached to entities\.$"):
        api(managed.delete_policy, PolicyArn=arn)


def test_an_attached_aws_managed_policy_whose_file_is_gone_allows_nothing_and_detaches(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = awsmanaged.AwsManagedPolicy("Lister", "/", document("Allow", "iam:*"), "x")
    monkeypatch.setattr(awsmanaged, "catalog", awsmanaged.AwsManagedCatalog({policy.arn: policy}))
    api(users.create_user, UserName="bob")
    api.action("AttachUserPolicy", UserName="bob", PolicyArn=policy.arn)
    with api.store.transaction() as tx:
        bob = tx.get_user(ACCOUNT, "bob")
        assert bob is not None
        as_bob = replace(user(ACCOUNT, "bob"), issuer_user_id=bob.user_id)
        authorize(Context(tx, as_bob, NOW), "iam:ListRoles", "*")
    monkeypatch.setattr(awsmanaged, "catalog", awsmanaged.AwsManagedCatalog())
    with api.store.transaction() as tx, pytest.raises(AccessDenied):
        authorize(Context(tx, as_bob, NOW), "iam:ListRoles", "*")
    api.action("DetachUserPolicy", UserName="bob", PolicyArn=policy.arn)
    assert api.action("ListAttachedUserPolicies", UserName="bob")["AttachedPolicies"] == []
