"""The XML of AWS Query answers as plain data: what a call returned, and what an error said.

IAM wraps its answer in ``<ActionResult>`` and lists in ``<member>``; EC2 puts camelCase elements
straight under ``<ActionResponse>`` and lists in ``<item>``. Both become nested dicts, lists and
strings, namespaces dropped. Pure functions: bytes in, data out.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from typing import Any

from controller.tools.errors import ToolError

#: The element each service wraps list members in.
LIST_MEMBER = {"iam": "member", "sts": "member", "ec2": "item"}


def parse_xml(body: bytes) -> ElementTree.Element | None:
    """The document's root with namespaces stripped from every tag, or None if it is not XML."""
    # The body comes from the endpoint the user named. Python's expat fetches no external
    # entities and (expat >= 2.4.1) stops entity-expansion bombs, so plain ElementTree is safe.
    try:
        root = ElementTree.fromstring(body)  # noqa: S314
    except ElementTree.ParseError:
        return None
    for element in root.iter():
        element.tag = local_name(element.tag)
    return root


def local_name(tag: str) -> str:
    """``{namespace}Name`` without the namespace."""
    return tag.rpartition("}")[2]


def to_data(element: ElementTree.Element, list_member: str) -> Any:
    """An element as data: text for a leaf, a list when every child is a list member, otherwise
    a dict by child name. An empty element is ``""``: read lists with :func:`members`."""
    children = list(element)
    if not children:
        return element.text or ""
    if all(child.tag == list_member for child in children):
        return [to_data(child, list_member) for child in children]
    return {child.tag: to_data(child, list_member) for child in children}


def members(value: Any) -> list[Any]:
    """A list read from :func:`to_data`: an absent or empty list comes back as ``[]``."""
    return value if isinstance(value, list) else []


def result_data(root: ElementTree.Element, service: str) -> dict[str, Any]:
    """What a successful call returned: the ``<…Result>`` of IAM and STS, the members of an EC2
    response (``requestId`` aside). An action that returns nothing gives ``{}``."""
    list_member = LIST_MEMBER[service]
    if service == "ec2":
        data = to_data(root, list_member)
        if not isinstance(data, dict):
            return {}
        data.pop("requestId", None)
        return data
    for child in root:
        if child.tag.endswith("Result"):
            data = to_data(child, list_member)
            return data if isinstance(data, dict) else {}
    return {}


def parse_error(body: bytes) -> tuple[str, str] | None:
    """``(code, message)`` from an IAM/STS ``<ErrorResponse>`` or an EC2 ``<Response><Errors>``,
    or None if the body is neither."""
    root = parse_xml(body)
    if root is None:
        return None
    for error in root.iter("Error"):
        code = (error.findtext("Code") or "").strip()
        if code:
            return code, (error.findtext("Message") or "").strip()
    return None


def section(data: Any, key: str, action: str) -> dict[str, Any]:
    """The structure ``key`` of an answer to ``action``; a ToolError if the answer has none."""
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, dict):
        raise ToolError(f"the answer to {action} has no {key}")
    return value
