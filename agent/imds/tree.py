"""The metadata tree of one instance, as data: which paths exist and the exact bytes they hold.

An :class:`ImdsTree` is built from the instance's assignment (a
`common.nodemessages.InstanceAssignment`, checked when it arrived: its metadata and instance
profile) and its current credentials state, and answers :meth:`ImdsTree.lookup` with :class:`Found`,
:class:`Directory` or :data:`NOT_FOUND`. It knows nothing of HTTP methods, tokens or headers
(that is :mod:`agent.imds.rules`). Build a new tree when the assignment or the credentials change;
a tree never changes.

Choices (spec/imds.md lines 15-24, issue 12):

- ``/`` lists the dated versions AWS lists and ``latest`` (bare, as AWS lists versions); every
  dated version serves the same tree as ``latest``. Every other listing is sorted, one entry a
  line, LF-separated, no trailing newline, directories end in ``/``.
- ``/latest/`` lists ``dynamic/``, ``meta-data/`` and, when the instance has user data,
  ``user-data`` (its exact bytes, ``application/octet-stream``; a 404 without, which cloud-init
  reads as "none").
- ``iam/`` exists only when the profile names a role. When the credentials are unavailable
  (never fetched, too close to expiry by the caller's decision, or expired by the clock) the
  credential paths, listings included, are 404 and ``iam/info`` says why in ``Code`` and
  ``Message``; ``iam/`` then lists ``info`` alone.
- ``iam/security-credentials-extended/`` and ``…/ROLE`` are served but not listed in ``iam/``
  (as AWS does): the same answers with ``AccountId`` added last; 404 if the account is unknown.
- ``public-keys/`` lists ``0=NAME`` (as AWS, and as cloud-init parses it); ``public-keys/0/``
  lists ``openssh-key``, the key line with the key pair's name as its comment and a final LF.
- ``mac``, ``network/interfaces/macs/MAC/…`` and ``security-groups`` come from the instance's
  interface; there is no ``vpc-id`` or ``subnet-id`` (RoleCall has no VPC objects), no
  ``security-group-ids`` (groups are names only) and no ``public-*`` item (no public addresses).
- ``tags/instance/`` exists only when the instance's tags are in its metadata, empty without
  tags.
- ``dynamic/instance-identity/document`` is the controller's signed text when there is one
  (with ``signature``, ``pkcs7`` and ``rsa2048``), else the agent renders the document itself
  (`common.identitydoc`), unsigned.
- JSON bodies are laid out as AWS lays them out (`common.identitydoc.aws_json`).
- A leaf also answers with one trailing slash (botocore asks for
  ``placement/availability-zone/``). Consecutive slashes count as one (``ec2-metadata`` asks for
  ``/latest//meta-data/``). Segments are percent-decoded; ``.`` and ``..`` are simply not
  found: no normalisation, never a redirect.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final
from urllib.parse import unquote

from agent.imds.credentials import CredentialSet
from common.identitydoc import aws_json, identity_document
from common.nodemessages import (
    InstanceAssignment,
    InstanceIdentity,
    InstanceMetadata,
    InstanceProfile,
    NetworkInterface,
    PublicKey,
)
from common.timestamps import format_timestamp

TEXT_PLAIN: Final = "text/plain"
OCTET_STREAM: Final = "application/octet-stream"

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

SERVICES_DOMAIN: Final = "amazonaws.com"
SERVICES_PARTITION: Final = "aws"
#: What ``block-device-mapping/ami`` and ``root`` name: a KVM guest's first virtio disk.
ROOT_DEVICE: Final = "/dev/vda"

#: The versions ``/`` lists, oldest first, as AWS lists them; each serves ``latest``'s tree.
DATED_VERSIONS: Final = (
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "2011-01-01",
    "2011-05-01",
    "2012-01-12",
    "2014-02-25",
    "2014-11-05",
    "2015-10-20",
    "2016-04-19",
    "2016-06-30",
    "2016-09-02",
    "2018-03-28",
    "2018-08-17",
    "2018-09-24",
    "2019-10-01",
    "2020-10-27",
    "2021-01-03",
    "2021-03-23",
    "2021-07-15",
    "2022-09-24",
)
VERSIONS: Final = (*DATED_VERSIONS, "latest")
_DATED: Final = frozenset(DATED_VERSIONS)


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


# -- the tree ----------------------------------------------------------------------------------

Path = tuple[str, ...]

_LATEST: Final = "latest"
_META: Final = (_LATEST, "meta-data")
_IAM: Final = (*_META, "iam")
_UNLISTED: Final = frozenset({(*_IAM, "security-credentials-extended")})
"""Directories served but left out of their parent's listing (AWS does not list these)."""
_USER_DATA: Final = (_LATEST, "user-data")
_IDENTITY: Final = (_LATEST, "dynamic", "instance-identity")


