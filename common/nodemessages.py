"""The node API's messages (DESIGN.md, "Contracts"), as frozen dataclasses: what the controller
writes and the agent reads.

- ``GET /v1/assignments`` answers an :class:`AssignmentsAnswer`: a revision and an
  :class:`InstanceAssignment` per instance (its id, account, namespace, :class:`InstanceProfile`,
  :class:`MetadataOptions`, :class:`InstanceMetadata`, and its user data, public keys
  (:class:`PublicKey`), :class:`NetworkInterface`, tags and :class:`InstanceIdentity`).
- ``POST /v1/instances/{id}/credentials`` answers a :class:`CredentialsAnswer`.
- Any other status answers an :class:`ErrorAnswer`.

Each message has one parser (``parse_…``), which the receiving side calls once, on arrival: it
validates the whole message and returns the typed value, or raises :class:`MessageError`, whose
text starts with the path of the field at fault (``instances[3].metadata_options.http_tokens:
must be "optional" or "required" (got 7)``). Each has one serializer, ``to_wire()``, which the
controller calls: a dict for ``json.dumps``, the same JSON, key for key and in the same order, as
the node API sent before these types existed. ``parse(x.to_wire()) == x`` for every message.

Evolution (docs/decisions.md, "Typed node-API messages"):

- **The reader ignores what it does not know**: unknown fields at any level, and unknown metadata
  items, are skipped. So a newer controller may add fields, and an older agent keeps working.
- **A missing optional field takes its default; a missing required field is an error**, naming
  it. Required: ``revision``, ``instances``, an instance's ``instance_id`` and ``metadata``
  with its ``instance-id``, an instance profile's ``arn`` and ``id``, and every field of the
  credentials answer. Optional: an instance's ``account_id``, ``netns``, ``instance_profile``
  (absent or ``null``: none), ``metadata_options`` (and each of its fields: IMDSv2 only, hop
  limit 1, enabled), the other metadata items, a profile's ``role_name``, and what the guest
  boots from (issue 12): ``user_data`` (base64), ``public_keys``, ``network`` (its ``mac``
  required), ``tags`` (``null``: not in metadata) and ``identity`` (its ``document``
  required). An agent older than these fields ignores them and serves none of those items.
- **A field of the wrong type, or an enumeration value the reader does not know, is an error**,
  never a guess: an unknown ``http_tokens`` taken as ``optional`` would open IMDSv1 to a guest.
  In an assignments answer such an error refuses that one instance (`RefusedInstance`), not
  the answer.
- **The writer always writes every field** it knows, optional ones included (``null`` for none),
  except metadata items without a value (left out: an item not sent is not served).
- So a controller may add a field or a metadata item, or stop sending an optional field (agents
  take its default), at any time. Removing or renaming a required field, changing a field's type
  or meaning, or a new enumeration value is incompatible: it needs agents that read it deployed
  first, or a new path.
- The other direction carries no body: the agent sends only ``since`` and ``wait``, which the
  controller checks (a 400 naming the argument).
- **No version field.** The path carries the version (``/v1/``): the additive changes above
  need none, and an incompatible one is a ``/v2/`` that the controller serves beside ``/v1/``
  while agents are upgraded. A version inside the body would reach the agent only in a message
  it may already be unable to read.

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Final, TypeVar

from common.timestamps import format_timestamp, parse_exact_timestamp, parse_timestamp

#: Revisions are SQL BIGINTs.
MAX_REVISION: Final = 2**63 - 1
MIN_HOP_LIMIT: Final = 1
MAX_HOP_LIMIT: Final = 64
#: A role's ARN, with or without a path; ``name`` is the role's name.
ROLE_ARN: Final = re.compile(r"arn:[^:]+:iam::[^:]*:role/(?:[^:]*/)?(?P<name>[^/:]+)")

_T = TypeVar("_T")


class MessageError(ValueError):
    """A message that is not the node API's shape. The text is ``FIELD: PROBLEM``, ``FIELD``
    the path from the message's top (``instances[3].metadata.launch-time``); it shows a refused
    value (cut short), never a secret's."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem

    def within(self, outer: str) -> MessageError:
        """The same error, seen from the object that holds the field at `outer`."""
        if not self.field:
            return MessageError(outer, self.problem)
        joiner = "" if self.field.startswith("[") else "."
        return MessageError(f"{outer}{joiner}{self.field}", self.problem)


