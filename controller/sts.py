"""STS (2011-06-15): temporary credentials as sealed, self-verifying session tokens.

Issuing credentials writes nothing: everything needed to check a request signed with them is in
the token, sealed by the controller's key ring (``controller.tokens``). What the credentials may
do is decided at each request from the policies as they are then.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from controller.actions import Caller, Context, Registry, Result
from controller.authorize import (
    context_keys,
    decide,
    denial,
    kind_may_call,
    parsed,
    principal_tags,
)
from controller.errors import AccessDenied, InvalidInput, PackedPolicyTooLarge, validation_error
from controller.policy.document import PolicyKind, Principal, Statement, parse_policy
from controller.policy.evaluate import (
    Decision,
    RequestContext,
    evaluate_trust,
    principal_matches,
    reads_context_keys,
)
from controller.query import Field, Int, ListOf, Str, Struct
from controller.tokens import SessionClaims, new_credentials_ids, packed_size_percent

registry = Registry()

SESSION_NAME_PATTERN = r"[\w+=,.@-]*"
POLICY_TEXT = r"[\u0009\u000A\u000D\u0020-\u00FF]+"
FEDERATED_NAME = Str(2, 32, SESSION_NAME_PATTERN)
ROLE_SESSION_NAME = Str(2, 64, SESSION_NAME_PATTERN)
#: "The plaintext that you use for both inline and managed session policies can't exceed 2,048
#: characters" (STS); GetFederationToken's model says so, AssumeRole's is checked by the handler.
SESSION_POLICY_MAX = 2048
SESSION_POLICY = Str(1, SESSION_POLICY_MAX, POLICY_TEXT)
ROLE_SESSION_POLICY = Str(1, None, POLICY_TEXT)
LONG_DURATION = Int(900, 129600)
ROLE_DURATION = Int(900, 43200)
EXTERNAL_ID = Str(2, 1224, r"[\w+=,.@:\/-]*")
SOURCE_IDENTITY = Str(2, 256, SESSION_NAME_PATTERN)
ROLE_ARN = Str(20, 2048)
#: Managed-policy ARNs and session tags: accepted by the model, refused by RoleCall (see below).
UNSUPPORTED = ListOf(Struct((Field("arn", Str()),)))

ROOT_MAX_SECONDS = 3600
CHAINED_MAX_SECONDS = 3600
DEFAULT_LONG_SECONDS = 43200
DEFAULT_ROLE_SECONDS = 3600

_ROLE_ARN = re.compile(
    r"arn:aws:iam::([0-9]{12}):role(/(?:[\x21-\x7e]*/)?)([\w+=,.@-]{1,64})", re.ASCII
)


def _refuse_unsupported(params: dict[str, Any]) -> None:
    # Ignoring these would hand out other permissions or tags than the caller asked for.
    for name in ("PolicyArns", "Tags", "TransitiveTagKeys", "SerialNumber", "TokenCode"):
        if params.get(name):
            raise InvalidInput(f"{name} is not supported by RoleCall.")


def _session_policy(params: dict[str, Any]) -> str | None:
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


def _credentials(context: Context, claims: SessionClaims, kind: str) -> dict[str, Any]:
    """The Credentials element; counted as issued (metric ``kind``) once the request commits."""
    token = context.services["sessions"].seal(claims)
    metrics = context.services["metrics"]
    context.on_commit.append(lambda: metrics.credentials_issued(kind))
    return {
        "AccessKeyId": claims.access_key_id,
        "SecretAccessKey": claims.secret_access_key,
        "SessionToken": token,
        "Expiration": claims.expires,
    }


def _packed_size(claims: SessionClaims) -> int:
    size = packed_size_percent(claims)
    if size > 100:
        raise PackedPolicyTooLarge(
            f"Packed size of the session policy is {size}% of the allowed size; make it smaller."
        )
    return size


def _claims(
    context: Context,
    *,
    account_id: str,
    principal_type: str,
    principal_arn: str,
    user_id: str,
    seconds: int,
    role_id: str | None = None,
    session_policy: str | None = None,
    source_identity: str | None = None,
) -> SessionClaims:
    caller = context.caller
    access_key_id, secret = new_credentials_ids()
    issued = context.now.replace(microsecond=0)
    extra = {}
    if caller.user_name is not None:
        extra["user_name"] = caller.user_name
    if caller.issuer_user_id is not None:
        extra["user_id"] = caller.issuer_user_id
    return SessionClaims(
        access_key_id=access_key_id,
        secret_access_key=secret,
        account_id=account_id,
        principal_type=principal_type,
        principal_arn=principal_arn,
        user_id=user_id,
        issuer_arn=caller.issuer_arn or caller.arn,
        role_id=role_id,
        session_policy=session_policy,
        source_identity=source_identity,
        chained=caller.temporary,
        issued=issued,
        expires=issued + timedelta(seconds=seconds),
        extra=extra,
    )


def _long_term_only(context: Context, action: str) -> None:
    if context.caller.temporary:
        raise AccessDenied(f"Cannot call {action} with session credentials")


def _duration(context: Context, params: dict[str, Any]) -> int:
    """GetFederationToken/GetSessionToken: the root's sessions are capped at one hour."""
    seconds: int = params.get("DurationSeconds", DEFAULT_LONG_SECONDS)
    if context.caller.kind == "root":
        seconds = min(seconds, ROOT_MAX_SECONDS)
    return seconds


