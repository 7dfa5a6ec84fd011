"""Wildcard matching of actions, resources and ARNs, and matching a caller against a Principal.

Patterns become regular expressions once (cached by text), built so that no policy can make
matching backtrack without bound: the text between two ``*`` is found leftmost inside an atomic
group, the way CPython's ``fnmatch`` does it, which is exact for ``*``/``?`` globs.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from controller.policy.variables import Segment

if TYPE_CHECKING:  # document.py matches trust actions with this module's globs
    from controller.policy.document import Principal

__all__ = [
    "GlobMode",
    "TemplateMatcher",
    "compile_globs",
    "compile_template",
    "principal_matches",
]


class GlobMode(enum.Enum):
    """How ``*`` and ``?`` treat the colons of an ARN."""

    #: Actions and StringLike: wildcards match any characters.
    PLAIN = "plain"
    #: Resource/NotResource: wildcards stay inside each of the first five colon-separated segments
    #: (partition, service, region, account) and roam freely in the resource part. A pattern cut
    #: short by a final ``*`` (``arn:aws:ec2:*``) lets that ``*`` run across the rest, as AWS
    #: documents for a ``*`` ending a segment.
    RESOURCE = "resource"
    #: ArnLike/ArnEquals conditions: each of the six segments is matched on its own.
    ARN = "arn"


_STAR = object()
_ONE = object()
_ARN_SEGMENTS = 6
_COLON = ":"


@functools.lru_cache(maxsize=8192)
def compile_globs(
    patterns: tuple[tuple[Segment, ...], ...], mode: GlobMode, ignore_case: bool = False
) -> re.Pattern[str]:
    """One regex matching (with ``fullmatch``) any of ``patterns``; literal segments are exact."""
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    if not patterns:
        return re.compile(r"(?!)", flags)  # matches nothing
    source = "|".join(f"(?:{_pattern_regex(pattern, mode)})" for pattern in patterns)
    return re.compile(source, flags)


@dataclass(frozen=True)
class _Hole:
    """Where a policy variable's value goes: matched by a backreference to its group."""

    index: int


# Substituted values are put before the text, each ended by this character, so one precompiled
# regex can require them (by backreference) wherever the policy placed their variables.
_VALUE_END = "\x00"


@dataclass(frozen=True)
class TemplateMatcher:
    """A pattern with variables, compiled once; ``match`` takes the values of one request."""

    regex: re.Pattern[str]
    shape: tuple[Segment | int, ...]
    mode: GlobMode

    def match(self, values: tuple[str, ...], text: str) -> bool:
        """Whether ``text`` matches the pattern with ``values`` substituted as literal text."""
        prefix = "".join(values)
        if _VALUE_END in prefix or (
            self.mode is not GlobMode.PLAIN and (":" in prefix or "" in values)
        ):
            # A value holding the separator cannot take the backreference route; nor can one that
            # changes which ARN segment the pattern's later wildcards are in (a colon), or an
            # empty one after a final ``*`` of a short resource pattern: matched as substituted.
            segments = tuple(
                (values[part], True) if isinstance(part, int) else part for part in self.shape
            )
            return compile_globs((segments,), self.mode).fullmatch(text) is not None
        prefix = _VALUE_END.join(values) + _VALUE_END if values else ""
        return self.regex.fullmatch(prefix + text) is not None


def compile_template(
    shape: tuple[Segment | int, ...], variable_count: int, mode: GlobMode
) -> TemplateMatcher:
    """Precompile a pattern whose ``int`` parts are the indexes of variables' values."""
    captures = "".join(
        f"(?P<v{index}>[^{_VALUE_END}]*){_VALUE_END}" for index in range(variable_count)
    )
    regex = re.compile(captures + _pattern_regex(shape, mode), re.DOTALL)
    return TemplateMatcher(regex=regex, shape=shape, mode=mode)


def _tokens(pattern: Sequence[Segment | int]) -> list[object]:
    tokens: list[object] = []
    for part in pattern:
        if isinstance(part, int):
            tokens.append(_Hole(part))
            continue
        text, literal = part
        for character in text:
            if not literal and character == "*":
                if not tokens or tokens[-1] is not _STAR:  # "**" is "*"
                    tokens.append(_STAR)
            elif not literal and character == "?":
                tokens.append(_ONE)
            else:
                tokens.append(character)
    return tokens


