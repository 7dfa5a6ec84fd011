"""STS (2011-06-15): temporary credentials as sealed, self-verifying session tokens.

Issuing credentials writes nothing: everything needed to check a request signed with them is in
the token, sealed by the controller's key ring (``controller.tokens``). What the credentials may
do is decided at each request from the policies as they are then.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from controller import assume
from controller.actions import Caller, Context, Registry, Result
from controller.assume import AssumeRoleFacts, AssumeRoleRequest
from controller.assume import refuse_unsupported as _refuse_unsupported
from controller.assume import session_policy as _session_policy
from controller.authorize import authorize, gather_caller, parsed
from controller.errors import AccessDenied, PackedPolicyTooLarge
from controller.policy.document import PolicyKind
from controller.query import Field, Int, ListOf, Str, Struct
from controller.store.base import Transaction
from controller.tokens import SessionClaims, new_credentials_ids, packed_size_percent

registry = Registry()

SESSION_NAME_PATTERN = r"[\w+=,.@-]*"
POLICY_TEXT = r"[\u0009\u000A\u000D\u0020-\u00FF]+"
FEDERATED_NAME = Str(2, 32, SESSION_NAME_PATTERN)
ROLE_SESSION_NAME = Str(2, 64, SESSION_NAME_PATTERN)
SESSION_POLICY = Str(1, assume.SESSION_POLICY_MAX, POLICY_TEXT)
ROLE_SESSION_POLICY = Str(1, None, POLICY_TEXT)
LONG_DURATION = Int(900, 129600)
ROLE_DURATION = Int(900, 43200)
EXTERNAL_ID = Str(2, 1224, r"[\w+=,.@:\/-]*")
SOURCE_IDENTITY = Str(2, 256, SESSION_NAME_PATTERN)
ROLE_ARN = Str(20, 2048)
#: Managed-policy ARNs and session tags: accepted by the model, refused by RoleCall
#: (controller.assume.refuse_unsupported).
UNSUPPORTED = ListOf(Struct((Field("arn", Str()),)))

ROOT_MAX_SECONDS = 3600
DEFAULT_LONG_SECONDS = 43200


def _credentials(context: Context, claims: SessionClaims, kind: str) -> dict[str, Any]:
    """The Credentials element; counted as issued (metric ``kind``) once the request commits."""
    sessions, metrics = context.services.sessions, context.services.metrics
    assert sessions is not None and metrics is not None, "the API gives both"
    token = sessions.seal(claims)
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
            f"Packed policy consumes {size}% of allotted space, please use smaller policy."
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
    authorize(context, "sts:GetFederationToken", resource)
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


def gather_assume_role(
    tx: Transaction, caller: Caller, request: AssumeRoleRequest
) -> AssumeRoleFacts:
    """The one read of an AssumeRole: the role the request names and its trust policy, and the
    caller's policies and tags (`gather_caller`). The decision is `controller.assume.decide`."""
    role = tx.get_role(request.target.account_id, request.target.name)
    trust_policy = parsed(role.assume_role_policy, PolicyKind.TRUST) if role is not None else None
    return AssumeRoleFacts(request, gather_caller(tx, caller), role, trust_policy)


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
    resource=None,  # the trust policy and the caller's policies: controller.assume.decide
)
def assume_role(context: Context, params: dict[str, Any]) -> Result:
    caller = context.caller
    request = assume.read_request(caller, params)  # what the request alone gets wrong, first
    facts = gather_assume_role(context.tx, caller, request)
    grant = assume.decide(facts, context.facts, context.now)
    role = grant.role
    claims = _claims(
        context,
        account_id=role.account_id,
        principal_type="assumed-role",
        principal_arn=grant.principal_arn,
        user_id=grant.user_id,
        seconds=grant.seconds,
        role_id=role.role_id,
        session_policy=grant.session_policy,
        source_identity=grant.source_identity,
    )
    size = _packed_size(claims)
    result: dict[str, Any] = {
        "Credentials": _credentials(context, claims, "assume-role"),
        "AssumedRoleUser": {"AssumedRoleId": claims.user_id, "Arn": claims.principal_arn},
        "PackedPolicySize": size,
    }
    if grant.source_identity is not None:
        result["SourceIdentity"] = grant.source_identity
    recorder = context.services.last_used
    if recorder is not None:  # RoleLastUsed, once the grant is committed; written later
        when, region = context.now, context.facts.region
        context.on_commit.append(lambda: recorder.record(role.role_id, when, region))
    return result
