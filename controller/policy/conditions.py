"""Condition operators: each ``Condition`` compiled once into a test of one request.

A test answers ``True``, ``False`` or ``None`` (unknown). Unknown means the engine cannot say: the
operator is one it does not know (or a combination AWS does not define, like ``NullIfExists``),
or a policy value is not valid for the operator (``NumericEquals: "ten"``). The statement then
fails closed (see ``controller.policy.evaluate``): an Allow does not allow, a Deny still denies.
"""

from __future__ import annotations

import base64
import decimal
import enum
import functools
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from controller.policy.document import Condition
from controller.policy.match import GlobMode, compile_globs
from controller.policy.variables import Lookup, Segment, parse_template

__all__ = ["CompiledCondition", "compile_condition"]

#: A test of one context value against all of a condition's policy values (which are OR'd).
Predicate = Callable[[str], bool]
#: Builds the predicate from the resolved policy values; ``ValueError`` if one is invalid.
Builder = Callable[[Sequence[tuple[Segment, ...]]], Predicate]


class _Set(enum.Enum):
    ANY = "ForAnyValue"
    ALL = "ForAllValues"


def _text(value: tuple[Segment, ...]) -> str:
    return "".join(text for text, _literal in value)


# -- value parsers: each raises ValueError on text that is not a value of its type -----------------

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_EPOCH = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")


@functools.lru_cache(maxsize=4096)
def _number(text: str) -> decimal.Decimal:
    if not _NUMBER.fullmatch(text.strip()):
        raise ValueError(f"not a number: {text!r}")
    return decimal.Decimal(text.strip())


@functools.lru_cache(maxsize=4096)
def _instant(text: str) -> decimal.Decimal:
    """An ISO 8601 date/time (UTC when no offset is given) or epoch seconds, as epoch seconds."""
    text = text.strip()
    if _EPOCH.fullmatch(text):
        return decimal.Decimal(text)
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return decimal.Decimal(repr(moment.timestamp()))
    except (ValueError, OverflowError):
        raise ValueError(f"not a date: {text!r}") from None


def _boolean(text: str) -> str:
    lowered = text.strip().lower()
    if lowered not in ("true", "false"):
        raise ValueError(f"not a boolean: {text!r}")
    return lowered


