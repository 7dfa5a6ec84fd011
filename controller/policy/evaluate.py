"""The policy decision: does a set of policies allow one request? Pure: documents and context in.

AWS's logic for identity-based policies: an explicit Deny in any statement that applies wins;
otherwise an Allow that applies is needed; otherwise the request is implicitly denied. A statement
applies when its action, its resource (or, in a trust policy, its principal) and all of its
conditions match the request.

Fail closed. A condition the engine cannot decide (an operator it does not know, a policy value
that is not valid for its operator) is *unknown*, and a statement whose conditions are all true
or unknown may or may not apply. Such a statement never grants: as an Allow it does not allow,
as a Deny it denies. One false condition still means the statement does not apply, since no
reading of the unknown one could change that. So the engine never allows anything that AWS,
under any meaning of the unknown operator, would deny.

Documents are compiled once (patterns to regexes, conditions to tests), cached for as long as
the ``PolicyDocument`` object lives; statements are pre-selected by action, cached per document.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from controller.policy.conditions import CompiledCondition, compile_condition
from controller.policy.document import PolicyDocument, Statement
from controller.policy.match import (
    GlobMode,
    TemplateMatcher,
    compile_globs,
    compile_template,
    principal_matches,
)
from controller.policy.variables import Lookup, Template, parse_template

__all__ = [
    "Decision",
    "RequestContext",
    "evaluate",
    "evaluate_layers",
    "evaluate_trust",
    "evaluate_with_session",
    "principal_matches",
    "reads_context_keys",
    "time_keys",
]

Effect = Literal["Allow", "Deny", "ImplicitDeny"]


@dataclass(frozen=True)
class RequestContext:
    """What is being asked: one action on one resource by one principal, with its context keys.

    ``keys`` holds the condition context keys (``aws:SourceIp``, ``aws:PrincipalTag/team``, ...);
    names are matched case-insensitively, as AWS does. ``aws:PrincipalArn`` and
    ``aws:PrincipalAccount`` default to ``principal_arn`` and ``account_id``. A key with several
    values is multivalued (``aws:TagKeys``); a bare string is taken as one value; of two keys that
    differ only in case, the last is used.
    """

    action: str  # "iam:CreateRole"
    resource: str  # an ARN, or "*" for actions without a resource
    principal_arn: str
    account_id: str
    keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def _lowered(self) -> dict[str, tuple[str, ...]]:
        """The keys by lower-case name, built on first use and kept on the instance."""
        lowered: dict[str, tuple[str, ...]] | None = self.__dict__.get("_lowered_keys")
        if lowered is None:
            # A bare string is one value, not a tuple of characters. When two keys differ only
            # in case the last one wins.
            lowered = {
                key.lower(): values if type(values) is tuple else _values(values)
                for key, values in self.keys.items()
            }
            if self.principal_arn:
                lowered.setdefault("aws:principalarn", (self.principal_arn,))
            if self.account_id:
                lowered.setdefault("aws:principalaccount", (self.account_id,))
            # Memoized like functools.cached_property does: straight into the instance dict.
            self.__dict__["_lowered_keys"] = lowered
        return lowered

    def lookup(self, lower_key: str) -> tuple[str, ...] | None:
        """The values of a context key given in lower case, or ``None`` if the request has none."""
        return self._lowered().get(lower_key)


def _values(values: str | Sequence[str]) -> tuple[str, ...]:
    """A key's values as a tuple: a bare string is one value, not a tuple of characters."""
    return (values,) if isinstance(values, str) else tuple(values)


@dataclass(frozen=True)
class Decision:
    """The answer, the statement and policy that decided it, and the context keys it lacked.

    ``missing_keys`` are keys (as the policies spell them) that conditions or policy variables of
    the statements matching the action and resource read but the request did not have: what an
    IAM policy simulator reports as missing context values.
    """

    effect: Effect
    statement: Statement | None = None
    policy_name: str | None = None
    missing_keys: tuple[str, ...] = ()
    #: Of `evaluate_layers`: the index of the layer that denied (None: one layer, or allowed).
    layer: int | None = None

    @property
    def allowed(self) -> bool:
        return self.effect == "Allow"


