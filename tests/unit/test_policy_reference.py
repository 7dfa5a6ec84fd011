"""The engine decides as a plain reference evaluator written from AWS's guide does
(tests/unit/reference_eval.py): random users with inline, group and attached managed policies,
a permissions boundary or none, session policies or none, every action and resource of a
small universe. Then the fail-closed paths: a boundary or an attached policy that cannot be
read any more allows nothing."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller import awsmanaged
from controller.accounts import ensure_first_account
from controller.actions import Caller, RequestFacts
from controller.authorize import gather_caller
from controller.permissions import _LAYERS, CallerFacts, Policies, decide
from controller.policy.document import PolicyKind, parse_policy
from controller.store.records import (
    Group,
    GroupPolicy,
    ManagedPolicy,
    PolicyAttachment,
    PolicyVersion,
    Tag,
    User,
    UserPolicy,
)
from controller.store.sqlite import SQLiteStore
from tests.unit import reference_eval as reference
from tests.unit.callers import user

ACCOUNT = "123456789012"
NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)
CREATED = "2026-12-07T12:00:00Z"

TEAM = "aws:PrincipalTag/team"  # from the caller's tags
ENV = "ec2:ResourceTag/env"  # an extra key of the request, absent or not
FLAG = "test:Flag"  # another, read by Bool
SECURE = "aws:SecureTransport"  # from the transport, always present

# -- the universe: requests, and the patterns statements are drawn from -----------------------

ACTIONS = (
    "iam:GetRole",
    "IAM:getrole",
    "iam:DeleteRole",
    "iam:PassRole",
    "s3:GetObject",
    "s3:PutObject",
    "ec2:DescribeInstances",
    "ec2:TerminateInstances",
    "sts:AssumeRole",
)
RESOURCES = (
    "*",
    f"arn:aws:iam::{ACCOUNT}:role/app",
    f"arn:aws:iam::{ACCOUNT}:role/app1",
    f"arn:aws:iam::{ACCOUNT}:role/team/app2",
    "arn:aws:iam::210987654321:role/apple",
    "arn:aws:s3:::bucket/report.csv",
    "arn:aws:s3:::bucket/a/report.csv",
    "arn:aws:s3:::other",
    f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-1",
    f"arn:aws:ec2:eu-west-1:{ACCOUNT}:instance/i-2",
    f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:/app:log-stream:x",
)
ACTION_PATTERNS = (
    "*",
    "iam:*",
    "iam:Get*",
    "iam:?etRole",
    "IAM:GETROLE",
    "iam:*Role",
    "s3:*Object",
    "s3:Get*",
    "s3:Put?bject",
    "ec2:Describe*",
    "ec2:*Instances",
    "sts:*",
)
RESOURCE_PATTERNS = (
    "*",
    f"arn:aws:iam::{ACCOUNT}:role/*",
    f"arn:aws:iam::{ACCOUNT}:role/app?",
    "arn:aws:iam::*:role/app*",
    "arn:aws:s3:::bucket/*",
    "arn:aws:s3:::bucket/*/report.csv",
    "arn:aws:s3:::*",
    f"arn:aws:ec2:*:{ACCOUNT}:instance/*",
    "arn:aws:ec2:us-east-1:*:*",
    "arn:aws:ec2:*",
    f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:/app:*",
    "arn:aws:logs:*:*:log-group:*",
)
CONDITIONS: tuple[dict[str, dict[str, Any]], ...] = (
    {"StringEquals": {TEAM: "a"}},
    {"StringEquals": {TEAM: ["a", "b"]}},
    {"StringEqualsIfExists": {TEAM: "a"}},
    {"StringNotEquals": {TEAM: "a"}},
    {"StringNotEqualsIfExists": {"aws:principaltag/TEAM": "b"}},  # key names ignore case
    {"StringLike": {ENV: "d*"}},
    {"StringLike": {"EC2:resourcetag/Env": ["pro?", "*st"]}},
    {"StringLikeIfExists": {ENV: "prod*"}},
    {"StringNotLike": {ENV: "prod*"}},
    {"StringNotLikeIfExists": {ENV: "?ev"}},
    {"StringLike": {TEAM: "*", ENV: "*"}},  # two keys: both must hold
    {"Bool": {SECURE: "true"}},
    {"Bool": {SECURE: False}},
    {"Bool": {FLAG: "true"}},
    {"BoolIfExists": {FLAG: ["true"]}},
)


def _one_or_list(values: list[str]) -> str | list[str]:
    return values[0] if len(values) == 1 else values


#: Drawn often, so that a request allowed by one layer often reaches the next.
ALLOW_EVERYTHING = {"Effect": "Allow", "Action": "*", "Resource": "*"}


@st.composite
def statements(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.integers(0, 3)) == 0:
        return dict(ALLOW_EVERYTHING)
    statement: dict[str, Any] = {"Effect": draw(st.sampled_from(["Allow", "Allow", "Deny"]))}
    actions = draw(st.lists(st.sampled_from(ACTION_PATTERNS), min_size=1, max_size=3))
    negate_action = draw(st.integers(0, 4)) == 0
    statement["NotAction" if negate_action else "Action"] = _one_or_list(actions)
    resources = draw(st.lists(st.sampled_from(RESOURCE_PATTERNS), min_size=1, max_size=3))
    negate_resource = draw(st.integers(0, 4)) == 0
    statement["NotResource" if negate_resource else "Resource"] = _one_or_list(resources)
    condition: dict[str, dict[str, Any]] = {}
    for block in draw(st.lists(st.sampled_from(CONDITIONS), max_size=2)):
        for operator, keys in block.items():
            condition.setdefault(operator, {}).update(keys)
    if condition:
        statement["Condition"] = condition
    return statement


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    drawn = draw(st.lists(statements(), min_size=1, max_size=3))
    return {"Version": "2012-10-17", "Statement": drawn[0] if len(drawn) == 1 else drawn}


@dataclass(frozen=True)
class Context:
    """The request's keys, as the test sets them up for both evaluators."""

    team: str | None
    env: str | None
    flag: str | None
    secure: bool

    def reference_keys(self, with_tags: bool = True) -> dict[str, str]:
        keys = {SECURE: "true" if self.secure else "false"}
        if self.team is not None and with_tags:
            keys[TEAM] = self.team
        if self.env is not None:
            keys[ENV] = self.env
        if self.flag is not None:
            keys[FLAG] = self.flag
        return keys

    def tags(self) -> dict[str, str]:
        return {"team": self.team} if self.team is not None else {}

    def extra_keys(self) -> dict[str, tuple[str, ...]]:
        extra: dict[str, tuple[str, ...]] = {}
        if self.env is not None:
            extra[ENV.lower()] = (self.env,)  # the request spells it otherwise than policies
        if self.flag is not None:
            extra[FLAG] = (self.flag,)
        return extra


