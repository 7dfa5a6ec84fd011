"""AWS-managed policies (``arn:aws:iam::aws:policy/…``), as the operator provides them.

AWS publishes about a thousand of these and changes them often; RoleCall ships none of them.
An operator who wants some puts their documents in a directory (``[iam]
aws_managed_policies``): the file ``<directory>/<path>/<Name>.json`` is the policy
``arn:aws:iam::aws:policy/<path>/<Name>``, its text the default version's document. An ARN
with no file is unknown: it cannot be attached or used as a boundary (NoSuchEntity), never
silently accepted. The catalog is read once, when the controller starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from controller.errors import MalformedPolicyDocument
from controller.policy.document import PolicyKind, parse_policy
from controller.xmlout import format_time

ARN_PREFIX = "arn:aws:iam::aws:policy"
#: A path segment or a policy name as IAM allows them (no "/", no "..").
_SEGMENT = re.compile(r"[\w+=,.@-]{1,128}")


class CatalogError(Exception):
    """A file in the directory is not a policy RoleCall can serve (names the file)."""


@dataclass(frozen=True)
class AwsManagedPolicy:
    name: str
    path: str  # "/" or "/service-role/"
    document: str
    created: str  # the file's modification time, ISO 8601 UTC

    @property
    def arn(self) -> str:
        return f"{ARN_PREFIX}{self.path}{self.name}"


class AwsManagedCatalog:
    """The AWS-managed policies an operator has provided, by ARN."""

    def __init__(self, policies: dict[str, AwsManagedPolicy] | None = None) -> None:
        self._policies = dict(policies or {})

    def __len__(self) -> int:
        return len(self._policies)

    def get(self, arn: str) -> AwsManagedPolicy | None:
        return self._policies.get(arn)

    def all(self) -> list[AwsManagedPolicy]:
        """Every policy, by name as ListPolicies pages them."""
        return sorted(self._policies.values(), key=lambda policy: policy.name.lower())


def load_catalog(directory: Path) -> AwsManagedCatalog:
    """Read every ``*.json`` below ``directory``; a file that is not a valid identity policy or
    whose name IAM would refuse stops the load with a message naming it."""
    policies: dict[str, AwsManagedPolicy] = {}
    if not directory.is_dir():
        raise CatalogError(f"{directory} is not a directory")
    for file in sorted(directory.rglob("*.json")):
        relative = file.relative_to(directory)
        segments = [*relative.parent.parts, relative.stem]
        if not all(_SEGMENT.fullmatch(segment) for segment in segments):
            raise CatalogError(f"{file}: not a policy path and name IAM allows")
        try:
            text = file.read_text(encoding="utf-8")
            parse_policy(text, PolicyKind.IDENTITY)
        except (OSError, UnicodeError) as error:
            raise CatalogError(f"{file}: cannot be read: {error}") from error
        except MalformedPolicyDocument as error:
            raise CatalogError(f"{file}: not a valid identity policy: {error}") from error
        path = "/" + "".join(f"{segment}/" for segment in segments[:-1])
        modified = datetime.fromtimestamp(file.stat().st_mtime, UTC)
        policy = AwsManagedPolicy(segments[-1], path, text, format_time(modified))
        policies[policy.arn] = policy
    return AwsManagedCatalog(policies)


#: The controller's catalog; `controller.compose` replaces it with the configured directory's.
catalog = AwsManagedCatalog()
