"""The metadata tree of one instance, as data: which paths exist and the exact bytes they hold.

An :class:`ImdsTree` is built from the instance's assignment (a
`common.nodemessages.InstanceAssignment`, checked when it arrived: its metadata and instance
profile) and its current credentials state, and answers :meth:`ImdsTree.lookup` with :class:`Found`,
:class:`Directory` or :data:`NOT_FOUND`. It knows nothing of HTTP methods, tokens or headers
(that is :mod:`agent.imds.rules`). Build a new tree when the assignment or the credentials change;
a tree never changes.

Choices (spec/imds.md lines 15-24):

- ``/`` lists the one supported version, ``latest`` (bare, as AWS lists versions); every other
  listing is sorted, one entry a line, LF-separated, no trailing newline, directories end in ``/``.
- ``/latest/`` lists ``dynamic/`` and ``meta-data/``; there is no ``user-data`` (cloud-init reads
  the 404 as "none").
- ``iam/`` exists only when the profile names a role. When the credentials are unavailable
  (never fetched, too close to expiry by the caller's decision, or expired by the clock) the
  credential paths, listings included, are 404 and ``iam/info`` says why in ``Code`` and
  ``Message``; ``iam/`` then lists ``info`` alone.
- ``iam/security-credentials-extended/`` and ``…/ROLE`` are served but not listed in ``iam/``
  (as AWS does): the same answers with ``AccountId`` added last; 404 if the account is unknown.
- JSON bodies are laid out as AWS lays them out: ``{``, then ``  "Key" : "value"`` lines joined by
  ``,`` LF, then ``}``, no trailing newline, every value a string. The identity document keeps
  that layout with its keys sorted, and leaves out AWS's ``null`` fields.
- A leaf also answers with one trailing slash (botocore asks for
  ``placement/availability-zone/``). Segments are percent-decoded; an empty segment (``//``),
  anything after a second trailing slash, ``.`` and ``..`` are simply not found: no
  normalisation, never a redirect.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final
from urllib.parse import unquote

from agent.imds.credentials import CredentialSet
from common.nodemessages import InstanceAssignment, InstanceMetadata, InstanceProfile
from common.timestamps import format_timestamp

TEXT_PLAIN: Final = "text/plain"

SUCCESS: Final = "Success"
NO_CREDENTIALS: Final = "NoCredentials"
CREDENTIALS_EXPIRING: Final = "CredentialsExpiring"
CREDENTIALS_EXPIRED: Final = "CredentialsExpired"
"""``Code`` values of ``iam/info``. The last three mean the credential paths answer 404."""

DEFAULT_MESSAGES: Final[Mapping[str, str]] = {
    NO_CREDENTIALS: "No credentials have been obtained for this instance yet.",
    CREDENTIALS_EXPIRING: "The credentials are about to expire and could not be renewed.",
    CREDENTIALS_EXPIRED: "The credentials have expired and could not be renewed.",
}

IDENTITY_DOCUMENT_VERSION: Final = "2017-09-30"
ARCHITECTURE: Final = "x86_64"
SERVICES_DOMAIN: Final = "amazonaws.com"
SERVICES_PARTITION: Final = "aws"

VERSIONS: Final = ("latest",)


# -- what a lookup answers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Found:
    """A leaf: its exact body."""

    body: bytes
    content_type: str = TEXT_PLAIN


@dataclass(frozen=True)
class Directory:
    """A listing: one entry a line, directories ending in ``/``."""

    entries: tuple[str, ...]
    content_type: str = TEXT_PLAIN

    @property
    def body(self) -> bytes:
        return "\n".join(self.entries).encode("utf-8")


@dataclass(frozen=True)
class NotFound:
    """No such path (or not now)."""


NOT_FOUND: Final = NotFound()

Lookup = Found | Directory | NotFound


# -- what a tree is built from -----------------------------------------------------------------


@dataclass(frozen=True)
class CredentialsUnavailable:
    """Why there are no credentials to serve; ``code`` and ``message`` go into ``iam/info``."""

    code: str = NO_CREDENTIALS
    message: str = ""
    last_updated: datetime | None = None

    @property
    def text(self) -> str:
        return self.message or DEFAULT_MESSAGES.get(self.code, "Credentials are unavailable.")


CredentialsState = CredentialSet | CredentialsUnavailable | None
"""What the caller knows: a set to serve, why there is none, or ``None`` (never fetched)."""


# -- the exact bytes ---------------------------------------------------------------------------


def aws_json(pairs: Iterable[tuple[str, str]]) -> bytes:
    """Pretty JSON laid out as IMDS does: 2-space indent, ``"Key" : "value"``, no final LF."""
    lines = [f"  {json.dumps(key)} : {json.dumps(value)}" for key, value in pairs]
    return ("{\n" + ",\n".join(lines) + "\n}").encode("ascii")


# -- the tree ----------------------------------------------------------------------------------

Path = tuple[str, ...]

_LATEST: Final = "latest"
_META: Final = (_LATEST, "meta-data")
_IAM: Final = (*_META, "iam")
_UNLISTED: Final = frozenset({(*_IAM, "security-credentials-extended")})
"""Directories served but left out of their parent's listing (AWS does not list these)."""


