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
    authorize_layers,
    lowered_time_keys,
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
    """The global condition keys of a request, their names in lower case (as `RequestContext`
    looks them up: names are matched ignoring case)."""
    keys: dict[str, tuple[str, ...]] = {
        **lowered_time_keys(now),
        "aws:sourceip": (facts.source_ip,),
        "aws:securetransport": ("true" if facts.secure_transport else "false",),
        "aws:principalarn": (caller.arn,),
        "aws:principalaccount": (caller.account_id,),
        "aws:principaltype": (PRINCIPAL_TYPES[caller.kind],),
        "aws:userid": (caller.user_id,),
        "aws:requestedregion": (facts.region,),
    }
    if caller.kind == "user" and caller.user_name is not None:
        keys["aws:username"] = (caller.user_name,)
    if caller.temporary:
        keys["aws:multifactorauthpresent"] = ("false",)
        if caller.issued is not None:
            keys["aws:tokenissuetime"] = (caller.issued.strftime("%Y-%m-%dT%H:%M:%SZ"),)
    if caller.source_instance_arn is not None:
        keys["ec2:sourceinstancearn"] = (caller.source_instance_arn,)
    if caller.source_identity is not None:
        keys["aws:sourceidentity"] = (caller.source_identity,)
    for key, value in tags.items():
        keys[f"aws:principaltag/{key.lower()}"] = (value,)
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
        for key, values in extra_keys.items():
            keys[key.lower()] = values if type(values) is tuple else tuple(values)
    boundary, session = facts.boundary, facts.session_policies
    if boundary is None and session is None:
        return authorize_layers((facts.policies,), _IDENTITY_ONLY, action, resource, keys)
    if session is None:
        layers: tuple[Policies, ...] = (facts.policies, boundary)  # type: ignore[assignment]
        return authorize_layers(layers, _WITH_BOUNDARY, action, resource, keys)
    if boundary is None:
        return authorize_layers((facts.policies, session), _WITH_SESSION, action, resource, keys)
    layers = (facts.policies, boundary, session)
    return authorize_layers(layers, _ALL_LAYERS, action, resource, keys)


#: The layers of `decide`, as `Decision.layer` names them after it (the order `decide` gives
#: them to `evaluate_layers` in, so that its index needs no translating but without a boundary).
_LAYERS = ("identity", "boundary", "session")
#: `Decision.layer` of each layer given, by which layers there are (one alone is not named).
_IDENTITY_ONLY = (None,)
_WITH_BOUNDARY = (0, 1)
_WITH_SESSION = (0, 2)
_ALL_LAYERS = (0, 1, 2)


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
