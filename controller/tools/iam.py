"""What the IAM tools share: their common flags and reading every page of an IAM list."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator
from typing import Any

from controller.tools.client import Client
from controller.tools.errors import ToolError
from controller.tools.xmldata import members


def list_all(
    client: Client, action: str, params: Iterable[tuple[str, str]], key: str
) -> Iterator[Any]:
    """Every member of the list ``key`` of an IAM list action, following ``Marker`` while the
    answer ``IsTruncated``."""
    fixed = list(params)
    marker: str | None = None
    while True:
        page = client.call(action, [*fixed, *([("Marker", marker)] if marker else [])])
        yield from members(page.get(key))
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
