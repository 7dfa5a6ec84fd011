"""Policy variables: ``${aws:username}`` in Resource and condition values, resolved per request.

A value is parsed once into a ``Template``; ``resolve`` turns it into segments of text, each marked
literal or not. Literal text (a substituted value, a default, or the ``${*}``/``${?}``/``${$}``
escapes) never acts as a wildcard; the policy's own text does. Only 2012-10-17 documents substitute.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Lookup", "Segment", "Template", "parse_template"]

#: ``(text, literal)``: literal text matches itself even where ``*`` and ``?`` are wildcards.
Segment = tuple[str, bool]
#: Context values by lower-case key, or ``None`` when the request has no such key.
Lookup = Callable[[str], tuple[str, ...] | None]

_ESCAPES = ("*", "?", "$")
# A key, then optionally ", 'default'" where '' inside the quotes stands for one quote. Whitespace
# around the key and the default is ignored, as AWS does.
_VARIABLE = re.compile(r"\s*([^\s,'{}]+)\s*(?:,\s*'((?:[^']|'')*)'\s*)?")


@dataclass(frozen=True)
class _Variable:
    key: str  # as written, for reporting missing keys
    lower_key: str
    default: str | None


@dataclass(frozen=True)
class _Invalid:
    """``${...}`` that is not a variable: it never resolves, so its value never matches."""

    text: str


_Part = str | Segment | _Variable | _Invalid


@dataclass(frozen=True)
class Template:
    """A policy value split into wildcard text, literal text and variables."""

    parts: tuple[_Part, ...]
    #: The variables in order of appearance (what ``resolve_values`` returns values for).
    variables: tuple[_Variable, ...] = field(init=False, repr=False, compare=False)
    #: Whether the value holds a ``${...}`` that is not a variable (it never resolves).
    invalid: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        variables = tuple(part for part in self.parts if isinstance(part, _Variable))
        object.__setattr__(self, "variables", variables)
        object.__setattr__(self, "invalid", any(isinstance(p, _Invalid) for p in self.parts))

    @property
    def static(self) -> tuple[Segment, ...] | None:
        """The segments when the value has no variables (so needs no request), else ``None``."""
        segments: list[Segment] = []
        for part in self.parts:
            if isinstance(part, (_Variable, _Invalid)):
                return None
            segments.append(_segment(part))
        return tuple(segments)

    @property
    def shape(self) -> tuple[Segment | int, ...]:
        """The segments with each variable as its index in ``variables`` (for precompiling)."""
        shape: list[Segment | int] = []
        for part in self.parts:
            if isinstance(part, _Variable):
                shape.append(self.variables.index(part))
            elif not isinstance(part, _Invalid):
                shape.append(_segment(part))
        return tuple(shape)

    @property
    def keys(self) -> tuple[str, ...]:
        """The context keys the value's variables name, as written."""
        return tuple(variable.key for variable in self.variables)

    def resolve_values(self, lookup: Lookup) -> tuple[str, ...] | None:
        """The variables' values for one request, or ``None`` if one has no value and no default.

        A key resolves only when it has exactly one value: AWS does not substitute multivalued
        keys. Substitution is one pass: a substituted value is never itself expanded.
        """
        if self.invalid:
            return None
        values: list[str] = []
        for variable in self.variables:
            found = lookup(variable.lower_key)
            if found is not None and len(found) == 1:
                values.append(found[0])
            elif variable.default is not None:
                values.append(variable.default)
            else:
                return None
        return tuple(values)

    def resolve(self, lookup: Lookup) -> tuple[Segment, ...] | None:
        """The value for one request as segments (substituted values literal), or ``None``."""
        values = self.resolve_values(lookup)
        if values is None:
            return None
        return tuple((values[part], True) if isinstance(part, int) else part for part in self.shape)


def _segment(part: str | Segment) -> Segment:
    return (part, False) if isinstance(part, str) else part


def parse_template(text: str, substitute: bool) -> Template:
    """Split ``text`` into its parts; with ``substitute`` false (2008-10-17) all of it is text."""
    if not substitute or "${" not in text:
        return Template(parts=(text,))
    parts: list[_Part] = []
    position = 0
    while True:
        start = text.find("${", position)
        if start < 0:
            break
        end = _closing_brace(text, start + 2)
        if end < 0:
            break  # an unclosed "${" is ordinary text
        if start > position:
            parts.append(text[position:start])
        parts.append(_parse_variable(text[start + 2 : end], text[start : end + 1]))
        position = end + 1
    if position < len(text):
        parts.append(text[position:])
    return Template(parts=tuple(parts))


def _closing_brace(text: str, position: int) -> int:
    """The index of the ``}`` closing a variable, skipping a quoted default; -1 if none."""
    quoted = False
    while position < len(text):
        character = text[position]
        if quoted:
            if character == "'":
                if text.startswith("''", position):
                    position += 2
                    continue
                quoted = False
        elif character == "'":
            quoted = True
        elif character == "}":
            return position
        position += 1
    return -1


def _parse_variable(inner: str, whole: str) -> _Part:
    if inner in _ESCAPES:
        return (inner, True)
    match = _VARIABLE.fullmatch(inner)
    if match is None:
        return _Invalid(whole)
    key, default = match.group(1), match.group(2)
    return _Variable(
        key=key,
        lower_key=key.lower(),
        default=None if default is None else default.replace("''", "'"),
    )
