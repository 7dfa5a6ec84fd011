"""IAM policy documents: parse JSON text into frozen statements, validating the grammar like AWS.

Pure: text in, a ``PolicyDocument`` out, or ``MalformedPolicyDocument`` with AWS's message and,
in its detail, the problem and where it is. Evaluation lives in ``controller.policy.evaluate``;
this module only decides whether a document is well formed for its kind (identity or trust).
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from controller.errors import MalformedPolicyDocument
from controller.policy.match import GlobMode, compile_globs

__all__ = [
    "TRUST_ACTIONS",
    "VERSION_2008",
    "VERSION_2012",
    "Condition",
    "PolicyDocument",
    "PolicyKind",
    "Principal",
    "Statement",
    "parse_policy",
    "policy_size",
]

VERSION_2012 = "2012-10-17"
VERSION_2008 = "2008-10-17"
_VERSIONS = (VERSION_2012, VERSION_2008)

#: The STS actions a role's trust policy may name (directly or through a wildcard).
TRUST_ACTIONS = (
    "sts:AssumeRole",
    "sts:AssumeRoleWithSAML",
    "sts:AssumeRoleWithWebIdentity",
    "sts:TagSession",
    "sts:SetSourceIdentity",
    "sts:SetContext",
)

_TOP_LEVEL_KEYS = ("Version", "Id", "Statement")
_STATEMENT_KEYS = (
    "Sid",
    "Effect",
    "Principal",
    "NotPrincipal",
    "Action",
    "NotAction",
    "Resource",
    "NotResource",
    "Condition",
)
_PRINCIPAL_TYPES = ("AWS", "Service", "Federated", "CanonicalUser")

_ACTION = re.compile(r"[A-Za-z0-9-]+:[A-Za-z0-9_*?-]+")
_VENDOR = re.compile(r"[A-Za-z0-9-]+")
_SID_IDENTITY = re.compile(r"[A-Za-z0-9]*")
_ACCOUNT_ID = re.compile(r"[0-9]{12}")
# An operator is an optional set prefix, then a name (which may end in IfExists).
_OPERATOR = re.compile(r"(?:(?:ForAnyValue|ForAllValues):)?[A-Za-z][A-Za-z0-9]*")
_CONDITION_KEY = re.compile(r"[A-Za-z0-9-]+:\S+")
_NO_SPACE = re.compile(r"\S+")

# AWS's own messages, which tools match on (docs/api-coverage.md, "Errors"). IAM names one of
# these and not where; RoleCall's account of where and why goes in the error's detail (logged).
SYNTAX_ERRORS = "Syntax errors in policy."
MUST_CONTAIN_ACTIONS = "Policy statement must contain actions."
MUST_CONTAIN_RESOURCES = "Policy statement must contain resources."
MISSING_PRINCIPAL = "Missing required field Principal"
NO_PRINCIPAL_ALLOWED = "Policy document should not specify a principal."
VENDOR_PREFIX = "Actions/Conditions must be prefaced by a vendor, e.g., iam, sdb, ec2, etc."
ONE_COLON = "Actions/Condition can contain only one colon."
VENDOR_QUALIFIED = "Resource vendor must be fully qualified and cannot contain regexes."
LEGACY_PARSING = "The policy failed legacy parsing"
SID_UNIQUE = "Statement IDs (SID) in a single policy must be unique."
SID_ALPHANUMERIC = (
    "Statement IDs (SID) must be alpha-numeric. Check that your input satisfies the regular "
    "expression [0-9A-Za-z]*"
)
#: Two spaces before "and": AWS's text as it is.
TRUST_ACTIONS_ONLY = (
    "Trust Policy statement actions can only be sts:AssumeRole, sts:AssumeRoleWithSAML,  and "
    "sts:AssumeRoleWithWebIdentity"
)


def _syntax(detail: str) -> MalformedPolicyDocument:
    """IAM's catch-all for a document that breaks the grammar, with RoleCall's reason."""
    return MalformedPolicyDocument(SYNTAX_ERRORS, detail)


class PolicyKind(enum.Enum):
    """What a document is for, which decides the elements it must and must not have."""

    #: Inline role/user policies and session policies: no Principal, Resource required.
    IDENTITY = "identity"
    #: A role's assume-role policy: Principal required, no Resource, only STS actions.
    TRUST = "trust"


@dataclass(frozen=True)
class Condition:
    """One operator/key test from a Condition block; values are strings as AWS compares them."""

    operator: str  # as written, e.g. "ForAnyValue:StringLikeIfExists"
    key: str  # as written; looked up case-insensitively at evaluation
    values: tuple[str, ...]  # JSON numbers and booleans as their JSON text ("true", "1.5")


@dataclass(frozen=True)
class Principal:
    """A Principal or NotPrincipal element.

    ``"Principal": "*"`` is ``Principal(entries=(), everyone=True)`` (``EVERYONE``); an object is
    its ``(type, values)`` pairs in document order, e.g. ``(("Service", ("ec2.amazonaws.com",)),)``.
    """

    entries: tuple[tuple[str, tuple[str, ...]], ...]
    everyone: bool = False


#: The principal written as ``"*"``: every caller, authenticated or not.
EVERYONE = Principal(entries=(), everyone=True)


@dataclass(frozen=True)
class Statement:
    """One statement: exactly one of Action/NotAction, and of Resource or Principal pairs."""

    sid: str | None
    effect: str  # "Allow" or "Deny"
    actions: tuple[str, ...] | None
    not_actions: tuple[str, ...] | None
    resources: tuple[str, ...] | None
    not_resources: tuple[str, ...] | None
    principal: Principal | None
    not_principal: Principal | None
    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class PolicyDocument:
    """A validated policy. ``version`` is ``2008-10-17`` when the document gave none."""

    version: str
    id: str | None
    statements: tuple[Statement, ...]

    @property
    def substitutes_variables(self) -> bool:
        """Policy variables (``${aws:username}``) are only substituted in 2012-10-17 documents."""
        return self.version == VERSION_2012


def policy_size(text: str) -> int:
    """The document's length as IAM's quotas count it: every character except whitespace."""
    return sum(1 for character in text if character not in " \t\n\r")


def parse_policy(text: str, kind: PolicyKind) -> PolicyDocument:
    """Parse and validate ``text`` as a policy of ``kind``; raise ``MalformedPolicyDocument``."""
    _check_characters(text)
    document = _load_json(text)
    if not isinstance(document, dict):
        raise _syntax("Policy document must be a JSON object")
    _reject_unknown_keys(document, _TOP_LEVEL_KEYS, "policy document")

    version = document.get("Version", VERSION_2008)
    if not isinstance(version, str) or version not in _VERSIONS:
        raise _syntax(f"Invalid Version {_show(version)}: must be {VERSION_2012} or {VERSION_2008}")
    policy_id = document.get("Id")
    if policy_id is not None and not isinstance(policy_id, str):
        raise _syntax(f"Id must be a string, not {_show(policy_id)}")
    if policy_id is not None:
        _check_string(policy_id, "Id")

    if "Statement" not in document:
        raise _syntax("Missing required field Statement")
    raw_statements = document["Statement"]
    if isinstance(raw_statements, dict):
        raw_statements = [raw_statements]
    if not isinstance(raw_statements, list) or not raw_statements:
        raise _syntax("Statement must be an object or a non-empty list of objects")

    statements = tuple(
        _parse_statement(raw, number, kind) for number, raw in enumerate(raw_statements, start=1)
    )
    seen_sids: set[str] = set()
    for number, statement in enumerate(statements, start=1):
        if statement.sid:
            if statement.sid in seen_sids:
                raise MalformedPolicyDocument(
                    SID_UNIQUE, f"Sid {statement.sid!r} repeats in statement {number}"
                )
            seen_sids.add(statement.sid)
    return PolicyDocument(version=version, id=policy_id, statements=statements)


# -- JSON text ---------------------------------------------------------------------------------


def _allowed(character: str) -> bool:
    return character in "\t\n\r" or " " <= character <= "\u00ff"


def _check_characters(text: str) -> None:
    for offset, character in enumerate(text):
        if not _allowed(character):
            line = text.count("\n", 0, offset) + 1
            column = offset - (text.rfind("\n", 0, offset) + 1) + 1
            raise _syntax(
                f"Invalid character U+{ord(character):04X} at line {line}, column {column}: "
                "policy documents may contain only tab, LF, CR and U+0020 to U+00FF"
            )


@dataclass(frozen=True)
class _Number:
    """A JSON number, kept as written so condition values compare as AWS shows them."""

    text: str


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object_without_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _load_json(text: str) -> object:
    try:
        return json.loads(
            text,
            object_pairs_hook=_object_without_duplicates,
            parse_int=_Number,
            parse_float=_Number,
            parse_constant=_reject_constant,
        )
    except json.JSONDecodeError as error:
        raise _syntax(
            f"JSON syntax error at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None
    except _DuplicateKey as error:
        raise _syntax(f"Duplicate key {error.key!r} in a JSON object") from None
    except ValueError as error:
        raise _syntax(f"JSON syntax error: {error}") from None
    except RecursionError:
        raise _syntax("JSON syntax error: nested too deeply") from None


def _show(value: object) -> str:
    """A parsed JSON value as it would be written, for messages."""
    if isinstance(value, _Number):
        return value.text
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _check_string(value: str, where: str) -> None:
    # Escapes such as \u4e2d or a lone \ud800 decode to characters the raw-text check never saw.
    for character in value:
        if not _allowed(character):
            raise _syntax(
                f"Invalid character U+{ord(character):04X} (escaped) in {where}: policy documents "
                "may contain only tab, LF, CR and U+0020 to U+00FF"
            )


def _reject_unknown_keys(mapping: dict[str, object], known: tuple[str, ...], where: str) -> None:
    for key in mapping:
        if key not in known:
            raise _syntax(f"Unknown field {key!r} in {where}")


# -- statements --------------------------------------------------------------------------------


def _parse_statement(raw: object, number: int, kind: PolicyKind) -> Statement:
    where = f"statement {number}"
    if not isinstance(raw, dict):
        raise _syntax(f"Statement {number} must be a JSON object")
    _reject_unknown_keys(raw, _STATEMENT_KEYS, where)

    sid = raw.get("Sid")
    if sid is not None:
        if not isinstance(sid, str):
            raise _syntax(f"Sid in {where} must be a string, not {_show(sid)}")
        _check_string(sid, f"Sid of {where}")
        if kind is PolicyKind.IDENTITY and not _SID_IDENTITY.fullmatch(sid):
            raise MalformedPolicyDocument(SID_ALPHANUMERIC, f"Sid {sid!r} in {where}")

    if "Effect" not in raw:
        raise _syntax(f"Missing required field Effect in {where}")
    effect = raw["Effect"]
    if effect not in ("Allow", "Deny"):
        shown = effect if isinstance(effect, str) else _show(effect)
        raise _syntax(f"Invalid effect: {shown} in {where}")

    actions, not_actions = _pair(raw, "Action", "NotAction", where, required=True)
    actions = _strings(actions, "Action", where, _check_action)
    not_actions = _strings(not_actions, "NotAction", where, _check_action)
    if kind is PolicyKind.TRUST and actions is not None:
        for action in actions:
            if not _matches_trust_action(action):
                raise MalformedPolicyDocument(
                    TRUST_ACTIONS_ONLY,
                    f"{action!r} in {where} is not an STS action a trust policy may allow",
                )

    principal: Principal | None = None
    not_principal: Principal | None = None
    resources: tuple[str, ...] | None = None
    not_resources: tuple[str, ...] | None = None
    if kind is PolicyKind.IDENTITY:
        for field in ("Principal", "NotPrincipal"):
            if field in raw:
                raise MalformedPolicyDocument(NO_PRINCIPAL_ALLOWED, f"{field} in {where}")
        raw_resources, raw_not_resources = _pair(raw, "Resource", "NotResource", where, True)
        resources = _strings(raw_resources, "Resource", where, _check_resource)
        not_resources = _strings(raw_not_resources, "NotResource", where, _check_resource)
    else:
        for field in ("Resource", "NotResource"):
            if field in raw:
                raise MalformedPolicyDocument(
                    f"Has prohibited field {field}.",
                    f"{field} in {where}: trust policies apply to the role",
                )
        raw_principal, raw_not_principal = _pair(raw, "Principal", "NotPrincipal", where, True)
        if raw_principal is not None:
            principal = _parse_principal(raw_principal, "Principal", where)
        if raw_not_principal is not None:
            if effect == "Allow":
                # "Everyone but X" may assume the role: IAM refuses it in trust policies.
                raise _syntax(
                    f"NotPrincipal with Effect Allow is not supported in trust policies: {where}"
                    " (name the principals that may assume the role in Principal instead)"
                )
            not_principal = _parse_principal(raw_not_principal, "NotPrincipal", where)

    conditions = _parse_conditions(raw.get("Condition"), where) if "Condition" in raw else ()
    return Statement(
        sid=sid,
        effect=effect,
        actions=actions,
        not_actions=not_actions,
        resources=resources,
        not_resources=not_resources,
        principal=principal,
        not_principal=not_principal,
        conditions=conditions,
    )


def _pair(
    raw: dict[str, object], name: str, negated: str, where: str, required: bool
) -> tuple[object, object]:
    """The element and its Not form; exactly one must be present when ``required``."""
    if name in raw and negated in raw:
        raise _syntax(f"Statement has both {name} and {negated} in {where}: exactly one is allowed")
    if required and name not in raw and negated not in raw:
        raise MalformedPolicyDocument(
            _MISSING.get(name, SYNTAX_ERRORS), f"Missing required field {name} in {where}"
        )
    return raw.get(name), raw.get(negated)


def _strings(
    value: object, field: str, where: str, check: Callable[[str, str], None]
) -> tuple[str, ...] | None:
    """A string-or-list element as a tuple, each item checked; ``None`` when absent."""
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    if not items:
        raise MalformedPolicyDocument(
            _MISSING.get(field.removeprefix("Not"), SYNTAX_ERRORS),
            f"{field} in {where} must not be an empty list",
        )
    for item in items:
        if not isinstance(item, str):
            raise _syntax(
                f"{field} in {where} must be a string or a list of strings, found {_show(item)}"
            )
        _check_string(item, f"{field} of {where}")
        check(item, f"{field} in {where}")
    return tuple(items)


#: AWS's message for a statement without the element (or with an empty list of it).
_MISSING = {
    "Action": MUST_CONTAIN_ACTIONS,
    "Resource": MUST_CONTAIN_RESOURCES,
    "Principal": MISSING_PRINCIPAL,
}


def _check_action(action: str, where: str) -> None:
    if action == "*" or _ACTION.fullmatch(action):
        return
    detail = (
        f"Invalid action {action!r} in {where}: actions must be '*' or 'vendor:action', "
        "e.g. iam:CreateRole"
    )
    vendor, colon, _ = action.partition(":")
    if not colon or not vendor:
        raise MalformedPolicyDocument(VENDOR_PREFIX, detail)
    if action.count(":") > 1:
        raise MalformedPolicyDocument(ONE_COLON, detail)
    if not _VENDOR.fullmatch(vendor):
        raise MalformedPolicyDocument(f"Vendor {vendor} is not valid", detail)
    raise _syntax(detail)


def _matches_trust_action(pattern: str) -> bool:
    """Whether an Action pattern names one of the STS actions a trust policy may allow.

    The policy engine's glob matcher, not a regex of ``.*`` per ``*``: ``sts:**********X``
    made that one backtrack exponentially (issue 16, item 2).
    """
    regex = compile_globs((((pattern, False),),), GlobMode.PLAIN, ignore_case=True)
    return any(regex.fullmatch(action) for action in TRUST_ACTIONS)


def _check_resource(resource: str, where: str) -> None:
    """``*`` or ``arn:partition:service:...``; a pattern may stop early if it ends in ``*``.

    AWS lets a trailing ``*`` in a segment expand across colons, so ``arn:aws:ec2:*`` is valid; the
    service segment may hold no wildcard ("Resource vendor must be fully qualified").
    """
    if resource == "*":
        return
    parts = resource.split(":", 5)
    shaped = (
        len(parts) >= 4
        and parts[0] == "arn"
        and bool(parts[1])
        and bool(parts[2])
        and bool(parts[-1])
        and (len(parts) == 6 or parts[-1].endswith("*"))
    )
    if not shaped:
        detail = (
            f"Resource {resource!r} in {where} must be '*' or an ARN "
            "(arn:partition:service:region:account:resource)"
        )
        if len(parts) < 2 or parts[0] != "arn":
            raise MalformedPolicyDocument(
                f'Resource {resource} must be in ARN format or "*".', detail
            )
        if len(parts) < 3:
            raise MalformedPolicyDocument(VENDOR_QUALIFIED, detail)
        raise MalformedPolicyDocument(LEGACY_PARSING, detail)
    if "*" in parts[2] or "?" in parts[2]:
        raise MalformedPolicyDocument(
            VENDOR_QUALIFIED,
            f"Resource {resource!r} in {where}: the service (vendor) must be fully qualified and "
            "cannot contain wildcards",
        )


# -- principals --------------------------------------------------------------------------------


def _parse_principal(raw: object, field: str, where: str) -> Principal:
    if raw == "*":
        return EVERYONE
    if not isinstance(raw, dict):
        raise _syntax(
            f'{field} in {where} must be "*" or an object of principal types, found {_show(raw)}'
        )
    if not raw:
        raise _syntax(f"{field} in {where} must name at least one principal")
    entries: list[tuple[str, tuple[str, ...]]] = []
    for principal_type, value in raw.items():
        if principal_type not in _PRINCIPAL_TYPES:
            raise _syntax(
                f"Invalid principal type {principal_type!r} in {field} of {where}: "
                f"expected one of {', '.join(_PRINCIPAL_TYPES)}"
            )
        aws = principal_type == "AWS"
        check = partial(_check_aws_principal if aws else _check_named_principal, principal_type)
        values = _strings(value, f"{field} {principal_type}", where, check)
        assert values is not None  # value is present; only None maps to None
        entries.append((principal_type, values))
    return Principal(entries=tuple(entries))


def _invalid_principal(principal_type: str, value: str, detail: str) -> MalformedPolicyDocument:
    """AWS's text: ``Invalid principal in policy: "SERVICE":"x"`` (the type upper-cased)."""
    return MalformedPolicyDocument(
        f'Invalid principal in policy: "{principal_type.upper()}":"{value}"', detail
    )