def _binary(text: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except ValueError:  # binascii.Error, or a non-ASCII character
        raise ValueError(f"not base64: {text!r}") from None


# -- predicate builders --------------------------------------------------------------------------


def _string_equals(values: Sequence[tuple[Segment, ...]]) -> Predicate:
    return frozenset(_text(value) for value in values).__contains__


def _string_equals_ignore_case(values: Sequence[tuple[Segment, ...]]) -> Predicate:
    wanted = frozenset(_text(value).lower() for value in values)
    return lambda candidate: candidate.lower() in wanted


def _glob_builder(mode: GlobMode) -> Builder:
    def build(values: Sequence[tuple[Segment, ...]]) -> Predicate:
        regex = compile_globs(tuple(values), mode)
        return lambda candidate: regex.fullmatch(candidate) is not None

    return build


def _ordered_builder(
    parse: Callable[[str], decimal.Decimal],
    compare: Callable[[decimal.Decimal, decimal.Decimal], bool],
) -> Builder:
    def build(values: Sequence[tuple[Segment, ...]]) -> Predicate:
        wanted = [parse(_text(value)) for value in values]

        def predicate(candidate: str) -> bool:
            try:
                have = parse(candidate)
            except (ValueError, ArithmeticError):
                return False  # a context value of the wrong type matches nothing
            return any(compare(have, value) for value in wanted)

        return predicate

    return build


def _bool(values: Sequence[tuple[Segment, ...]]) -> Predicate:
    wanted = frozenset(_boolean(_text(value)) for value in values)
    return lambda candidate: candidate.strip().lower() in wanted


def _binary_equals(values: Sequence[tuple[Segment, ...]]) -> Predicate:
    wanted = frozenset(_binary(_text(value)) for value in values)

    def predicate(candidate: str) -> bool:
        try:
            return _binary(candidate) in wanted
        except ValueError:
            return False

    return predicate


@functools.lru_cache(maxsize=4096)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _ip_address(values: Sequence[tuple[Segment, ...]]) -> Predicate:
    networks = [ipaddress.ip_network(_text(value).strip(), strict=False) for value in values]

    def predicate(candidate: str) -> bool:
        address = _address(candidate)
        if address is None:
            return False
        return any(address in network for network in networks)

    return predicate


@dataclass(frozen=True)
class _Operator:
    build: Builder
    negated: bool
    variables: bool  # AWS substitutes policy variables for this operator's values


def _operators() -> dict[str, _Operator]:
    table: dict[str, _Operator] = {}

    def add(name: str, build: Builder, variables: bool, negated_name: str | None = None) -> None:
        table[name] = _Operator(build, negated=False, variables=variables)
        if negated_name is not None:
            table[negated_name] = _Operator(build, negated=True, variables=variables)

    add("StringEquals", _string_equals, True, "StringNotEquals")
    add("StringEqualsIgnoreCase", _string_equals_ignore_case, True, "StringNotEqualsIgnoreCase")
    add("StringLike", _glob_builder(GlobMode.PLAIN), True, "StringNotLike")
    comparisons: tuple[tuple[str, Callable[[decimal.Decimal, decimal.Decimal], bool]], ...] = (
        ("Equals", lambda have, want: have == want),
        ("LessThan", lambda have, want: have < want),
        ("LessThanEquals", lambda have, want: have <= want),
        ("GreaterThan", lambda have, want: have > want),
        ("GreaterThanEquals", lambda have, want: have >= want),
    )
    for family, parse in (("Numeric", _number), ("Date", _instant)):
        for suffix, compare in comparisons:
            build = _ordered_builder(parse, compare)
            add(family + suffix, build, False, family + "NotEquals" if suffix == "Equals" else None)
    add("Bool", _bool, True)
    add("BinaryEquals", _binary_equals, False)
    add("IpAddress", _ip_address, False, "NotIpAddress")
    # AWS documents ArnEquals and ArnLike as the same test: each segment, wildcards allowed.
    add("ArnEquals", _glob_builder(GlobMode.ARN), True, "ArnNotEquals")
    add("ArnLike", _glob_builder(GlobMode.ARN), True, "ArnNotLike")
    return table


_OPERATORS = _operators()
_IF_EXISTS = "IfExists"


# -- compiled conditions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledCondition:
    """A condition ready to test requests; ``keys`` are every context key it reads, as written."""

    condition: Condition
    lower_key: str
    keys: tuple[str, ...]
    test: Callable[[Lookup], bool | None]


def compile_condition(condition: Condition, substitute: bool) -> CompiledCondition:
    """Compile ``condition``; ``substitute`` is whether its document expands policy variables."""
    lower_key = condition.key.lower()
    test, variable_keys = _compile_test(condition, lower_key, substitute)
    keys = (condition.key, *variable_keys)
    return CompiledCondition(condition=condition, lower_key=lower_key, keys=keys, test=test)


def _unknown(_lookup: Lookup) -> bool | None:
    return None


def _compile_test(
    condition: Condition, lower_key: str, substitute: bool
) -> tuple[Callable[[Lookup], bool | None], tuple[str, ...]]:
    set_operator, separator, name = condition.operator.rpartition(":")
    quantifier: _Set | None = None
    if separator:
        try:
            quantifier = _Set(set_operator)
        except ValueError:
            return _unknown, ()
    if name == "Null":
        # AWS defines neither a set operator nor IfExists on Null: unknown, so fail closed.
        return (_unknown if quantifier else _compile_null(condition, lower_key)), ()
    if_exists = name.endswith(_IF_EXISTS)
    if if_exists:
        name = name[: -len(_IF_EXISTS)]
    operator = _OPERATORS.get(name)
    if operator is None:
        return _unknown, ()  # fails closed: see the module docstring

    templates = [
        parse_template(value, substitute and operator.variables) for value in condition.values
    ]
    variable_keys = tuple(key for template in templates for key in template.keys)
    statics = [template.static for template in templates]
    predicate: Predicate | None = None
    if all(value is not None for value in statics):
        try:
            predicate = operator.build([value for value in statics if value is not None])
        except ValueError:
            return _unknown, variable_keys

    def test(lookup: Lookup) -> bool | None:
        have = lookup(lower_key)
        if not have:  # absent, or a multivalued key with no values
            if if_exists or quantifier is _Set.ALL:
                return True
            if quantifier is _Set.ANY:
                return False
            return operator.negated  # negated operators match an absent key, as in AWS
        matches = predicate
        if matches is None:
            resolved = [template.resolve(lookup) for template in templates]
            if any(value is None for value in resolved):
                # An unresolvable variable: the condition is undecidable, so an Allow does not
                # allow and a Deny denies (fail closed), whatever the operator's negation.
                return None
            try:
                matches = operator.build([value for value in resolved if value is not None])
            except ValueError:
                return None
        if quantifier is None:
            return any(matches(value) for value in have) != operator.negated
        if quantifier is _Set.ANY:
            return any(matches(value) != operator.negated for value in have)
        return all(matches(value) != operator.negated for value in have)

    return test, variable_keys


def _compile_null(condition: Condition, lower_key: str) -> Callable[[Lookup], bool | None]:
    """``Null: true`` holds when the key is absent, ``false`` when present (values are OR'd)."""
    try:
        wanted = {_boolean(value) for value in condition.values}
    except ValueError:
        return _unknown

    def test(lookup: Lookup) -> bool | None:
        absent = not lookup(lower_key)
        return ("true" if absent else "false") in wanted

    return test
