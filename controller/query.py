"""The AWS Query protocol's input side: flat ``Name.member.N.Key=value`` parameters to typed values.

Each action declares its input as a `Struct` of fields; `parse_input` checks every constraint the
way AWS's front end does and reports all problems at once as one ValidationError, naming members
in AWS's camelCase path form (``tags.1.member.key``). No I/O here.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

from controller.errors import (
    InvalidInput,
    InvalidParameterValue,
    MissingParameter,
    UnknownParameter,
    UnsupportedOperation,
    shown_value,
    validation_error,
)


@dataclass(frozen=True)
class Str:
    """A string with AWS's length bounds and an optional pattern matched against the whole value."""

    min_length: int = 0
    max_length: int | None = None
    pattern: str | None = None
    #: For character classes Python's ``re`` cannot spell (``\\p{L}``): a predicate and its text.
    check: Callable[[str], bool] | None = None
    check_text: str = ""
    enum: tuple[str, ...] = ()
    #: ``pattern``, compiled once.
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.pattern is not None:
            object.__setattr__(self, "_regex", re.compile(self.pattern, re.ASCII | re.DOTALL))

    def problems(self, value: str) -> list[str]:
        found = []
        if len(value) < self.min_length:
            found.append(f"Member must have length greater than or equal to {self.min_length}")
        if self.max_length is not None and len(value) > self.max_length:
            found.append(f"Member must have length less than or equal to {self.max_length}")
        if self._regex is not None and value and not self._regex.fullmatch(value):
            found.append(f"Member must satisfy regular expression pattern: {self.pattern}")
        if self.check is not None and not self.check(value):
            found.append(f"Member must satisfy regular expression pattern: {self.check_text}")
        if self.enum and value not in self.enum:
            found.append(f"Member must satisfy enum value set: [{', '.join(self.enum)}]")
        return found


@dataclass(frozen=True)
class Int:
    minimum: int | None = None
    maximum: int | None = None


@dataclass(frozen=True)
class Bool:
    pass


#: RoleCall's bound on a list whose AWS model sets none (the request body's 1 MiB would allow
#: some 100,000 members): more is refused before any member is read.
DEFAULT_MAX_ITEMS = 1000


@dataclass(frozen=True)
class ListOf:
    """A list; on the wire ``Name.member.1`` (IAM/STS) or ``Name.1`` (EC2's flattened lists).

    ``max_items`` is the AWS model's bound; ``cap`` RoleCall's own where the model has none
    (`DEFAULT_MAX_ITEMS` when neither is given). Either way a longer list, or a member index past
    the bound, is refused before any member is parsed.
    """

    member: Shape
    max_items: int | None = None
    min_items: int = 0
    cap: int | None = None

    @property
    def bound(self) -> int:
        """The most members a request may give."""
        if self.max_items is not None:
            return self.max_items
        return self.cap if self.cap is not None else DEFAULT_MAX_ITEMS


@dataclass(frozen=True)
class Field:
    name: str
    shape: Shape
    required: bool = False
    #: The wire name when it differs from ``name`` (EC2 spells many list members singular).
    wire_name: str | None = None


@dataclass(frozen=True)
class Struct:
    fields: tuple[Field, ...] = field(default_factory=tuple)
    #: The members the AWS shape has that RoleCall refuses, each with why (UnsupportedOperation).
    #: With it (``{}`` too), the structure is closed: a member that is neither a field nor
    #: refused is UnknownParameter, so nothing is accepted and dropped. An action's input may be
    #: closed, and then so may the structures among its fields (`check_closed`).
    refused: Mapping[str, str] | None = None


#: Parameters of every request that belong to the protocol, not to the action.
_PROTOCOL_PARAMETERS = frozenset(
    {
        "Action",
        "Version",
        "AWSAccessKeyId",
        "Signature",
        "SignatureMethod",
        "SignatureVersion",
        "Timestamp",
        "Expires",
        "SecurityToken",
    }
)


def check_closed(params: Mapping[str, str], struct: Struct) -> None:
    """For an input with `Struct.refused`: UnsupportedOperation for a refused parameter,
    UnknownParameter for one the action does not have (the first, in the request's order).

    A closed input's fields that are closed structures (or lists of them) are checked the same
    way, member by member (``Placement.Tenancy``); an open structure's members are not. The work
    is linear in the number of parameters.
    """
    if struct.refused is None:
        return
    members: dict[int, dict[str, list[Field]]] = {}
    for key in params:
        parts = key.split(".")
        if parts[0] in _PROTOCOL_PARAMETERS or parts[0].startswith("X-Amz-"):
            continue
        _check_closed_path(parts, struct, members)


