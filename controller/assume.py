"""AssumeRole's rules, pure: the request read from its parameters, then the decision taken on
facts read beforehand in one go (`controller.sts.gather_assume_role`). No store, no I/O.

The order of the checks is the order of AWS's answers: what the request itself gets wrong
(`read_request`) before anything about the role, then the role, its trust policy and the
caller's own policies for each action the session needs, then the duration (`decide`).
The input checks GetFederationToken shares (unsupported parameters, the session policy) are here
too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controller import permissions
from controller.actions import Caller, RequestFacts
from controller.errors import AccessDenied, InvalidInput, ValidationError, validation_error
from controller.permissions import CallerFacts, context_keys, denial, kind_may_call
from controller.policy.document import (
    PolicyDocument,
    PolicyKind,
    Principal,
    Statement,
    parse_policy,
)
from controller.policy.evaluate import (
    Decision,
    RequestContext,
    evaluate_trust,
    principal_matches,
    reads_context_keys,
)
from controller.store.records import Role

#: "The plaintext that you use for both inline and managed session policies can't exceed 2,048
#: characters" (STS); GetFederationToken's model says so, AssumeRole's is checked here.
SESSION_POLICY_MAX = 2048
CHAINED_MAX_SECONDS = 3600
DEFAULT_ROLE_SECONDS = 3600

_ROLE_ARN = re.compile(
    r"arn:aws:iam::([0-9]{12}):role(/(?:[\x21-\x7e]*/)?)([\w+=,.@-]{1,64})", re.ASCII
)
_UNSUPPORTED = ("PolicyArns", "Tags", "TransitiveTagKeys", "SerialNumber", "TokenCode")
#: The actions a new session needs, checked in this order against the trust and the caller.
_ASSUME_ROLE = ("sts:AssumeRole",)
_WITH_SOURCE_IDENTITY = ("sts:AssumeRole", "sts:SetSourceIdentity")


def refuse_unsupported(params: dict[str, Any]) -> None:
    """InvalidInput for a parameter RoleCall does not support: ignoring it would hand out other
    permissions or tags than the caller asked for."""
    for name in _UNSUPPORTED:
        if params.get(name):
            raise InvalidInput(f"{name} is not supported by RoleCall.")


def session_policy(params: dict[str, Any]) -> str | None:
    """The request's session policy, checked: its size first, then its syntax. It is parsed
    outside the cache of stored documents, so a refused request leaves nothing behind."""
    policy: str | None = params.get("Policy")
    if policy is None:
        return None
    if len(policy) > SESSION_POLICY_MAX:
        raise validation_error(
            [
                (
                    f"[{len(policy)} characters]",
                    "policy",
                    f"Member must have length less than or equal to {SESSION_POLICY_MAX}",
                )
            ]
        )
    parse_policy(policy, PolicyKind.IDENTITY)  # MalformedPolicyDocument if it is not one
    return policy


@dataclass(frozen=True, slots=True)
class RoleArn:
    account_id: str
    path: str
    name: str


def parse_role_arn(text: str) -> RoleArn:
    match = _ROLE_ARN.fullmatch(text)
    if match is None:
        raise validation_error([(text, "roleArn", "Member must be the ARN of an IAM role")])
    return RoleArn(match.group(1), match.group(2), match.group(3))


def source_identity(caller: Caller, requested: str | None) -> str | None:
    """The source identity of the new session: once set in a chain it is kept, and a request
    that names another one is refused (AWS: it cannot be changed during the role session)."""
    if caller.source_identity is None:
        return requested
    if requested is not None and requested != caller.source_identity:
        raise AccessDenied(
            f"User: {caller.arn} is not authorized to perform: sts:SetSourceIdentity: the"
            f" session's source identity is {caller.source_identity!r} and cannot be changed"
        )
    return caller.source_identity


@dataclass(frozen=True, slots=True)
class AssumeRoleRequest:
    """An AssumeRole request whose parameters passed every check that needs no stored fact."""

    role_arn: str
    target: RoleArn
    session_name: str
    session_policy: str | None
    #: The new session's: the one requested, or the one its chain carries already.
    source_identity: str | None
    external_id: str | None
    duration_seconds: int


def read_request(caller: Caller, params: dict[str, Any]) -> AssumeRoleRequest:
    """The request, or the error AWS gives before it looks at the role: a kind of credentials
    that may not assume roles, a malformed role ARN, an unsupported parameter, a session policy
    too large or malformed, a source identity a chained session may not change."""
    role_arn: str = params["RoleArn"]
    if not kind_may_call(caller, "sts:AssumeRole"):
        raise denial(caller, "sts:AssumeRole", role_arn, Decision("ImplicitDeny"))
    target = parse_role_arn(role_arn)
    refuse_unsupported(params)
    policy = session_policy(params)
    return AssumeRoleRequest(
        role_arn=role_arn,
        target=target,
        session_name=params["RoleSessionName"],
        session_policy=policy,
        source_identity=source_identity(caller, params.get("SourceIdentity")),
        external_id=params.get("ExternalId"),
        duration_seconds=params.get("DurationSeconds", DEFAULT_ROLE_SECONDS),
    )


@dataclass(frozen=True, slots=True)
class AssumeRoleFacts:
    """Everything the decision needs, read at one moment of one transaction."""

    request: AssumeRoleRequest
    #: The caller, its identity policies, session policy and tags.
    caller: CallerFacts
    #: The role the ARN's account and name find (names ignore case: its ARN is compared still),
    #: or None.
    role: Role | None
    #: Its trust policy (None without a role).
    trust_policy: PolicyDocument | None


@dataclass(frozen=True, slots=True)
class AssumeRoleGrant:
    """What the new session is: the role, for how long, with what policy and source identity."""

    role: Role
    session_name: str
    seconds: int
    session_policy: str | None
    source_identity: str | None

    @property
    def principal_arn(self) -> str:
        role = self.role
        return f"arn:aws:sts::{role.account_id}:assumed-role/{role.name}/{self.session_name}"

    @property
    def user_id(self) -> str:
        return f"{self.role.role_id}:{self.session_name}"


def decide(facts: AssumeRoleFacts, request_facts: RequestFacts, now: datetime) -> AssumeRoleGrant:
    """The session to issue, or the error: AccessDenied when the role is missing (not told apart
    from a refusal, as in IAM), when its trust policy does not allow the caller, or when the
    caller's own policies do not (see `_needs_identity_allow`); ValidationError for a duration
    over the role chaining limit or the role's MaxSessionDuration."""
    caller, request, role = facts.caller.caller, facts.request, facts.role
    if role is None or facts.trust_policy is None or role.arn != request.role_arn:
        raise AccessDenied(
            f"User: {caller.arn} is not authorized to perform: sts:AssumeRole on resource:"
            f" {request.role_arn}"
        )
    trust_policy = facts.trust_policy  # from here on, role.arn is request.role_arn
    keys: dict[str, tuple[str, ...]] = {}
    if reads_context_keys(trust_policy):  # most trust policies name principals, no conditions
        keys = context_keys(caller, request_facts, now, facts.caller.tags)
        if request.external_id is not None:
            keys["sts:ExternalId"] = (request.external_id,)
        if request.source_identity is not None:
            keys["sts:SourceIdentity"] = (request.source_identity,)
    same_account = request.target.account_id == caller.account_id
    # A session that carries a source identity, set now or kept from the chain, sets it on the
    # role: its trust policy must allow sts:SetSourceIdentity as well, as in AWS.
    for action in _WITH_SOURCE_IDENTITY if request.source_identity else _ASSUME_ROLE:
        trust = evaluate_trust(
            trust_policy,
            RequestContext(action, request.role_arn, caller.arn, caller.account_id, keys),
        )
        if not trust.allowed:
            raise AccessDenied(
                f"User: {caller.arn} is not authorized to perform: {action} on resource:"
                f" {request.role_arn}",
                "the role's trust policy does not allow it",
            )
        identity = permissions.decide(facts.caller, request_facts, now, action, request.role_arn)
        if identity.effect == "Deny" or not (
            identity.allowed or (same_account and _names_caller_explicitly(trust.statement, caller))
        ):
            raise denial(caller, action, request.role_arn, identity)
    seconds = request.duration_seconds
    if caller.temporary and seconds > CHAINED_MAX_SECONDS:
        raise ValidationError(
            "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by"
            " role chaining.",
            f"DurationSeconds {seconds} > {CHAINED_MAX_SECONDS} for a session of a session",
        )
    if seconds > role.max_session_duration:
        raise ValidationError(
            "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
            f"DurationSeconds {seconds} > MaxSessionDuration {role.max_session_duration}",
        )
    return AssumeRoleGrant(
        role, request.session_name, seconds, request.session_policy, request.source_identity
    )


def _names_caller_explicitly(statement: Statement | None, caller: Caller) -> bool:
    """Whether a trust statement names this very principal (not its account): then, within one
    account, the trust policy alone is enough, as in IAM."""
    if statement is None or statement.principal is None:
        return False
    for kind, values in statement.principal.entries:
        if kind != "AWS":
            continue
        for value in values:
            if value == "*" or value.isdigit() or value.endswith(":root"):
                continue
            single = Principal(entries=(("AWS", (value,)),))
            if principal_matches(single, principal_arn=caller.arn, account_id=caller.account_id):
                return True
    return False