def time_keys(now: datetime) -> dict[str, tuple[str, ...]]:
    """``aws:CurrentTime`` and ``aws:EpochTime`` for ``now`` (naive means UTC): a new dict,
    the caller's to fill. The last answer is kept, since requests come many a second."""
    global _last_time_keys
    last = _last_time_keys
    if last[0] == now and last[0].tzinfo is now.tzinfo:
        return dict(last[1])
    keys = _time_keys(now)
    _last_time_keys = (now, keys)  # one tuple: a thread sees the old pair or the new one
    return dict(keys)


def _time_keys(now: datetime) -> dict[str, tuple[str, ...]]:
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    elif now.tzinfo is not UTC:
        now = now.astimezone(UTC)
    if now.year < 1000:  # strftime's own (platform's) way with short years
        current = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    else:  # as strftime, without parsing a format on every request
        current = (
            f"{now.year}-{now.month:02}-{now.day:02}T{now.hour:02}:{now.minute:02}:{now.second:02}Z"
        )
    return {"aws:CurrentTime": (current,), "aws:EpochTime": (str(int(now.timestamp())),)}


_last_time_keys: tuple[datetime | None, dict[str, tuple[str, ...]]] = (None, {})


def evaluate(policies: Sequence[tuple[str, PolicyDocument]], context: RequestContext) -> Decision:
    """Identity-based evaluation of ``(name, document)`` pairs: Deny wins, else Allow, else none.

    Statements without Resource/NotResource (trust policies) never apply here.
    """
    return _decide(policies, context, _Target.RESOURCE)


def evaluate_layers(
    layers: Sequence[Sequence[tuple[str, PolicyDocument]]], context: RequestContext
) -> Decision:
    """Evaluation through several layers that must all allow: the identity's policies, then
    its permissions boundary, then the session policies (AWS's intersection).

    An explicit Deny in any layer wins; else every layer needs an Allow. An empty layer allows
    nothing (GetFederationToken without a policy). ``Decision.layer`` is the index of the layer
    that decided a Deny or an ImplicitDeny (the first that does not allow); None for an Allow.
    """
    decisions = [_decide(layer, context, _Target.RESOURCE) for layer in layers]
    lacking = [each.missing_keys for each in decisions if each.missing_keys]
    if len(lacking) > 1:
        missing = tuple(dict.fromkeys(key for keys in lacking for key in keys))
    else:  # one layer's keys are distinct already
        missing = lacking[0] if lacking else ()
    refused: int | None = None
    for index, decision in enumerate(decisions):
        if decision.effect == "Deny":  # a Deny in any layer wins, also after a refusal
            return Decision("Deny", decision.statement, decision.policy_name, missing, index)
        if refused is None and decision.effect != "Allow":
            refused = index
    if refused is not None:
        return Decision("ImplicitDeny", None, None, missing, refused)
    first = decisions[0]
    if first.missing_keys == missing:
        return first  # the same answer, not built again
    return Decision("Allow", first.statement, first.policy_name, missing)


def evaluate_with_session(
    identity_policies: Sequence[tuple[str, PolicyDocument]],
    session_policies: Sequence[tuple[str, PolicyDocument]],
    context: RequestContext,
) -> Decision:
    """Evaluation for temporary credentials whose session passed policies: the intersection.

    Allowed only if both the identity's policies and the session policies allow and neither
    denies. An empty ``session_policies`` allows nothing (GetFederationToken without a policy);
    a session without a session policy (AssumeRole without ``Policy``) uses ``evaluate``.
    """
    return evaluate_layers((identity_policies, session_policies), context)


def evaluate_trust(
    policy: PolicyDocument,
    context: RequestContext,
    *,
    policy_name: str = "AssumeRolePolicyDocument",
    service: str | None = None,
    federated: str | None = None,
) -> Decision:
    """A role's trust policy asked whether the caller may ``context.action`` (``sts:AssumeRole``).

    The caller is ``context.principal_arn``/``context.account_id`` (empty strings for none), or
    the ``service`` or ``federated`` provider; Principal/NotPrincipal stand where Resource does.
    """
    caller = _Caller(
        principal_arn=context.principal_arn or None,
        account_id=context.account_id or None,
        service=service,
        federated=federated,
    )
    return _decide([(policy_name, policy)], context, _Target.PRINCIPAL, caller)


def reads_context_keys(document: PolicyDocument) -> bool:
    """Whether any statement of ``document`` reads a condition key or a policy variable.

    When none does, evaluating it gives the same decision whatever the request's keys: a
    caller may leave them out rather than gather them.
    """
    return any(compiled.keys for compiled in _compiled(document).statements)