def _pattern_regex(pattern: Sequence[Segment | int], mode: GlobMode) -> str:
    tokens = _tokens(pattern)
    if mode is GlobMode.PLAIN:
        return _segment_regex(tokens, ".", expand_final=False)
    # Split on the first five colons: those segments' wildcards may not cross a colon.
    segments: list[list[object]] = [[]]
    for token in tokens:
        if token == _COLON and len(segments) < _ARN_SEGMENTS:
            segments.append([])
        else:
            segments[-1].append(token)
    parts = []
    for index, segment in enumerate(segments):
        in_resource_part = index == _ARN_SEGMENTS - 1
        is_last = index == len(segments) - 1
        parts.append(
            _segment_regex(
                segment,
                "." if in_resource_part else "[^:]",
                expand_final=mode is GlobMode.RESOURCE and is_last and not in_resource_part,
            )
        )
    return ":".join(parts)


def _segment_regex(tokens: Sequence[object], any_character: str, expand_final: bool) -> str:
    """A glob over one segment: ``any_character`` is what ``?`` and ``*`` may consume.

    With ``expand_final`` a trailing ``*`` consumes everything left, colons included.
    """
    chunks: list[list[object]] = [[]]
    for token in tokens:
        if token is _STAR:
            chunks.append([])
        else:
            chunks[-1].append(token)
    head = _chunk_regex(chunks[0], any_character)
    if len(chunks) == 1:
        return head
    # Middle chunks: leftmost occurrence, atomically; the last star is greedy and the last chunk
    # anchored by what follows, so matching is linear in practice and never exponential.
    middle = "".join(
        f"(?>{any_character}*?{_chunk_regex(chunk, any_character)})" for chunk in chunks[1:-1]
    )
    last = chunks[-1]
    final_star = ".*" if expand_final and not last else f"{any_character}*"
    return head + middle + final_star + _chunk_regex(last, any_character)


def _chunk_regex(chunk: Sequence[object], any_character: str) -> str:
    return "".join(_token_regex(token, any_character) for token in chunk)


def _token_regex(token: object, any_character: str) -> str:
    if token is _ONE:
        return any_character
    if isinstance(token, _Hole):
        return f"(?P=v{token.index})"
    return re.escape(str(token))


# -- principals --------------------------------------------------------------------------------

_ASSUMED_ROLE = re.compile(r"arn:([^:]+):sts::([0-9]{12}):assumed-role/([^/]+)/[^/]+")
_ROLE = re.compile(r"arn:([^:]+):iam::([0-9]{12}):role/(?:[^:]*/)?([^/]+)")
_ROOT = re.compile(r"arn:[^:]+:iam::([0-9]{12}):root")
_ACCOUNT = re.compile(r"[0-9]{12}")


def principal_matches(
    principal: Principal,
    *,
    principal_arn: str | None,
    account_id: str | None,
    service: str | None = None,
    federated: str | None = None,
) -> bool:
    """Whether a caller is one of the principals named by a Principal (or NotPrincipal) element.

    The caller is an AWS principal (``principal_arn`` and ``account_id``), a service
    (``service``, e.g. ``ec2.amazonaws.com``) or a federated identity provider (``federated``).
    ``"*"`` matches every caller; ``{"AWS": "*"}`` every AWS principal; an account id or its
    ``:root`` ARN every principal of that account; a role ARN that role's sessions too (AWS
    matches an assumed-role session against its role, whatever the role's path). Principal ARNs
    take no wildcards, as in AWS. RoleCall has no canonical users, so CanonicalUser never matches.
    """
    if principal.everyone:
        return True
    for principal_type, values in principal.entries:
        if principal_type == "AWS":
            if any(_aws_matches(value, principal_arn, account_id) for value in values):
                return True
        elif principal_type == "Service":
            if service is not None and service.lower() in (value.lower() for value in values):
                return True
        elif principal_type == "Federated":
            if federated is not None and federated in values:
                return True
    return False


def _aws_matches(value: str, principal_arn: str | None, account_id: str | None) -> bool:
    if principal_arn is None and account_id is None:
        return False
    if value == "*":
        return True
    if _ACCOUNT.fullmatch(value):
        return account_id == value
    root = _ROOT.fullmatch(value)
    if root is not None:
        return account_id == root.group(1)
    if principal_arn is None:
        return False
    if value == principal_arn:
        return True
    session = _ASSUMED_ROLE.fullmatch(principal_arn)
    role = _ROLE.fullmatch(value)
    return session is not None and role is not None and session.groups() == role.groups()