# -- reading fields ------------------------------------------------------------------------------


def _shown(value: object) -> str:
    """A refused value for a message: its repr, cut short (it is untrusted, maybe large)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _object(value: object, what: str = "") -> Mapping[str, object]:
    if type(value) is dict:  # what json.loads makes: no abstract-class check
        return value
    if not isinstance(value, Mapping):
        if what:
            problem = f"{what} must be a JSON object (got {type(value).__name__})"
        else:
            problem = f"must be an object (got {_shown(value)})"
        raise MessageError("", problem)
    return value


def _required(body: Mapping[str, object], key: str) -> object:
    if key not in body:
        raise MessageError(key, "missing")
    return body[key]


def _text(body: Mapping[str, object], key: str) -> str:
    value = _required(body, key)
    if not isinstance(value, str):
        raise MessageError(key, f"must be a string (got {_shown(value)})")
    return value


def _optional_text(body: Mapping[str, object], key: str) -> str | None:
    value = body.get(key)
    if value is None or isinstance(value, str):
        return value
    raise MessageError(key, f"must be a string or null (got {_shown(value)})")


def _credential(body: Mapping[str, object], key: str, *, secret: bool = False) -> str:
    """A credentials answer's field: a non-empty string. A secret's refused value is never
    shown, only its type."""
    value = _required(body, key)
    if not isinstance(value, str) or not value:
        shown = type(value).__name__ if secret else _shown(value)
        raise MessageError(key, f"must be a non-empty string (got {shown})")
    return value


def _integer(body: Mapping[str, object], key: str, lowest: int, highest: int) -> int:
    value = _required(body, key)
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
        raise MessageError(
            key, f"must be an integer from {lowest} to {highest} (got {_shown(value)})"
        )
    return value


def _nested(
    body: Mapping[str, object],
    key: str,
    parse: Callable[[object], _T],
    *,
    required: bool = False,
) -> _T:
    """The object at `key`, read by `parse`; its errors name their fields below `key`."""
    value = _required(body, key) if required else body.get(key)
    try:
        return parse(value)
    except MessageError as error:
        raise error.within(key) from None


_E = TypeVar("_E", bound=enum.StrEnum)


def _member(kind: type[_E], key: str, value: object) -> _E:
    """`value` as a member of `kind` (from its string value)."""
    if type(value) is kind:
        return value
    if isinstance(value, str):
        member: _E | None = _members(kind).get(value)
        if member is not None:
            return member
    allowed = " or ".join(f'"{member.value}"' for member in kind)
    raise MessageError(key, f"must be {allowed} (got {_shown(value)})")


@cache
def _members(kind: type[_E]) -> dict[str, _E]:
    return {member.value: member for member in kind}


def _hop_limit(value: object) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not MIN_HOP_LIMIT <= value <= MAX_HOP_LIMIT
    ):
        raise MessageError(
            "http_put_response_hop_limit",
            f"must be an integer from {MIN_HOP_LIMIT} to {MAX_HOP_LIMIT} (got {_shown(value)})",
        )
    return value


# -- metadata options ----------------------------------------------------------------------------


class HttpTokens(enum.StrEnum):
    OPTIONAL = "optional"
    REQUIRED = "required"


class HttpEndpoint(enum.StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class MetadataOptions:
    """An instance's ``metadata_options``. The defaults are the controller's for a new instance:
    IMDSv2 only (``required``), so an assignment that leaves ``http_tokens`` out never opens the
    token-less v1 path that SSRF uses. Made from plain strings, the fields become the enums."""

    http_tokens: HttpTokens = HttpTokens.REQUIRED
    http_put_response_hop_limit: int = 1
    http_endpoint: HttpEndpoint = HttpEndpoint.ENABLED

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "http_tokens", _member(HttpTokens, "http_tokens", self.http_tokens)
        )
        object.__setattr__(
            self, "http_endpoint", _member(HttpEndpoint, "http_endpoint", self.http_endpoint)
        )
        _hop_limit(self.http_put_response_hop_limit)

    def to_wire(self) -> dict[str, object]:
        return {
            "http_tokens": self.http_tokens.value,
            "http_put_response_hop_limit": self.http_put_response_hop_limit,
            "http_endpoint": self.http_endpoint.value,
        }


DEFAULT_METADATA_OPTIONS: Final = MetadataOptions()


def parse_metadata_options(value: object) -> MetadataOptions:
    """An instance's ``metadata_options``: absent fields (or ``null`` for all) take the defaults."""
    if value is None:
        return DEFAULT_METADATA_OPTIONS
    body = _object(value)
    default = DEFAULT_METADATA_OPTIONS
    return MetadataOptions(
        http_tokens=_member(
            HttpTokens, "http_tokens", body.get("http_tokens", default.http_tokens)
        ),
        http_put_response_hop_limit=_hop_limit(
            body.get("http_put_response_hop_limit", default.http_put_response_hop_limit)
        ),
        http_endpoint=_member(
            HttpEndpoint, "http_endpoint", body.get("http_endpoint", default.http_endpoint)
        ),
    )


