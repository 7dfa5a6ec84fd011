"""What the IAM tools share: their common flags and reading every page of an IAM list."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from typing import Any

from controller.tools.client import Client
from controller.tools.command import read_document
from controller.tools.errors import ToolError
from controller.tools.policies import effect_name
from controller.tools.xmldata import members


def list_all(
    client: Client, action: str, params: Iterable[tuple[str, str]], key: str
) -> Iterator[Any]:
    """Every member of the list ``key`` of an IAM list action, following ``Marker`` while the
    answer ``IsTruncated``."""
    for page in list_pages(client, action, params):
        yield from members(page.get(key))


def list_pages(
    client: Client, action: str, params: Iterable[tuple[str, str]]
) -> Iterator[dict[str, Any]]:
    """Every page of an IAM list action (for answers with more than one list), following
    ``Marker`` while the answer ``IsTruncated``."""
    fixed = list(params)
    marker: str | None = None
    while True:
        page = client.call(action, [*fixed, *([("Marker", marker)] if marker else [])])
        yield page
        if page.get("IsTruncated", "false").strip().lower() != "true":
            return
        marker = page.get("Marker") or None
        if marker is None:
            raise ToolError(f"{action} said more results follow but gave no Marker")


def add_role(parser: argparse.ArgumentParser, help_text: str = "name of the role") -> None:
    parser.add_argument(
        "-r", "--role-name", dest="role", metavar="ROLE", required=True, help=help_text
    )


def add_profile(
    parser: argparse.ArgumentParser, help_text: str = "name of the instance profile"
) -> None:
    parser.add_argument(
        "-s",
        "--instance-profile-name",
        dest="profile_name",
        metavar="PROFILE",
        required=True,
        help=help_text,
    )


def add_path_prefix(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-p",
        "--path-prefix",
        metavar="PATH",
        help="only those whose path starts with PATH, e.g. /app/ (default: all)",
    )


def path_prefix_params(args: argparse.Namespace) -> list[tuple[str, str]]:
    return [("PathPrefix", args.path_prefix)] if args.path_prefix else []


def add_document_source(parser: argparse.ArgumentParser, what: str = "the policy") -> None:
    """Where a policy document comes from, exactly one of: ``-f FILE``, ``-o JSON`` (Euca2ools'
    ``--policy-content``), or ``--policy-document``, a FILE as in Euca2ools or JSON text as
    RoleCall's tools first took it (a document is a JSON object, so text starting with ``{`` is
    never taken for a file name). Read it with :func:`document_source`."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-f", "--policy-file", metavar="FILE", help=f"file holding {what}")
    source.add_argument(
        "-o", "--policy-content", metavar="JSON", help=f"{what} itself, as JSON text"
    )
    source.add_argument(
        "--policy-document",
        metavar="FILE|JSON",
        help="a file, as in Euca2ools, or JSON text when it starts with {",
    )


def document_source(args: argparse.Namespace) -> str:
    """The policy document the flags of :func:`add_document_source` give."""
    if args.policy_content is not None:
        return str(args.policy_content)
    if args.policy_file is not None:
        return read_document(args.policy_file, "-f/--policy-file")
    text = str(args.policy_document)
    if text.lstrip().startswith("{"):
        return text
    return read_document(text, "--policy-document")


def add_policy_name(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``-p/--policy-name POLICY``: an inline policy's name (``args.policy``)."""
    parser.add_argument(
        "-p", "--policy-name", metavar="POLICY", required=True, dest="policy", help=help_text
    )


def _effect(text: str) -> str:
    try:
        return effect_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_statement_arguments(parser: argparse.ArgumentParser, resource_flag: str) -> None:
    """The flags that build a one-statement policy (``iam-roleaddpolicy``,
    ``iam-groupaddpolicy``): ``-e`` Allow|Deny, ``-a ACTION`` and ``RESOURCE_FLAG ARN``
    (repeatable: ``args.actions``, ``args.resources``), and ``-o`` to print the policy. Euca2ools
    spells the resource ``-c`` for roles and ``-r`` for groups (where ``-r`` is not the role)."""
    parser.add_argument(
        "-e", "--effect", metavar="EFFECT", type=_effect, required=True, help="Allow or Deny"
    )
    parser.add_argument(
        "-a",
        "--action",
        metavar="ACTION",
        action="append",
        required=True,
        dest="actions",
        help="an action such as s3:GetObject or s3:*; repeat for more",
    )
    parser.add_argument(
        resource_flag,
        "--resource",
        metavar="ARN",
        action="append",
        required=True,
        dest="resources",
        help="a resource ARN such as arn:aws:s3:::bucket/* or *; repeat for more",
    )
    parser.add_argument("-o", "--output", action="store_true", help="print the policy")
