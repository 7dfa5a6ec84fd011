"""Groups on a real (in-memory SQLite) store, below the HTTP API: what the end-to-end tests cannot
reach yet (managed policies attached to a group, which AttachGroupPolicy will create) and the
quota's arithmetic."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from controller.accounts import ensure_first_account
from controller.actions import Context
from controller.authorize import authorize
from controller.compose import api_registry
from controller.errors import AccessDenied, DeleteConflict, LimitExceeded
from controller.iam.groups import GROUP_POLICIES_QUOTA, check_group_policy
from controller.policy.document import policy_size
from controller.store.records import (
    Group,
    GroupPolicy,
    ManagedPolicy,
    PolicyAttachment,
    PolicyVersion,
    User,
)
from controller.store.sqlite import SQLiteStore
from tests.unit import callers

ACCOUNT_ID = "111122223333"
NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)
CREATED = "2024-05-01T00:00:00Z"
LIST_USERS = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "iam:ListUsers", "Resource": "*"}],
    }
)


@pytest.fixture
def context() -> Iterator[Context]:
    """The root of an account holding user alice in group devs, and a managed policy."""
    store = SQLiteStore(":memory:")
    with store.transaction() as tx:
        ensure_first_account(tx, ACCOUNT_ID, "test", CREATED)
        tx.insert_user(User("AIDAALICE", ACCOUNT_ID, "alice", "/", CREATED))
        tx.insert_group(Group("AGPADEVS", ACCOUNT_ID, "devs", "/", CREATED))
        tx.add_group_member("AGPADEVS", "AIDAALICE")
        tx.insert_managed_policy(
            ManagedPolicy("ANPALIST", ACCOUNT_ID, "list", "/", None, 1, 2, CREATED, CREATED)
        )
        tx.insert_policy_version(PolicyVersion("ANPALIST", 1, LIST_USERS, CREATED))
        yield Context(tx, callers.root(ACCOUNT_ID), NOW)
    store.close()


def call(context: Context, action: str, **params: Any) -> Any:
    found = api_registry().get("iam", action)
    assert found is not None
    return found.handler(context, params)


def attach(context: Context, entity_id: str, kind: str = "group") -> str:
    arn = f"arn:aws:iam::{ACCOUNT_ID}:policy/list"
    context.tx.attach_policy(PolicyAttachment(entity_id, kind, ACCOUNT_ID, arn, "ANPALIST"))
    return arn


def test_a_group_with_an_attached_managed_policy_is_not_deleted(context: Context) -> None:
    call(context, "RemoveUserFromGroup", GroupName="devs", UserName="alice")
    arn = attach(context, "AGPADEVS")
    with pytest.raises(DeleteConflict, match=r"^Cannot delete entity, must detach all policies"):
        call(context, "DeleteGroup", GroupName="devs")
    context.tx.detach_policy("AGPADEVS", arn)
    call(context, "DeleteGroup", GroupName="DEVS")
    assert context.tx.get_group(ACCOUNT_ID, "devs") is None


def test_a_managed_policy_attached_to_a_users_group_counts_until_it_leaves(
    context: Context,
) -> None:
    alice = callers.user(ACCOUNT_ID, "alice")
    as_alice = Context(context.tx, alice, NOW)
    with pytest.raises(AccessDenied):
        authorize(as_alice, "iam:ListUsers", "*")
    attach(context, "AGPADEVS")
    authorize(as_alice, "iam:ListUsers", "*")
    call(context, "RemoveUserFromGroup", GroupName="devs", UserName="alice")
    with pytest.raises(AccessDenied):
        authorize(as_alice, "iam:ListUsers", "*")


def test_a_group_policy_counts_for_a_user_in_several_groups(context: Context) -> None:
    context.tx.insert_group(Group("AGPAOPS", ACCOUNT_ID, "ops", "/", CREATED))
    call(context, "AddUserToGroup", GroupName="ops", UserName="alice")
    context.tx.put_group_policy(GroupPolicy("AGPAOPS", "list", LIST_USERS))
    authorize(Context(context.tx, callers.user(ACCOUNT_ID, "alice"), NOW), "iam:ListUsers", "*")


def _document(characters: int, indent: int | None) -> str:
    resources = [f"arn:aws:s3:::b/{index:04d}" for index in range(characters)]
    statement = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": resources}
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]}, indent=indent)


def test_the_group_quota_does_not_count_whitespace_and_not_the_policy_replaced() -> None:
    spacious = _document(220, indent=8)  # about 6,000 characters, 4,500 of them not spaces
    assert len(spacious) > GROUP_POLICIES_QUOTA >= policy_size(spacious)
    check_group_policy([], "p", spacious, "devs")
    existing = [GroupPolicy("AGPA", "P", spacious)]
    check_group_policy(existing, "p", spacious, "devs")  # replaces P: counted once
    with pytest.raises(LimitExceeded) as raised:
        check_group_policy(existing, "q", spacious, "devs")
    assert raised.value.message == "Maximum policy size of 5120 bytes exceeded for group devs"
