"""A reference evaluator of identity-based IAM policies, for the property tests only.

Written from AWS's IAM User Guide ("Policy evaluation logic", "Determining whether a request is
allowed or denied within an account", "Permissions boundaries for IAM entities", "Session
policies", "IAM JSON policy elements: Condition operators"), not from ``controller.policy``:
deliberately plain (policy JSON as dicts, loops, no regexes, no caching) so that it can be read
and believed in one sitting. It knows a small part of the grammar on purpose, and says so
(``Unsupported``) rather than guess: Action/NotAction, Resource/NotResource, and the condition
operators StringEquals, StringNotEquals, StringLike, StringNotLike and Bool, each with or
without IfExists; one value per context key; no policy variables.

The rules, as the guide states them:

- A statement applies when the action matches (Action: any pattern; NotAction: none), the
  resource matches (Resource: any pattern; NotResource: none) and every condition holds
  (operators AND, keys within an operator AND, values for one key OR).
- Within one set of policies, an applicable Deny is an explicit deny; else an applicable Allow
  allows; else the request is implicitly denied.
- An explicit deny in any policy of any layer wins. Otherwise the identity-based policies must
  allow; with a permissions boundary, the boundary must allow too; with session policies, the
  session policies must allow too (an empty set of session policies allows nothing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: A policy document as its JSON decodes.
Document = Mapping[str, Any]

#: The order in which the layers are named when more than one does not allow.
LAYERS = ("identity", "boundary", "session")


class Unsupported(Exception):
    """The reference does not know this part of the grammar."""


@dataclass(frozen=True)
class Request:
    action: str
    resource: str
    #: Context keys (any case) to their one value; an absent key is not in the request.
    keys: Mapping[str, str] = field(default_factory=dict)

    def value(self, key: str) -> str | None:
        """Condition key names are not case-sensitive."""
        for name, value in self.keys.items():
            if name.lower() == key.lower():
                return value
        return None


@dataclass(frozen=True)
class Outcome:
    effect: str  # "Allow", "Deny" or "ImplicitDeny"
    #: The layer that denied (the first with an explicit deny, else the first not allowing).
    layer: str | None = None


def glob_matches(pattern: str, text: str, ignore_case: bool = False) -> bool:
    """``*`` is any run of characters (also none), ``?`` exactly one; the rest is literal.

    Dynamic programming over (pattern prefix, text prefix): ``matched[j]`` says whether the
    pattern read so far matches the first ``j`` characters of the text."""
    if ignore_case:
        pattern, text = pattern.lower(), text.lower()
    if "*" not in pattern and "?" not in pattern:
        return pattern == text
    matched = [True] + [False] * len(text)
    for symbol in pattern:
        following = [False] * (len(text) + 1)
        for j in range(len(text) + 1):
            if symbol == "*":
                following[j] = matched[j] or (j > 0 and following[j - 1])
            elif j > 0 and (symbol == "?" or symbol == text[j - 1]):
                following[j] = matched[j - 1]
        matched = following
    return matched[len(text)]


def action_matches(pattern: str, action: str) -> bool:
    """Action names are not case-sensitive."""
    return glob_matches(pattern, action, ignore_case=True)


def resource_matches(pattern: str, resource: str) -> bool:
    """``*`` names every resource. An ARN pattern is matched segment by segment: partition,
    service, region and account each on their own (a wildcard stays inside its segment), the
    resource part (everything after the fifth colon) as a whole. A pattern that stops early
    with a ``*`` (``arn:aws:ec2:*``) lets that ``*`` match all the rest, colons included."""
    if pattern == "*":
        return True
    pattern_parts = pattern.split(":", 5)
    resource_parts = resource.split(":", 5)
    if len(resource_parts) != 6:
        return False
    if len(pattern_parts) == 6:
        return all(
            glob_matches(wanted, have)
            for wanted, have in zip(pattern_parts, resource_parts, strict=True)
        )
    if not pattern_parts[-1].endswith("*"):
        return False
    last = len(pattern_parts) - 1
    for index in range(last):
        if not glob_matches(pattern_parts[index], resource_parts[index]):
            return False
    return glob_matches(pattern_parts[last], ":".join(resource_parts[last:]))


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _text(value: Any) -> str:
    if isinstance(value, bool):  # JSON true/false
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    raise Unsupported(f"condition value {value!r}")


def condition_holds(operator: str, key: str, values: Sequence[Any], request: Request) -> bool:
    """One operator on one key: true when the request's value matches any of ``values``.

    A key missing from the request: true with ...IfExists; else true only for the negated
    operators (StringNotEquals, StringNotLike), false for the others."""
    if_exists = operator.endswith("IfExists")
    name = operator.removesuffix("IfExists")
    wanted = [_text(value) for value in values]
    have = request.value(key)
    if have is None:
        return if_exists or name in ("StringNotEquals", "StringNotLike")
    if name == "StringEquals":
        return have in wanted
    if name == "StringNotEquals":
        return have not in wanted
    if name == "StringLike":
        return any(glob_matches(pattern, have) for pattern in wanted)
    if name == "StringNotLike":
        return not any(glob_matches(pattern, have) for pattern in wanted)
    if name == "Bool":
        return have.lower() in [value.lower() for value in wanted]
    raise Unsupported(f"condition operator {operator}")


def statement_applies(statement: Mapping[str, Any], request: Request) -> bool:
    if "Action" in statement:
        action_ok = any(action_matches(p, request.action) for p in as_list(statement["Action"]))
    else:
        patterns = as_list(statement["NotAction"])
        action_ok = not any(action_matches(p, request.action) for p in patterns)
    if "Resource" in statement:
        patterns = as_list(statement["Resource"])
        resource_ok = any(resource_matches(p, request.resource) for p in patterns)
    else:
        patterns = as_list(statement["NotResource"])
        resource_ok = not any(resource_matches(p, request.resource) for p in patterns)
    if not (action_ok and resource_ok):
        return False
    for operator, block in statement.get("Condition", {}).items():
        for key, values in block.items():
            if not condition_holds(operator, key, as_list(values), request):
                return False
    return True


def evaluate_set(documents: Sequence[Document], request: Request) -> str:
    """One set of policies: "Deny" if any applicable statement denies, else "Allow" if one
    allows, else "ImplicitDeny"."""
    allowed = False
    for document in documents:
        for statement in as_list(document["Statement"]):
            if statement_applies(statement, request):
                if statement["Effect"] == "Deny":
                    return "Deny"
                allowed = True
    return "Allow" if allowed else "ImplicitDeny"


def decide(
    identity: Sequence[Document],
    request: Request,
    boundary: Sequence[Document] | None = None,
    session: Sequence[Document] | None = None,
) -> Outcome:
    """The decision for a principal in its own account: identity-based policies, intersected
    with its permissions boundary (None: it has none) and its session policies (None: the
    session passed none)."""
    layers: list[tuple[str, Sequence[Document]]] = [("identity", identity)]
    if boundary is not None:
        layers.append(("boundary", boundary))
    if session is not None:
        layers.append(("session", session))
    results = [(name, evaluate_set(documents, request)) for name, documents in layers]
    for name, result in results:
        if result == "Deny":
            return Outcome("Deny", name)
    for name, result in results:
        if result != "Allow":
            return Outcome("ImplicitDeny", name)
    return Outcome("Allow")