contexts = st.builds(
    Context,
    team=st.sampled_from([None, "a", "b"]),
    env=st.sampled_from([None, "dev", "prod", "test", "production"]),
    flag=st.sampled_from([None, "true", "false"]),
    secure=st.booleans(),
)


def parsed(documents: list[dict[str, Any]], names: list[str]) -> Policies:
    return tuple(
        (name, parse_policy(json.dumps(document), PolicyKind.IDENTITY))
        for name, document in zip(names, documents, strict=True)
    )


def layer_name(effect: str, layer: int | None) -> str | None:
    """`Decision.layer` as the reference names it (one layer: the identity's)."""
    if effect == "Allow":
        return None
    return _LAYERS[layer] if layer is not None else "identity"


#: Requests of the universe; each example asks a few (all of them would take seconds).
requests = st.lists(
    st.tuples(st.sampled_from(ACTIONS), st.sampled_from(RESOURCES)), min_size=1, max_size=12
)


def assert_decides_alike(
    facts: CallerFacts,
    context: Context,
    identity: list[dict[str, Any]],
    boundary: list[dict[str, Any]] | None,
    session: list[dict[str, Any]] | None,
    asked: list[tuple[str, str]],
) -> None:
    """Each request asked: the same effect, and for a denial the same layer."""
    request_facts = RequestFacts(secure_transport=context.secure)
    with_tags = facts.caller.kind == "user"
    for action, resource in asked:
        decision = decide(facts, request_facts, NOW, action, resource, context.extra_keys())
        expected = reference.decide(
            identity,
            reference.Request(action, resource, context.reference_keys(with_tags)),
            boundary,
            session,
        )
        got = reference.Outcome(decision.effect, layer_name(decision.effect, decision.layer))
        assert got == expected, f"{action} on {resource}"