@dataclass(frozen=True)
class GuestData:
    """What the instance boots from besides its metadata items (its assignment's)."""

    user_data: bytes | None = None
    public_keys: tuple[PublicKey, ...] = ()
    network: NetworkInterface | None = None
    #: None: the instance's tags are not in its metadata.
    tags: tuple[tuple[str, str], ...] | None = None
    identity: InstanceIdentity | None = None


NO_GUEST_DATA: Final = GuestData()


class ImdsTree:
    """Every path of one instance's metadata service, and what it answers."""

    def __init__(
        self,
        metadata: InstanceMetadata,
        profile: InstanceProfile | None,
        credentials: CredentialsState = None,
        *,
        guest: GuestData = NO_GUEST_DATA,
    ) -> None:
        self.metadata = metadata
        self.profile = profile
        self.guest = guest
        self.credentials: CredentialSet | CredentialsUnavailable = (
            CredentialsUnavailable() if credentials is None else credentials
        )
        self._leaves: dict[Path, bytes] = dict(self._items())
        self._directories = _directories(self._leaves)
        if guest.public_keys:
            self._directories[(*_META, "public-keys")] = tuple(
                f"{index}={key.name}" for index, key in enumerate(guest.public_keys)
            )
        if guest.tags is not None:
            self._directories.setdefault((*_META, "tags", "instance"), ())
            self._directories.setdefault((*_META, "tags"), ("instance/",))
            meta = self._directories[_META]
            if "tags/" not in meta:
                self._directories[_META] = tuple(sorted((*meta, "tags/")))
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
        guest = GuestData(
            user_data=assignment.user_data,
            public_keys=assignment.public_keys,
            network=assignment.network,
            tags=assignment.tags,
            identity=assignment.identity,
        )
        if guest == NO_GUEST_DATA:
            guest = NO_GUEST_DATA
        return cls(metadata, assignment.instance_profile, credentials, guest=guest)

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
                guest=self.guest,
            )
        return self._expired

    def lookup(self, path: str) -> Lookup:
        """What ``path`` (the URL path, no query string) answers."""
        segments = _segments(path)
        if segments is None:
            return NOT_FOUND
        if segments and segments[0] in _DATED:
            segments = (_LATEST, *segments[1:])
        leaf = self._leaves.get(segments)
        if leaf is not None:
            return Found(leaf, OCTET_STREAM if segments == _USER_DATA else TEXT_PLAIN)
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
        yield from self._guest_items()
        yield from self._iam_items()

    def _guest_items(self) -> Iterable[tuple[Path, bytes]]:
        guest, metadata = self.guest, self.metadata
        zone_id = metadata.availability_zone_id
        if zone_id is not None:
            yield (*_META, "placement", "availability-zone-id"), zone_id.encode()
        yield (*_META, "block-device-mapping", "ami"), ROOT_DEVICE.encode()
        yield (*_META, "block-device-mapping", "root"), ROOT_DEVICE.encode()
        if guest.user_data is not None:
            yield _USER_DATA, guest.user_data
        for index, public_key in enumerate(guest.public_keys):
            line = " ".join([*public_key.openssh_key.split()[:2], public_key.name])
            yield (*_META, "public-keys", str(index), "openssh-key"), (line + "\n").encode()
        network = guest.network
        if network is not None:
            yield (*_META, "mac"), network.mac.encode()
            groups = "\n".join(network.security_groups).encode()
            if network.security_groups:
                yield (*_META, "security-groups"), groups
            interface = (*_META, "network", "interfaces", "macs", network.mac)
            items = {
                "device-number": "0",
                "interface-id": network.interface_id,
                "local-hostname": metadata.local_hostname,
                "local-ipv4s": metadata.local_ipv4,
                "mac": network.mac,
                "owner-id": metadata.account_id,
                "subnet-ipv4-cidr-block": network.subnet_cidr,
            }
            for name, value in items.items():
                if value is not None:
                    yield (*interface, name), value.encode()
            if network.security_groups:
                yield (*interface, "security-groups"), groups
        for tag_key, tag_value in guest.tags or ():
            if "/" not in tag_key and tag_key not in (".", ".."):
                yield (*_META, "tags", "instance", tag_key), tag_value.encode()
        identity = guest.identity
        if identity is None:
            yield (*_IDENTITY, "document"), identity_document(metadata)
            return
        yield (*_IDENTITY, "document"), identity.document.encode()
        encoded: dict[str, bytes] = {}  # pkcs7 and rsa2048 are often one text: one copy
        for name in ("signature", "pkcs7", "rsa2048"):
            signed: str | None = getattr(identity, name)
            if signed is not None:
                body = encoded.setdefault(signed, signed.encode())
                yield (*_IDENTITY, name), body

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
    """``/a//b/`` → ``("a", "b")``; ``None`` for a path that cannot name anything."""
    if not path.startswith("/"):
        return None
    # Consecutive slashes are one; a trailing one: a directory (or a leaf) answers the same.
    segments = tuple(unquote(part) for part in path.split("/") if part)
    if any(segment in ("", ".", "..") for segment in segments):
        return None
    return segments