# -- instance profile ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstanceProfile:
    """The instance profile attached to an instance; ``role_name`` is ``None`` without a role
    (an empty name is taken as none)."""

    arn: str
    id: str
    role_name: str | None = None

    def __post_init__(self) -> None:
        if not self.role_name:
            object.__setattr__(self, "role_name", None)

    def to_wire(self) -> dict[str, object]:
        return {"arn": self.arn, "id": self.id, "role_name": self.role_name}


def parse_instance_profile(value: object) -> InstanceProfile | None:
    """An instance's ``instance_profile``; ``null`` means none."""
    if value is None:
        return None
    body = _object(value)
    return InstanceProfile(
        arn=_text(body, "arn"),
        id=_text(body, "id"),
        role_name=_optional_text(body, "role_name"),
    )


# -- instance metadata ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstanceMetadata:
    """The instance's own items, keyed on the wire by their IMDS names (``ami-id``,
    ``placement/region``…). ``None`` means unknown: the item is simply not served."""

    instance_id: str
    account_id: str | None = None
    ami_id: str | None = None
    ami_launch_index: str | None = None
    instance_type: str | None = None
    reservation_id: str | None = None
    availability_zone: str | None = None
    availability_zone_id: str | None = None
    region: str | None = None
    local_ipv4: str | None = None
    local_hostname: str | None = None
    hostname: str | None = None
    launch_time: datetime | None = None

    def to_wire(self) -> dict[str, object]:
        items: dict[str, object] = {}
        for name, attribute in METADATA_ITEMS:
            value = getattr(self, attribute)
            if value is None:
                continue
            items[name] = format_timestamp(value) if isinstance(value, datetime) else value
        return items


#: Each metadata item's name on the wire and its attribute, in the order the controller writes
#: them.
METADATA_ITEMS: Final = (
    ("instance-id", "instance_id"),
    ("ami-id", "ami_id"),
    ("ami-launch-index", "ami_launch_index"),
    ("instance-type", "instance_type"),
    ("reservation-id", "reservation_id"),
    ("placement/availability-zone", "availability_zone"),
    ("placement/availability-zone-id", "availability_zone_id"),
    ("placement/region", "region"),
    ("local-ipv4", "local_ipv4"),
    ("local-hostname", "local_hostname"),
    ("hostname", "hostname"),
    ("launch-time", "launch_time"),
    ("account-id", "account_id"),
)


