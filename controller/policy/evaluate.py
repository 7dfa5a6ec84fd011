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
    "authorize_layers",
    "evaluate",
    "evaluate_layers",
    "evaluate_trust",
    "evaluate_with_session",
    "lowered_time_keys",
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
    #: The keys' names are in lower case already and their values tuples (a caller that builds
    #: them so, as `controller.permissions.decide` does, saves copying them per request); the
    #: context then uses ``keys`` itself.
    lowered: bool = field(default=False, kw_only=True)

    def _lowered(self) -> dict[str, tuple[str, ...]]:
        """The keys by lower-case name, built on first use and kept on the instance."""
        lowered: dict[str, tuple[str, ...]] | None = self.__dict__.get("_lowered_keys")
        if lowered is None and self.lowered and isinstance(self.keys, dict):
            lowered = self.keys
            if self.principal_arn:
                lowered.setdefault("aws:principalarn", (self.principal_arn,))
            if self.account_id:
                lowered.setdefault("aws:principalaccount", (self.account_id,))
            self.__dict__["_lowered_keys"] = lowered
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


def lowered_time_keys(now: datetime) -> Mapping[str, tuple[str, ...]]:
    """`time_keys` with the names in lower case (for a `RequestContext` built ``lowered``):
    the last answer itself, shared, so copy it (``{**keys, …}``) rather than change it."""
    global _last_lowered_time_keys
    last = _last_lowered_time_keys
    if last[0] == now and last[0].tzinfo is now.tzinfo:
        return last[1]
    keys = {key.lower(): values for key, values in _time_keys(now).items()}
    _last_lowered_time_keys = (now, keys)
    return keys


_last_lowered_time_keys: tuple[datetime | None, dict[str, tuple[str, ...]]] = (None, {})


def evaluate(
    policies: Sequence[tuple[str, PolicyDocument]],
    context: RequestContext,
    *,
    report_missing: bool = True,
) -> Decision:
    """Identity-based evaluation of ``(name, document)`` pairs: Deny wins, else Allow, else none.

    Statements without Resource/NotResource (trust policies) never apply here. Without
    ``report_missing`` the decision leaves ``missing_keys`` empty (what only the simulator
    shows), and saves looking for them.
    """
    return _decide(policies, context, _Target.RESOURCE, report_missing=report_missing)


def evaluate_layers(
    layers: Sequence[Sequence[tuple[str, PolicyDocument]]],
    context: RequestContext,
    *,
    report_missing: bool = True,
) -> Decision:
    """Evaluation through several layers that must all allow: the identity's policies, then
    its permissions boundary, then the session policies (AWS's intersection).

    An explicit Deny in any layer wins; else every layer needs an Allow. An empty layer allows
    nothing (GetFederationToken without a policy). ``Decision.layer`` is the index of the layer
    that decided a Deny or an ImplicitDeny (the first that does not allow); None for an Allow.
    """
    scans: list[_Scan] = []
    action, resource, lookup = context.action, context.resource, context._lowered().get
    for layer in layers:
        scan = _scan(layer, action, resource, lookup, _Target.RESOURCE, None, report_missing)
        scans.append(scan)
        if scan[0] is not None and not report_missing:
            break  # a Deny wins whatever the later layers say
    lacking = [scan[2] for scan in scans if scan[2]]
    if len(lacking) > 1:
        missing = tuple(dict.fromkeys(key for keys in lacking for key in keys))
    else:  # one layer's keys are distinct already
        missing = lacking[0] if lacking else ()
    refused: int | None = None
    for index, (deny, allow, _) in enumerate(scans):
        if deny is not None:  # a Deny in any layer wins, also after a refusal
            return Decision("Deny", deny[0], deny[1], missing, index)
        if refused is None and allow is None:
            refused = index
    if refused is not None:
        return Decision("ImplicitDeny", None, None, missing, refused)
    allow = scans[0][1]
    assert allow is not None  # every layer allowed
    return Decision("Allow", allow[0], allow[1], missing)


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


def authorize_layers(
    layers: Sequence[Sequence[tuple[str, PolicyDocument]]],
    layer_ids: Sequence[int | None],
    action: str,
    resource: str,
    keys: Mapping[str, tuple[str, ...]],
) -> Decision:
    """`evaluate_layers` for authorizing a request, which needs only the answer: ``keys`` are
    the context keys by lower-case name (values tuples), no missing keys are gathered, and
    ``Decision.layer`` is the ``layer_ids`` entry of the layer that refused. Scanning stops
    at the first Deny, and a layer's Allow statements stop being read once one applies."""
    lookup: Lookup = keys.get
    refused: int | None = None
    refusing = False
    first_allow: tuple[Statement, str] | None = None
    for layer, layer_id in zip(layers, layer_ids, strict=True):
        deny, allow, _ = _scan(layer, action, resource, lookup, _Target.RESOURCE, None, False)
        if deny is not None:
            return Decision("Deny", deny[0], deny[1], (), layer_id)
        if allow is None:
            if not refusing:
                refusing, refused = True, layer_id
        elif first_allow is None:
            first_allow = allow
    if refusing or first_allow is None:
        return Decision("ImplicitDeny", None, None, (), refused)
    return Decision("Allow", first_allow[0], first_allow[1])


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