# -- compiled documents --------------------------------------------------------------------------


class _Target(enum.Enum):
    """What a statement must name besides the action: the resource, or (trust) the caller."""

    RESOURCE = "resource"
    PRINCIPAL = "principal"


@dataclass(frozen=True)
class _Caller:
    principal_arn: str | None
    account_id: str | None
    service: str | None
    federated: str | None


@dataclass(frozen=True)
class _Resources:
    """A Resource or NotResource element, compiled."""

    everything: bool  # "*" is among the patterns
    static: re.Pattern[str] | None  # the patterns without variables, as one regex
    templates: tuple[tuple[Template, TemplateMatcher], ...]  # the patterns with variables
    invalid: bool  # a pattern holds a "${...}" that is not a variable: it never resolves

    def match(self, resource: str, lookup: Lookup) -> bool | None:
        """True if a pattern matches; else ``None`` if a variable did not resolve; else False."""
        if self.everything or (self.static is not None and self.static.fullmatch(resource)):
            return True
        unresolved = self.invalid
        for template, matcher in self.templates:
            values = template.resolve_values(lookup)
            if values is None:
                unresolved = True
            elif matcher.match(values, resource):
                return True
        return None if unresolved else False


@dataclass(frozen=True)
class _CompiledStatement:
    statement: Statement
    deny: bool
    resources: _Resources | None
    negated_resources: bool
    conditions: tuple[CompiledCondition, ...]
    #: ``(lower, as written)`` for every context key the statement reads.
    keys: tuple[tuple[str, str], ...]
    #: The fast path of `targets_resource` for a Resource element without variables: True for
    #: ``*``, else the one regex of its patterns; None when the general path is needed.
    plain_resources: re.Pattern[str] | bool | None = None

    def targets_resource(self, resource: str, lookup: Lookup) -> bool | None:
        """Whether the statement names ``resource``; ``None`` if a variable did not resolve.

        ``None`` means the statement does not apply (for NotResource too: an unresolvable pattern
        makes the element not match), but its keys are still reported as missing.
        """
        if self.resources is None:
            return False
        matched = self.resources.match(resource, lookup)
        if self.negated_resources:
            return None if matched is None else not matched
        return matched

    def targets_principal(self, caller: _Caller) -> bool:
        statement = self.statement
        principal = statement.principal or statement.not_principal
        if principal is None:
            return False
        matched = principal_matches(
            principal,
            principal_arn=caller.principal_arn,
            account_id=caller.account_id,
            service=caller.service,
            federated=caller.federated,
        )
        return matched if statement.principal is not None else not matched

    def conditions_hold(self, lookup: Lookup) -> bool | None:
        """True if all conditions hold, False if one fails, else None (some unknown)."""
        outcome: bool | None = True
        for condition in self.conditions:
            result = condition.test(lookup)
            if result is False:
                return False
            if result is None:
                outcome = None
        return outcome


_ACTION_CACHE_LIMIT = 1024


class _CompiledDocument:
    """A document's statements, compiled, and which of them each action selects."""

    def __init__(self, document: PolicyDocument) -> None:
        self.statements = tuple(
            _compile_statement(statement, document.substitutes_variables)
            for statement in document.statements
        )
        self._actions = tuple(_compile_actions(statement) for statement in document.statements)
        self.by_action: dict[str, tuple[_CompiledStatement, ...]] = {}

    def for_action(self, action: str) -> tuple[_CompiledStatement, ...]:
        selected = self.by_action.get(action)
        if selected is None:
            selected = tuple(
                compiled
                for compiled, (regex, negated) in zip(self.statements, self._actions, strict=True)
                if (regex is None or regex.fullmatch(action) is not None) != negated
            )
            if len(self.by_action) >= _ACTION_CACHE_LIMIT:
                self.by_action.clear()
            self.by_action[action] = selected
        return selected


def _compile_actions(statement: Statement) -> tuple[re.Pattern[str] | None, bool]:
    """The action regex (``None`` for ``*``, which matches all) and whether it is NotAction."""
    negated = statement.actions is None
    patterns = (statement.actions if not negated else statement.not_actions) or ()
    if "*" in patterns:
        return None, negated
    globs = tuple(((pattern, False),) for pattern in patterns)
    return compile_globs(globs, GlobMode.PLAIN, ignore_case=True), negated


