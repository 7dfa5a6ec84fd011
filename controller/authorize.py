"""Every API call is authorized here: read what the decision needs, then decide.

`gather_caller` is the one read of a caller's policies and tags (`CallerFacts`); the decision
itself is `controller.permissions.decide`, pure. `authorize` joins them for the actions the API
authorizes before they run; AssumeRole gathers its own facts (`controller.sts`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

from controller import awsmanaged
from controller.actions import Caller, Context
from controller.permissions import CallerFacts, Policies, decide, denial, settled
from controller.policy.document import PolicyDocument, PolicyKind, parse_policy
from controller.store.base import Transaction
from controller.store.records import GroupPolicy, RolePolicy, UserPolicy

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
        policies = _named(tx.list_role_policies(role.role_id)) + _attached(tx, [role.role_id])
        return CallerFacts(
            caller,
            policies,
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
    policies = _named(tx.list_user_policies(user.user_id))
    groups = tx.list_groups_for_user(user.user_id)
    for group in groups:
        policies += _named(tx.list_group_policies(group.group_id))
    policies += _attached(tx, [user.user_id, *(group.group_id for group in groups)])
    # Only a user's own keys carry its tags; its sessions and federations do not.
    tags = _tags(tx, user.user_id) if caller.kind == "user" else {}
    return CallerFacts(
        caller, policies, session_policies, tags, boundary_policies(tx, user.permissions_boundary)
    )


def _named(policies: Iterable[RolePolicy | UserPolicy | GroupPolicy]) -> Policies:
    return tuple((policy.name, parsed(policy.document)) for policy in policies)


def _attached(tx: Transaction, entity_ids: Sequence[str]) -> Policies:
    """The default versions of the managed policies attached to the entities, named by ARN.
    Of the same policy attached to a user and its group, one copy is enough."""
    found: dict[str, PolicyDocument] = {}
    for arn, document in tx.attached_documents(entity_ids):
        if arn not in found:
            found[arn] = _managed_document(arn, document)
    return tuple(found.items())


def boundary_policies(tx: Transaction, arn: str | None) -> Policies | None:
    """The permissions boundary named by ``arn`` as a layer of evaluation: None for no
    boundary; its default version; a layer allowing nothing if the policy is gone."""
    if arn is None:
        return None
    if arn.startswith(awsmanaged.ARN_PREFIX):
        return ((arn, _managed_document(arn, None)),)
    account_id, _, name = arn.removeprefix("arn:aws:iam::").partition(":policy")
    policy = tx.get_managed_policy(account_id, name.rpartition("/")[2])
    if policy is None or policy.arn != arn:
        return ((arn, _NOTHING),)
    version = tx.get_policy_version(policy.policy_id, policy.default_version)
    return ((arn, _managed_document(arn, version.document if version else None)),)


def _tags(tx: Transaction, entity_id: str) -> dict[str, str]:
    return {tag.key: tag.value for tag in tx.get_tags(entity_id)}


def _managed_document(arn: str, document: str | None) -> PolicyDocument:
    """A managed policy's document: stored, or (None) the operator's AWS-managed one. One that
    cannot be found any more (its file removed from the directory) allows nothing."""
    if document is None:
        provided = awsmanaged.catalog.get(arn)
        if provided is None:
            return _NOTHING
        document = provided.document
    return parsed(document)


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