class _Plan:
    """The statements an action selects in a layer, arranged for a decision that needs only
    its effect (authorization, not the simulator). Allow statements without conditions whose
    Resource has no variables can only allow, and any one of them is enough: their patterns
    are matched as one regex (``merged``; the group that matched names the statement), or,
    with ``Resource: "*"``, need no matching at all (``everything``). The others (Deny
    statements, conditions, variables, NotResource) are evaluated one by one, as before."""

    __slots__ = ("everything", "members", "merged", "others")

    def __init__(self, selected: tuple[tuple[_CompiledStatement, str], ...]) -> None:
        others: list[tuple[_CompiledStatement, str]] = []
        members: list[tuple[_CompiledStatement, str]] = []
        self.everything: tuple[_CompiledStatement, str] | None = None
        for pair in selected:
            compiled = pair[0]
            plain = compiled.plain_resources
            if compiled.deny or compiled.conditions or plain is None or plain is False:
                others.append(pair)
            elif plain is True:
                if self.everything is None:
                    self.everything = pair
            elif plain.groups == 0 and plain.flags == _PLAIN_FLAGS:
                members.append(pair)
            else:
                others.append(pair)
        self.others = tuple(others)
        self.members = tuple(members)
        self.merged: re.Pattern[str] | None = None
        if members:
            source = "|".join(f"({member[0].plain_resources.pattern})" for member in members)  # type: ignore[union-attr]
            self.merged = re.compile(source, _PLAIN_FLAGS)


#: The flags of a Resource element's regex (`compile_globs` in RESOURCE mode).
_PLAIN_FLAGS = compile_globs(((("x", False),),), GlobMode.RESOURCE).flags


class _Layer:
    """Documents evaluated together (a caller's identity policies, its boundary, its session
    policies), compiled as one: for each action, the statements of all of them that the action
    selects, each with its policy's name, in order. A caller's layer is the same from request
    to request, so a request looks at the few statements its action selects, not at each of
    its documents."""

    __slots__ = ("by_action", "plans", "policies")

    def __init__(self, policies: Sequence[tuple[str, PolicyDocument]]) -> None:
        self.policies = tuple(policies)  # its documents kept alive: see _layer
        self.by_action: dict[str, tuple[tuple[_CompiledStatement, str], ...]] = {}
        self.plans: dict[str, _Plan] = {}

    def plan_for(self, action: str) -> _Plan:
        plan = self.plans.get(action)
        if plan is None:
            plan = _Plan(self.for_action(action))
            if len(self.plans) >= _ACTION_CACHE_LIMIT:
                self.plans.clear()
            self.plans[action] = plan
        return plan

    def for_action(self, action: str) -> tuple[tuple[_CompiledStatement, str], ...]:
        selected = self.by_action.get(action)
        if selected is None:
            selected = tuple(
                (compiled, name)
                for name, document in self.policies
                for compiled in _compiled(document).for_action(action)
            )
            if len(self.by_action) >= _ACTION_CACHE_LIMIT:
                self.by_action.clear()
            self.by_action[action] = selected
        return selected


#: Layers by (count, first document's id, last document's id): cheap to make per request. A hit
#: counts only if its pairs equal the ones asked for; an entry holds its documents, so no other
#: live object can have their ids, and equality of the same objects is a comparison of identity.
_layers: dict[tuple[int, int, int], _Layer] = {}
_LAYER_LIMIT = 4096


def _layer(policies: Sequence[tuple[str, PolicyDocument]]) -> _Layer:
    if not policies:
        return _EMPTY_LAYER
    key = (len(policies), id(policies[0][1]), id(policies[-1][1]))
    layer = _layers.get(key)
    if layer is None or layer.policies != tuple(policies):
        layer = _Layer(policies)
        if len(_layers) >= _LAYER_LIMIT:
            _layers.clear()
        _layers[key] = layer
    return layer


_EMPTY_LAYER = _Layer(())


def _decide(
    policies: Sequence[tuple[str, PolicyDocument]],
    context: RequestContext,
    target: _Target,
    caller: _Caller | None = None,
    *,
    report_missing: bool = True,
) -> Decision:
    deny, allow, missing_keys = _scan(
        policies,
        context.action,
        context.resource,
        context._lowered().get,
        target,
        caller,
        report_missing,
    )
    if deny is not None:
        return Decision("Deny", deny[0], deny[1], missing_keys)
    if allow is not None:
        return Decision("Allow", allow[0], allow[1], missing_keys)
    return Decision("ImplicitDeny", None, None, missing_keys)


#: What one layer says: the Deny and the Allow that apply, first of each (statement, policy
#: name), or None; and the context keys its statements read that the request lacks.
_Scan = tuple[tuple[Statement, str] | None, tuple[Statement, str] | None, tuple[str, ...]]


def _scan(
    policies: Sequence[tuple[str, PolicyDocument]],
    action: str,
    resource: str,
    lookup: Lookup,
    target: _Target,
    caller: _Caller | None,
    report_missing: bool,
) -> _Scan:
    allow: tuple[Statement, str] | None = None
    deny: tuple[Statement, str] | None = None
    missing: dict[str, None] = {}
    by_resource = target is _Target.RESOURCE
    targeted: bool | None
    layer = _layer(policies)
    plan: _Plan | None = None
    if report_missing or not by_resource:
        selected = layer.for_action(action)
    else:
        plan = layer.plan_for(action)
        selected = plan.others
        # Its Allow statements that need no condition and no variable first: when one of them
        # applies, only a Deny can change the answer, and the others' Allows are not looked at.
        if plan.everything is not None:
            allow = (plan.everything[0].statement, plan.everything[1])
        elif plan.merged is not None:
            matched = plan.merged.fullmatch(resource)
            if matched is not None and matched.lastindex is not None:
                member, member_name = plan.members[matched.lastindex - 1]
                allow = (member.statement, member_name)
    for compiled, name in selected:
        if not report_missing:  # no missing keys to gather: stop looking once it cannot change
            if deny is not None:
                break
            if allow is not None and not compiled.deny:
                continue
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
        if report_missing:
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
    return deny, allow, tuple(missing)
