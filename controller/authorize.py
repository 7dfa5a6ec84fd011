"""Every API call is authorized here: the caller's policies, evaluated by the policy engine.

The account's root may do everything in its account. Other callers need an Allow from their
identity policies (a user's, an assumed role's) and, for temporary credentials with a session
policy, from that too. Federated and GetSessionToken credentials are further limited as in AWS.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import datetime

from controller.actions import PRINCIPAL_TYPES, Caller, Context, RequestFacts
from controller.errors import AccessDenied
from controller.policy.document import PolicyDocument, PolicyKind, parse_policy
from controller.policy.evaluate import (
    Decision,
    RequestContext,
    evaluate,
    evaluate_with_session,
    time_keys,
)
from controller.store.base import Transaction

ALLOW_ALL = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'

_ALLOW = Decision("Allow")  # frozen: one serves every caller the answer needs no statement for

#: What temporary credentials without an IAM identity of their own may call in IAM and STS.
_FEDERATED_STS = frozenset({"sts:getcalleridentity"})
_SESSION_STS = frozenset({"sts:getcalleridentity", "sts:assumerole", "sts:setsourceidentity"})


class ParsedDocuments:
    """Policy documents parsed once, least recently used first out, bounded by their count and
    by the characters of their text: a few large documents cannot hold more memory than many
    small ones. Meant for stored documents and the session policies of sealed tokens, which
    were validated on the way in; a request's own input is parsed with `parse_policy`."""

    def __init__(self, max_documents: int = 4096, max_characters: int = 4 * 1024 * 1024) -> None:
        self.max_documents = max_documents
        self.max_characters = max_characters
        self.characters = 0
        self._parsed: OrderedDict[tuple[str, PolicyKind], PolicyDocument] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._parsed)

    def __call__(self, document: str, kind: PolicyKind = PolicyKind.IDENTITY) -> PolicyDocument:
        key = (document, kind)
        with self._lock:
            found = self._parsed.get(key)
            if found is not None:
                self._parsed.move_to_end(key)
                return found
        result = parse_policy(document, kind)  # outside the lock: parsing may raise or take time
        with self._lock:
            if key not in self._parsed and len(document) <= self.max_characters:
                self._parsed[key] = result
                self.characters += len(document)
                while (
                    len(self._parsed) > self.max_documents or self.characters > self.max_characters
                ):
                    (dropped, _), _ = self._parsed.popitem(last=False)
                    self.characters -= len(dropped)
        return result

    def clear(self) -> None:
        with self._lock:
            self._parsed.clear()
            self.characters = 0


#: Every stored document, parsed once.
parsed = ParsedDocuments()


def identity_policies(tx: Transaction, caller: Caller) -> list[tuple[str, PolicyDocument]]:
    """The identity-based policies behind a caller, read now (a deleted policy stops at once)."""
    if caller.kind == "assumed-role":
        if caller.role_id is None or tx.get_role_by_id(caller.role_id) is None:
            return []
        return [(p.name, parsed(p.document)) for p in tx.list_role_policies(caller.role_id)]
    if caller.user_name is None:  # the root, or a session or federation the root started
        return [("root", parsed(ALLOW_ALL))]
    user = tx.get_user(caller.account_id, caller.user_name)
    if user is None or (
        caller.issuer_user_id is not None and user.user_id != caller.issuer_user_id
    ):
        return []  # the user was deleted (maybe re-created): its sessions lose everything
    return [(p.name, parsed(p.document)) for p in tx.list_user_policies(user.user_id)]


def principal_tags(tx: Transaction, caller: Caller) -> dict[str, str]:
    if caller.kind == "assumed-role" and caller.role_id is not None:
        return {tag.key: tag.value for tag in tx.get_tags(caller.role_id)}
    if caller.kind == "user" and caller.user_name is not None:
        user = tx.get_user(caller.account_id, caller.user_name)
        if user is not None:
            return {tag.key: tag.value for tag in tx.get_tags(user.user_id)}
    return {}


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


def decide(
    context: Context,
    action: str,
    resource: str,
    extra_keys: Mapping[str, tuple[str, ...]] | None = None,
) -> Decision:
    """The policy decision for the caller of ``context`` doing ``action`` on ``resource``."""
    caller, tx = context.caller, context.tx
    if caller.kind == "root" or action.lower() == "sts:getcalleridentity":
        return _ALLOW
    if not kind_may_call(caller, action):
        return Decision("ImplicitDeny")
    keys = context_keys(caller, context.facts, context.now, principal_tags(tx, caller))
    if extra_keys:
        keys.update(extra_keys)
    request = RequestContext(action, resource, caller.arn, caller.account_id, keys)
    policies = identity_policies(tx, caller)
    if caller.kind == "federated-user" or caller.session_policy is not None:
        session: Sequence[tuple[str, PolicyDocument]] = (
            [("session policy", parsed(caller.session_policy))]
            if caller.session_policy is not None
            else []
        )
        return evaluate_with_session(policies, session, request)
    return evaluate(policies, request)


def denial(caller: Caller, action: str, resource: str, decision: Decision) -> AccessDenied:
    """AWS's AccessDenied: who, what, on which resource, and why."""
    if decision.effect == "Deny":
        reason = f"with an explicit deny in {decision.policy_name!r}"
    elif caller.kind == "federated-user" and action.lower().startswith(("iam:", "sts:")):
        reason = "because federated users can call no IAM action and only GetCallerIdentity in STS"
    elif caller.kind == "session" and action.lower().startswith(("iam:", "sts:")):
        reason = "because GetSessionToken credentials cannot call IAM, nor STS but AssumeRole"
    elif caller.session_policy is not None or caller.kind == "federated-user":
        reason = f"because no identity-based policy and session policy both allow {action}"
    else:
        reason = f"because no identity-based policy allows the {action} action"
    return AccessDenied(
        f"User: {caller.arn} is not authorized to perform: {action}"
        f" on resource: {resource} {reason}"
    )


def authorize(
    context: Context,
    action: str,
    resource: str,
    extra_keys: Mapping[str, tuple[str, ...]] | None = None,
) -> None:
    """Raise AccessDenied unless the caller may do ``action`` on ``resource``."""
    decision = decide(context, action, resource, extra_keys)
    if not decision.allowed:
        raise denial(context.caller, action, resource, decision)