def parse_instance_metadata(value: object) -> InstanceMetadata:
    """An instance's ``metadata``: ``instance-id`` is required, every other item optional (an
    integer is taken as its text, as ``ami-launch-index`` might be sent); ``launch-time`` is a
    timestamp."""
    body = _object(value)

    def item(name: str) -> str | None:
        found = body.get(name)
        if found is None or isinstance(found, str):
            return found
        if isinstance(found, int) and not isinstance(found, bool):
            return str(found)
        raise MessageError(name, f"must be a string (got {_shown(found)})")

    instance_id = item("instance-id")
    if not instance_id:
        raise MessageError("instance-id", "missing" if instance_id is None else "must not be empty")
    launch_text = item("launch-time")
    launch_time = None
    if launch_text is not None:
        try:
            launch_time = parse_timestamp(launch_text)
        except ValueError:
            raise MessageError(
                "launch-time", f"must be a timestamp (got {_shown(launch_text)})"
            ) from None
    return InstanceMetadata(
        instance_id=instance_id,
        account_id=item("account-id"),
        ami_id=item("ami-id"),
        ami_launch_index=item("ami-launch-index"),
        instance_type=item("instance-type"),
        reservation_id=item("reservation-id"),
        availability_zone=item("placement/availability-zone"),
        availability_zone_id=item("placement/availability-zone-id"),
        region=item("placement/region"),
        local_ipv4=item("local-ipv4"),
        local_hostname=item("local-hostname"),
        hostname=item("hostname"),
        launch_time=launch_time,
    )


# -- what the guest boots from: user data, keys, its interface, tags, its signed identity -------

#: The most user data RunInstances takes (decoded), as EC2.
MAX_USER_DATA_BYTES: Final = 16 * 1024
#: EC2's limit of tags per resource.
MAX_TAGS: Final = 50
MAC_ADDRESS: Final = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A key pair the instance was launched with: its name and OpenSSH public key line."""

    name: str
    openssh_key: str

    def to_wire(self) -> dict[str, object]:
        return {"name": self.name, "openssh_key": self.openssh_key}


def _public_key(value: object) -> PublicKey:
    body = _object(value)
    return PublicKey(_text(body, "name"), _text(body, "openssh_key"))


@dataclass(frozen=True, slots=True)
class NetworkInterface:
    """The instance's primary network interface (device number 0). The hypervisor gives the
    VM this MAC; cloud-init matches the guest's interface by it."""

    mac: str
    interface_id: str | None = None
    #: The CIDR its private address comes from.
    subnet_cidr: str | None = None
    security_groups: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, object]:
        return {
            "mac": self.mac,
            "interface_id": self.interface_id,
            "subnet_cidr": self.subnet_cidr,
            "security_groups": list(self.security_groups),
        }


def parse_network(value: object) -> NetworkInterface | None:
    """An instance's ``network``; ``null`` means none (an instance from before MACs)."""
    if value is None:
        return None
    body = _object(value)
    mac = _text(body, "mac")
    if not MAC_ADDRESS.fullmatch(mac):
        raise MessageError("mac", f"must be a lower-case MAC address (got {_shown(mac)})")
    return NetworkInterface(
        mac=mac,
        interface_id=_optional_text(body, "interface_id"),
        subnet_cidr=_optional_text(body, "subnet_cidr"),
        security_groups=_texts(body, "security_groups"),
    )


@dataclass(frozen=True, slots=True)
class InstanceIdentity:
    """The signed instance identity document: its exact text, and what the metadata service
    serves at ``signature``, ``pkcs7`` and ``rsa2048`` (``None``: not signed)."""

    document: str
    signature: str | None = None
    pkcs7: str | None = None
    rsa2048: str | None = None

    def to_wire(self) -> dict[str, object]:
        return {
            "document": self.document,
            "signature": self.signature,
            "pkcs7": self.pkcs7,
            "rsa2048": self.rsa2048,
        }


def parse_identity(value: object) -> InstanceIdentity | None:
    if value is None:
        return None
    body = _object(value)
    pkcs7, rsa2048 = _optional_text(body, "pkcs7"), _optional_text(body, "rsa2048")
    return InstanceIdentity(
        document=_text(body, "document"),
        signature=_optional_text(body, "signature"),
        pkcs7=pkcs7,
        # RoleCall's controller signs once for both: one string held, not two (some 2 KiB an
        # instance, on every node).
        rsa2048=pkcs7 if rsa2048 == pkcs7 else rsa2048,
    )


def _texts(body: Mapping[str, object], key: str) -> tuple[str, ...]:
    value = body.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise MessageError(key, f"must be a list (got {_shown(value)})")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise MessageError(f"{key}[{index}]", f"must be a string (got {_shown(item)})")
    return tuple(value)


