"""Every API call is authorized here: read what the decision needs, then decide.

`gather_caller` is the one read of a caller's policies and tags (`CallerFacts`); the decision
itself is `controller.permissions.decide`, pure. `authorize` joins them for the actions the API
authorizes before they run; AssumeRole gathers its own facts (`controller.sts`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from controller import awsmanaged
from controller.actions import Caller, Context
from controller.permissions import CallerFacts, Policies, decide, denial, settled
from controller.policy.document import PolicyDocument, PolicyKind, parse_policy
from controller.store.base import Transaction
from controller.store.records import Group, GroupPolicy, Role, RolePolicy, User, UserPolicy

ALLOW_ALL = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'


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

#: What a managed policy that cannot be read any more stands for: a document allowing nothing.
_NOTHING = parse_policy(
    '{"Version":"2012-10-17","Statement":[{"Effect":"Deny","NotAction":"*","Resource":"*"}]}',
    PolicyKind.IDENTITY,
)
#: What an attached managed policy that cannot be read any more stands for: a Deny of
#: everything. Leaving it out would drop any Deny it held, and so grant more than the policies
#: attached say; the refusal names its ARN, so that an operator sees what to restore or detach.
_DENY_ALL = parse_policy(
    '{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"*","Resource":"*"}]}',
    PolicyKind.IDENTITY,
)

#: The root's (and its sessions') one policy: everything in its account.
_ROOT_POLICIES: Policies = (("root", parse_policy(ALLOW_ALL, PolicyKind.IDENTITY)),)


def gather_caller(tx: Transaction, caller: Caller, action: str | None = None) -> CallerFacts:
    """What deciding for ``caller`` needs, read now: its identity policies (its inline ones,
    those of its groups, and the default version of every managed policy attached to it or its
    groups; a deleted or detached policy stops at once), its permissions boundary, its tags and
    its session policy. Nothing is read when ``action`` alone settles the decision (the root,
    GetCallerIdentity, a kind of credentials that may not call it): `controller.permissions.decide`
    then looks at no fact."""
    if action is not None and settled(caller, action) is not None:
        return CallerFacts(caller)
    session_policies: Policies | None = None
    if caller.session_policy is not None:
        session_policies = (("session policy", parsed(caller.session_policy)),)
    elif caller.kind == "federated-user":
        session_policies = ()  # a federation without a session policy is allowed nothing
    if caller.kind == "assumed-role":
        if caller.role_id is None:
            return CallerFacts(caller, (), session_policies, {})
        role = tx.get_role_by_id(caller.role_id)
        if role is None:
            return CallerFacts(caller, (), session_policies, _tags(tx, caller.role_id))
        return CallerFacts(
            caller,
            _policies(identity_sources(tx, role)),
            session_policies,
            _tags(tx, role.role_id),
            boundary_policies(tx, role.permissions_boundary),
        )
    if caller.user_name is None:  # the root, or a session or federation the root started
        return CallerFacts(caller, _ROOT_POLICIES, session_policies, {})
    user = tx.get_user(caller.account_id, caller.user_name)
    # A deleted user (maybe re-created under its name) leaves its sessions no policy at all.
    if user is None or caller.issuer_user_id not in (None, user.user_id):
        return CallerFacts(caller, (), session_policies, {})
    # Only a user's own keys carry its tags; its sessions and federations do not.
    tags = _tags(tx, user.user_id) if caller.kind == "user" else {}
    return CallerFacts(
        caller,
        _policies(identity_sources(tx, user)),
        session_policies,
        tags,
        boundary_policies(tx, user.permissions_boundary),
    )


class PolicySource(NamedTuple):
    """One policy behind an identity, and where it comes from (what the simulator reports).
    A named tuple: one is built per policy per request, and a frozen dataclass costs more."""

    #: IAM's SourcePolicyType: user, group or role (inline), user-managed or aws-managed.
    kind: str
    #: What decisions name it by: an inline policy's name, a managed policy's ARN.
    name: str
    document: PolicyDocument
    #: Its text's length, what evaluating it costs (0 for one that cannot be read any more).
    characters: int


def identity_sources(tx: Transaction, identity: User | Role | Group) -> list[PolicySource]:
    """The identity-based policies of a user (its inline policies, its groups' inline
    policies, then the default version of each managed policy attached to it or to its
    groups), of a role (inline, attached) or of a group (inline, attached): the one read of
    them, for decisions (`gather_caller`) and for the simulator."""
    if isinstance(identity, Role):
        sources = _inline("role", tx.list_role_policies(identity.role_id))
        return sources + _attached(tx, [identity.role_id])
    if isinstance(identity, Group):
        sources = _inline("group", tx.list_group_policies(identity.group_id))
        return sources + _attached(tx, [identity.group_id])
    sources = _inline("user", tx.list_user_policies(identity.user_id))
    groups = tx.list_groups_for_user(identity.user_id)
    for group in groups:
        sources += _inline("group", tx.list_group_policies(group.group_id))
    return sources + _attached(tx, [identity.user_id, *(group.group_id for group in groups)])


def _policies(sources: Sequence[PolicySource]) -> Policies:
    return tuple((source.name, source.document) for source in sources)


def _inline(
    kind: str, policies: Sequence[RolePolicy | UserPolicy | GroupPolicy]
) -> list[PolicySource]:
    return [
        PolicySource(kind, policy.name, parsed(policy.document), len(policy.document))
        for policy in policies
    ]


def _attached(tx: Transaction, entity_ids: Sequence[str]) -> list[PolicySource]:
    """The default versions of the managed policies attached to the entities, named by ARN.
    Of the same policy attached to a user and its group, one copy is enough."""
    found: dict[str, PolicySource] = {}
    for arn, document in tx.attached_documents(entity_ids):
        if arn not in found:
            found[arn] = _managed(arn, document, _DENY_ALL)
    return list(found.values())


def boundary_source(tx: Transaction, arn: str | None) -> PolicySource | None:
    """The permissions boundary named by ``arn``: None for no boundary; its default version;
    a policy allowing nothing if it is gone (fail closed)."""
    if arn is None:
        return None
    if arn.startswith(awsmanaged.ARN_PREFIX):
        return _managed(arn, None)
    account_id, _, name = arn.removeprefix("arn:aws:iam::").partition(":policy")
    policy = tx.get_managed_policy(account_id, name.rpartition("/")[2])
    if policy is None or policy.arn != arn:
        return PolicySource("user-managed", arn, _NOTHING, 0)
    version = tx.get_policy_version(policy.policy_id, policy.default_version)
    return _managed(arn, version.document if version else None)


def boundary_policies(tx: Transaction, arn: str | None) -> Policies | None:
    """The permissions boundary named by ``arn`` as a layer of evaluation (`boundary_source`)."""
    source = boundary_source(tx, arn)
    return None if source is None else ((source.name, source.document),)


def _tags(tx: Transaction, entity_id: str) -> dict[str, str]:
    return {tag.key: tag.value for tag in tx.get_tags(entity_id)}


def _managed(arn: str, document: str | None, unreadable: PolicyDocument = _NOTHING) -> PolicySource:
    """A managed policy: its stored document, or (None) the operator's AWS-managed one. One
    that cannot be found any more (its file removed from the directory) is ``unreadable``: as
    a boundary, a policy allowing nothing; attached, a Deny of everything (`_DENY_ALL`)."""
    kind = "aws-managed" if arn.startswith(awsmanaged.ARN_PREFIX) else "user-managed"
    if document is None:
        provided = awsmanaged.catalog.get(arn)
        if provided is None:
            return PolicySource(kind, arn, unreadable, 0)
        document = provided.document
    return PolicySource(kind, arn, parsed(document), len(document))


def authorize(
    context: Context,
    action: str,
    resource: str,
    extra_keys: Mapping[str, tuple[str, ...]] | None = None,
) -> None:
    """Raise AccessDenied unless the caller may do ``action`` on ``resource``."""
    facts = gather_caller(context.tx, context.caller, action)
    decision = decide(facts, context.facts, context.now, action, resource, extra_keys)
    if not decision.allowed:
        raise denial(context.caller, action, resource, decision)
