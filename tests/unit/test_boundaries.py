"""Permissions boundaries in process, on a real SQLite store: which ARNs can be a boundary, the
value of iam:PermissionsBoundary for each kind of action, one reader of an identity's policies
for decisions and the simulator, and the simulator's answers with a boundary."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import controller.iam
from controller import awsmanaged
from controller.actions import Caller, Context, RequestFacts
from controller.authorize import gather_caller, identity_sources
from controller.awsmanaged import AwsManagedCatalog, AwsManagedPolicy
from controller.errors import InvalidInput, NoSuchEntity
from controller.iam import boundaries, simulate
from controller.permissions import decide
from controller.query import parse_input
from controller.store.records import (
    Account,
    Group,
    GroupPolicy,
    ManagedPolicy,
    PolicyAttachment,
    PolicyVersion,
    Role,
    RolePolicy,
    User,
    UserPolicy,
)
from controller.store.sqlite import SQLiteStore
from tests.unit.callers import root, user

ACCOUNT = "123456789012"
OTHER = "210987654321"
CREATED = "2026-01-01T00:00:00Z"
NOW = datetime(2026, 1, 2, tzinfo=UTC)
AWS_ARN = "arn:aws:iam::aws:policy/job-function/ViewOnlyAccess"


def document(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(action: str) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": "*"}


def deny(action: str) -> dict[str, Any]:
    return {"Effect": "Deny", "Action": action, "Resource": "*"}


def managed(store: SQLiteStore, name: str, text: str, path: str = "/") -> str:
    policy = ManagedPolicy(f"ANPA{name.upper()}", ACCOUNT, name, path, None, 1, 2, CREATED, CREATED)
    with store.transaction() as tx:
        tx.insert_managed_policy(policy)
        tx.insert_policy_version(PolicyVersion(policy.policy_id, 1, text, CREATED))
    return policy.arn


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "rolecall.db")
    with opened.transaction() as tx:
        tx.insert_account(Account(ACCOUNT, "first", CREATED))
        tx.insert_account(Account(OTHER, "second", CREATED))
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def catalog(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator provides one AWS-managed policy."""
    provided = AwsManagedPolicy(
        "ViewOnlyAccess", "/job-function/", document(allow("iam:Get*")), CREATED
    )
    monkeypatch.setattr(awsmanaged, "catalog", AwsManagedCatalog({provided.arn: provided}))


def call(store: SQLiteStore, handler: Any, **params: Any) -> Any:
    with store.transaction() as tx:
        return handler(Context(tx, root(ACCOUNT), NOW), params)


# Which ARNs can be a boundary


@pytest.mark.usefixtures("catalog")
def test_a_boundary_is_a_customer_managed_policy_of_the_account_or_a_provided_aws_one(
    store: SQLiteStore,
) -> None:
    local = managed(store, "cap", document(allow("iam:Get*")), path="/team/")
    with store.transaction() as tx:
        context = Context(tx, root(ACCOUNT), NOW)
        assert [boundaries.check_boundary(context, arn) for arn in (local, AWS_ARN)] == [
            local,
            AWS_ARN,
        ]


@pytest.mark.usefixtures("catalog")
@pytest.mark.parametrize(
    ("arn", "error"),
    [
        ("arn:aws:iam::123456789012:role/not-a-policy", InvalidInput),
        ("arn:aws:iam::12345:policy/short-account", InvalidInput),
        ("arn:aws:s3:::bucket/policy/cap", InvalidInput),
        ("arn:aws:iam::123456789012:policy/cap", NoSuchEntity),  # its path is /team/
        ("arn:aws:iam::123456789012:policy/team/missing", NoSuchEntity),
        ("arn:aws:iam::210987654321:policy/team/cap", NoSuchEntity),  # another account's
        ("arn:aws:iam::aws:policy/ViewOnlyAccess", NoSuchEntity),  # the catalog's has a path
    ],
)
def test_an_arn_that_names_no_usable_policy_is_refused_with_iams_error(
    store: SQLiteStore, arn: str, error: type[Exception]
) -> None:
    managed(store, "cap", document(allow("iam:Get*")), path="/team/")
    with store.transaction() as tx, pytest.raises(error) as raised:
        boundaries.check_boundary(Context(tx, root(ACCOUNT), NOW), arn)
    expected = (
        f"ARN {arn} is not valid."
        if error is InvalidInput
        else f"Scope ARN: {arn} does not exist or is not attachable."
    )
    assert str(raised.value) == expected