SCOPED_SESSION = Caller(
    ACCOUNT,
    f"arn:aws:sts::{ACCOUNT}:assumed-role/app/s",
    "ASIAAPP",
    "AROAAPP:s",
    "assumed-role",
    role_id="AROAAPP",
    session_policy="(the session policies)",
    issued=NOW,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    user_inline=st.lists(documents(), max_size=2),
    groups=st.lists(st.lists(documents(), max_size=2), max_size=2),
    attached=st.lists(documents(), max_size=2),
    boundary=st.none() | documents(),
    session=st.none() | st.lists(documents(), max_size=2),
    context=contexts,
    asked=requests,
)
def test_decide_agrees_with_the_reference(
    user_inline: list[dict[str, Any]],
    groups: list[list[dict[str, Any]]],
    attached: list[dict[str, Any]],
    boundary: dict[str, Any] | None,
    session: list[dict[str, Any]] | None,
    context: Context,
    asked: list[tuple[str, str]],
) -> None:
    group_inline = [document for group in groups for document in group]
    identity = user_inline + group_inline + attached
    names = (
        [f"user-{index}" for index in range(len(user_inline))]
        + [f"group-{index}" for index in range(len(group_inline))]
        + [f"arn:aws:iam::{ACCOUNT}:policy/managed-{index}" for index in range(len(attached))]
    )
    caller = user(ACCOUNT, "alice") if session is None else SCOPED_SESSION
    facts = CallerFacts(
        caller,
        parsed(identity, names),
        parsed(session, [f"session-{i}" for i in range(len(session))])
        if session is not None
        else None,
        context.tags() if caller.kind == "user" else {},
        parsed([boundary], ["arn:aws:iam::aws:policy/Boundary"]) if boundary is not None else None,
    )
    boundary_layer = [boundary] if boundary is not None else None
    assert_decides_alike(facts, context, identity, boundary_layer, session, asked)


# -- the same, through the store: what gather_caller reads is what the reference is given -------


@pytest.fixture(scope="module")
def store() -> Iterator[SQLiteStore]:
    store = SQLiteStore(":memory:")
    with store.transaction() as tx:
        ensure_first_account(tx, ACCOUNT, "test", CREATED)
    yield store
    store.close()


_numbers = itertools.count()


@dataclass(frozen=True)
class Managed:
    """A customer-managed policy: its versions, which one is the default, where it is attached
    (the user, and/or groups by index)."""

    versions: list[dict[str, Any]]
    default: int  # index into versions
    on_user: bool
    on_groups: list[int]


#: A version that is never the default: reading it instead of the default shows at once.
DENY_EVERYTHING = {
    "Version": "2012-10-17",
    "Statement": {"Effect": "Deny", "Action": "*", "Resource": "*"},
}


@st.composite
def managed_policies(draw: st.DrawFn) -> Managed:
    versions = draw(st.lists(documents(), min_size=1, max_size=2))
    decoy = draw(st.integers(0, len(versions)))
    versions.insert(decoy, DENY_EVERYTHING)
    default = draw(st.sampled_from([index for index in range(len(versions)) if index != decoy]))
    return Managed(
        versions=versions,
        default=default,
        on_user=draw(st.booleans()),
        on_groups=draw(st.lists(st.integers(0, 1), max_size=2, unique=True)),
    )


AWS_MANAGED: dict[str, dict[str, Any]] = {
    "ReadOnly": {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["iam:Get*", "s3:Get*"], "Resource": "*"}],
    },
    "NoDeletes": {
        "Version": "2012-10-17",
        "Statement": {"Effect": "Deny", "Action": "iam:Delete*", "Resource": "*"},
    },
}