def _compile_statement(statement: Statement, substitute: bool) -> _CompiledStatement:
    patterns = statement.resources if statement.resources is not None else statement.not_resources
    resources: _Resources | None = None
    keys: list[str] = []
    if patterns is not None:
        templates = [parse_template(pattern, substitute) for pattern in patterns]
        statics = tuple(static for template in templates if (static := template.static) is not None)
        resources = _Resources(
            everything="*" in patterns,
            static=compile_globs(statics, GlobMode.RESOURCE) if statics else None,
            templates=tuple(
                (template, _template_matcher(template))
                for template in templates
                if template.static is None and not template.invalid
            ),
            invalid=any(template.invalid for template in templates),
        )
        keys.extend(key for template in templates for key in template.keys)
    conditions = tuple(
        compile_condition(condition, substitute) for condition in statement.conditions
    )
    keys.extend(key for condition in conditions for key in condition.keys)
    plain: re.Pattern[str] | bool | None = None
    if resources is not None and statement.resources is not None:
        if resources.everything:
            plain = True
        elif not resources.templates and not resources.invalid:
            plain = resources.static  # not None: every pattern is static
    return _CompiledStatement(
        statement=statement,
        deny=statement.effect == "Deny",
        resources=resources,
        negated_resources=statement.resources is None,
        conditions=conditions,
        keys=tuple(_first_spellings(keys).items()),
        plain_resources=plain,
    )


def _template_matcher(template: Template) -> TemplateMatcher:
    return compile_template(template.shape, len(template.variables), GlobMode.RESOURCE)


def _first_spellings(keys: Sequence[str]) -> dict[str, str]:
    spellings: dict[str, str] = {}
    for key in keys:
        spellings.setdefault(key.lower(), key)
    return spellings


def _compiled(document: PolicyDocument) -> _CompiledDocument:
    """The document's compiled form, made on first use and kept on the (frozen) document, as
    functools.cached_property does: it lives exactly as long as the document."""
    compiled: _CompiledDocument | None = document.__dict__.get("_compiled")
    if compiled is None:
        compiled = _CompiledDocument(document)
        document.__dict__["_compiled"] = compiled
    return compiled


# -- the decision ----------------------------------------------------------------------------------


def _decide(
    policies: Sequence[tuple[str, PolicyDocument]],
    context: RequestContext,
    target: _Target,
    caller: _Caller | None = None,
) -> Decision:
    lookup: Lookup = context._lowered().get
    allow: tuple[Statement, str] | None = None
    deny: tuple[Statement, str] | None = None
    missing: dict[str, None] = {}
    action, resource = context.action, context.resource
    by_resource = target is _Target.RESOURCE
    targeted: bool | None
    for name, document in policies:
        # `_compiled(document).for_action(action)`, without two calls when both are known.
        compiled_document = document.__dict__.get("_compiled") or _compiled(document)
        selected = compiled_document.by_action.get(action)
        if selected is None:
            selected = compiled_document.for_action(action)
        for compiled in selected:
            if by_resource:
                plain = compiled.plain_resources
                if plain is True:
                    targeted = True
                elif plain is not None and plain is not False:
                    targeted = plain.fullmatch(resource) is not None
                else:
                    targeted = compiled.targets_resource(resource, lookup)
            else:
                targeted = caller is not None and compiled.targets_principal(caller)
            if targeted is False:
                continue
            for lower_key, key in compiled.keys:
                if lookup(lower_key) is None:
                    missing.setdefault(key)
            if targeted is None and not compiled.deny:
                continue  # an Allow whose resource did not resolve allows nothing
            # A Deny whose resource did not resolve may name this resource: it fails closed.
            if deny is not None or (allow is not None and not compiled.deny):
                continue  # already decided for this effect: read only for its missing keys
            outcome = compiled.conditions_hold(lookup)
            if compiled.deny:
                if outcome is not False and deny is None:
                    deny = (compiled.statement, name)  # true or unknown: deny (fail closed)
            elif outcome is True and allow is None:
                allow = (compiled.statement, name)  # only a certain Allow allows
    missing_keys = tuple(missing)
    if deny is not None:
        return Decision("Deny", deny[0], deny[1], missing_keys)
    if allow is not None:
        return Decision("Allow", allow[0], allow[1], missing_keys)
    return Decision("ImplicitDeny", None, None, missing_keys)