def _check_closed_path(
    parts: list[str], struct: Struct, members: dict[int, dict[str, list[Field]]]
) -> None:
    """Raise for the first part of one parameter's name that a closed structure lacks."""
    shape: Shape = struct
    index = 0
    while index < len(parts):
        if isinstance(shape, Struct):
            refused = shape.refused
            if refused is None:
                return
            by_first = members.get(id(shape))
            if by_first is None:
                by_first = members[id(shape)] = {}
                for item in shape.fields:
                    wire = item.wire_name or item.name
                    by_first.setdefault(wire.split(".", 1)[0], []).append(item)
            found, length, common = None, 0, 0
            for item in by_first.get(parts[index], ()):
                wire_parts = (item.wire_name or item.name).split(".")
                if parts[index : index + len(wire_parts)] == wire_parts:
                    found, length = item, len(wire_parts)
                    break
                # A dotted wire name (``Outer.Inner``) that only begins alike: name up to where
                # they part.
                shared = 0
                for wanted, given in zip(wire_parts, parts[index:], strict=False):
                    if wanted != given:
                        break
                    shared += 1
                common = max(common, shared)
            if found is None:
                name = ".".join(parts[: index + common + 1])
                why = refused.get(parts[index])
                if why is not None:
                    raise UnsupportedOperation(f"The parameter {name} is not supported: {why}")
                raise UnknownParameter(f"The parameter {name} is not recognized")
            shape = found.shape
            index += length
        elif isinstance(shape, ListOf):
            # ``Name.N`` (EC2's flattened lists) or ``Name.member.N``; the parser checks the rest.
            if parts[index] == "member":
                index += 1
            if index >= len(parts) or not parts[index].isdigit():
                return
            shape = shape.member
            index += 1
        else:
            return


Shape = Str | Int | Bool | ListOf | Struct


def member_path(name: str) -> str:
    """AWS's spelling of a member in validation messages: ``RoleName`` -> ``roleName``."""
    return name[:1].lower() + name[1:]


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[object, str, str]] = []
        #: The wire name of each problem's parameter, for EC2's errors which name it so.
        self.wires: list[str] = []

    def add(self, value: object, path: str, constraint: str, wire: str = "") -> None:
        self.items.append((value, path, constraint))
        self.wires.append(wire or path)


def parse_form(text: str) -> list[tuple[str, str]]:
    """The ``(name, value)`` pairs of an ``application/x-www-form-urlencoded`` body, in order.

    As ``urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=True)``: ``+`` is a
    space, escapes that are not UTF-8 become U+FFFD, and a field without ``=`` (an empty one
    too) is a ValueError.
    """
    if not text or not text.isascii():
        return parse_qsl(text, keep_blank_values=True, strict_parsing=True)
    # ASCII text is one run for parse_qsl's unquote, which comes down to this; SDKs send ASCII.
    pairs = []
    for field_text in text.split("&"):
        name, equals, value = field_text.partition("=")
        if not equals:
            raise ValueError(f"bad query field: {field_text!r}")
        pairs.append((_form_decode(name), _form_decode(value)))
    return pairs


def _form_decode(text: str) -> str:
    if "+" in text:
        text = text.replace("+", " ")
    if "%" in text:
        text = unquote_to_bytes(text).decode("utf-8", "replace")
    return text


class _Node:
    """One dotted name part of the request's parameters: ``Tags`` → ``member`` → ``1`` → ``Key``.

    The parameters are grouped into this tree once, in one pass over them, so that finding a
    structure's members or a list's items never scans all the parameters again: parsing is linear
    in the request (scanning per list, and per item of a list of structures, was quadratic: a
    578 KB TagRole held the controller for 13.6 s before authorization; issue 16, item 3).
    """

    __slots__ = ("children", "value")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.value: str | None = None

    @classmethod
    def of(cls, params: Mapping[str, str]) -> _Node:
        root = cls()
        for name, value in params.items():
            node = root
            for part in name.split("."):
                child = node.children.get(part)
                if child is None:
                    child = node.children[part] = cls()
                node = child
            node.value = value
        return root

    def find(self, dotted: str) -> _Node | None:
        node = self
        for part in dotted.split("."):
            child = node.children.get(part)
            if child is None:
                return None
            node = child
        return node


def parse_input(
    params: Mapping[str, str], struct: Struct, *, flattened_lists: bool = False
) -> dict[str, Any]:
    """Typed, validated input from flat Query parameters.

    IAM and STS (``flattened_lists=False``) answer AWS's ValidationError listing every problem;
    EC2 answers its own MissingParameter or InvalidParameterValue naming the first parameter.
    The work is linear in the size of ``params``, which is read once.
    """
    check_closed(params, struct)
    problems = _Problems()
    result = _parse_struct(_Node.of(params), "", "", struct, problems, flattened_lists)
    if problems.items:
        if flattened_lists:
            value, _, constraint = problems.items[0]
            wire = problems.wires[0]
            if value is None:
                raise MissingParameter(f"The request must contain the parameter {wire}")
            raise InvalidParameterValue(
                f"Value ({shown_value(value).strip(chr(39))}) for parameter {wire} is invalid."
                f" {constraint.replace('Member must', 'It must')}"
            )
        raise validation_error(problems.items)
    return result