@pytest.fixture(scope="module")
def aws_catalog() -> Iterator[None]:
    """Two AWS-managed policies, as if the operator's directory held them."""
    saved = awsmanaged.catalog
    awsmanaged.catalog = awsmanaged.AwsManagedCatalog(
        {
            f"{awsmanaged.ARN_PREFIX}/{name}": awsmanaged.AwsManagedPolicy(
                name, "/", json.dumps(document), CREATED
            )
            for name, document in AWS_MANAGED.items()
        }
    )
    try:
        yield
    finally:
        awsmanaged.catalog = saved


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    user_inline=st.lists(documents(), max_size=2),
    group_inline=st.lists(st.lists(documents(), max_size=2), min_size=0, max_size=2),
    managed=st.lists(managed_policies(), max_size=3),
    aws_attached=st.lists(st.sampled_from(sorted(AWS_MANAGED)), max_size=2, unique=True),
    boundary=st.sampled_from(["none", "customer", "aws"]),
    context=contexts,
    asked=requests,
)
def test_what_gather_caller_reads_decides_as_the_reference(
    store: SQLiteStore,
    aws_catalog: None,
    user_inline: list[dict[str, Any]],
    group_inline: list[list[dict[str, Any]]],
    managed: list[Managed],
    aws_attached: list[str],
    boundary: str,
    context: Context,
    asked: list[tuple[str, str]],
) -> None:
    number = next(_numbers)
    name = f"ref{number}"
    user_id = f"AIDA{name.upper()}"  # as tests.unit.callers.user names its id
    identity: list[dict[str, Any]] = list(user_inline)
    boundary_documents: list[dict[str, Any]] | None = None
    with store.transaction() as tx:
        tx.insert_user(User(user_id, ACCOUNT, name, "/", CREATED))
        tx.put_tags(user_id, [Tag(key, value) for key, value in context.tags().items()])
        for index, document in enumerate(user_inline):
            tx.put_user_policy(UserPolicy(user_id, f"inline{index}", json.dumps(document)))
        group_ids = []
        for index, documents_of_group in enumerate(group_inline):
            group_id = f"AGPAREF{number}X{index}"
            group_ids.append(group_id)
            tx.insert_group(Group(group_id, ACCOUNT, f"ref{number}-{index}", "/", CREATED))
            tx.add_group_member(group_id, user_id)
            for policy_index, document in enumerate(documents_of_group):
                text = json.dumps(document)
                tx.put_group_policy(GroupPolicy(group_id, f"inline{policy_index}", text))
            identity.extend(documents_of_group)
        for index, policy in enumerate(managed):
            record = ManagedPolicy(
                f"ANPAREF{number}X{index}",
                ACCOUNT,
                f"ref{number}-{index}",
                "/",
                None,
                policy.default + 1,
                len(policy.versions) + 1,
                CREATED,
                CREATED,
            )
            tx.insert_managed_policy(record)
            for version, document in enumerate(policy.versions, start=1):
                tx.insert_policy_version(
                    PolicyVersion(record.policy_id, version, json.dumps(document), CREATED)
                )
            targets = [(user_id, "user")] if policy.on_user else []
            targets += [(group_ids[i], "group") for i in policy.on_groups if i < len(group_ids)]
            for entity_id, kind in targets:
                tx.attach_policy(
                    PolicyAttachment(entity_id, kind, ACCOUNT, record.arn, record.policy_id)
                )
            if targets:  # attached to the user and a group: it still counts once
                identity.append(policy.versions[policy.default])
        for policy_name in aws_attached:
            arn = f"{awsmanaged.ARN_PREFIX}/{policy_name}"
            tx.attach_policy(PolicyAttachment(user_id, "user", ACCOUNT, arn, None))
            identity.append(AWS_MANAGED[policy_name])
        if boundary == "customer" and managed:
            policy = managed[0]
            tx.set_user_permissions_boundary(
                user_id, f"arn:aws:iam::{ACCOUNT}:policy/ref{number}-0"
            )
            boundary_documents = [policy.versions[policy.default]]
        elif boundary == "aws":
            tx.set_user_permissions_boundary(user_id, f"{awsmanaged.ARN_PREFIX}/ReadOnly")
            boundary_documents = [AWS_MANAGED["ReadOnly"]]
    with store.transaction() as tx:
        facts = gather_caller(tx, user(ACCOUNT, name))
    assert_decides_alike(facts, context, identity, boundary_documents, None, asked)


# -- fail closed ---------------------------------------------------------------------------------

ALLOW_ALL = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)


