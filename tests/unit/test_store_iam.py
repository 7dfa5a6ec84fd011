"""The store's part of issue 15 on both backends: managed policies and their versions,
attachments, groups and their members, permissions boundaries, RoleLastUsed and instance
metadata defaults."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controller.store.base import Conflict, Store
from controller.store.records import (
    Group,
    GroupPolicy,
    ManagedPolicy,
    MetadataDefaults,
    PolicyAttachment,
    PolicyVersion,
    User,
)
from tests.unit.test_store import (  # noqa: F401  (fixtures)
    ACCOUNT,
    CREATED,
    OTHER_ACCOUNT,
    add_roles,
    backend,
    open_store,
    role,
)
from tests.unit.test_store import store as _store

store = _store  # the fixture, under its name

ALLOW = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}'
DENY = '{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"s3:*","Resource":"*"}]}'
AWS_ARN = "arn:aws:iam::aws:policy/ReadOnlyAccess"


def policy(name: str, policy_id: str, account_id: str = ACCOUNT, path: str = "/") -> ManagedPolicy:
    return ManagedPolicy(policy_id, account_id, name, path, None, 1, 2, CREATED, CREATED)


def user(name: str, user_id: str, account_id: str = ACCOUNT) -> User:
    return User(user_id, account_id, name, "/", CREATED)


def test_managed_policies_are_named_ignoring_case_and_listed_by_path(store: Store) -> None:
    with store.transaction() as tx:
        tx.insert_managed_policy(policy("Read", "ANPA1", path="/team/"))
        tx.insert_managed_policy(policy("write", "ANPA2"))
        tx.insert_managed_policy(policy("Read", "ANPA3", account_id=OTHER_ACCOUNT))
    with pytest.raises(Conflict), store.transaction() as tx:
        tx.insert_managed_policy(policy("READ", "ANPA4"))
    with store.transaction() as tx:
        found = tx.get_managed_policy(ACCOUNT, "rEaD")
        assert found is not None and found.policy_id == "ANPA1"
        assert found.arn == f"arn:aws:iam::{ACCOUNT}:policy/team/Read"
        assert [p.name for p in tx.list_managed_policies(ACCOUNT, "/", None, 10)] == [
            "Read",
            "write",
        ]
        assert [p.name for p in tx.list_managed_policies(ACCOUNT, "/team/", None, 10)] == ["Read"]
        assert [p.name for p in tx.list_managed_policies(ACCOUNT, "/", "read", 10)] == ["write"]
        tx.update_managed_policy(replace(found, description="d", default_version=2, next_version=3))
        assert tx.get_managed_policy_by_id("ANPA1") == replace(
            found, description="d", default_version=2, next_version=3
        )


def test_versions_are_listed_newest_first_and_go_with_their_policy(store: Store) -> None:
    with store.transaction() as tx:
        tx.insert_managed_policy(policy("p", "ANPA1"))
        tx.put_tags("ANPA1", [])
        for number, document in ((1, ALLOW), (2, DENY), (3, ALLOW)):
            tx.insert_policy_version(PolicyVersion("ANPA1", number, document, CREATED))
        tx.delete_policy_version("ANPA1", 2)
        assert [v.version_id for v in tx.list_policy_versions("ANPA1")] == ["v3", "v1"]
        assert tx.get_policy_version("ANPA1", 2) is None
        assert tx.get_policy_version("ANPA1", 3) == PolicyVersion("ANPA1", 3, ALLOW, CREATED)
        tx.delete_managed_policy("ANPA1")
        assert tx.get_managed_policy_by_id("ANPA1") is None
        assert tx.list_policy_versions("ANPA1") == []


def test_attachments_keep_their_order_and_read_the_default_version(store: Store) -> None:
    first, second = role("first"), role("second")
    add_roles(store, first, second)
    with store.transaction() as tx:
        for policy_id, default in (("ANPA1", 1), ("ANPA2", 2)):
            tx.insert_managed_policy(replace(policy(policy_id, policy_id), default_version=default))
            tx.insert_policy_version(PolicyVersion(policy_id, 1, ALLOW, CREATED))
            tx.insert_policy_version(PolicyVersion(policy_id, 2, DENY, CREATED))
        one = tx.get_managed_policy_by_id("ANPA1")
        two = tx.get_managed_policy_by_id("ANPA2")
        assert one is not None and two is not None
        attach = [
            PolicyAttachment(first.role_id, "role", ACCOUNT, two.arn, "ANPA2"),
            PolicyAttachment(first.role_id, "role", ACCOUNT, AWS_ARN, None),
            PolicyAttachment(first.role_id, "role", ACCOUNT, one.arn, "ANPA1"),
            PolicyAttachment(second.role_id, "role", ACCOUNT, one.arn, "ANPA1"),
        ]
        assert [tx.attach_policy(each) for each in attach] == [True] * 4
        assert tx.attach_policy(attach[0]) is False  # attaching again changes nothing
        assert tx.list_attached_policies(first.role_id) == attach[:3]
        assert tx.attached_documents([second.role_id, first.role_id]) == [
            (one.arn, ALLOW),
            (two.arn, DENY),
            (AWS_ARN, None),
            (one.arn, ALLOW),
        ]
        assert tx.count_policy_attachments(ACCOUNT) == {one.arn: 2, two.arn: 1, AWS_ARN: 1}
        assert tx.count_policy_attachments(OTHER_ACCOUNT) == {}
        assert {a.entity_id for a in tx.list_policy_attachments(one.arn)} == {
            first.role_id,
            second.role_id,
        }
        assert tx.detach_policy(first.role_id, one.arn) is True
        assert tx.detach_policy(first.role_id, one.arn) is False
        assert tx.attached_documents([first.role_id]) == [(two.arn, DENY), (AWS_ARN, None)]
        assert tx.attached_documents([]) == []


def test_groups_members_and_their_policies(store: Store) -> None:
    with store.transaction() as tx:
        tx.insert_user(user("bob", "AIDA1"))
        tx.insert_user(user("Alice", "AIDA2"))
        tx.insert_group(Group("AGPA1", ACCOUNT, "Admins", "/ops/", CREATED))
        tx.insert_group(Group("AGPA2", ACCOUNT, "devs", "/", CREATED))
    with pytest.raises(Conflict), store.transaction() as tx:
        tx.insert_group(Group("AGPA3", ACCOUNT, "ADMINS", "/", CREATED))
    with store.transaction() as tx:
        admins = Group("AGPA1", ACCOUNT, "Admins", "/ops/", CREATED)
        assert tx.get_group(ACCOUNT, "admins") == admins
        assert [g.name for g in tx.list_groups(ACCOUNT, "/", None, 10)] == ["Admins", "devs"]
        assert [g.name for g in tx.list_groups(ACCOUNT, "/ops/", None, 10)] == ["Admins"]
        assert tx.add_group_member("AGPA1", "AIDA1") is True
        assert tx.add_group_member("AGPA1", "AIDA1") is False
        assert tx.add_group_member("AGPA1", "AIDA2") is True
        assert tx.add_group_member("AGPA2", "AIDA1") is True
        assert [u.name for u in tx.list_group_members("AGPA1", None, 10)] == ["Alice", "bob"]
        assert [u.name for u in tx.list_group_members("AGPA1", "alice", 10)] == ["bob"]
        assert tx.count_group_members("AGPA1") == 2
        assert [g.name for g in tx.list_groups_for_user("AIDA1")] == ["Admins", "devs"]
        tx.put_group_policy(GroupPolicy("AGPA1", "S3", ALLOW))
        tx.put_group_policy(GroupPolicy("AGPA1", "s3", DENY))  # replaces, ignoring case
        assert tx.list_group_policies("AGPA1") == [GroupPolicy("AGPA1", "s3", DENY)]
        assert tx.remove_group_member("AGPA1", "AIDA1") is True
        assert tx.remove_group_member("AGPA1", "AIDA1") is False
        tx.delete_user("AIDA2")  # a deleted user leaves its groups
        assert tx.count_group_members("AGPA1") == 0
        tx.delete_group("AGPA2")
        assert tx.get_group_by_id("AGPA2") is None
        assert [g.name for g in tx.list_groups_for_user("AIDA1")] == []


def test_a_group_renamed_or_moved_keeps_its_id_members_and_policies(store: Store) -> None:
    with store.transaction() as tx:
        tx.insert_user(user("bob", "AIDA1"))
        tx.insert_group(Group("AGPA1", ACCOUNT, "devs", "/", CREATED))
        tx.insert_group(Group("AGPA2", ACCOUNT, "ops", "/", CREATED))
        tx.add_group_member("AGPA1", "AIDA1")
        tx.put_group_policy(GroupPolicy("AGPA1", "s3", ALLOW))
        tx.update_group(Group("AGPA1", ACCOUNT, "Builders", "/ci/", CREATED))
    with pytest.raises(Conflict), store.transaction() as tx:
        tx.update_group(Group("AGPA1", ACCOUNT, "OPS", "/", CREATED))
    with store.transaction() as tx:
        assert tx.get_group(ACCOUNT, "devs") is None
        moved = tx.get_group(ACCOUNT, "builders")
        assert moved == Group("AGPA1", ACCOUNT, "Builders", "/ci/", CREATED)
        assert moved.arn == f"arn:aws:iam::{ACCOUNT}:group/ci/Builders"
        assert [g.name for g in tx.list_groups_for_user("AIDA1")] == ["Builders"]
        assert tx.list_group_policies("AGPA1") == [GroupPolicy("AGPA1", "s3", ALLOW)]
        assert [g.name for g in tx.list_groups(ACCOUNT, "/ci/", None, 10)] == ["Builders"]


def test_boundaries_and_last_use_are_kept_with_their_identity(store: Store) -> None:
    bounded = replace(role("bounded"), permissions_boundary=AWS_ARN)
    add_roles(store, bounded)
    with store.transaction() as tx:
        tx.insert_user(replace(user("u", "AIDA1"), permissions_boundary=AWS_ARN))
        found = tx.get_role(ACCOUNT, "bounded")
        assert found is not None and found.permissions_boundary == AWS_ARN
        assert found.last_used is None
        tx.update_role(replace(found, permissions_boundary=None))
        tx.set_user_permissions_boundary("AIDA1", None)
        assert (tx.get_user(ACCOUNT, "u") or user("", "")).permissions_boundary is None
        tx.record_roles_last_used(
            [
                (bounded.role_id, "2026-01-02T00:00:00Z", "eu-west-1"),
                (bounded.role_id, "2026-01-01T00:00:00Z", "us-east-1"),  # older: no change
                ("AROAGONE", "2026-01-03T00:00:00Z", "us-east-1"),  # gone: skipped
            ]
        )
        found = tx.get_role_by_id(bounded.role_id)
        assert found is not None
        assert (found.permissions_boundary, found.last_used, found.last_used_region) == (
            None,
            "2026-01-02T00:00:00Z",
            "eu-west-1",
        )


def test_metadata_defaults_are_one_row_per_account(store: Store) -> None:
    with store.transaction() as tx:
        assert tx.get_metadata_defaults(ACCOUNT) is None
        tx.put_metadata_defaults(MetadataDefaults(ACCOUNT, "optional", 2, None, "enabled", CREATED))
        tx.put_metadata_defaults(MetadataDefaults(ACCOUNT, "optional", 3, None, None, CREATED))
        assert tx.get_metadata_defaults(ACCOUNT) == MetadataDefaults(
            ACCOUNT, "optional", 3, None, None, CREATED
        )
        assert tx.get_metadata_defaults(OTHER_ACCOUNT) is None


def test_policy_entities_and_boundary_counts_name_who_uses_a_policy_and_how(store: Store) -> None:
    local_arn = f"arn:aws:iam::{ACCOUNT}:policy/Read"
    add_roles(store, replace(role("Attached"), permissions_boundary=AWS_ARN), role("plain"))
    with store.transaction() as tx:
        attached_role = tx.get_role(ACCOUNT, "attached")
        assert attached_role is not None
        tx.insert_managed_policy(policy("Read", "ANPA1"))
        tx.insert_user(replace(user("bob", "AIDA1"), permissions_boundary=AWS_ARN))
        tx.insert_user(replace(user("Other", "AIDA2", OTHER_ACCOUNT), permissions_boundary=AWS_ARN))
        tx.insert_group(Group("AGPA1", ACCOUNT, "devs", "/team/", CREATED))
        tx.attach_policy(PolicyAttachment(attached_role.role_id, "role", ACCOUNT, AWS_ARN, None))
        tx.attach_policy(PolicyAttachment("AGPA1", "group", ACCOUNT, AWS_ARN, None))
        tx.attach_policy(PolicyAttachment("AIDA1", "user", ACCOUNT, local_arn, "ANPA1"))
    with store.transaction() as tx:
        assert tx.count_boundary_uses(ACCOUNT) == {AWS_ARN: 2}
        assert tx.count_boundary_uses(OTHER_ACCOUNT) == {AWS_ARN: 1}
        found = [
            (e.kind, e.name, e.path, e.usage) for e in tx.list_policy_entities(ACCOUNT, AWS_ARN)
        ]
        assert found == [
            ("group", "devs", "/team/", "PermissionsPolicy"),
            ("role", "Attached", "/", "PermissionsBoundary"),
            ("role", "Attached", "/", "PermissionsPolicy"),
            ("user", "bob", "/", "PermissionsBoundary"),
        ]
        assert [(e.kind, e.entity_id) for e in tx.list_policy_entities(ACCOUNT, local_arn)] == [
            ("user", "AIDA1")
        ]
        assert tx.list_policy_entities(OTHER_ACCOUNT, local_arn) == []