# The value of iam:PermissionsBoundary


def test_the_key_is_the_requested_boundary_or_the_targets_current_one_and_absent_without(
    store: SQLiteStore,
) -> None:
    arn = managed(store, "cap", document(allow("iam:Get*")))
    with store.transaction() as tx:
        tx.insert_role(Role("AROAB", ACCOUNT, "bounded", "/", "{}", None, 3600, CREATED, arn))
        tx.insert_role(Role("AROAU", ACCOUNT, "free", "/", "{}", None, 3600, CREATED))
        tx.insert_user(User("AIDAB", ACCOUNT, "bounded", "/", CREATED, arn))
        context = Context(tx, root(ACCOUNT), NOW)
        assert boundaries.requested_boundary(context, {"PermissionsBoundary": arn}) == {
            "iam:PermissionsBoundary": (arn,)
        }
        assert boundaries.requested_boundary(context, {"RoleName": "x"}) == {}
        assert boundaries.role_boundary(context, {"RoleName": "BOUNDED"}) == {
            "iam:PermissionsBoundary": (arn,)
        }
        assert boundaries.role_boundary(context, {"RoleName": "free"}) == {}
        assert boundaries.role_boundary(context, {"RoleName": "missing"}) == {}
        assert boundaries.user_boundary(context, {"UserName": "bounded"}) == {
            "iam:PermissionsBoundary": (arn,)
        }
        assert boundaries.user_boundary(context, {}) == {}


def test_every_action_the_authorization_reference_lists_carries_the_key(
    store: SQLiteStore,
) -> None:
    """AWS's service authorization reference for IAM: these actions have iam:PermissionsBoundary
    (the set ones the requested boundary, the others the target's current one)."""
    requested = {
        "CreateRole",
        "CreateUser",
        "PutRolePermissionsBoundary",
        "PutUserPermissionsBoundary",
    }
    current = {
        "AttachRolePolicy", "AttachUserPolicy", "DeleteRole", "DeleteRolePermissionsBoundary",
        "DeleteRolePolicy", "DeleteUserPermissionsBoundary", "DeleteUserPolicy",
        "DetachRolePolicy", "DetachUserPolicy", "GetRole", "PutRolePolicy", "PutUserPolicy",
        "UpdateAssumeRolePolicy", "UpdateRole", "UpdateRoleDescription",
    }  # fmt: skip
    keyed = {action.name: action.condition_keys for action in controller.iam.registry}
    assert {name for name, keys in keyed.items() if keys is boundaries.requested_boundary} == (
        requested
    )
    # Attach/Detach*Policy add iam:PolicyARN to the entity's boundary: ask each action's keys
    # for a role and a user with a boundary (and their other names) what they carry.
    bounded = managed(store, "cap", document(allow("iam:Get*")))
    params = {"RoleName": "bounded", "UserName": "bounded", "PolicyArn": bounded}
    with store.transaction() as tx:
        tx.insert_role(Role("AROAB", ACCOUNT, "bounded", "/", "{}", None, 3600, CREATED, bounded))
        tx.insert_user(User("AIDAB", ACCOUNT, "bounded", "/", CREATED, bounded))
        context = Context(tx, root(ACCOUNT), NOW)
        assert {
            name
            for name, keys in keyed.items()
            if keys is not None
            and keys is not boundaries.requested_boundary
            and keys(context, params).get("iam:PermissionsBoundary") == (bounded,)
        } == current


# One reader for decisions and the simulator