def _allowed_anything(store: SQLiteStore, caller: Caller) -> list[tuple[str, str]]:
    with store.transaction() as tx:
        facts = gather_caller(tx, caller)
    return [
        (action, resource)
        for action, resource in itertools.product(ACTIONS, RESOURCES)
        if decide(facts, RequestFacts(), NOW, action, resource).allowed
    ]


def _new_user(store: SQLiteStore, label: str, allow_all: bool = True) -> Caller:
    name = f"{label}{next(_numbers)}"
    user_id = f"AIDA{name.upper()}"
    with store.transaction() as tx:
        tx.insert_user(User(user_id, ACCOUNT, name, "/", CREATED))
        if allow_all:
            tx.put_user_policy(UserPolicy(user_id, "everything", ALLOW_ALL))
    return user(ACCOUNT, name)


def _managed(store: SQLiteStore, label: str, document: str = ALLOW_ALL) -> ManagedPolicy:
    number = next(_numbers)
    policy = ManagedPolicy(
        f"ANPA{label.upper()}{number}",
        ACCOUNT,
        f"{label}{number}",
        "/",
        None,
        1,
        2,
        CREATED,
        CREATED,
    )
    with store.transaction() as tx:
        tx.insert_managed_policy(policy)
        tx.insert_policy_version(PolicyVersion(policy.policy_id, 1, document, CREATED))
    return policy


def test_an_allow_all_user_is_allowed_the_whole_universe(store: SQLiteStore) -> None:
    """The control of the tests below: without the unreadable policy everything is allowed."""
    caller = _new_user(store, "control")
    assert len(_allowed_anything(store, caller)) == len(ACTIONS) * len(RESOURCES)


@pytest.mark.parametrize(
    "arn",
    [
        f"arn:aws:iam::{ACCOUNT}:policy/never-created",
        f"arn:aws:iam::{ACCOUNT}:policy/some/path/never-created",
        f"{awsmanaged.ARN_PREFIX}/NotInTheOperatorsDirectory",
    ],
)
def test_a_boundary_that_names_no_policy_allows_nothing(store: SQLiteStore, arn: str) -> None:
    caller = _new_user(store, "bounded")
    with store.transaction() as tx:
        tx.set_user_permissions_boundary(caller.user_id, arn)
    assert _allowed_anything(store, caller) == []


def test_a_boundary_whose_policy_was_deleted_allows_nothing(store: SQLiteStore) -> None:
    caller = _new_user(store, "deleted")
    policy = _managed(store, "boundary")
    with store.transaction() as tx:
        tx.set_user_permissions_boundary(caller.user_id, policy.arn)
    assert len(_allowed_anything(store, caller)) == len(ACTIONS) * len(RESOURCES)
    with store.transaction() as tx:
        tx.delete_managed_policy(policy.policy_id)
    assert _allowed_anything(store, caller) == []


def test_a_boundary_whose_default_version_is_gone_allows_nothing(store: SQLiteStore) -> None:
    caller = _new_user(store, "versionless")
    policy = _managed(store, "boundary")
    with store.transaction() as tx:
        tx.set_user_permissions_boundary(caller.user_id, policy.arn)
        tx.delete_policy_version(policy.policy_id, 1)
    assert _allowed_anything(store, caller) == []


def test_an_attached_aws_managed_policy_missing_from_the_directory_denies_everything(
    store: SQLiteStore,
) -> None:
    """A Deny of everything, not nothing: a Deny the lost policy held is not dropped, even
    where the user's own policy allows everything."""
    caller = _new_user(store, "attached")
    arn = f"{awsmanaged.ARN_PREFIX}/RemovedByTheOperator"
    with store.transaction() as tx:
        tx.attach_policy(PolicyAttachment(caller.user_id, "user", ACCOUNT, arn, None))
    assert _allowed_anything(store, caller) == []


def test_an_attached_policy_without_its_default_version_denies_everything(
    store: SQLiteStore,
) -> None:
    caller = _new_user(store, "underneath")
    policy = _managed(store, "attached")
    with store.transaction() as tx:
        tx.attach_policy(
            PolicyAttachment(caller.user_id, "user", ACCOUNT, policy.arn, policy.policy_id)
        )
    assert len(_allowed_anything(store, caller)) == len(ACTIONS) * len(RESOURCES)
    with store.transaction() as tx:
        tx.delete_policy_version(policy.policy_id, 1)
    assert _allowed_anything(store, caller) == []