class ImdsTree:
    """Every path of one instance's metadata service, and what it answers."""

    def __init__(
        self,
        metadata: InstanceMetadata,
        profile: InstanceProfile | None,
        credentials: CredentialsState = None,
    ) -> None:
        self.metadata = metadata
        self.profile = profile
        self.credentials: CredentialSet | CredentialsUnavailable = (
            CredentialsUnavailable() if credentials is None else credentials
        )
        self._leaves: dict[Path, bytes] = dict(self._items())
        self._directories = _directories(self._leaves)
        self._expired: ImdsTree | None = None

    @classmethod
    def for_instance(
        cls, assignment: InstanceAssignment, credentials: CredentialsState = None
    ) -> ImdsTree:
        """The tree of an assigned instance. Its metadata without an ``account-id`` takes the
        assignment's ``account_id``."""
        metadata = assignment.metadata
        if metadata.account_id is None and assignment.account_id is not None:
            metadata = replace(metadata, account_id=assignment.account_id)
        return cls(metadata, assignment.instance_profile, credentials)

    @property
    def role_name(self) -> str | None:
        """The attached role's name, or ``None`` without one."""
        return self.profile.role_name if self.profile is not None else None

    def serving(self) -> CredentialSet | None:
        """The credential set this tree serves, if any."""
        return self.credentials if isinstance(self.credentials, CredentialSet) else None

    def as_of(self, now: float) -> ImdsTree:
        """This tree, or, once its credentials are expired at ``now``, one that hides them.

        The floor under the caller's own expiry decision: expired credentials are never served.
        """
        served = self.serving()
        if served is None or not served.expired_at(now):
            return self
        if self._expired is None:
            self._expired = ImdsTree(
                self.metadata,
                self.profile,
                CredentialsUnavailable(CREDENTIALS_EXPIRED, last_updated=served.last_updated),
            )
        return self._expired

    def lookup(self, path: str) -> Lookup:
        """What ``path`` (the URL path, no query string) answers."""
        segments = _segments(path)
        if segments is None:
            return NOT_FOUND
        leaf = self._leaves.get(segments)
        if leaf is not None:
            return Found(leaf)
        entries = self._directories.get(segments)
        if entries is not None:
            return Directory(entries)
        return NOT_FOUND

    def paths(self) -> list[str]:
        """Every leaf path, for tests and debugging."""
        return sorted("/" + "/".join(segments) for segments in self._leaves)

    # -- building

    def _items(self) -> Iterable[tuple[Path, bytes]]:
        metadata = self.metadata
        plain: dict[str, str | None] = {
            "ami-id": metadata.ami_id,
            "ami-launch-index": metadata.ami_launch_index,
            "hostname": metadata.hostname,
            "instance-id": metadata.instance_id,
            "instance-type": metadata.instance_type,
            "local-hostname": metadata.local_hostname,
            "local-ipv4": metadata.local_ipv4,
            "placement/availability-zone": metadata.availability_zone,
            "placement/region": metadata.region,
            "reservation-id": metadata.reservation_id,
            "services/domain": SERVICES_DOMAIN,
            "services/partition": SERVICES_PARTITION,
        }
        for name, value in plain.items():
            if value is not None:
                yield (*_META, *name.split("/")), value.encode("utf-8")
        yield (_LATEST, "dynamic", "instance-identity", "document"), self._identity_document()
        yield from self._iam_items()

    def _identity_document(self) -> bytes:
        metadata = self.metadata
        fields: dict[str, str | None] = {
            "accountId": metadata.account_id,
            "architecture": ARCHITECTURE,
            "availabilityZone": metadata.availability_zone,
            "imageId": metadata.ami_id,
            "instanceId": metadata.instance_id,
            "instanceType": metadata.instance_type,
            "pendingTime": (
                format_timestamp(metadata.launch_time) if metadata.launch_time else None
            ),
            "privateIp": metadata.local_ipv4,
            "region": metadata.region,
            "version": IDENTITY_DOCUMENT_VERSION,
        }
        return aws_json((key, value) for key, value in fields.items() if value is not None)

    def _iam_items(self) -> Iterable[tuple[Path, bytes]]:
        profile, role_name = self.profile, self.role_name
        if profile is None or role_name is None:
            return
        credentials = self.credentials
        if isinstance(credentials, CredentialsUnavailable):
            info = [("Code", credentials.code), ("Message", credentials.text)]
            if credentials.last_updated is not None:
                info.append(("LastUpdated", format_timestamp(credentials.last_updated)))
            info += [("InstanceProfileArn", profile.arn), ("InstanceProfileId", profile.id)]
            yield (*_IAM, "info"), aws_json(info)
            return
        last_updated = format_timestamp(credentials.last_updated)
        yield (
            (*_IAM, "info"),
            aws_json(
                [
                    ("Code", SUCCESS),
                    ("LastUpdated", last_updated),
                    ("InstanceProfileArn", profile.arn),
                    ("InstanceProfileId", profile.id),
                ]
            ),
        )
        body = [
            ("Code", SUCCESS),
            ("LastUpdated", last_updated),
            ("Type", "AWS-HMAC"),
            ("AccessKeyId", credentials.access_key_id),
            ("SecretAccessKey", credentials.secret_access_key),
            ("Token", credentials.token),
            ("Expiration", format_timestamp(credentials.expiration)),
        ]
        yield (*_IAM, "security-credentials", role_name), aws_json(body)
        account_id = credentials.account_id or self.metadata.account_id
        if account_id:
            extended = [*body, ("AccountId", account_id)]
            yield (*_IAM, "security-credentials-extended", role_name), aws_json(extended)


def _directories(leaves: Iterable[Path]) -> dict[Path, tuple[str, ...]]:
    """Every directory above the leaves, with its sorted listing."""
    children: dict[Path, dict[str, bool]] = {(): {}}
    for leaf in leaves:
        for depth in range(len(leaf)):
            is_directory = depth + 1 < len(leaf)
            kids = children.setdefault(leaf[:depth], {})
            if not (is_directory and leaf[: depth + 1] in _UNLISTED):
                kids[leaf[depth]] = is_directory
    listings = {
        path: tuple(
            name + "/" if is_directory else name for name, is_directory in sorted(kids.items())
        )
        for path, kids in children.items()
    }
    listings[()] = VERSIONS
    return listings


def _segments(path: str) -> Path | None:
    """``/a/b/`` → ``("a", "b")``; ``None`` for a path that cannot name anything."""
    if not path.startswith("/"):
        return None
    parts = path[1:].split("/")
    if parts[-1] == "":
        parts.pop()  # one trailing slash: a directory (or a leaf) answers the same
    segments = tuple(unquote(part) for part in parts)
    if any(segment in ("", ".", "..") for segment in segments):
        return None
    return segments