def populated(store: SQLiteStore) -> tuple[str, str]:
    """alice: an inline policy, a group with an inline and an attached policy, a boundary;
    returns (the attached policy's ARN, the boundary's ARN)."""
    attached = managed(store, "lists", document(allow("iam:List*")))
    boundary = managed(
        store, "cap", document(allow("iam:Get*"), allow("iam:List*"), deny("iam:GetUser"))
    )
    with store.transaction() as tx:
        tx.insert_user(User("AIDAALICE", ACCOUNT, "alice", "/", CREATED, boundary))
        tx.put_user_policy(UserPolicy("AIDAALICE", "own", document(allow("iam:*"))))
        tx.insert_group(Group("AGPADEVS", ACCOUNT, "devs", "/", CREATED))
        tx.add_group_member("AGPADEVS", "AIDAALICE")
        tx.put_group_policy(GroupPolicy("AGPADEVS", "team", document(allow("s3:*"))))
        tx.attach_policy(PolicyAttachment("AGPADEVS", "group", ACCOUNT, attached, "ANPALISTS"))
    return attached, boundary


def test_decisions_and_the_simulator_read_the_same_policies(store: SQLiteStore) -> None:
    attached, boundary = populated(store)
    with store.transaction() as tx:
        alice = tx.get_user(ACCOUNT, "alice")
        assert alice is not None
        sources = identity_sources(tx, alice)
        facts = gather_caller(tx, user(ACCOUNT, "alice"))
    assert [(s.kind, s.name) for s in sources] == [
        ("user", "own"),
        ("group", "team"),
        ("user-managed", attached),
    ]
    assert facts.policies == tuple((s.name, s.document) for s in sources)
    assert facts.boundary is not None and facts.boundary[0][0] == boundary


def test_a_users_session_and_federation_credentials_are_bounded_as_the_user_is(
    store: SQLiteStore,
) -> None:
    _, boundary = populated(store)
    for kind in ("session", "federated-user"):
        caller = replace(user(ACCOUNT, "alice"), kind=kind, access_key_id="ASIAALICE")
        with store.transaction() as tx:
            facts = gather_caller(tx, caller)
        assert facts.boundary is not None and facts.boundary[0][0] == boundary


@pytest.mark.usefixtures("catalog")
def test_an_aws_managed_boundary_is_the_operators_document_and_a_gone_one_allows_nothing(
    store: SQLiteStore,
) -> None:
    gone = f"arn:aws:iam::{ACCOUNT}:policy/deleted"
    with store.transaction() as tx:
        tx.insert_role(Role("AROAA", ACCOUNT, "viewer", "/", "{}", None, 3600, CREATED, AWS_ARN))
        tx.insert_role(Role("AROAG", ACCOUNT, "orphan", "/", "{}", None, 3600, CREATED, gone))
        for role_id in ("AROAA", "AROAG"):
            tx.put_role_policy(RolePolicy(role_id, "all", document(allow("*"))))
    decisions = {}
    for role_id in ("AROAA", "AROAG"):
        caller = Caller(
            ACCOUNT,
            f"arn:aws:sts::{ACCOUNT}:assumed-role/r/s",
            "ASIAX",
            f"{role_id}:s",
            "assumed-role",
            role_id=role_id,
        )
        with store.transaction() as tx:
            facts = gather_caller(tx, caller)
        decisions[role_id] = [
            decide(facts, RequestFacts(), NOW, action, "*").effect
            for action in ("iam:GetRole", "iam:ListRoles")
        ]
    assert decisions == {
        "AROAA": ["Allow", "ImplicitDeny"],  # the catalog's ViewOnlyAccess allows iam:Get*
        "AROAG": ["ImplicitDeny", "ImplicitDeny"],  # fail closed
    }


def principal_input(params: dict[str, str]) -> dict[str, Any]:
    action = controller.iam.registry.get("iam", "SimulatePrincipalPolicy")
    assert action is not None
    return parse_input(params, action.input)


def simulated(store: SQLiteStore, source: str, action: str, **extra: str) -> dict[str, Any]:
    params = principal_input({"PolicySourceArn": source, "ActionNames.member.1": action, **extra})
    page = call(store, simulate.simulate_principal_policy, **params)
    (result,) = page["EvaluationResults"]
    return dict(result)


