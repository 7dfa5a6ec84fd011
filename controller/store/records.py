"""What the store holds, as plain frozen records. ARNs are derived, never stored."""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Account:
    account_id: str
    name: str
    created: str


@dataclass(frozen=True)
class AccessKey:
    access_key_id: str
    secret_access_key: str
    account_id: str
    user_name: str | None  # None: the account's root
    status: str
    created: str

    def __repr__(self) -> str:  # the secret must never reach a log line through a repr
        return f"AccessKey({self.access_key_id!r}, account={self.account_id!r})"


@dataclass(frozen=True)
class User:
    user_id: str
    account_id: str
    name: str
    path: str
    created: str
    #: The ARN of the managed policy bounding its permissions, if any.
    permissions_boundary: str | None = None

    @property
    def arn(self) -> str:
        return f"arn:aws:iam::{self.account_id}:user{self.path}{self.name}"


@dataclass(frozen=True)
class UserPolicy:
    user_id: str
    name: str
    document: str


@dataclass(frozen=True)
class Role:
    role_id: str
    account_id: str
    name: str
    path: str
    assume_role_policy: str
    description: str | None
    max_session_duration: int
    created: str
    #: The ARN of the managed policy bounding its permissions, if any.
    permissions_boundary: str | None = None
    #: RoleLastUsed: when (ISO 8601 UTC) and in which region it was last used; None: never.
    last_used: str | None = None
    last_used_region: str | None = None

    @property
    def arn(self) -> str:
        return f"arn:aws:iam::{self.account_id}:role{self.path}{self.name}"


@dataclass(frozen=True)
class RolePolicy:
    role_id: str
    name: str
    document: str


@dataclass(frozen=True)
class ManagedPolicy:
    """A customer-managed policy; its documents are its versions (`PolicyVersion`)."""

    policy_id: str
    account_id: str
    name: str
    path: str
    description: str | None
    default_version: int  # N of "vN"
    next_version: int  # the number the next version gets: numbers are never reused
    created: str
    updated: str

    @property
    def arn(self) -> str:
        return f"arn:aws:iam::{self.account_id}:policy{self.path}{self.name}"


@dataclass(frozen=True)
class PolicyVersion:
    policy_id: str
    version: int
    document: str
    created: str

    @property
    def version_id(self) -> str:
        return f"v{self.version}"


@dataclass(frozen=True)
class PolicyAttachment:
    """A managed policy attached to a role, user or group (``entity_kind``)."""

    entity_id: str
    entity_kind: str  # role | user | group
    account_id: str
    policy_arn: str
    policy_id: str | None  # None: an AWS-managed policy (the operator's directory holds it)


@dataclass(frozen=True)
class PolicyEntity:
    """A role, user or group that uses a managed policy (ListEntitiesForPolicy)."""

    kind: str  # role | user | group
    entity_id: str
    name: str
    path: str
    usage: str  # PermissionsPolicy (attached) | PermissionsBoundary


@dataclass(frozen=True)
class Group:
    group_id: str
    account_id: str
    name: str
    path: str
    created: str

    @property
    def arn(self) -> str:
        return f"arn:aws:iam::{self.account_id}:group{self.path}{self.name}"


@dataclass(frozen=True)
class GroupPolicy:
    group_id: str
    name: str
    document: str


@dataclass(frozen=True)
class MetadataDefaults:
    """An account's instance metadata defaults (EC2 ModifyInstanceMetadataDefaults); None in
    a field is "no preference": RoleCall's own default applies."""

    account_id: str
    http_tokens: str | None
    hop_limit: int | None
    http_endpoint: str | None
    metadata_tags: str | None
    changed: str


@dataclass(frozen=True)
class InstanceProfile:
    profile_id: str
    account_id: str
    name: str
    path: str
    role_id: str | None
    created: str

    @property
    def arn(self) -> str:
        return f"arn:aws:iam::{self.account_id}:instance-profile{self.path}{self.name}"


@dataclass(frozen=True)
class Tag:
    key: str
    value: str


@dataclass(frozen=True)
class Node:
    name: str
    certificate_serial: str
    enrolled: str
    retired: str | None
    last_contact: str | None
    revision: int
    #: The most instances (not terminated) it may run; None: the controller's default.
    capacity: int | None = None
    #: The CIDR its instances' addresses come from; None: the controller's ``ec2.subnet``.
    subnet: str | None = None


@dataclass(frozen=True)
class Instance:
    instance_id: str
    account_id: str
    reservation_id: str
    image_id: str
    instance_type: str
    node_name: str
    netns: str
    state: str
    launched: str
    terminated: str | None
    private_ip: str
    http_tokens: str
    hop_limit: int
    http_endpoint: str
    association_id: str | None
    association_state: str | None
    profile_id: str | None
    launch_index: int
    # What the metadata service serves beyond IAM (schema version 5); None for an instance
    # launched before it, whose metadata service leaves those items out.
    #: RunInstances' UserData, base64 as given.
    user_data: str | None = None
    mac: str | None = None
    interface_id: str | None = None
    #: The CIDR ``private_ip`` was taken from.
    subnet: str | None = None
    #: A JSON list of security group names (`group_names`).
    security_groups: str | None = None
    #: ``InstanceMetadataTags``: ``enabled`` or ``disabled`` (None: disabled).
    metadata_tags: str | None = None
    #: The instance identity document's exact text, and its signatures as served.
    identity_document: str | None = None
    identity_signature: str | None = None
    identity_pkcs7: str | None = None
    identity_rsa2048: str | None = None
    #: RunInstances' ClientToken, and a digest of the request it came with.
    client_token: str | None = None
    request_digest: str | None = None
    #: The key pair named at launch (RunInstances KeyName), None without one.
    key_name: str | None = None
    #: That key pair's OpenSSH public-key line as it was at launch: the metadata service serves
    #: it even after the key pair is deleted, as EC2 does.
    public_key: str | None = None
    #: The node it was last moved from (ModifyInstancePlacement), None if never moved: role
    #: credentials that node issued before the move still stand (the guest carries them).
    previous_node: str | None = None

    @property
    def arn(self) -> str:
        return f"arn:aws:ec2:{REGION}:{self.account_id}:instance/{self.instance_id}"

    @property
    def group_names(self) -> tuple[str, ...]:
        """The security group names it was launched with."""
        if not self.security_groups:
            return ()
        return tuple(str(name) for name in json.loads(self.security_groups))

    @property
    def tags_in_metadata(self) -> bool:
        return self.metadata_tags == "enabled"


@dataclass(frozen=True)
class KeyPair:
    """An EC2 key pair: its public half only. The private key CreateKeyPair makes is returned
    once and never stored."""

    key_pair_id: str
    account_id: str
    #: Case-sensitive, unique in its account.
    name: str
    #: rsa | ed25519
    key_type: str
    #: As EC2 shows it (see controller/ec2/sshkeys.py for which digest of what).
    fingerprint: str
    #: The OpenSSH public-key line, ``TYPE BASE64 NAME``, as authorized_keys takes it.
    public_key: str
    created: str

    @property
    def arn(self) -> str:
        return f"arn:aws:ec2:{REGION}:{self.account_id}:key-pair/{self.name}"


#: RoleCall is one region; ARNs and metadata name it.
REGION = "us-east-1"