@registry.action("sts", "GetCallerIdentity", Struct())
def get_caller_identity(context: Context, params: dict[str, Any]) -> Result:
    caller = context.caller
    return {"UserId": caller.user_id, "Account": caller.account_id, "Arn": caller.arn}


def _federated_user_arn(context: Context, params: dict[str, Any]) -> str:
    return f"arn:aws:sts::{context.account_id}:federated-user/{params['Name']}"


@registry.action(
    "sts",
    "GetFederationToken",
    Struct(
        (
            Field("Name", FEDERATED_NAME, required=True),
            Field("Policy", SESSION_POLICY),
            Field("PolicyArns", UNSUPPORTED),
            Field("DurationSeconds", LONG_DURATION),
            Field("Tags", UNSUPPORTED),
        )
    ),
    resource=None,
)
def get_federation_token(context: Context, params: dict[str, Any]) -> Result:
    _long_term_only(context, "GetFederationToken")
    resource = _federated_user_arn(context, params)
    decision = decide(context, "sts:GetFederationToken", resource)
    if not decision.allowed:
        raise denial(context.caller, "sts:GetFederationToken", resource, decision)
    _refuse_unsupported(params)
    name = params["Name"]
    claims = _claims(
        context,
        account_id=context.account_id,
        principal_type="federated-user",
        principal_arn=resource,
        user_id=f"{context.account_id}:{name}",
        seconds=_duration(context, params),
        session_policy=_session_policy(params),
    )
    size = _packed_size(claims)
    return {
        "Credentials": _credentials(context, claims, "federation"),
        "FederatedUser": {"FederatedUserId": claims.user_id, "Arn": claims.principal_arn},
        "PackedPolicySize": size,
    }


@registry.action(
    "sts", "GetSessionToken", Struct((Field("DurationSeconds", LONG_DURATION),)), resource=None
)
def get_session_token(context: Context, params: dict[str, Any]) -> Result:
    _long_term_only(context, "GetSessionToken")
    caller = context.caller
    claims = _claims(
        context,
        account_id=caller.account_id,
        principal_type="session",
        principal_arn=caller.arn,
        user_id=caller.user_id,
        seconds=_duration(context, params),
    )
    return {"Credentials": _credentials(context, claims, "session")}


@dataclass(frozen=True)
class _RoleArn:
    account_id: str
    path: str
    name: str


def _parse_role_arn(text: str) -> _RoleArn:
    match = _ROLE_ARN.fullmatch(text)
    if match is None:
        raise validation_error([(text, "roleArn", "Member must be the ARN of an IAM role")])
    return _RoleArn(match.group(1), match.group(2), match.group(3))


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


def _source_identity(caller: Caller, params: dict[str, Any]) -> str | None:
    """The source identity of the new session: once set in a chain it is kept, and a request
    that names another one is refused (AWS: it cannot be changed during the role session)."""
    requested: str | None = params.get("SourceIdentity")
    if caller.source_identity is None:
        return requested
    if requested is not None and requested != caller.source_identity:
        raise AccessDenied(
            f"User: {caller.arn} is not authorized to perform: sts:SetSourceIdentity: the"
            f" session's source identity is {caller.source_identity!r} and cannot be changed"
        )
    return caller.source_identity