def _check_aws_principal(principal_type: str, value: str, where: str) -> None:
    if value == "*" or _ACCOUNT_ID.fullmatch(value):
        return
    parts = value.split(":", 5)
    if len(parts) == 6 and parts[0] == "arn" and parts[1] and parts[2] and parts[5]:
        if not _NO_SPACE.fullmatch(value):
            raise _invalid_principal(principal_type, value, f"{value!r} in {where} has a space")
        return
    raise _invalid_principal(
        principal_type,
        value,
        f"{value!r} in {where}: expected '*', a 12-digit account ID or an ARN",
    )


def _check_named_principal(principal_type: str, value: str, where: str) -> None:
    if not _NO_SPACE.fullmatch(value):
        raise _invalid_principal(principal_type, value, f"{value!r} in {where} has a space")


# -- conditions --------------------------------------------------------------------------------


def _parse_conditions(raw: object, where: str) -> tuple[Condition, ...]:
    if not isinstance(raw, dict):
        raise _syntax(f"Condition in {where} must be an object of operators, found {_show(raw)}")
    conditions: list[Condition] = []
    for operator, block in raw.items():
        if not _OPERATOR.fullmatch(operator):
            raise _syntax(
                f"Invalid condition operator {operator!r} in {where}: expected an optional "
                "ForAnyValue:/ForAllValues: prefix and a name such as StringEquals"
            )
        if not isinstance(block, dict):
            raise _syntax(
                f"Condition operator {operator} in {where} must map keys to values, "
                f"found {_show(block)}"
            )
        if not block:
            raise _syntax(f"Condition operator {operator} in {where} has no condition keys")
        for key, value in block.items():
            _check_string(key, f"Condition of {where}")
            if not _CONDITION_KEY.fullmatch(key):
                raise MalformedPolicyDocument(
                    VENDOR_PREFIX,
                    f"Invalid condition key {key!r} in {where}: condition keys must be prefaced "
                    "by a vendor, e.g. aws:SourceIp",
                )
            values = _condition_values(value, f"{operator} {key} in {where}")
            conditions.append(Condition(operator=operator, key=key, values=values))
    return tuple(conditions)


def _condition_values(raw: object, where: str) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise _syntax(f"Condition values for {where} must not be an empty list")
    values: list[str] = []
    for item in items:
        if isinstance(item, bool):  # before str/number: bool is its own JSON type
            values.append("true" if item else "false")
        elif isinstance(item, str):
            _check_string(item, f"condition values of {where}")
            values.append(item)
        elif isinstance(item, _Number):
            values.append(item.text)
        else:
            raise _syntax(
                f"Condition values for {where} must be strings, numbers or booleans, "
                f"found {_show(item)}"
            )
    return tuple(values)
