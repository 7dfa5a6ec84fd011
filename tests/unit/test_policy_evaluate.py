"""The policy engine decides like AWS: one table row per evaluation rule, then properties."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from controller.errors import MalformedPolicyDocument
from controller.policy.document import (
    EVERYONE,
    VERSION_2008,
    VERSION_2012,
    Condition,
    PolicyDocument,
    PolicyKind,
    Principal,
    parse_policy,
)
from controller.policy.evaluate import (
    Decision,
    RequestContext,
    evaluate,
    evaluate_trust,
    evaluate_with_session,
    principal_matches,
    reads_context_keys,
    time_keys,
)

ACCOUNT = "123456789012"
OTHER_ACCOUNT = "210987654321"
USER = f"arn:aws:iam::{ACCOUNT}:user/alice"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/app"
INSTANCE = f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-0123456789abcdef0"

Keys = Mapping[str, tuple[str, ...]]


def policy(*statements: dict[str, object], version: str = VERSION_2012) -> PolicyDocument:
    return parse_policy(
        json.dumps({"Version": version, "Statement": list(statements)}), PolicyKind.IDENTITY
    )


def allow(
    action: object = "iam:GetRole", resource: object = "*", **extra: object
) -> dict[str, object]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def deny(
    action: object = "iam:GetRole", resource: object = "*", **extra: object
) -> dict[str, object]:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **extra}


def request(
    action: str = "iam:GetRole", resource: str = ROLE, keys: Keys | None = None
) -> RequestContext:
    return RequestContext(
        action=action, resource=resource, principal_arn=USER, account_id=ACCOUNT, keys=keys or {}
    )


def decide(document: PolicyDocument, context: RequestContext) -> str:
    return evaluate([("inline", document)], context).effect


# -- actions, resources, effects ----------------------------------------------------------------

# (rule, statements, context, expected effect)
DECISIONS = [
    ("no statement applies: implicit deny", [allow("s3:GetObject")], request(), "ImplicitDeny"),
    ("matching Allow allows", [allow()], request(), "Allow"),
    ("Deny wins over Allow", [allow(), deny()], request(), "Deny"),
    ("Deny wins whatever the order", [deny(), allow()], request(), "Deny"),
    ("action case-insensitive", [allow("IAM:getrole")], request(), "Allow"),
    ("action * matches all", [allow("*")], request("ec2:RunInstances"), "Allow"),
    ("action prefix wildcard", [allow("iam:Get*")], request("iam:GetRolePolicy"), "Allow"),
    ("action wildcard no match", [allow("iam:Get*")], request("iam:ListRoles"), "ImplicitDeny"),
    ("action ? is one character", [allow("iam:GetRol?")], request(), "Allow"),
    ("action ? not zero characters", [allow("iam:GetRole?")], request(), "ImplicitDeny"),
    ("service must match", [allow("sts:GetRole")], request(), "ImplicitDeny"),
    (
        "NotAction allows other actions",
        [{"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}],
        request("s3:GetObject", "arn:aws:s3:::bucket/key"),
        "Allow",
    ),
    (
        "NotAction excludes its actions",
        [{"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}],
        request(),
        "ImplicitDeny",
    ),
    (
        "Deny with NotAction denies everything else",
        [allow("*"), {"Effect": "Deny", "NotAction": "iam:Get*", "Resource": "*"}],
        request("iam:DeleteRole"),
        "Deny",
    ),
    (
        "Deny with NotAction spares its actions",
        [allow("*"), {"Effect": "Deny", "NotAction": "iam:Get*", "Resource": "*"}],
        request(),
        "Allow",
    ),
    ("resource exact ARN", [allow(resource=ROLE)], request(), "Allow"),
    ("resource ARN differs", [allow(resource=ROLE + "2")], request(), "ImplicitDeny"),
    (
        "resource case-sensitive",
        [allow(resource=ROLE.replace("app", "App"))],
        request(),
        "ImplicitDeny",
    ),
    (
        "resource wildcard in resource part crosses /",
        [allow(resource=f"arn:aws:iam::{ACCOUNT}:role/*")],
        request(resource=f"arn:aws:iam::{ACCOUNT}:role/path/to/app"),
        "Allow",
    ),
    (
        "resource wildcard in resource part crosses :",
        [allow(resource="arn:aws:logs:us-east-1:*:log-group:*")],
        request(resource=f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:app:log-stream:x"),
        "Allow",
    ),
    (
        "resource wildcard per segment",
        [allow(resource="arn:aws:ec2:*:*:instance/*")],
        request(resource=INSTANCE),
        "Allow",
    ),
    (
        "resource wildcard in a segment does not cross :",
        [allow(resource="arn:aws:iam::*:role/app")],
        request(resource=f"arn:aws:iam::{ACCOUNT}:extra:role/app"),
        "ImplicitDeny",
    ),
    (
        "resource ? does not match :",
        [allow(resource="arn:aws:iam:?:123456789012:role/app")],
        request(resource="arn:aws:iam:::123456789012:role/app"),
        "ImplicitDeny",
    ),
    (
        "resource ARN cut short by * matches the rest (AWS)",
        [allow(resource="arn:aws:ec2:*")],
        request(resource=INSTANCE),
        "Allow",
    ),
    (
        "resource ARN pattern does not match resource-less request",
        [allow(resource="arn:aws:iam::*:role/*")],
        request(resource="*"),
        "ImplicitDeny",
    ),
    ("resource * matches resource-less request", [allow()], request(resource="*"), "Allow"),
    (
        "resource list is OR",
        [allow(resource=["arn:aws:s3:::x", ROLE])],
        request(),
        "Allow",
    ),
    (
        "NotResource allows other resources",
        [{"Effect": "Allow", "Action": "iam:GetRole", "NotResource": ROLE + "-admin"}],
        request(),
        "Allow",
    ),
    (
        "NotResource excludes its resources",
        [{"Effect": "Allow", "Action": "iam:GetRole", "NotResource": ROLE}],
        request(),
        "ImplicitDeny",
    ),
    (
        "Deny with NotResource denies other resources",
        [allow(), {"Effect": "Deny", "Action": "*", "NotResource": ROLE + "-mine"}],
        request(),
        "Deny",
    ),
]


@pytest.mark.parametrize(
    ("rule", "statements", "context", "expected"), DECISIONS, ids=[row[0] for row in DECISIONS]
)
def test_decision_rule(
    rule: str, statements: list[dict[str, object]], context: RequestContext, expected: str
) -> None:
    assert decide(policy(*statements), context) == expected


def test_deny_in_any_policy_wins() -> None:
    decision = evaluate([("grant", policy(allow())), ("block", policy(deny()))], request())
    assert decision.effect == "Deny"
    assert decision.policy_name == "block"


def test_decision_names_the_deciding_statement_and_policy() -> None:
    document = policy(allow("s3:*", Sid="S3"), allow("iam:*", Sid="Iam"))
    decision = evaluate([("first", policy(allow("s3:*"))), ("second", document)], request())
    assert decision.effect == "Allow"
    assert decision.policy_name == "second"
    assert decision.statement is not None and decision.statement.sid == "Iam"
    assert decision.allowed


def test_implicit_deny_names_no_statement() -> None:
    decision = evaluate([("p", policy(allow("s3:*")))], request())
    assert decision == Decision("ImplicitDeny", None, None, ())
    assert not decision.allowed


def test_no_policies_is_implicit_deny() -> None:
    assert evaluate([], request()).effect == "ImplicitDeny"


def test_old_version_document_evaluates() -> None:
    assert decide(policy(allow("iam:*"), version=VERSION_2008), request()) == "Allow"


# -- conditions ----------------------------------------------------------------------------------

ABSENT = None
# (rule, operator, key, policy values, context values or ABSENT, whether the condition holds)
CONDITIONS: list[tuple[str, str, str, object, tuple[str, ...] | None, bool]] = [
    ("StringEquals match", "StringEquals", "aws:username", "alice", ("alice",), True),
    ("StringEquals case-sensitive", "StringEquals", "aws:username", "alice", ("Alice",), False),
    ("StringEquals absent key", "StringEquals", "aws:username", "alice", ABSENT, False),
    (
        "StringEquals values are OR",
        "StringEquals",
        "aws:username",
        ["x", "alice"],
        ("alice",),
        True,
    ),
    ("StringEquals no wildcards", "StringEquals", "aws:username", "a*", ("alice",), False),
    ("StringNotEquals differs", "StringNotEquals", "aws:username", "bob", ("alice",), True),
    ("StringNotEquals same", "StringNotEquals", "aws:username", "alice", ("alice",), False),
    ("StringNotEquals absent key (AWS)", "StringNotEquals", "aws:username", "x", ABSENT, True),
    (
        "StringNotEquals any value",
        "StringNotEquals",
        "aws:username",
        ["a", "alice"],
        ("alice",),
        False,
    ),
    ("StringEqualsIgnoreCase", "StringEqualsIgnoreCase", "aws:username", "ALICE", ("alice",), True),
    (
        "StringEqualsIgnoreCase differs",
        "StringEqualsIgnoreCase",
        "aws:username",
        "bob",
        ("alice",),
        False,
    ),
    (
        "StringNotEqualsIgnoreCase same",
        "StringNotEqualsIgnoreCase",
        "aws:username",
        "ALICE",
        ("alice",),
        False,
    ),
    (
        "StringNotEqualsIgnoreCase differs",
        "StringNotEqualsIgnoreCase",
        "aws:username",
        "bob",
        ("alice",),
        True,
    ),
    ("StringLike * and ?", "StringLike", "s3:prefix", "home/*/d?c", ("home/a/b/doc",), True),
    ("StringLike no match", "StringLike", "s3:prefix", "home/*/d?c", ("home/a/b/dc",), False),
    ("StringLike case-sensitive", "StringLike", "s3:prefix", "Home/*", ("home/x",), False),
    ("StringNotLike differs", "StringNotLike", "s3:prefix", "tmp/*", ("home/x",), True),
    ("StringNotLike matches", "StringNotLike", "s3:prefix", "home/*", ("home/x",), False),
    ("NumericEquals", "NumericEquals", "s3:max-keys", "10", ("10.0",), True),
    ("NumericEquals differs", "NumericEquals", "s3:max-keys", 10, ("11",), False),
    ("NumericEquals context not a number", "NumericEquals", "s3:max-keys", "10", ("ten",), False),
    ("NumericNotEquals differs", "NumericNotEquals", "s3:max-keys", "10", ("11",), True),
    ("NumericNotEquals same", "NumericNotEquals", "s3:max-keys", "10", ("10",), False),
    ("NumericLessThan", "NumericLessThan", "s3:max-keys", "10", ("9.5",), True),
    ("NumericLessThan equal", "NumericLessThan", "s3:max-keys", "10", ("10",), False),
    ("NumericLessThanEquals", "NumericLessThanEquals", "s3:max-keys", "10", ("10",), True),
    ("NumericLessThanEquals above", "NumericLessThanEquals", "s3:max-keys", "10", ("11",), False),
    ("NumericGreaterThan", "NumericGreaterThan", "s3:max-keys", "10", ("11",), True),
    ("NumericGreaterThan equal", "NumericGreaterThan", "s3:max-keys", "10", ("10",), False),
    (
        "NumericGreaterThanEquals",
        "NumericGreaterThanEquals",
        "s3:max-keys",
        "-1.5",
        ("-1.5",),
        True,
    ),
    (
        "NumericGreaterThanEquals below",
        "NumericGreaterThanEquals",
        "s3:max-keys",
        "10",
        ("9",),
        False,
    ),
    (
        "DateEquals ISO vs epoch",
        "DateEquals",
        "aws:CurrentTime",
        "2024-01-01T00:00:00Z",
        ("1704067200",),
        True,
    ),
    (
        "DateEquals with offset",
        "DateEquals",
        "aws:CurrentTime",
        "2024-01-01T01:00:00+01:00",
        ("2024-01-01T00:00:00Z",),
        True,
    ),
    (
        "DateEquals differs",
        "DateEquals",
        "aws:CurrentTime",
        "2024-01-01T00:00:00Z",
        ("2024-01-01T00:00:01Z",),
        False,
    ),
    (
        "DateNotEquals differs",
        "DateNotEquals",
        "aws:CurrentTime",
        "2024-01-01T00:00:00Z",
        ("2024-01-02T00:00:00Z",),
        True,
    ),
    (
        "DateNotEquals same",
        "DateNotEquals",
        "aws:CurrentTime",
        "2024-01-01",
        ("2024-01-01T00:00:00Z",),
        False,
    ),
    (
        "DateLessThan",
        "DateLessThan",
        "aws:CurrentTime",
        "2030-01-01T00:00:00Z",
        ("2026-06-01T12:00:00Z",),
        True,
    ),
    (
        "DateLessThan after",
        "DateLessThan",
        "aws:CurrentTime",
        "2020-01-01T00:00:00Z",
        ("2026-06-01T12:00:00Z",),
        False,
    ),
    (
        "DateLessThanEquals",
        "DateLessThanEquals",
        "aws:EpochTime",
        "1704067200",
        ("1704067200",),
        True,
    ),
    (
        "DateLessThanEquals after",
        "DateLessThanEquals",
        "aws:EpochTime",
        "1704067200",
        ("1704067201",),
        False,
    ),
    (
        "DateGreaterThan",
        "DateGreaterThan",
        "aws:CurrentTime",
        "2020-01-01T00:00:00Z",
        ("2026-01-01T00:00:00Z",),
        True,
    ),
    (
        "DateGreaterThan before",
        "DateGreaterThan",
        "aws:CurrentTime",
        "2030-01-01T00:00:00Z",
        ("2026-01-01T00:00:00Z",),
        False,
    ),
    (
        "DateGreaterThanEquals",
        "DateGreaterThanEquals",
        "aws:CurrentTime",
        "2026-01-01T00:00:00Z",
        ("2026-01-01T00:00:00Z",),
        True,
    ),
    (
        "DateGreaterThanEquals before",
        "DateGreaterThanEquals",
        "aws:CurrentTime",
        "2026-01-01T00:00:01Z",
        ("2026-01-01T00:00:00Z",),
        False,
    ),
    ("Bool true", "Bool", "aws:SecureTransport", "true", ("true",), True),
    ("Bool JSON true", "Bool", "aws:SecureTransport", True, ("true",), True),
    ("Bool mismatch", "Bool", "aws:SecureTransport", "true", ("false",), False),
    ("Bool absent key", "Bool", "aws:MultiFactorAuthPresent", "false", ABSENT, False),
    ("BinaryEquals", "BinaryEquals", "s3:x-amz-meta", "QmluYXJ5", ("QmluYXJ5",), True),
    ("BinaryEquals differs", "BinaryEquals", "s3:x-amz-meta", "QmluYXJ5", ("T3RoZXI=",), False),
    ("IpAddress IPv4 CIDR", "IpAddress", "aws:SourceIp", "10.0.0.0/8", ("10.1.2.3",), True),
    ("IpAddress IPv4 outside", "IpAddress", "aws:SourceIp", "10.0.0.0/8", ("11.0.0.1",), False),
    (
        "IpAddress single address",
        "IpAddress",
        "aws:SourceIp",
        "203.0.113.5",
        ("203.0.113.5",),
        True,
    ),
    ("IpAddress IPv6 CIDR", "IpAddress", "aws:SourceIp", "2001:db8::/32", ("2001:db8::1",), True),
    (
        "IpAddress IPv6 outside",
        "IpAddress",
        "aws:SourceIp",
        "2001:db8::/32",
        ("2001:db9::1",),
        False,
    ),
    (
        "IpAddress IPv4 vs IPv6 net",
        "IpAddress",
        "aws:SourceIp",
        "2001:db8::/32",
        ("10.0.0.1",),
        False,
    ),
    (
        "IpAddress context not an IP",
        "IpAddress",
        "aws:SourceIp",
        "10.0.0.0/8",
        ("localhost",),
        False,
    ),
    ("NotIpAddress outside", "NotIpAddress", "aws:SourceIp", "10.0.0.0/8", ("11.0.0.1",), True),
    (
        "NotIpAddress inside",
        "NotIpAddress",
        "aws:SourceIp",
        ["192.0.2.0/24", "10.0.0.0/8"],
        ("10.0.0.1",),
        False,
    ),
    ("NotIpAddress absent key (AWS)", "NotIpAddress", "aws:SourceIp", "10.0.0.0/8", ABSENT, True),
    (
        "ArnEquals with wildcards",
        "ArnEquals",
        "aws:PrincipalArn",
        f"arn:aws:iam::{ACCOUNT}:user/*",
        (USER,),
        True,
    ),
    (
        "ArnEquals differs",
        "ArnEquals",
        "aws:PrincipalArn",
        f"arn:aws:iam::{OTHER_ACCOUNT}:user/*",
        (USER,),
        False,
    ),
    (
        "ArnLike",
        "ArnLike",
        "ec2:SourceInstanceARN",
        "arn:aws:ec2:*:*:instance/i-*",
        (INSTANCE,),
        True,
    ),
    (
        "ArnLike differs",
        "ArnLike",
        "ec2:SourceInstanceARN",
        f"arn:aws:ec2:*:{OTHER_ACCOUNT}:instance/*",
        (INSTANCE,),
        False,
    ),
    (
        "ArnLike segments separately",
        "ArnLike",
        "ec2:SourceInstanceARN",
        "arn:aws:ec2:*",
        (INSTANCE,),
        False,
    ),
    (
        "ArnLike context not an ARN",
        "ArnLike",
        "aws:PrincipalArn",
        "arn:aws:iam::*:user/*",
        ("alice",),
        False,
    ),
    ("ArnNotEquals differs", "ArnNotEquals", "aws:PrincipalArn", ROLE, (USER,), True),
    ("ArnNotEquals same", "ArnNotEquals", "aws:PrincipalArn", USER, (USER,), False),
    (
        "ArnNotLike differs",
        "ArnNotLike",
        "aws:PrincipalArn",
        "arn:aws:iam::*:role/*",
        (USER,),
        True,
    ),
    (
        "ArnNotLike matches",
        "ArnNotLike",
        "aws:PrincipalArn",
        "arn:aws:iam::*:user/*",
        (USER,),
        False,
    ),
    (
        "ArnNotLike absent key (AWS)",
        "ArnNotLike",
        "aws:SourceArn",
        "arn:aws:iam::*:user/*",
        ABSENT,
        True,
    ),
    ("Null true, key absent", "Null", "aws:TokenIssueTime", "true", ABSENT, True),
    (
        "Null true, key present",
        "Null",
        "aws:TokenIssueTime",
        "true",
        ("2026-01-01T00:00:00Z",),
        False,
    ),
    (
        "Null false, key present",
        "Null",
        "aws:TokenIssueTime",
        False,
        ("2026-01-01T00:00:00Z",),
        True,
    ),
    ("Null false, key absent", "Null", "aws:TokenIssueTime", "false", ABSENT, False),
    ("IfExists, key absent", "StringEqualsIfExists", "aws:username", "alice", ABSENT, True),
    (
        "IfExists, key present, match",
        "StringEqualsIfExists",
        "aws:username",
        "alice",
        ("alice",),
        True,
    ),
    (
        "IfExists, key present, no match",
        "StringEqualsIfExists",
        "aws:username",
        "alice",
        ("bob",),
        False,
    ),
    (
        "NumericLessThanIfExists absent",
        "NumericLessThanIfExists",
        "s3:max-keys",
        "10",
        ABSENT,
        True,
    ),
    ("IpAddressIfExists absent", "IpAddressIfExists", "aws:SourceIp", "10.0.0.0/8", ABSENT, True),
    (
        "NotIpAddressIfExists present inside",
        "NotIpAddressIfExists",
        "aws:SourceIp",
        "10.0.0.0/8",
        ("10.0.0.1",),
        False,
    ),
    (
        "ForAnyValue one matches",
        "ForAnyValue:StringEquals",
        "aws:TagKeys",
        ["a", "b"],
        ("c", "b"),
        True,
    ),
    (
        "ForAnyValue none matches",
        "ForAnyValue:StringEquals",
        "aws:TagKeys",
        ["a", "b"],
        ("c", "d"),
        False,
    ),
    ("ForAnyValue absent key", "ForAnyValue:StringEquals", "aws:TagKeys", "a", ABSENT, False),
    ("ForAnyValue empty set", "ForAnyValue:StringEquals", "aws:TagKeys", "a", (), False),
    ("ForAnyValue negated", "ForAnyValue:StringNotLike", "aws:TagKeys", "a*", ("ab", "xy"), True),
    (
        "ForAnyValue negated, all match",
        "ForAnyValue:StringNotLike",
        "aws:TagKeys",
        "a*",
        ("ab",),
        False,
    ),
    (
        "ForAllValues all match",
        "ForAllValues:StringEquals",
        "aws:TagKeys",
        ["a", "b"],
        ("a", "b"),
        True,
    ),
    (
        "ForAllValues one outside",
        "ForAllValues:StringEquals",
        "aws:TagKeys",
        ["a", "b"],
        ("a", "c"),
        False,
    ),
    (
        "ForAllValues absent key is true",
        "ForAllValues:StringEquals",
        "aws:TagKeys",
        "a",
        ABSENT,
        True,
    ),
    ("ForAllValues empty set is true", "ForAllValues:StringLike", "aws:TagKeys", "a*", (), True),
    (
        "ForAllValues negated",
        "ForAllValues:StringNotEquals",
        "aws:TagKeys",
        ["x"],
        ("a", "b"),
        True,
    ),
    (
        "ForAllValues negated, one equal",
        "ForAllValues:StringNotEquals",
        "aws:TagKeys",
        ["x"],
        ("a", "x"),
        False,
    ),
    (
        "ForAnyValue IfExists absent",
        "ForAnyValue:StringLikeIfExists",
        "aws:TagKeys",
        "a*",
        ABSENT,
        True,
    ),
    ("multivalued key, plain operator: any", "StringEquals", "aws:TagKeys", "b", ("a", "b"), True),
    ("key names case-insensitive", "StringEquals", "AWS:UserName", "alice", ("alice",), True),
]


def _condition_context(key: str, values: tuple[str, ...] | None) -> RequestContext:
    # The context spells keys its own way; lookup must not depend on the policy's spelling.
    keys = {} if values is None else {key.lower(): values}
    return request(keys=keys)


@pytest.mark.parametrize(
    ("rule", "operator", "key", "values", "context_values", "holds"),
    CONDITIONS,
    ids=[row[0] for row in CONDITIONS],
)
def test_condition_operator(
    rule: str,
    operator: str,
    key: str,
    values: object,
    context_values: tuple[str, ...] | None,
    holds: bool,
) -> None:
    statement = allow(Condition={operator: {key: values}})
    expected = "Allow" if holds else "ImplicitDeny"
    assert decide(policy(statement), _condition_context(key, context_values)) == expected


@pytest.mark.parametrize(
    ("rule", "operator", "key", "values", "context_values", "holds"),
    CONDITIONS,
    ids=[row[0] for row in CONDITIONS],
)
def test_condition_operator_in_deny(
    rule: str,
    operator: str,
    key: str,
    values: object,
    context_values: tuple[str, ...] | None,
    holds: bool,
) -> None:
    statements = [allow(), deny(Condition={operator: {key: values}})]
    expected = "Deny" if holds else "Allow"
    assert decide(policy(*statements), _condition_context(key, context_values)) == expected


def test_multiple_keys_in_one_operator_are_and() -> None:
    condition = {"StringEquals": {"aws:username": "alice", "aws:PrincipalTag/team": "red"}}
    document = policy(allow(Condition=condition))
    both = {"aws:username": ("alice",), "aws:PrincipalTag/team": ("red",)}
    one = {"aws:username": ("alice",), "aws:PrincipalTag/team": ("blue",)}
    assert decide(document, request(keys=both)) == "Allow"
    assert decide(document, request(keys=one)) == "ImplicitDeny"


def test_multiple_operators_are_and() -> None:
    condition = {
        "StringEquals": {"aws:username": "alice"},
        "Bool": {"aws:SecureTransport": "true"},
    }
    document = policy(allow(Condition=condition))
    secure = {"aws:username": ("alice",), "aws:SecureTransport": ("true",)}
    plain = {"aws:username": ("alice",), "aws:SecureTransport": ("false",)}
    assert decide(document, request(keys=secure)) == "Allow"
    assert decide(document, request(keys=plain)) == "ImplicitDeny"


def test_principal_arn_and_account_keys_default_from_the_context() -> None:
    condition = {
        "StringEquals": {"aws:PrincipalAccount": ACCOUNT},
        "ArnEquals": {"aws:PrincipalArn": USER},
    }
    assert decide(policy(allow(Condition=condition)), request()) == "Allow"


def test_bare_string_context_value_is_one_value() -> None:
    document = policy(allow(Condition={"StringEquals": {"aws:username": "alice"}}))
    context = request(keys={"aws:username": "alice"})  # type: ignore[dict-item]
    assert decide(document, context) == "Allow"


def test_time_keys_feed_date_conditions() -> None:
    document = policy(
        allow(Condition={"DateLessThan": {"aws:CurrentTime": "2026-01-01T00:00:00Z"}}),
    )
    before = time_keys(datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC))
    after = time_keys(datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC))
    assert before["aws:EpochTime"] == ("1767225599",)
    assert decide(document, request(keys=before)) == "Allow"
    assert decide(document, request(keys=after)) == "ImplicitDeny"


# -- failing closed --------------------------------------------------------------------------------

UNKNOWN_CONDITIONS = [
    ("unknown operator", {"StringFrobnicates": {"aws:username": "alice"}}),
    ("operator names are case-sensitive", {"stringequals": {"aws:username": "alice"}}),
    ("NullIfExists is not an operator", {"NullIfExists": {"aws:username": "false"}}),
    ("set operator on Null", {"ForAnyValue:Null": {"aws:username": "false"}}),
    ("BinaryNotEquals is not an operator", {"BinaryNotEquals": {"aws:username": "YQ=="}}),
    ("number that is not a number", {"NumericEquals": {"s3:max-keys": "ten"}}),
    ("date that is not a date", {"DateLessThan": {"aws:CurrentTime": "tomorrow"}}),
    ("CIDR that is not a CIDR", {"IpAddress": {"aws:SourceIp": "10.0.0.0/33"}}),
    ("Bool that is not a boolean", {"Bool": {"aws:SecureTransport": "yes"}}),
    ("base64 that is not base64", {"BinaryEquals": {"s3:x": "not base64!"}}),
    ("Null that is not a boolean", {"Null": {"aws:username": "maybe"}}),
]
FAIL_CLOSED_KEYS = {"aws:username": ("alice",), "aws:SourceIp": ("10.0.0.1",)}


@pytest.mark.parametrize(
    ("rule", "condition"), UNKNOWN_CONDITIONS, ids=[row[0] for row in UNKNOWN_CONDITIONS]
)
def test_undecidable_condition_never_allows(rule: str, condition: dict[str, object]) -> None:
    document = policy(allow(Condition=condition))
    assert decide(document, request(keys=FAIL_CLOSED_KEYS)) == "ImplicitDeny"


@pytest.mark.parametrize(
    ("rule", "condition"), UNKNOWN_CONDITIONS, ids=[row[0] for row in UNKNOWN_CONDITIONS]
)
def test_undecidable_condition_still_denies(rule: str, condition: dict[str, object]) -> None:
    document = policy(allow(), deny(Condition=condition))
    assert decide(document, request(keys=FAIL_CLOSED_KEYS)) == "Deny"


def test_unknown_operator_deny_with_a_false_condition_does_not_deny() -> None:
    # Whatever the unknown operator means, the false StringEquals keeps this Deny from applying.
    condition = {"StringFrobnicates": {"aws:username": "x"}, "StringEquals": {"aws:username": "b"}}
    document = policy(allow(), deny(Condition=condition))
    assert decide(document, request(keys=FAIL_CLOSED_KEYS)) == "Allow"


def test_unknown_operator_allow_beside_a_certain_allow_still_allows() -> None:
    document = policy(allow(Condition={"StringFrobnicates": {"aws:username": "x"}}), allow())
    assert decide(document, request(keys=FAIL_CLOSED_KEYS)) == "Allow"


def test_unknown_operator_with_set_prefix_and_ifexists_fails_closed() -> None:
    condition = {"ForAllValues:StringFrobnicatesIfExists": {"aws:TagKeys": "a"}}
    # The key is absent; a known ForAllValues/IfExists would be true, an unknown one must not be.
    assert decide(policy(allow(Condition=condition)), request()) == "ImplicitDeny"


def test_condition_built_by_hand_with_bad_prefix_fails_closed() -> None:
    document = policy(allow())
    statement = document.statements[0]
    odd = type(statement)(
        **{**statement.__dict__, "conditions": (Condition("Some:StringEquals", "aws:x", ("1",)),)}
    )
    assert decide(PolicyDocument(VERSION_2012, None, (odd,)), request()) == "ImplicitDeny"


# -- policy variables ------------------------------------------------------------------------------

USERNAME = {"aws:username": ("alice",)}
# (rule, version, statement, context, expected effect)
VARIABLES = [
    (
        "resource variable resolves",
        VERSION_2012,
        allow(resource=f"arn:aws:iam::{ACCOUNT}:role/${{aws:username}}"),
        request(resource=f"arn:aws:iam::{ACCOUNT}:role/alice", keys=USERNAME),
        "Allow",
    ),
    (
        "resource variable other value",
        VERSION_2012,
        allow(resource=f"arn:aws:iam::{ACCOUNT}:role/${{aws:username}}"),
        request(resource=f"arn:aws:iam::{ACCOUNT}:role/bob", keys=USERNAME),
        "ImplicitDeny",
    ),
    (
        "resource variable with wildcards around it",
        VERSION_2012,
        allow(resource="arn:aws:s3:::home/*/${aws:username}/*"),
        request(resource="arn:aws:s3:::home/x/y/alice/doc", keys=USERNAME),
        "Allow",
    ),
    (
        "variable key name case-insensitive",
        VERSION_2012,
        allow(resource=f"arn:aws:iam::{ACCOUNT}:role/${{AWS:UserName}}"),
        request(resource=f"arn:aws:iam::{ACCOUNT}:role/alice", keys=USERNAME),
        "Allow",
    ),
    (
        "unresolvable variable does not match",
        VERSION_2012,
        allow(resource=f"arn:aws:iam::{ACCOUNT}:role/${{aws:username}}"),
        request(resource=f"arn:aws:iam::{ACCOUNT}:role/alice"),
        "ImplicitDeny",
    ),
    (
        "unresolvable variable in a Deny's Resource denies (fail closed)",
        VERSION_2012,
        deny(resource=f"arn:aws:iam::{ACCOUNT}:role/${{aws:username}}"),
        request(resource=f"arn:aws:iam::{ACCOUNT}:role/alice"),
        "Deny",
    ),
    (
        "unresolvable variable in a Deny's NotResource denies (fail closed)",
        VERSION_2012,
        {"Effect": "Deny", "Action": "*", "NotResource": "arn:aws:s3:::${aws:username}"},
        request(),
        "Deny",
    ),
    (
        "unresolvable variable in NotResource does not apply",
        VERSION_2012,
        {"Effect": "Allow", "Action": "*", "NotResource": "arn:aws:s3:::${aws:username}"},
        request(),
        "ImplicitDeny",
    ),
    (
        "multivalued key is not substituted",
        VERSION_2012,
        allow(resource="arn:aws:s3:::${aws:TagKeys}"),
        request(resource="arn:aws:s3:::a", keys={"aws:TagKeys": ("a", "b")}),
        "ImplicitDeny",
    ),
    (
        "default used when the key is absent",
        VERSION_2012,
        allow(resource="arn:aws:s3:::team-${aws:PrincipalTag/team, 'shared'}/*"),
        request(resource="arn:aws:s3:::team-shared/x"),
        "Allow",
    ),
    (
        "default not used when the key is present",
        VERSION_2012,
        allow(resource="arn:aws:s3:::team-${aws:PrincipalTag/team, 'shared'}/*"),
        request(resource="arn:aws:s3:::team-shared/x", keys={"aws:PrincipalTag/team": ("red",)}),
        "ImplicitDeny",
    ),
    (
        "default with a doubled quote",
        VERSION_2012,
        allow(resource="arn:aws:s3:::${aws:username, 'o''brien'}"),
        request(resource="arn:aws:s3:::o'brien"),
        "Allow",
    ),
    (
        "${*} is a literal asterisk",
        VERSION_2012,
        allow(resource="arn:aws:s3:::bucket/${*}"),
        request(resource="arn:aws:s3:::bucket/*"),
        "Allow",
    ),
    (
        "${*} is not a wildcard",
        VERSION_2012,
        allow(resource="arn:aws:s3:::bucket/${*}"),
        request(resource="arn:aws:s3:::bucket/x"),
        "ImplicitDeny",
    ),
    (
        "${?} is a literal question mark",
        VERSION_2012,
        allow(resource="arn:aws:s3:::bucket/a${?}"),
        request(resource="arn:aws:s3:::bucket/ab"),
        "ImplicitDeny",
    ),
    (
        "${$} is a literal dollar",
        VERSION_2012,
        allow(resource="arn:aws:s3:::bucket/${$}{x}"),
        request(resource="arn:aws:s3:::bucket/${x}"),
        "Allow",
    ),
    (
        "substituted value is literal, not a wildcard",
        VERSION_2012,
        allow(resource="arn:aws:s3:::${aws:PrincipalTag/p}"),
        request(resource="arn:aws:s3:::xyz", keys={"aws:PrincipalTag/p": ("x*",)}),
        "ImplicitDeny",
    ),
    (
        "malformed ${} never resolves",
        VERSION_2012,
        allow(resource="arn:aws:s3:::${}"),
        request(resource="arn:aws:s3:::${}"),
        "ImplicitDeny",
    ),
    (
        "unclosed ${ is text",
        VERSION_2012,
        allow(resource="arn:aws:s3:::a${b"),
        request(resource="arn:aws:s3:::a${b"),
        "Allow",
    ),
    (
        "2008-10-17 does not substitute",
        VERSION_2008,
        allow(resource="arn:aws:s3:::${aws:username}"),
        request(resource="arn:aws:s3:::alice", keys=USERNAME),
        "ImplicitDeny",
    ),
    (
        "2008-10-17 keeps the text",
        VERSION_2008,
        allow(resource="arn:aws:s3:::${aws:username}"),
        request(resource="arn:aws:s3:::${aws:username}", keys=USERNAME),
        "Allow",
    ),
    (
        "variable in StringEquals value",
        VERSION_2012,
        allow(Condition={"StringEquals": {"aws:ResourceTag/owner": "${aws:username}"}}),
        request(keys={**USERNAME, "aws:ResourceTag/owner": ("alice",)}),
        "Allow",
    ),
    (
        "variable in StringLike value",
        VERSION_2012,
        allow(Condition={"StringLike": {"s3:prefix": "${aws:username}/*"}}),
        request(keys={**USERNAME, "s3:prefix": ("alice/docs",)}),
        "Allow",
    ),
    (
        "variable in StringLike value is literal",
        VERSION_2012,
        allow(Condition={"StringLike": {"s3:prefix": "${aws:PrincipalTag/p}/*"}}),
        request(keys={"aws:PrincipalTag/p": ("a*",), "s3:prefix": ("abc/docs",)}),
        "ImplicitDeny",
    ),
    (
        "variable in ArnLike value",
        VERSION_2012,
        allow(Condition={"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::*:user/${aws:username}"}}),
        request(keys=USERNAME),
        "Allow",
    ),
    (
        "unresolvable variable: condition false even when negated",
        VERSION_2012,
        allow(Condition={"StringNotEquals": {"aws:ResourceTag/owner": "${aws:username}"}}),
        request(keys={"aws:ResourceTag/owner": ("bob",)}),
        "ImplicitDeny",
    ),
    (
        "unresolvable variable in a Deny's condition denies (fail closed)",
        VERSION_2012,
        deny(Condition={"StringNotEquals": {"aws:ResourceTag/owner": "${aws:username}"}}),
        request(keys={"aws:ResourceTag/owner": ("bob",)}),
        "Deny",
    ),
    (
        "unresolvable variable in a Deny's negated-free condition denies too",
        VERSION_2012,
        deny(Condition={"StringEquals": {"aws:ResourceTag/owner": "${aws:username}"}}),
        request(keys={"aws:ResourceTag/owner": ("bob",)}),
        "Deny",
    ),
    (
        "no variables in Numeric values",
        VERSION_2012,
        allow(Condition={"NumericEquals": {"s3:max-keys": "${s3:limit}"}}),
        request(keys={"s3:max-keys": ("5",), "s3:limit": ("5",)}),
        "ImplicitDeny",
    ),
]


@pytest.mark.parametrize(
    ("rule", "version", "statement", "context", "expected"),
    VARIABLES,
    ids=[row[0] for row in VARIABLES],
)
def test_policy_variable(
    rule: str, version: str, statement: dict[str, object], context: RequestContext, expected: str
) -> None:
    assert decide(policy(statement, version=version), context) == expected


def test_missing_keys_name_condition_and_variable_keys() -> None:
    document = policy(
        allow(
            resource=f"arn:aws:iam::{ACCOUNT}:role/${{aws:username}}",
            Condition={
                "IpAddress": {"aws:SourceIp": "10.0.0.0/8"},
                "BoolIfExists": {"aws:MultiFactorAuthPresent": "true"},
            },
        ),
        allow("s3:*", Condition={"StringEquals": {"s3:prefix": "x"}}),  # other action: not read
    )
    decision = evaluate([("p", document)], request(keys={"aws:SourceIp": ("10.0.0.1",)}))
    assert decision.effect == "ImplicitDeny"
    assert decision.missing_keys == ("aws:username", "aws:MultiFactorAuthPresent")


def test_missing_keys_empty_when_context_complete() -> None:
    document = policy(allow(Condition={"StringEquals": {"aws:username": "alice"}}))
    assert evaluate([("p", document)], request(keys=USERNAME)).missing_keys == ()


# -- session policies ------------------------------------------------------------------------------

SESSIONS = [
    ("both allow", [allow()], [allow()], "Allow"),
    ("session narrower: not allowed", [allow("iam:*")], [allow("iam:List*")], "ImplicitDeny"),
    ("identity narrower: not allowed", [allow("iam:List*")], [allow("iam:*")], "ImplicitDeny"),
    ("session denies", [allow("iam:*")], [allow("*"), deny()], "Deny"),
    ("identity denies", [allow("*"), deny()], [allow("iam:*")], "Deny"),
    ("no session policy allows nothing", [allow("*")], [], "ImplicitDeny"),
]


@pytest.mark.parametrize(
    ("rule", "identity", "session", "expected"), SESSIONS, ids=[row[0] for row in SESSIONS]
)
def test_session_policy_intersects(
    rule: str,
    identity: list[dict[str, object]],
    session: list[dict[str, object]],
    expected: str,
) -> None:
    identity_policies = [("role", policy(*identity))] if identity else []
    session_policies = [("session", policy(*session))] if session else []
    decision = evaluate_with_session(identity_policies, session_policies, request())
    assert decision.effect == expected


def test_session_missing_keys_are_merged() -> None:
    identity = policy(allow(Condition={"StringEqualsIfExists": {"aws:username": "alice"}}))
    session = policy(allow(Condition={"BoolIfExists": {"aws:SecureTransport": "true"}}))
    decision = evaluate_with_session([("i", identity)], [("s", session)], request())
    assert decision.effect == "Allow"
    assert decision.missing_keys == ("aws:username", "aws:SecureTransport")


# -- trust policies and principals -----------------------------------------------------------------


def trust(principal: object, **extra: object) -> PolicyDocument:
    statement = {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": principal, **extra}
    if "NotPrincipal" in extra:
        del statement["Principal"]
    return parse_policy(
        json.dumps({"Version": VERSION_2012, "Statement": [statement]}), PolicyKind.TRUST
    )


def assume_role(
    principal_arn: str = USER, account_id: str = ACCOUNT, **keys: tuple[str, ...]
) -> RequestContext:
    return RequestContext(
        action="sts:AssumeRole",
        resource=ROLE,
        principal_arn=principal_arn,
        account_id=account_id,
        keys={key.replace("_", ":"): value for key, value in keys.items()},
    )


SESSION_ARN = f"arn:aws:sts::{ACCOUNT}:assumed-role/app/session-1"
TRUSTS = [
    ("service principal", {"Service": "ec2.amazonaws.com"}, "", "", "ec2.amazonaws.com", "Allow"),
    (
        "other service",
        {"Service": "ec2.amazonaws.com"},
        "",
        "",
        "lambda.amazonaws.com",
        "ImplicitDeny",
    ),
    (
        "service is not an AWS principal",
        {"Service": "ec2.amazonaws.com"},
        USER,
        ACCOUNT,
        None,
        "ImplicitDeny",
    ),
    ("account id", {"AWS": ACCOUNT}, USER, ACCOUNT, None, "Allow"),
    ("other account id", {"AWS": OTHER_ACCOUNT}, USER, ACCOUNT, None, "ImplicitDeny"),
    ("account root ARN", {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, USER, ACCOUNT, None, "Allow"),
    ("exact user ARN", {"AWS": USER}, USER, ACCOUNT, None, "Allow"),
    ("other user ARN", {"AWS": USER + "x"}, USER, ACCOUNT, None, "ImplicitDeny"),
    (
        "no wildcards in principal ARNs",
        {"AWS": f"arn:aws:iam::{ACCOUNT}:user/*"},
        USER,
        ACCOUNT,
        None,
        "ImplicitDeny",
    ),
    (
        "role ARN matches its session",
        {"AWS": f"arn:aws:iam::{ACCOUNT}:role/path/app"},
        SESSION_ARN,
        ACCOUNT,
        None,
        "Allow",
    ),
    (
        "role ARN not another role's session",
        {"AWS": f"arn:aws:iam::{ACCOUNT}:role/other"},
        SESSION_ARN,
        ACCOUNT,
        None,
        "ImplicitDeny",
    ),
    ("AWS * matches any AWS principal", {"AWS": "*"}, USER, ACCOUNT, None, "Allow"),
    ("AWS * is not a service", {"AWS": "*"}, "", "", "ec2.amazonaws.com", "ImplicitDeny"),
    ("Principal * matches anyone", "*", "", "", "ec2.amazonaws.com", "Allow"),
    ("CanonicalUser never matches", {"CanonicalUser": "abc"}, USER, ACCOUNT, None, "ImplicitDeny"),
]


@pytest.mark.parametrize(
    ("rule", "principal", "principal_arn", "account_id", "service", "expected"),
    TRUSTS,
    ids=[row[0] for row in TRUSTS],
)
def test_trust_policy_principal(
    rule: str,
    principal: object,
    principal_arn: str,
    account_id: str,
    service: str | None,
    expected: str,
) -> None:
    context = assume_role(principal_arn, account_id)
    assert evaluate_trust(trust(principal), context, service=service).effect == expected


def test_a_trust_deny_with_not_principal_refuses_everyone_but_the_named_principal() -> None:
    statements = [
        {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": ACCOUNT}},
        {"Effect": "Deny", "Action": "sts:AssumeRole", "NotPrincipal": {"AWS": USER}},
    ]
    document = parse_policy(
        json.dumps({"Version": VERSION_2012, "Statement": statements}), PolicyKind.TRUST
    )
    assert evaluate_trust(document, assume_role()).effect == "Allow"
    other = f"arn:aws:iam::{ACCOUNT}:user/bob"
    assert evaluate_trust(document, assume_role(principal_arn=other)).effect == "Deny"


def test_trust_condition_on_external_id() -> None:
    document = trust({"AWS": ACCOUNT}, Condition={"StringEquals": {"sts:ExternalId": "s3cret"}})
    assert evaluate_trust(document, assume_role(sts_ExternalId=("s3cret",))).effect == "Allow"
    assert evaluate_trust(document, assume_role(sts_ExternalId=("wrong",))).effect == "ImplicitDeny"
    decision = evaluate_trust(document, assume_role())
    assert decision.effect == "ImplicitDeny"
    assert decision.missing_keys == ("sts:ExternalId",)


def test_trust_action_must_match() -> None:
    context = RequestContext("sts:TagSession", ROLE, USER, ACCOUNT)
    assert evaluate_trust(trust({"AWS": ACCOUNT}), context).effect == "ImplicitDeny"


def test_trust_policy_grants_nothing_in_identity_evaluation() -> None:
    assert evaluate([("trust", trust("*"))], assume_role()).effect == "ImplicitDeny"


def test_identity_policy_grants_nothing_in_trust_evaluation() -> None:
    document = policy(allow("sts:AssumeRole"))
    assert evaluate_trust(document, assume_role()).effect == "ImplicitDeny"


def test_principal_matches_federated_provider() -> None:
    provider = f"arn:aws:iam::{ACCOUNT}:oidc-provider/example.com"
    principal = Principal(entries=(("Federated", (provider,)),))
    assert principal_matches(principal, principal_arn=None, account_id=None, federated=provider)
    assert not principal_matches(principal, principal_arn=USER, account_id=ACCOUNT)


def test_principal_everyone_matches_without_identity() -> None:
    assert principal_matches(EVERYONE, principal_arn=None, account_id=None)


# -- properties ----------------------------------------------------------------------------------

latin1_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=12)
actions = st.sampled_from(
    ["*", "iam:*", "iam:GetRole", "iam:Get*", "iam:?etRole", "s3:GetObject", "sts:AssumeRole"]
)
resources = st.sampled_from(
    [
        "*",
        ROLE,
        f"arn:aws:iam::{ACCOUNT}:role/*",
        "arn:aws:iam::*:role/${aws:username}",
        "arn:aws:iam::*:role/${aws:PrincipalTag/team, 'app'}",
        "arn:aws:s3:::bucket/${*}",
        "arn:aws:s3:::${}",
        "arn:aws:iam:*",
    ]
) | latin1_text.map(lambda text: "arn:aws:s3:::" + (text or "x"))
operators = st.sampled_from(
    [
        "StringEquals",
        "StringNotLike",
        "StringEqualsIgnoreCaseIfExists",
        "NumericLessThan",
        "DateGreaterThanEquals",
        "Bool",
        "BinaryEquals",
        "IpAddress",
        "NotIpAddressIfExists",
        "ArnLike",
        "ArnNotEquals",
        "Null",
        "ForAnyValue:StringLike",
        "ForAllValues:StringNotEquals",
        "ForAllValues:NumericEqualsIfExists",
        "NullIfExists",
        "Frobnicates",
    ]
) | st.from_regex(r"\A(ForAnyValue:|ForAllValues:)?[A-Z][a-zA-Z]{0,20}\Z")
context_keys = st.sampled_from(
    ["aws:username", "aws:SourceIp", "aws:CurrentTime", "aws:TagKeys", "aws:PrincipalTag/team"]
)
scalar_values = (
    st.sampled_from(
        [
            "alice",
            "a*",
            "10.0.0.0/8",
            "2001:db8::/32",
            "true",
            "2026-01-01T00:00:00Z",
            "1767225600",
            "QmluYXJ5",
            ROLE,
            "arn:aws:iam::*:role/*",
            "${aws:username}",
            "${aws:nothing, 'd'}",
            "${bad",
            "${}",
        ]
    )
    | latin1_text
)
policy_values = st.one_of(
    scalar_values, st.integers(), st.booleans(), st.lists(scalar_values, min_size=1, max_size=3)
)
conditions = st.dictionaries(
    operators, st.dictionaries(context_keys, policy_values, min_size=1, max_size=2), max_size=2
)


@st.composite
def statements(
    draw: st.DrawFn, effect: str | None = None, with_conditions: bool = True
) -> dict[str, object]:
    statement: dict[str, object] = {"Effect": effect or draw(st.sampled_from(["Allow", "Deny"]))}
    statement["NotAction" if draw(st.booleans()) else "Action"] = draw(
        st.lists(actions, min_size=1, max_size=3)
    )
    statement["NotResource" if draw(st.integers(0, 4)) == 0 else "Resource"] = draw(
        st.lists(resources, min_size=1, max_size=3)
    )
    condition = draw(conditions) if with_conditions else {}
    if condition:
        statement["Condition"] = condition
    return statement


@st.composite
def documents(draw: st.DrawFn, with_conditions: bool = True) -> PolicyDocument:
    version = draw(st.sampled_from([VERSION_2012, VERSION_2008]))
    drawn = st.lists(statements(with_conditions=with_conditions), min_size=1, max_size=4)
    body = {"Version": version, "Statement": draw(drawn)}
    try:
        return parse_policy(json.dumps(body), PolicyKind.IDENTITY)
    except MalformedPolicyDocument:
        assume(False)
        raise  # unreachable: assume(False) stops the example


context_values = st.lists(scalar_values, max_size=3).map(tuple)


@st.composite
def contexts(draw: st.DrawFn) -> RequestContext:
    keys = draw(st.dictionaries(context_keys, context_values, max_size=5))
    return RequestContext(
        action=draw(st.sampled_from(["iam:GetRole", "iam:DeleteRole", "s3:GetObject"])),
        resource=draw(resources),
        principal_arn=USER,
        account_id=ACCOUNT,
        keys=keys,
    )


@settings(max_examples=300, deadline=None)
@given(document=documents(), extra=statements(effect="Deny"), context=contexts())
def test_adding_a_deny_statement_never_grants(
    document: PolicyDocument, extra: dict[str, object], context: RequestContext
) -> None:
    before = evaluate([("p", document)], context)
    try:
        denial = parse_policy(
            json.dumps({"Version": document.version, "Statement": [extra]}), PolicyKind.IDENTITY
        )
    except MalformedPolicyDocument:
        assume(False)
        raise  # unreachable: assume(False) stops the example
    merged = PolicyDocument(document.version, None, document.statements + denial.statements)
    for after in (
        evaluate([("p", merged)], context),
        evaluate([("p", document), ("d", denial)], context),
    ):
        if before.effect != "Allow":
            assert after.effect != "Allow"
        if before.effect == "Deny":
            assert after.effect == "Deny"


@settings(max_examples=300, deadline=None)
@given(identity=documents(), session=documents(), context=contexts())
def test_session_policy_never_allows_what_identity_does_not(
    identity: PolicyDocument, session: PolicyDocument, context: RequestContext
) -> None:
    combined = evaluate_with_session([("i", identity)], [("s", session)], context)
    if combined.allowed:
        assert evaluate([("i", identity)], context).allowed
        assert evaluate([("s", session)], context).allowed


@settings(max_examples=300, deadline=None)
@given(document=documents(), context=contexts())
def test_evaluate_never_raises_on_an_accepted_document(
    document: PolicyDocument, context: RequestContext
) -> None:
    decision = evaluate([("p", document)], context)
    assert decision.effect in ("Allow", "Deny", "ImplicitDeny")
    assert evaluate_trust(document, context).effect == "ImplicitDeny"  # no principals here


def _trust_statement(principal: object, action: object, condition: object) -> dict[str, object]:
    statement: dict[str, object] = {"Effect": "Allow", "Principal": principal, "Action": action}
    if condition:
        statement["Condition"] = condition
    return statement


principals = st.sampled_from(
    [
        "*",
        {"AWS": "*"},
        {"AWS": ACCOUNT},
        {"AWS": [USER, f"arn:aws:iam::{ACCOUNT}:role/app"]},
        {"Service": "ec2.amazonaws.com"},
        {"Federated": "cognito-identity.amazonaws.com"},
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    principal=principals,
    action=st.sampled_from(["sts:AssumeRole", "sts:*", "sts:Tag*"]),
    condition=conditions,
    context=contexts(),
    service=st.none() | st.sampled_from(["ec2.amazonaws.com", "lambda.amazonaws.com"]),
)
def test_evaluate_trust_never_raises_on_an_accepted_trust_policy(
    principal: object, action: str, condition: object, context: RequestContext, service: str | None
) -> None:
    text = json.dumps(
        {"Version": VERSION_2012, "Statement": [_trust_statement(principal, action, condition)]}
    )
    document = parse_policy(text, PolicyKind.TRUST)
    decision = evaluate_trust(document, context, service=service)
    assert decision.effect in ("Allow", "Deny", "ImplicitDeny")


# --- documents that read no key ------------------------------------------------------------------


def test_a_trust_policy_naming_principals_only_reads_no_context_key() -> None:
    assert not reads_context_keys(trust({"AWS": f"arn:aws:iam::{ACCOUNT}:root"}))
    assert not reads_context_keys(policy(allow("s3:GetObject", "arn:aws:s3:::bucket/*")))


def test_a_condition_or_a_policy_variable_reads_context_keys() -> None:
    external_id = {"StringEquals": {"sts:ExternalId": "x"}}
    assert reads_context_keys(trust({"AWS": ACCOUNT}, Condition=external_id))
    assert reads_context_keys(policy(allow("s3:GetObject", "arn:aws:s3:::b/${aws:username}/*")))


@settings(max_examples=300, deadline=None)
# Documents without conditions: most drawn with them read a key and would only be rejected.
@given(document=documents(with_conditions=False), context=contexts())
def test_a_document_that_reads_no_key_decides_alike_without_the_keys(
    document: PolicyDocument, context: RequestContext
) -> None:
    assume(not reads_context_keys(document))
    bare = RequestContext(context.action, context.resource, USER, ACCOUNT, {})
    assert evaluate([("p", document)], bare) == evaluate([("p", document)], context)
