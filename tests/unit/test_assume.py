"""AssumeRole's rules on facts built by hand, no store: one table row per rule, with AWS's code
and message for each refusal, then the order in which the rules answer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from controller.actions import Caller, RequestFacts
from controller.assume import (
    AssumeRoleFacts,
    AssumeRoleGrant,
    decide,
    read_request,
)
from controller.errors import ApiError
from controller.permissions import CallerFacts, Policies
from controller.policy.document import PolicyKind, parse_policy
from controller.store.records import Role
from tests.unit.callers import root, user

ACCOUNT = "123456789012"
OTHER = "210987654321"
NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/app"
ROOT = root(ACCOUNT)
ALICE = user(ACCOUNT, "alice")
STRANGER = user(OTHER, "mallory")
CHAINED = Caller(
    ACCOUNT,
    f"arn:aws:sts::{ACCOUNT}:assumed-role/first/s",
    "ASIACHAINED",
    "AROAFIRST:s",
    "assumed-role",
    role_id="AROAFIRST",
    issued=NOW,
)
MARKED = Caller(
    ACCOUNT,
    CHAINED.arn,
    "ASIAMARKED",
    "AROAFIRST:s",
    "assumed-role",
    role_id="AROAFIRST",
    source_identity="alice",
    issued=NOW,
)
FEDERATED = Caller(
    ACCOUNT,
    f"arn:aws:sts::{ACCOUNT}:federated-user/bob",
    "ASIAFED",
    f"{ACCOUNT}:bob",
    "federated-user",
)
SESSION = Caller(ACCOUNT, ALICE.arn, "ASIASESSION", "AIDAALICE", "session", user_name="alice")


def document(*statements: dict[str, Any], kind: PolicyKind = PolicyKind.IDENTITY) -> Any:
    return parse_policy(json.dumps({"Version": "2012-10-17", "Statement": list(statements)}), kind)


def trusting(principal: str, *actions: str, **extra: Any) -> Any:
    statement = {
        "Effect": "Allow",
        "Principal": {"AWS": principal},
        "Action": list(actions or ("sts:AssumeRole",)),
        **extra,
    }
    return document(statement, kind=PolicyKind.TRUST)


def identity(*statements: dict[str, Any]) -> Policies:
    return (("inline", document(*statements)),)


ASSUME_ANY = identity({"Effect": "Allow", "Action": "sts:*", "Resource": "*"})
ASSUME_ONLY = identity({"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"})
DENY_ASSUME = identity(
    {"Effect": "Allow", "Action": "sts:*", "Resource": "*"},
    {"Effect": "Deny", "Action": "sts:AssumeRole", "Resource": ROLE_ARN},
)
ACCOUNT_ROOT = f"arn:aws:iam::{ACCOUNT}:root"


def role(max_session_duration: int = 3600, path: str = "/") -> Role:
    return Role("AROAAPP", ACCOUNT, "app", path, "{}", None, max_session_duration, "2024")


def facts(
    caller: Caller,
    trust: Any,
    policies: Policies = (),
    *,
    tags: dict[str, str] | None = None,
    stored: Role | None = None,
    **params: Any,
) -> AssumeRoleFacts:
    request = read_request(caller, {"RoleArn": ROLE_ARN, "RoleSessionName": "s", **params})
    return AssumeRoleFacts(
        request=request,
        caller=CallerFacts(caller, policies, None, tags or {}),
        role=stored or role(),
        trust_policy=trust,
    )


def refusal(call: Any) -> tuple[str, str]:
    with pytest.raises(ApiError) as raised:
        call()
    return raised.value.code, raised.value.message


def not_authorized(caller: Caller, action: str, why: str) -> str:
    return f"User: {caller.arn} is not authorized to perform: {action} on resource: {ROLE_ARN}{why}"


#: AWS says nothing after the role's ARN when its trust policy refuses (RoleCall logs why).
TRUST_REFUSES = ""
NO_POLICY = " because no identity-based policy allows the {} action"

# -- read_request: what the request alone gets wrong ------------------------------------------

#: (rule, caller, params, AWS's code, the message or the start of it)
REQUEST_REFUSALS = [
    (
        "federated credentials cannot assume a role",
        FEDERATED,
        {},
        "AccessDenied",
        not_authorized(FEDERATED, "sts:AssumeRole", "")
        + " because federated users can call no IAM action and only GetCallerIdentity in STS",
    ),
    (
        "the role ARN must be a role's",
        ALICE,
        {"RoleArn": f"arn:aws:iam::{ACCOUNT}:user/app"},
        "ValidationError",
        f"1 validation error detected: Value 'arn:aws:iam::{ACCOUNT}:user/app' at 'roleArn'"
        " failed to satisfy constraint: Member must be the ARN of an IAM role",
    ),
    (
        "session tags are refused, not ignored",
        ALICE,
        {"Tags": [{"arn": "x"}]},
        "InvalidInput",
        "Tags is not supported by RoleCall.",
    ),
    (
        "managed session policies are refused",
        ALICE,
        {"PolicyArns": [{"arn": "x"}]},
        "InvalidInput",
        "PolicyArns is not supported by RoleCall.",
    ),
    (
        "transitive tag keys are refused",
        ALICE,
        {"TransitiveTagKeys": ["team"]},
        "InvalidInput",
        "TransitiveTagKeys is not supported by RoleCall.",
    ),
    (
        "MFA is refused",
        ALICE,
        {"SerialNumber": "arn:aws:iam::123456789012:mfa/alice", "TokenCode": "123456"},
        "InvalidInput",
        "SerialNumber is not supported by RoleCall.",
    ),
    (
        "a session policy is at most 2,048 characters",
        ALICE,
        {"Policy": " " * 2049},
        "ValidationError",
        "1 validation error detected: Value '[2049 characters]' at 'policy' failed to satisfy"
        " constraint: Member must have length less than or equal to 2048",
    ),
    (
        "a session policy must be a policy",
        ALICE,
        {"Policy": '{"Version": "2012-10-17"}'},
        "MalformedPolicyDocument",
        "",
    ),
    (
        "a chained session cannot change its source identity",
        MARKED,
        {"SourceIdentity": "mallory"},
        "AccessDenied",
        f"User: {MARKED.arn} is not authorized to perform: sts:SetSourceIdentity: the session's"
        " source identity is 'alice' and cannot be changed",
    ),
]


@pytest.mark.parametrize(
    ("caller", "params", "code", "message"),
    [row[1:] for row in REQUEST_REFUSALS],
    ids=[row[0] for row in REQUEST_REFUSALS],
)
def test_read_request_refuses_what_the_request_alone_gets_wrong(
    caller: Caller, params: dict[str, Any], code: str, message: str
) -> None:
    params = {"RoleArn": ROLE_ARN, "RoleSessionName": "s", **params}
    got_code, got_message = refusal(lambda: read_request(caller, params))
    assert got_code == code
    assert got_message.startswith(message)


def test_a_request_is_read_with_its_defaults() -> None:
    params = {"RoleArn": f"arn:aws:iam::{ACCOUNT}:role/a/b/app", "RoleSessionName": "s"}
    request = read_request(ALICE, params)
    assert (request.target.account_id, request.target.path, request.target.name) == (
        ACCOUNT,
        "/a/b/",
        "app",
    )
    assert request.duration_seconds == 3600
    assert (request.session_policy, request.source_identity, request.external_id) == (None,) * 3


def test_getsessiontoken_credentials_may_assume_a_role() -> None:
    assert read_request(SESSION, {"RoleArn": ROLE_ARN, "RoleSessionName": "s"}).role_arn == ROLE_ARN


@pytest.mark.parametrize(
    ("caller", "requested", "expected"),
    [
        (ALICE, None, None),
        (ALICE, "alice", "alice"),
        (MARKED, None, "alice"),  # kept from the chain
        (MARKED, "alice", "alice"),  # named again, unchanged
    ],
)
def test_the_source_identity_is_the_requested_one_or_the_chains(
    caller: Caller, requested: str | None, expected: str | None
) -> None:
    params = {"RoleArn": ROLE_ARN, "RoleSessionName": "s"}
    if requested is not None:
        params["SourceIdentity"] = requested
    assert read_request(caller, params).source_identity == expected


def test_the_request_is_checked_in_awss_order() -> None:
    """The kind of credentials, then the ARN, then unsupported parameters, then the policy,
    then the source identity: each row breaks every rule after its own as well."""
    bad_arn = {"RoleArn": "arn:aws:iam::1:role/x"}
    unsupported = {"Tags": [{"arn": "x"}]}
    too_long = {"Policy": " " * 3000}
    other_identity = {"SourceIdentity": "mallory"}
    federated_marked = Caller(**{**FEDERATED.__dict__, "source_identity": "alice"})
    rows = [
        (
            federated_marked,
            {**bad_arn, **unsupported, **too_long, **other_identity},
            "AccessDenied",
        ),
        (MARKED, {**bad_arn, **unsupported, **too_long, **other_identity}, "ValidationError"),
        (MARKED, {**unsupported, **too_long, **other_identity}, "InvalidInput"),
        (MARKED, {**too_long, **other_identity}, "ValidationError"),
        (MARKED, other_identity, "AccessDenied"),
    ]
    for caller, params, code in rows:
        request = {"RoleArn": ROLE_ARN, "RoleSessionName": "s", **params}
        assert refusal(lambda: read_request(caller, request))[0] == code, params  # noqa: B023


# -- decide: the role, its trust policy, the caller's policies, the duration ------------------

#: (rule, facts, AWS's code, its message; None when the role is granted)
DECISIONS: list[tuple[str, Any, str | None, str | None]] = [
    (
        "a missing role is refused like a refused one",
        lambda: AssumeRoleFacts(
            read_request(ALICE, {"RoleArn": ROLE_ARN, "RoleSessionName": "s"}),
            CallerFacts(ALICE, ASSUME_ANY),
            None,
            None,
        ),
        "AccessDenied",
        not_authorized(ALICE, "sts:AssumeRole", ""),
    ),
    (
        "a role found by name on another path is not the ARN's",
        lambda: facts(ALICE, trusting(ACCOUNT_ROOT), ASSUME_ANY, stored=role(path="/other/")),
        "AccessDenied",
        not_authorized(ALICE, "sts:AssumeRole", ""),
    ),
    (
        "the trust policy must allow the caller",
        lambda: facts(ALICE, trusting(f"arn:aws:iam::{ACCOUNT}:user/bob"), ASSUME_ANY),
        "AccessDenied",
        not_authorized(ALICE, "sts:AssumeRole", TRUST_REFUSES),
    ),
    (
        "trusting the account needs the caller's own Allow",
        lambda: facts(ALICE, trusting(ACCOUNT_ROOT)),
        "AccessDenied",
        not_authorized(ALICE, "sts:AssumeRole", NO_POLICY.format("sts:AssumeRole")),
    ),
    (
        "trusting the account and an identity Allow grant it",
        lambda: facts(ALICE, trusting(ACCOUNT_ROOT), ASSUME_ANY),
        None,
        None,
    ),
    (
        "trusting the account id alone is trusting the account",
        lambda: facts(ALICE, trusting(ACCOUNT)),
        "AccessDenied",
        not_authorized(ALICE, "sts:AssumeRole", NO_POLICY.format("sts:AssumeRole")),
    ),
    (
        "a trust naming the caller itself is enough in its own account",
        lambda: facts(ALICE, trusting(ALICE.arn)),
        None,
        None,
    ),
    (
        "an explicit Deny wins over a trust naming the caller",
        lambda: facts(ALICE, trusting(ALICE.arn), DENY_ASSUME),
        "AccessDenied",
        not_authorized(
            ALICE, "sts:AssumeRole", " with an explicit deny in an identity-based policy"
        ),
    ),
    (
        "another account's caller needs its own Allow even when named",
        lambda: facts(STRANGER, trusting(STRANGER.arn)),
        "AccessDenied",
        f"User: {STRANGER.arn} is not authorized to perform: sts:AssumeRole on resource:"
        f" {ROLE_ARN}" + NO_POLICY.format("sts:AssumeRole"),
    ),
    (
        "another account's caller with its own Allow is granted",
        lambda: facts(STRANGER, trusting(STRANGER.arn), ASSUME_ANY),
        None,
        None,
    ),
    (
        "the root needs no policy of its own",
        lambda: facts(ROOT, trusting(ACCOUNT_ROOT)),
        None,
        None,
    ),
    (
        "a source identity needs sts:SetSourceIdentity in the trust policy",
        lambda: facts(ALICE, trusting(ACCOUNT_ROOT), ASSUME_ANY, SourceIdentity="alice"),
        "AccessDenied",
        not_authorized(ALICE, "sts:SetSourceIdentity", TRUST_REFUSES),
    ),
    (
        "a source identity needs sts:SetSourceIdentity in the caller's policies",
        lambda: facts(
            ALICE,
            trusting(ACCOUNT_ROOT, "sts:AssumeRole", "sts:SetSourceIdentity"),
            ASSUME_ONLY,
            SourceIdentity="alice",
        ),
        "AccessDenied",
        not_authorized(ALICE, "sts:SetSourceIdentity", NO_POLICY.format("sts:SetSourceIdentity")),
    ),
    (
        "a source identity allowed by both is granted",
        lambda: facts(
            ALICE,
            trusting(ACCOUNT_ROOT, "sts:AssumeRole", "sts:SetSourceIdentity"),
            ASSUME_ANY,
            SourceIdentity="alice",
        ),
        None,
        None,
    ),
    (
        "a source identity kept from the chain needs sts:SetSourceIdentity too",
        lambda: facts(MARKED, trusting(ACCOUNT_ROOT), ASSUME_ANY),
        "AccessDenied",
        f"User: {MARKED.arn} is not authorized to perform: sts:SetSourceIdentity on resource:"
        f" {ROLE_ARN}" + TRUST_REFUSES,
    ),
    (
        "the trust's condition sees the requested source identity",
        lambda: facts(
            ALICE,
            trusting(
                ACCOUNT_ROOT,
                "sts:AssumeRole",
                "sts:SetSourceIdentity",
                Condition={"StringEquals": {"sts:SourceIdentity": "bob"}},
            ),
            ASSUME_ANY,
            SourceIdentity="alice",
        ),
        "AccessDenied",
        not_authorized(ALICE, "sts:AssumeRole", TRUST_REFUSES),
    ),
    (
        "an external id the trust asks for must be given",
        lambda: facts(
            ALICE,
            trusting(ACCOUNT_ROOT, Condition={"StringEquals": {"sts:ExternalId": "secret-1"}}),
            ASSUME_ANY,
        ),
        "AccessDenied",
        not_authorized(ALICE, "sts:AssumeRole", TRUST_REFUSES),
    ),
    (
        "an external id must be the one the trust names",
        lambda: facts(
            ALICE,
            trusting(ACCOUNT_ROOT, Condition={"StringEquals": {"sts:ExternalId": "secret-1"}}),
            ASSUME_ANY,
            ExternalId="secret-2",
        ),
        "AccessDenied",
        not_authorized(ALICE, "sts:AssumeRole", TRUST_REFUSES),
    ),
    (
        "the right external id is granted",
        lambda: facts(
            ALICE,
            trusting(ACCOUNT_ROOT, Condition={"StringEquals": {"sts:ExternalId": "secret-1"}}),
            ASSUME_ANY,
            ExternalId="secret-1",
        ),
        None,
        None,
    ),
    (
        "the trust's conditions read the caller's gathered tags",
        lambda: facts(
            ALICE,
            trusting(ACCOUNT_ROOT, Condition={"StringEquals": {"aws:PrincipalTag/team": "a"}}),
            ASSUME_ANY,
            tags={"team": "a"},
        ),
        None,
        None,
    ),
    (
        "without the tag the trust's condition refuses",
        lambda: facts(
            ALICE,
            trusting(ACCOUNT_ROOT, Condition={"StringEquals": {"aws:PrincipalTag/team": "a"}}),
            ASSUME_ANY,
            tags={"team": "b"},
        ),
        "AccessDenied",
        not_authorized(ALICE, "sts:AssumeRole", TRUST_REFUSES),
    ),
    (
        "a duration up to the role's MaxSessionDuration is granted",
        lambda: facts(ALICE, trusting(ALICE.arn), stored=role(7200), DurationSeconds=7200),
        None,
        None,
    ),
    (
        "a duration over the role's MaxSessionDuration is a validation error",
        lambda: facts(ALICE, trusting(ALICE.arn), stored=role(7200), DurationSeconds=7201),
        "ValidationError",
        "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
    ),
    (
        "role chaining is limited to one hour",
        lambda: facts(
            CHAINED, trusting(ACCOUNT_ROOT), ASSUME_ANY, stored=role(43200), DurationSeconds=3601
        ),
        "ValidationError",
        "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by"
        " role chaining.",
    ),
    (
        "role chaining may last the full hour",
        lambda: facts(
            CHAINED, trusting(ACCOUNT_ROOT), ASSUME_ANY, stored=role(43200), DurationSeconds=3600
        ),
        None,
        None,
    ),
    (
        "the trust is checked before the duration",
        lambda: facts(ALICE, trusting(f"arn:aws:iam::{ACCOUNT}:user/bob"), DurationSeconds=7200),
        "AccessDenied",
        not_authorized(ALICE, "sts:AssumeRole", TRUST_REFUSES),
    ),
    (
        "the chaining limit is checked before MaxSessionDuration",
        lambda: facts(CHAINED, trusting(ACCOUNT_ROOT), ASSUME_ANY, DurationSeconds=7200),
        "ValidationError",
        "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by"
        " role chaining.",
    ),
]


@pytest.mark.parametrize(
    ("make_facts", "code", "message"),
    [row[1:] for row in DECISIONS],
    ids=[row[0] for row in DECISIONS],
)
def test_decide_follows_each_rule(make_facts: Any, code: str | None, message: str | None) -> None:
    gathered: AssumeRoleFacts = make_facts()
    if code is None:
        grant = decide(gathered, RequestFacts(), NOW)
        assert isinstance(grant, AssumeRoleGrant)
        return
    assert refusal(lambda: decide(gathered, RequestFacts(), NOW)) == (code, message)


def test_a_grant_is_the_sessions_identity_duration_policy_and_source_identity() -> None:
    policy = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
    )
    gathered = facts(
        ALICE,
        trusting(ALICE.arn, "sts:AssumeRole", "sts:SetSourceIdentity"),
        stored=role(7200),
        RoleSessionName="build-7",
        DurationSeconds=5400,
        Policy=policy,
        SourceIdentity="alice",
    )
    grant = decide(gathered, RequestFacts(), NOW)
    assert grant.principal_arn == f"arn:aws:sts::{ACCOUNT}:assumed-role/app/build-7"
    assert grant.user_id == "AROAAPP:build-7"
    assert (grant.seconds, grant.session_policy, grant.source_identity) == (5400, policy, "alice")