def _list(
    body: Mapping[str, object], key: str, parse: Callable[[object], _T], most: int | None = None
) -> tuple[_T, ...]:
    value = body.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise MessageError(key, f"must be a list (got {_shown(value)})")
    if most is not None and len(value) > most:
        raise MessageError(key, f"must have at most {most} items (got {len(value)})")
    items = []
    for index, item in enumerate(value):
        try:
            items.append(parse(item))
        except MessageError as error:
            raise error.within(f"{key}[{index}]") from None
    return tuple(items)


def _tag(value: object) -> tuple[str, str]:
    body = _object(value)
    key = _text(body, "key")
    if not key:
        raise MessageError("key", "must not be empty")
    return key, _text(body, "value")


def _tags(body: Mapping[str, object]) -> tuple[tuple[str, str], ...] | None:
    """``tags``: ``null`` when the instance's tags are not in its metadata."""
    if body.get("tags") is None:
        return None
    return _list(body, "tags", _tag, MAX_TAGS)


def _user_data(body: Mapping[str, object]) -> bytes | None:
    text = _optional_text(body, "user_data")
    if text is None:
        return None
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MessageError("user_data", "must be base64") from None
    if len(data) > MAX_USER_DATA_BYTES:
        raise MessageError(
            "user_data", f"must be at most {MAX_USER_DATA_BYTES} bytes (got {len(data)})"
        )
    return data


# -- one instance's assignment -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceAssignment:
    """One instance placed on the node, as the agent serves it. ``netns`` ``None`` (or empty):
    the agent's default name for it."""

    instance_id: str
    account_id: str | None = None
    netns: str | None = None
    instance_profile: InstanceProfile | None = None
    metadata_options: MetadataOptions = DEFAULT_METADATA_OPTIONS
    metadata: InstanceMetadata
    #: RunInstances' user data, decoded; ``None``: none (``user-data`` is a 404).
    user_data: bytes | None = field(default=None, repr=False)
    public_keys: tuple[PublicKey, ...] = ()
    network: NetworkInterface | None = None
    #: The instance's tags when they are in its metadata (``InstanceMetadataTags``), else None.
    tags: tuple[tuple[str, str], ...] | None = None
    identity: InstanceIdentity | None = None

    def __post_init__(self) -> None:
        if not self.netns:
            object.__setattr__(self, "netns", None)

    def to_wire(self) -> dict[str, object]:
        profile, network, identity = self.instance_profile, self.network, self.identity
        return {
            "instance_id": self.instance_id,
            "account_id": self.account_id,
            "netns": self.netns,
            "instance_profile": profile.to_wire() if profile is not None else None,
            "metadata_options": self.metadata_options.to_wire(),
            "metadata": self.metadata.to_wire(),
            "user_data": (
                base64.b64encode(self.user_data).decode("ascii")
                if self.user_data is not None
                else None
            ),
            "public_keys": [key.to_wire() for key in self.public_keys],
            "network": network.to_wire() if network is not None else None,
            "tags": (
                [{"key": key, "value": value} for key, value in self.tags]
                if self.tags is not None
                else None
            ),
            "identity": identity.to_wire() if identity is not None else None,
        }


def parse_instance(value: object) -> InstanceAssignment:
    """One element of an assignments answer's ``instances``."""
    body = _object(value)
    return InstanceAssignment(
        instance_id=_text(body, "instance_id"),
        account_id=_optional_text(body, "account_id"),
        netns=_optional_text(body, "netns"),
        instance_profile=_nested(body, "instance_profile", parse_instance_profile),
        metadata_options=_nested(body, "metadata_options", parse_metadata_options),
        metadata=_nested(body, "metadata", parse_instance_metadata, required=True),
        user_data=_user_data(body),
        public_keys=_list(body, "public_keys", _public_key),
        network=_nested(body, "network", parse_network),
        tags=_tags(body),
        identity=_nested(body, "identity", parse_identity),
    )