@registry.action(
    "sts",
    "AssumeRole",
    Struct(
        (
            Field("RoleArn", ROLE_ARN, required=True),
            Field("RoleSessionName", ROLE_SESSION_NAME, required=True),
            Field("PolicyArns", UNSUPPORTED),
            Field("Policy", ROLE_SESSION_POLICY),
            Field("DurationSeconds", ROLE_DURATION),
            Field("Tags", UNSUPPORTED),
            Field("TransitiveTagKeys", ListOf(Str())),
            Field("ExternalId", EXTERNAL_ID),
            Field("SerialNumber", Str()),
            Field("TokenCode", Str()),
            Field("SourceIdentity", SOURCE_IDENTITY),
        )
    ),
    resource=None,  # the trust policy and the caller's policies are checked below
)
def assume_role(context: Context, params: dict[str, Any]) -> Result:
    caller, tx = context.caller, context.tx
    role_arn = params["RoleArn"]
    if not kind_may_call(caller, "sts:AssumeRole"):
        raise denial(caller, "sts:AssumeRole", role_arn, Decision("ImplicitDeny"))
    target = _parse_role_arn(role_arn)
    _refuse_unsupported(params)
    session_policy = _session_policy(params)
    session_name = params["RoleSessionName"]
    source_identity = _source_identity(caller, params)
    role = tx.get_role(target.account_id, target.name)
    not_allowed = (
        f"User: {caller.arn} is not authorized to perform: sts:AssumeRole on resource: {role_arn}"
    )
    if role is None or role.arn != role_arn:
        # As IAM: a missing role is not told apart from a refused one.
        raise AccessDenied(not_allowed)
    trust_policy = parsed(role.assume_role_policy, PolicyKind.TRUST)
    keys: dict[str, tuple[str, ...]] = {}
    if reads_context_keys(trust_policy):  # most trust policies name principals, no conditions
        keys = context_keys(caller, context.facts, context.now, principal_tags(tx, caller))
        if "ExternalId" in params:
            keys["sts:ExternalId"] = (params["ExternalId"],)
        if source_identity is not None:
            keys["sts:SourceIdentity"] = (source_identity,)
    same_account = target.account_id == caller.account_id
    # A session that carries a source identity, set now or kept from the chain, sets it on the
    # role: its trust policy must allow sts:SetSourceIdentity as well, as in AWS.
    actions = ["sts:AssumeRole"] + (["sts:SetSourceIdentity"] if source_identity else [])
    for action in actions:
        trust = evaluate_trust(
            trust_policy, RequestContext(action, role.arn, caller.arn, caller.account_id, keys)
        )
        if not trust.allowed:
            raise AccessDenied(
                f"User: {caller.arn} is not authorized to perform: {action} on resource:"
                f" {role_arn} (the role's trust policy does not allow it)"
            )
        identity = decide(context, action, role.arn)
        if identity.effect == "Deny" or not (
            identity.allowed or (same_account and _names_caller_explicitly(trust.statement, caller))
        ):
            raise denial(caller, action, role.arn, identity)
    seconds: int = params.get("DurationSeconds", DEFAULT_ROLE_SECONDS)
    if caller.temporary and seconds > CHAINED_MAX_SECONDS:
        raise validation_error(
            [
                (
                    seconds,
                    "durationSeconds",
                    "The requested DurationSeconds exceeds the 1 hour session limit"
                    " for roles assumed by role chaining.",
                )
            ]
        )
    if seconds > role.max_session_duration:
        raise validation_error(
            [
                (
                    seconds,
                    "durationSeconds",
                    "The requested DurationSeconds exceeds the MaxSessionDuration set for this"
                    f" role ({role.max_session_duration}).",
                )
            ]
        )
    claims = _claims(
        context,
        account_id=role.account_id,
        principal_type="assumed-role",
        principal_arn=f"arn:aws:sts::{role.account_id}:assumed-role/{role.name}/{session_name}",
        user_id=f"{role.role_id}:{session_name}",
        seconds=seconds,
        role_id=role.role_id,
        session_policy=session_policy,
        source_identity=source_identity,
    )
    size = _packed_size(claims)
    result: dict[str, Any] = {
        "Credentials": _credentials(context, claims, "assume-role"),
        "AssumedRoleUser": {"AssumedRoleId": claims.user_id, "Arn": claims.principal_arn},
        "PackedPolicySize": size,
    }
    if source_identity is not None:
        result["SourceIdentity"] = source_identity
    return result
