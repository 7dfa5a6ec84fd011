"""What a caller may do, decided from facts read beforehand: pure, no store and no I/O.

`controller.authorize.gather_caller` reads a caller's policies and tags into `CallerFacts` in
one go; `decide` then answers any number of (action, resource) questions from them. The rules:
the account's root may do everything in its account; GetCallerIdentity is always allowed; other
callers need an Allow from their identity policies (a user's, an assumed role's) and, for
temporary credentials with a session policy, from that too. Federated and GetSessionToken
credentials are further limited as in AWS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from controller.actions import PRINCIPAL_TYPES, Caller, RequestFacts
from controller.errors import AccessDenied
from controller.policy.document import PolicyDocument
from controller.policy.evaluate import (
    Decision,
    RequestContext,
    evaluate,
    evaluate_layers,
    time_keys,
)

_ALLOW = Decision("Allow")  # frozen: one serves every caller the answer needs no statement for
_IMPLICIT_DENY = Decision("ImplicitDeny")

#: What temporary credentials without an IAM identity of their own may call in IAM and STS.
_FEDERATED_STS = frozenset({"sts:getcalleridentity"})
_SESSION_STS = frozenset({"sts:getcalleridentity", "sts:assumerole", "sts:setsourceidentity"})

Policies = tuple[tuple[str, PolicyDocument], ...]


@dataclass(frozen=True, slots=True)
class CallerFacts:
    """Everything deciding for a caller needs, read at one moment of one transaction."""

    caller: Caller
    #: The identity-based policies behind the caller, as (name, document); empty when its user
    #: or role is gone (a deleted policy or identity stops at once).
    policies: Policies = ()
    #: The session policies the identity's answer is intersected with: None for credentials
    #: that have none to apply (evaluate alone), empty for a federation without a policy
    #: (which then allows nothing).
    session_policies: Policies | None = None
    #: aws:PrincipalTag/… : the tags of the caller's user or role.
    tags: Mapping[str, str] = field(default_factory=dict)
    #: The permissions boundary of the caller's user or role (its managed policy's default
    #: version), which the identity's answer is intersected with; None for no boundary. A
    #: boundary whose policy cannot be read is a layer that allows nothing (fail closed).
    boundary: Policies | None = None


def kind_may_call(caller: Caller, action: str) -> bool:
    """Whether credentials of this kind may call the action at all, whatever the policies say:
    federated credentials call no IAM action and only GetCallerIdentity in STS; GetSessionToken
    credentials no IAM action and only AssumeRole and GetCallerIdentity in STS."""
    if caller.kind not in ("federated-user", "session"):
        return True
    lowered = action.lower()
    service = lowered.partition(":")[0]
    allowed_sts = _FEDERATED_STS if caller.kind == "federated-user" else _SESSION_STS
    return not (service == "iam" or (service == "sts" and lowered not in allowed_sts))


def settled(caller: Caller, action: str) -> Decision | None:
    """The decision when the caller's kind or the action alone makes it, or None when the
    policies must be read: the root and GetCallerIdentity are allowed, and a kind of
    credentials that may not call the action at all is denied."""
    if caller.kind == "root" or action.lower() == "sts:getcalleridentity":
        return _ALLOW
    if not kind_may_call(caller, action):
        return _IMPLICIT_DENY
    return None


def context_keys(
    caller: Caller, facts: RequestFacts, now: datetime, tags: Mapping[str, str]
) -> dict[str, tuple[str, ...]]:
    """The global condition keys of a request."""
    keys: dict[str, tuple[str, ...]] = time_keys(now)  # a new dict, ours to fill
    keys["aws:SourceIp"] = (facts.source_ip,)
    keys["aws:SecureTransport"] = ("true" if facts.secure_transport else "false",)
    keys["aws:PrincipalArn"] = (caller.arn,)
    keys["aws:PrincipalAccount"] = (caller.account_id,)
    keys["aws:PrincipalType"] = (PRINCIPAL_TYPES[caller.kind],)
    keys["aws:userid"] = (caller.user_id,)
    keys["aws:RequestedRegion"] = (facts.region,)
    if caller.kind == "user" and caller.user_name is not None:
        keys["aws:username"] = (caller.user_name,)
    if caller.temporary:
        keys["aws:MultiFactorAuthPresent"] = ("false",)
        if caller.issued is not None:
            keys["aws:TokenIssueTime"] = (caller.issued.strftime("%Y-%m-%dT%H:%M:%SZ"),)
    if caller.source_instance_arn is not None:
        keys["ec2:SourceInstanceARN"] = (caller.source_instance_arn,)
    if caller.source_identity is not None:
        keys["aws:SourceIdentity"] = (caller.source_identity,)
    for key, value in tags.items():
        keys[f"aws:PrincipalTag/{key}"] = (value,)
    return keys


def decide(
    facts: CallerFacts,
    request: RequestFacts,
    now: datetime,
    action: str,
    resource: str,
    extra_keys: Mapping[str, tuple[str, ...]] | None = None,
) -> Decision:
    """The policy decision for the caller of ``facts`` doing ``action`` on ``resource``."""
    caller = facts.caller
    decision = settled(caller, action)
    if decision is not None:
        return decision
    keys = context_keys(caller, request, now, facts.tags)
    if extra_keys:
        keys.update(extra_keys)
    context = RequestContext(action, resource, caller.arn, caller.account_id, keys)
    boundary, session = facts.boundary, facts.session_policies
    if boundary is None:
        if session is None:
            return evaluate(facts.policies, context)
        decision = evaluate_layers((facts.policies, session), context)
        if decision.layer == 1:  # the second layer given is the session's: named as in _LAYERS
            return Decision(
                decision.effect,
                decision.statement,
                decision.policy_name,
                decision.missing_keys,
                _LAYERS.index("session"),
            )
        return decision
    if session is None:
        return evaluate_layers((facts.policies, boundary), context)
    return evaluate_layers((facts.policies, boundary, session), context)


#: The layers of `decide`, as `Decision.layer` names them after it (the order `decide` gives
#: them to `evaluate_layers` in, so that its index needs no translating but without a boundary).
_LAYERS = ("identity", "boundary", "session")


def denial(caller: Caller, action: str, resource: str, decision: Decision) -> AccessDenied:
    """AWS's AccessDenied: who, what, on which resource, and which kind of policy decided.

    The reasons are AWS's words ("because no identity-based policy allows the iam:GetRole
    action", "with an explicit deny in a permissions boundary"); an explicit Deny in a managed
    policy names its ARN after a colon as AWS does, an inline policy's name goes in the detail.
    """
    layer = _LAYERS[decision.layer] if decision.layer is not None else "identity"
    detail = None
    if decision.effect == "Deny" and layer == "boundary":
        reason = "with an explicit deny in a permissions boundary"
    elif decision.effect == "Deny" and layer == "session":
        reason = "with an explicit deny in a session policy"
    elif decision.effect == "Deny":
        reason = "with an explicit deny in an identity-based policy"
        name = decision.policy_name
        if name is not None and name.startswith("arn:"):
            reason += f": {name}"
        elif name is not None:
            detail = f"the inline policy {name!r} denies it"
    elif layer == "boundary":
        reason = f"because no permissions boundary allows the {action} action"
    elif caller.kind == "federated-user" and action.lower().startswith(("iam:", "sts:")):
        reason = "because federated users can call no IAM action and only GetCallerIdentity in STS"
    elif caller.kind == "session" and action.lower().startswith(("iam:", "sts:")):
        reason = "because GetSessionToken credentials cannot call IAM, nor STS but AssumeRole"
    elif layer == "session":
        reason = f"because no session policy allows the {action} action"
    else:
        reason = f"because no identity-based policy allows the {action} action"
    return AccessDenied(
        f"User: {caller.arn} is not authorized to perform: {action}"
        f" on resource: {resource} {reason}",
        detail,
    )