# -- the assignments answer ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AssignmentsAnswer:
    """``GET /v1/assignments``: every instance placed on the node, at `revision`."""

    revision: int
    instances: tuple[InstanceAssignment, ...] = ()

    def to_wire(self) -> dict[str, object]:
        return {
            "revision": self.revision,
            "instances": [instance.to_wire() for instance in self.instances],
        }


@dataclass(frozen=True, slots=True)
class RefusedInstance:
    """An element of ``instances`` that is not an instance assignment: `key` is its
    ``instance_id`` as sent (cut short), or ``instances[N]`` without one; `reason` is the
    `MessageError`'s text."""

    key: str
    reason: str


def parse_assignments(value: object) -> tuple[AssignmentsAnswer, tuple[RefusedInstance, ...]]:
    """An assignments answer, and the instances in it that were refused.

    An answer whose ``revision`` or ``instances`` is wrong raises `MessageError`; an instance
    that is wrong is left out of the answer and listed as refused, so that one broken
    instance never costs the node's others their service.
    """
    body = _object(value, "the assignments answer")
    revision = _integer(body, "revision", 0, MAX_REVISION)
    listed = _required(body, "instances")
    if not isinstance(listed, list):
        raise MessageError("instances", f"must be a list (got {_shown(listed)})")
    instances: list[InstanceAssignment] = []
    refused: list[RefusedInstance] = []
    for index, item in enumerate(listed):
        try:
            instances.append(parse_instance(item))
        except MessageError as error:
            refused.append(
                RefusedInstance(_refused_key(item, index), str(error.within(f"instances[{index}]")))
            )
    return AssignmentsAnswer(revision, tuple(instances)), tuple(refused)


def _refused_key(item: object, index: int) -> str:
    if isinstance(item, Mapping):
        instance_id = item.get("instance_id")
        if instance_id is not None:
            return str(instance_id)[:80]
    return f"instances[{index}]"


# -- the credentials answer ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CredentialsAnswer:
    """``POST /v1/instances/{id}/credentials``: role credentials for one instance. ``repr``
    never shows the secret or the token. The agent holds them as its own
    ``agent.imds.credentials.CredentialSet``, which adds when it received them."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    token: str = field(repr=False)
    expiration: datetime
    role_arn: str
    instance_profile_arn: str
    instance_profile_id: str
    account_id: str

    def to_wire(self) -> dict[str, object]:
        return {
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "Token": self.token,
            "Expiration": format_timestamp(self.expiration),
            "RoleArn": self.role_arn,
            "InstanceProfileArn": self.instance_profile_arn,
            "InstanceProfileId": self.instance_profile_id,
            "AccountId": self.account_id,
        }


def parse_credentials(value: object) -> CredentialsAnswer:
    """A credentials answer: every field a non-empty string, ``Expiration`` exactly
    ``YYYY-MM-DDTHH:MM:SSZ`` (spec/imds.md line 21), ``RoleArn`` a role's ARN."""
    body = _object(value, "the credentials answer")
    role_arn = _credential(body, "RoleArn")
    if not ROLE_ARN.fullmatch(role_arn):
        raise MessageError("RoleArn", f"not a role ARN (got {_shown(role_arn)})")
    expiration = _credential(body, "Expiration")
    try:
        expires = parse_exact_timestamp(expiration)
    except ValueError as error:
        raise MessageError("Expiration", str(error)) from None
    return CredentialsAnswer(
        access_key_id=_credential(body, "AccessKeyId"),
        secret_access_key=_credential(body, "SecretAccessKey", secret=True),
        token=_credential(body, "Token", secret=True),
        expiration=expires,
        role_arn=role_arn,
        instance_profile_arn=_credential(body, "InstanceProfileArn"),
        instance_profile_id=_credential(body, "InstanceProfileId"),
        account_id=_credential(body, "AccountId"),
    )


# -- errors --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """Any answer but 200: an error code (``NotYourInstance``…) and a message for the log."""

    error: str
    message: str = ""

    def to_wire(self) -> dict[str, object]:
        return {"error": self.error, "message": self.message}


def parse_error(value: object) -> ErrorAnswer:
    """An error answer (``message`` may be left out)."""
    body = _object(value, "the error answer")
    message = _optional_text(body, "message")
    return ErrorAnswer(_text(body, "error"), message or "")