@pytest.mark.parametrize(
    ("action", "decision", "matched", "bounded"),
    [
        ("iam:GetRole", "allowed", [("own", "user")], True),
        ("iam:ListRoles", "allowed", [("own", "user")], True),
        ("iam:GetUser", "explicitDeny", [("cap", "user-managed")], False),
        ("iam:CreateRole", "implicitDeny", [], False),  # the user allows it, the boundary not
        ("s3:GetObject", "implicitDeny", [], False),  # the group allows it, the boundary not
    ],
)
def test_simulating_a_user_takes_its_groups_attachments_and_boundary(
    store: SQLiteStore, action: str, decision: str, matched: list[tuple[str, str]], bounded: bool
) -> None:
    populated(store)
    result = simulated(store, f"arn:aws:iam::{ACCOUNT}:user/alice", action)
    assert result["EvalDecision"] == decision
    assert [(m["SourcePolicyId"], m["SourcePolicyType"]) for m in result["MatchedStatements"]] == (
        matched
    )
    assert result["PermissionsBoundaryDecisionDetail"] == {"AllowedByPermissionsBoundary": bounded}


def test_simulating_a_group_takes_its_inline_and_attached_policies_and_no_boundary(
    store: SQLiteStore,
) -> None:
    populated(store)
    group = f"arn:aws:iam::{ACCOUNT}:group/devs"
    listed = simulated(store, group, "iam:ListRoles")
    assert listed["EvalDecision"] == "allowed"
    assert listed["MatchedStatements"] == [
        {"SourcePolicyId": "lists", "SourcePolicyType": "user-managed"}
    ]
    assert "PermissionsBoundaryDecisionDetail" not in listed
    assert simulated(store, group, "s3:GetObject")["MatchedStatements"] == [
        {"SourcePolicyId": "team", "SourcePolicyType": "group"}
    ]


def test_a_source_arn_naming_no_identity_of_the_account_is_no_such_entity(
    store: SQLiteStore,
) -> None:
    populated(store)
    for arn in (
        f"arn:aws:iam::{ACCOUNT}:group/nobody",
        f"arn:aws:iam::{ACCOUNT}:group/other/devs",  # the group's path is /
        f"arn:aws:iam::{OTHER}:user/alice",
        f"arn:aws:iam::{ACCOUNT}:policy/cap",
    ):
        with pytest.raises(NoSuchEntity):
            simulated(store, arn, "iam:GetRole")


def custom(**params: str) -> dict[str, Any]:
    action = controller.iam.registry.get("iam", "SimulateCustomPolicy")
    assert action is not None
    inputs = parse_input(params, action.input)
    context = Context(None, root(ACCOUNT), NOW)  # type: ignore[arg-type]  # reads no store
    return dict(simulate.simulate_custom_policy(context, inputs) or {})


def test_a_custom_simulation_intersects_the_given_boundary() -> None:
    page = custom(
        **{
            "PolicyInputList.member.1": document(allow("iam:*")),
            "PermissionsBoundaryPolicyInputList.member.1": document(allow("iam:Get*")),
            "ActionNames.member.1": "iam:GetRole",
            "ActionNames.member.2": "iam:CreateRole",
        }
    )
    decisions = [
        (r["EvalDecision"], r["PermissionsBoundaryDecisionDetail"]["AllowedByPermissionsBoundary"])
        for r in page["EvaluationResults"]
    ]
    assert decisions == [("allowed", True), ("implicitDeny", False)]


def test_a_boundary_allowing_what_the_identity_does_not_is_reported_as_allowing() -> None:
    (result,) = custom(
        **{
            "PolicyInputList.member.1": document(allow("s3:*")),
            "PermissionsBoundaryPolicyInputList.member.1": document(allow("iam:*")),
            "ActionNames.member.1": "iam:GetRole",
        }
    )["EvaluationResults"]
    assert result["EvalDecision"] == "implicitDeny"
    assert result["PermissionsBoundaryDecisionDetail"] == {"AllowedByPermissionsBoundary": True}


def test_more_than_one_boundary_to_simulate_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="one permissions boundary"):
        custom(
            **{
                "PolicyInputList.member.1": document(allow("iam:*")),
                "PermissionsBoundaryPolicyInputList.member.1": document(allow("iam:Get*")),
                "PermissionsBoundaryPolicyInputList.member.2": document(allow("iam:List*")),
                "ActionNames.member.1": "iam:GetRole",
            }
        )