def _parse_struct(
    node: _Node,
    prefix: str,
    path: str,
    struct: Struct,
    problems: _Problems,
    flattened: bool,
) -> dict[str, Any]:
    """The members of a structure whose parameters are under ``node`` (named ``prefix…``)."""
    out: dict[str, Any] = {}
    children = node.children
    for item in struct.fields:
        name = item.wire_name or item.name
        child = children.get(name) if "." not in name else node.find(name)
        # Most fields of an action are absent from a request: names for messages are made only
        # for the fields that are there, or missing and required.
        value = (
            None
            if child is None
            else _parse_value(
                child,
                prefix + name,
                path + member_path(item.name),
                item.shape,
                problems,
                flattened,
            )
        )
        if value is None:
            if item.required:
                wire = prefix + name
                problems.add(None, path + member_path(item.name), "Member must not be null", wire)
            continue
        out[item.name] = value
    return out


def _parse_value(
    node: _Node,
    wire: str,
    member: str,
    shape: Shape,
    problems: _Problems,
    flattened: bool,
) -> Any:
    if isinstance(shape, Struct):
        if not node.children:
            return None
        return _parse_struct(node, wire + ".", member + ".", shape, problems, flattened)
    if isinstance(shape, ListOf):
        return _parse_list(node, wire, member, shape, problems, flattened)
    raw = node.value
    if raw is None:
        return None
    if isinstance(shape, Str):
        for constraint in shape.problems(raw):
            problems.add(raw, member, constraint, wire)
        return raw
    if isinstance(shape, Int):
        if not re.fullmatch(r"-?[0-9]{1,18}", raw):
            problems.add(raw, member, "Member must be an integer", wire)
            return raw
        number = int(raw)
        if shape.minimum is not None and number < shape.minimum:
            problems.add(
                raw,
                member,
                f"Member must have value greater than or equal to {shape.minimum}",
                wire,
            )
        if shape.maximum is not None and number > shape.maximum:
            problems.add(
                raw, member, f"Member must have value less than or equal to {shape.maximum}", wire
            )
        return number
    if raw.lower() not in ("true", "false"):
        problems.add(raw, member, "Member must be a boolean (true or false)", wire)
        return raw
    return raw.lower() == "true"


_MAX_INDEX_DIGITS = 6


def _indexes(node: _Node) -> set[int]:
    """The item numbers under a list's ``member`` (or, flattened, its own) name part."""
    return {
        int(part)
        for part in node.children
        if part.isascii() and part.isdigit() and len(part) <= _MAX_INDEX_DIGITS
    }


def _parse_list(
    node: _Node,
    wire: str,
    member: str,
    shape: ListOf,
    problems: _Problems,
    flattened: bool,
) -> list[Any] | None:
    head_node = node if flattened else node.children.get("member")
    head = f"{wire}." if flattened else f"{wire}.member."
    indexes = set() if head_node is None else _indexes(head_node)
    if head_node is None or not indexes:
        # ``Name=`` with no members is how the Query protocol sends an empty list.
        return [] if node.value == "" else None
    bound = shape.bound
    # Refused before any member is read: the members' work is what the bound is for.
    if len(indexes) > bound or max(indexes) > bound:
        problems.add(
            f"[{len(indexes)} items]",
            member,
            f"Member must have length less than or equal to {bound}",
            wire,
        )
        return []
    items = []
    for position, index in enumerate(sorted(indexes), start=1):
        item_member = f"{member}.{position}.member" if not flattened else f"{member}.{position}"
        item_node = head_node.children.get(str(index))
        value = (
            None
            if item_node is None
            else _parse_value(
                item_node, f"{head}{index}", item_member, shape.member, problems, flattened
            )
        )
        if value is None:
            problems.add(None, item_member, "Member must not be null", wire)
            continue
        items.append(value)
    if len(items) < shape.min_items:
        problems.add(
            f"[{len(items)} items]",
            member,
            f"Member must have length greater than or equal to {shape.min_items}",
            wire,
        )
    return items


def is_tag_text(value: str) -> bool:
    """AWS's tag character set ``[\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]``, which ``re`` cannot spell."""
    return all(unicodedata.category(char)[0] in "LZN" or char in "_.:/=+-@" for char in value)


def check_unique(values: list[str], what: str) -> None:
    """Keys given twice in one request (ignoring case, as IAM compares them) are InvalidInput."""
    seen: set[str] = set()
    for value in values:
        folded = value.lower()
        if folded in seen:
            raise InvalidInput(f"Duplicate {what} '{value}' in the request.")
        seen.add(folded)
