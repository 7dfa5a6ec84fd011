"""A caller's decision from facts gathered beforehand: one table row per rule, no store at all."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from controller.actions import Caller, RequestFacts
from controller.permissions import (
    CallerFacts,
    Policies,
    context_keys,
    decide,
    denial,
    kind_may_call,
    settled,
)
from controller.policy.document import PolicyKind, parse_policy
from tests.unit.callers import root, user

ACCOUNT = "123456789012"
NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)
ROLE = f"arn:aws:iam::{ACCOUNT}:role/app"
ROOT = root(ACCOUNT)
USER = user(ACCOUNT, "alice")
ROLE_SESSION = Caller(
    ACCOUNT,
    f"arn:aws:sts::{ACCOUNT}:assumed-role/app/s",
    "ASIAROLE",
    "AROAAPP:s",
    "assumed-role",
    role_id="AROAAPP",
    issued=NOW,
)
SCOPED_SESSION = Caller(
    ACCOUNT,
    ROLE_SESSION.arn,
    "ASIASCOPED",
    "AROAAPP:s",
    "assumed-role",
    role_id="AROAAPP",
    session_policy="(a session policy)",
    issued=NOW,
)
FEDERATED = Caller(
    ACCOUNT,
    f"arn:aws:sts::{ACCOUNT}:federated-user/bob",
    "ASIAFED",
    f"{ACCOUNT}:bob",
    "federated-user",
    user_name="alice",
)
SESSION = Caller(ACCOUNT, USER.arn, "ASIASESSION", "AIDAALICE", "session", user_name="alice")


def policies(*statements: dict[str, object]) -> Policies:
    text = json.dumps({"Version": "2012-10-17", "Statement": list(statements)})
    return (("inline", parse_policy(text, PolicyKind.IDENTITY)),)


def allow(action: str = "iam:GetRole", **extra: object) -> dict[str, object]:
    return {"Effect": "Allow", "Action": action, "Resource": "*", **extra}


def deny(action: str = "iam:GetRole") -> dict[str, object]:
    return {"Effect": "Deny", "Action": action, "Resource": "*"}


TEAM_A = {"StringEquals": {"aws:PrincipalTag/team": "a"}}

#: (rule, facts, action, expected effect)
RULES = [
    ("the root needs no policy", CallerFacts(ROOT), "iam:DeleteRole", "Allow"),
    (
        "GetCallerIdentity needs no policy",
        CallerFacts(USER),
        "sts:GetCallerIdentity",
        "Allow",
    ),
    ("no policy is an implicit deny", CallerFacts(USER), "iam:GetRole", "ImplicitDeny"),
    ("an Allow allows", CallerFacts(USER, policies(allow())), "iam:GetRole", "Allow"),
    (
        "an explicit Deny wins over an Allow",
        CallerFacts(USER, policies(allow("iam:*"), deny())),
        "iam:GetRole",
        "Deny",
    ),
    (
        "a condition on the caller's tags reads the gathered tags",
        CallerFacts(USER, policies(allow(Condition=TEAM_A)), tags={"team": "a"}),
        "iam:GetRole",
        "Allow",
    ),
    (
        "the same condition without the tag does not apply",
        CallerFacts(USER, policies(allow(Condition=TEAM_A)), tags={"team": "b"}),
        "iam:GetRole",
        "ImplicitDeny",
    ),
    (
        "a role session is its role's policies",
        CallerFacts(ROLE_SESSION, policies(allow())),
        "iam:GetRole",
        "Allow",
    ),
    (
        "a session policy must allow too",
        CallerFacts(SCOPED_SESSION, policies(allow("iam:*")), policies(allow("iam:ListRoles"))),
        "iam:GetRole",
        "ImplicitDeny",
    ),
    (
        "both allowing allows",
        CallerFacts(SCOPED_SESSION, policies(allow("iam:*")), policies(allow())),
        "iam:GetRole",
        "Allow",
    ),
    (
        "a Deny in the session policy wins",
        CallerFacts(SCOPED_SESSION, policies(allow("iam:*")), policies(allow("*"), deny())),
        "iam:GetRole",
        "Deny",
    ),
    (
        "a federation without a session policy is allowed nothing",
        CallerFacts(FEDERATED, policies(allow("*")), ()),
        "ec2:DescribeInstances",
        "ImplicitDeny",
    ),
    (
        "federated credentials call no IAM action, whatever the policies",
        CallerFacts(FEDERATED, policies(allow("*")), policies(allow("*"))),
        "iam:GetRole",
        "ImplicitDeny",
    ),
    (
        "federated credentials call only GetCallerIdentity in STS",
        CallerFacts(FEDERATED, policies(allow("*")), policies(allow("*"))),
        "sts:AssumeRole",
        "ImplicitDeny",
    ),
    (
        "GetSessionToken credentials call no IAM action",
        CallerFacts(SESSION, policies(allow("*"))),
        "iam:GetRole",
        "ImplicitDeny",
    ),
    (
        "GetSessionToken credentials may assume roles",
        CallerFacts(SESSION, policies(allow("*"))),
        "sts:AssumeRole",
        "Allow",
    ),
    (
        "GetSessionToken credentials may set a source identity",
        CallerFacts(SESSION, policies(allow("*"))),
        "sts:SetSourceIdentity",
        "Allow",
    ),
    (
        "GetSessionToken credentials call no other STS action",
        CallerFacts(SESSION, policies(allow("*"))),
        "sts:GetFederationToken",
        "ImplicitDeny",
    ),
]


@pytest.mark.parametrize(
    ("facts", "action", "expected"),
    [row[1:] for row in RULES],
    ids=[row[0] for row in RULES],
)
def test_the_decision_follows_each_rule(facts: CallerFacts, action: str, expected: str) -> None:
    assert decide(facts, RequestFacts(), NOW, action, ROLE).effect == expected


def test_extra_keys_reach_the_conditions() -> None:
    condition = {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    facts = CallerFacts(USER, policies(allow("iam:PassRole", Condition=condition)))
    passed = {"iam:PassedToService": ("ec2.amazonaws.com",)}
    assert decide(facts, RequestFacts(), NOW, "iam:PassRole", ROLE, passed).allowed
    assert not decide(facts, RequestFacts(), NOW, "iam:PassRole", ROLE).allowed


def test_the_request_facts_are_condition_keys() -> None:
    condition = {
        "IpAddress": {"aws:SourceIp": "10.0.0.0/8"},
        "Bool": {"aws:SecureTransport": "true"},
    }
    facts = CallerFacts(USER, policies(allow(Condition=condition)))
    inside = RequestFacts(source_ip="10.1.2.3", secure_transport=True)
    assert decide(facts, inside, NOW, "iam:GetRole", ROLE).allowed
    assert not decide(facts, RequestFacts(), NOW, "iam:GetRole", ROLE).allowed


@pytest.mark.parametrize(
    ("caller", "action", "expected"),
    [
        (ROOT, "iam:DeleteRole", "Allow"),
        (USER, "sts:GetCallerIdentity", "Allow"),
        (FEDERATED, "sts:GetCallerIdentity", "Allow"),
        (FEDERATED, "iam:GetRole", "ImplicitDeny"),
        (SESSION, "iam:GetRole", "ImplicitDeny"),
        (USER, "iam:GetRole", None),
        (SESSION, "sts:AssumeRole", None),
        (FEDERATED, "s3:GetObject", None),
    ],
)
def test_settled_needs_no_policy_only_for_the_root_identity_and_refused_kinds(
    caller: Caller, action: str, expected: str | None
) -> None:
    decision = settled(caller, action)
    assert (decision.effect if decision is not None else None) == expected


def test_only_federated_and_session_credentials_are_limited_by_their_kind() -> None:
    assert kind_may_call(USER, "iam:DeleteRole")
    assert kind_may_call(ROLE_SESSION, "sts:GetFederationToken")
    assert not kind_may_call(SESSION, "IAM:GetRole")  # action names ignore case
    assert kind_may_call(SESSION, "STS:AssumeRole")


def test_context_keys_name_the_caller_the_request_and_the_tags() -> None:
    """In lower case: names are matched ignoring case, and the decision looks them up so."""
    keys = context_keys(ROLE_SESSION, RequestFacts("192.0.2.1", True, "eu-west-1"), NOW, {"T": "v"})
    assert keys["aws:sourceip"] == ("192.0.2.1",)
    assert keys["aws:securetransport"] == ("true",)
    assert keys["aws:requestedregion"] == ("eu-west-1",)
    assert keys["aws:principaltype"] == ("AssumedRole",)
    assert keys["aws:tokenissuetime"] == ("2024-05-01T12:00:00Z",)
    assert keys["aws:multifactorauthpresent"] == ("false",)
    assert keys["aws:principaltag/t"] == ("v",)
    assert set(keys) == {key.lower() for key in keys}
    assert "aws:username" not in keys
    assert context_keys(USER, RequestFacts(), NOW, {})["aws:username"] == ("alice",)


MANAGED_DENY = f"arn:aws:iam::{ACCOUNT}:policy/NoRoles"


def managed(*statements: dict[str, object]) -> Policies:
    text = json.dumps({"Version": "2012-10-17", "Statement": list(statements)})
    return ((MANAGED_DENY, parse_policy(text, PolicyKind.IDENTITY)),)


#: (caller, action, facts, the end of AccessDenied's message): AWS's words for each reason.
DENIALS = [
    (
        USER,
        "iam:GetRole",
        CallerFacts(USER, policies(deny())),
        "with an explicit deny in an identity-based policy",
    ),
    (
        USER,
        "iam:GetRole",
        CallerFacts(USER, policies(allow()) + managed(deny())),
        f"with an explicit deny in an identity-based policy: {MANAGED_DENY}",
    ),
    (
        USER,
        "iam:GetRole",
        CallerFacts(USER, policies(allow()), boundary=policies(deny())),
        "with an explicit deny in a permissions boundary",
    ),
    (
        USER,
        "iam:GetRole",
        CallerFacts(USER, policies(allow()), boundary=policies(allow("iam:ListRoles"))),
        "because no permissions boundary allows the iam:GetRole action",
    ),
    (
        SCOPED_SESSION,
        "iam:GetRole",
        CallerFacts(SCOPED_SESSION, policies(allow()), policies(deny())),
        "with an explicit deny in a session policy",
    ),
    (
        SCOPED_SESSION,
        "iam:GetRole",
        CallerFacts(SCOPED_SESSION, policies(allow()), policies(allow("iam:ListRoles"))),
        "because no session policy allows the iam:GetRole action",
    ),
    (
        USER,
        "iam:GetRole",
        CallerFacts(USER),
        "because no identity-based policy allows the iam:GetRole action",
    ),
    (
        FEDERATED,
        "iam:GetRole",
        CallerFacts(FEDERATED, (), ()),
        "because federated users can call no IAM action and only GetCallerIdentity in STS",
    ),
    (
        SESSION,
        "iam:GetRole",
        CallerFacts(SESSION),
        "because GetSessionToken credentials cannot call IAM, nor STS but AssumeRole",
    ),
    (
        SCOPED_SESSION,
        "iam:GetRole",
        CallerFacts(SCOPED_SESSION, (), ()),
        "because no identity-based policy allows the iam:GetRole action",
    ),
    (
        FEDERATED,
        "s3:GetObject",
        CallerFacts(FEDERATED, policies(allow("s3:GetObject")), ()),
        "because no session policy allows the s3:GetObject action",
    ),
]


@pytest.mark.parametrize(("caller", "action", "facts", "reason"), DENIALS)
def test_access_denied_says_who_what_where_and_why(
    caller: Caller, action: str, facts: CallerFacts, reason: str
) -> None:
    decision = decide(facts, RequestFacts(), NOW, action, ROLE)
    assert not decision.allowed
    error = denial(caller, action, ROLE, decision)
    assert error.code == "AccessDenied"
    assert error.message == (
        f"User: {caller.arn} is not authorized to perform: {action} on resource: {ROLE} {reason}"
    )


def test_inline_policy_that_denies_is_named_in_the_detail_only() -> None:
    decision = decide(CallerFacts(USER, policies(deny())), RequestFacts(), NOW, "iam:GetRole", ROLE)
    error = denial(USER, "iam:GetRole", ROLE, decision)
    assert "inline" not in error.message
    assert error.detail == "the inline policy 'inline' denies it"
