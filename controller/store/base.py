"""The store interface: what the controller needs from a database, and nothing about SQL.

Domain rules (conflicts, limits) live in the callers and run inside one `Transaction`, so a check
and the write it guards are atomic on every backend. A backend raises `Conflict` when a
uniqueness rule it enforces is violated, so races between replicas end the same way as checks.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TypeVar

from controller.store.records import (
    AccessKey,
    Account,
    Group,
    GroupPolicy,
    Instance,
    InstanceProfile,
    KeyPair,
    ManagedPolicy,
    MetadataDefaults,
    Node,
    PolicyAttachment,
    PolicyEntity,
    PolicyVersion,
    Role,
    RolePolicy,
    Tag,
    User,
    UserPolicy,
)

#: An audit record as stored: its time (ISO 8601 UTC), its instance id if any, its JSON.
AuditRow = tuple[str, str | None, str]

_T = TypeVar("_T")


class StoreError(Exception):
    """The database could not do what was asked (unreachable, corrupt, newer schema)."""


class StoreUnavailable(StoreError):
    """The database cannot be reached now (no server, no primary): try again later. Callers
    answer it as a service that is temporarily unavailable (HTTP 503)."""


class Conflict(StoreError):
    """A constraint was violated: a name taken, a key that exists, a row still referenced.

    On PostgreSQL the transaction cannot go on after it (every later statement fails): work
    that catches it turns it into its own error and ends, as every caller here does."""


class Transaction(abc.ABC):
    """One atomic unit of work. Lists take ``after`` (a name_lower) and ``limit`` for paging."""

    # accounts and keys
    @abc.abstractmethod
    def insert_account(self, account: Account) -> None: ...
    @abc.abstractmethod
    def get_account(self, account_id: str) -> Account | None: ...
    @abc.abstractmethod
    def list_accounts(self) -> list[Account]: ...
    @abc.abstractmethod
    def insert_access_key(self, key: AccessKey) -> None: ...
    @abc.abstractmethod
    def get_access_key(self, access_key_id: str) -> AccessKey | None: ...
    @abc.abstractmethod
    def list_access_keys(self, account_id: str, user_name: str | None) -> list[AccessKey]: ...
    @abc.abstractmethod
    def set_access_key_status(self, access_key_id: str, status: str) -> None: ...
    @abc.abstractmethod
    def delete_access_key(self, access_key_id: str) -> None: ...

    # users and their inline policies
    @abc.abstractmethod
    def insert_user(self, user: User) -> None: ...
    @abc.abstractmethod
    def get_user(self, account_id: str, name: str) -> User | None: ...
    @abc.abstractmethod
    def list_users(
        self, account_id: str, path_prefix: str, after: str | None, limit: int
    ) -> list[User]: ...
    @abc.abstractmethod
    def delete_user(self, user_id: str) -> None: ...
    @abc.abstractmethod
    def set_user_permissions_boundary(self, user_id: str, policy_arn: str | None) -> None: ...
    @abc.abstractmethod
    def put_user_policy(self, policy: UserPolicy) -> None: ...
    @abc.abstractmethod
    def get_user_policy(self, user_id: str, name: str) -> UserPolicy | None: ...
    @abc.abstractmethod
    def list_user_policies(self, user_id: str) -> list[UserPolicy]: ...
    @abc.abstractmethod
    def delete_user_policy(self, user_id: str, name: str) -> None: ...

    # roles
    @abc.abstractmethod
    def insert_role(self, role: Role) -> None: ...
    @abc.abstractmethod
    def get_role(self, account_id: str, name: str) -> Role | None: ...
    @abc.abstractmethod
    def get_role_by_id(self, role_id: str) -> Role | None: ...
    @abc.abstractmethod
    def list_roles(
        self, account_id: str, path_prefix: str, after: str | None, limit: int
    ) -> list[Role]: ...
    @abc.abstractmethod
    def update_role(self, role: Role) -> None:
        """Write its trust policy, description, maximum session duration and boundary."""

    @abc.abstractmethod
    def record_roles_last_used(self, uses: Sequence[tuple[str, str, str]]) -> None:
        """Record (role_id, when as ISO 8601 UTC, region) uses; a role keeps its latest one,
        and a role that is gone is skipped."""

    @abc.abstractmethod
    def delete_role(self, role_id: str) -> None: ...

    # inline role policies
    @abc.abstractmethod
    def put_role_policy(self, policy: RolePolicy) -> None: ...
    @abc.abstractmethod
    def get_role_policy(self, role_id: str, name: str) -> RolePolicy | None: ...
    @abc.abstractmethod
    def list_role_policies(self, role_id: str) -> list[RolePolicy]: ...
    @abc.abstractmethod
    def delete_role_policy(self, role_id: str, name: str) -> None: ...

    # customer-managed policies and their versions
    @abc.abstractmethod
    def insert_managed_policy(self, policy: ManagedPolicy) -> None: ...
    @abc.abstractmethod
    def get_managed_policy(self, account_id: str, name: str) -> ManagedPolicy | None:
        """The account's policy of this name, ignoring case."""

    @abc.abstractmethod
    def get_managed_policy_by_id(self, policy_id: str) -> ManagedPolicy | None: ...
    @abc.abstractmethod
    def list_managed_policies(
        self, account_id: str, path_prefix: str, after: str | None, limit: int
    ) -> list[ManagedPolicy]: ...
    @abc.abstractmethod
    def update_managed_policy(self, policy: ManagedPolicy) -> None:
        """Write its description, default version, next version number and update time."""

    @abc.abstractmethod
    def delete_managed_policy(self, policy_id: str) -> None:
        """Delete the policy, its versions and its tags (not its attachments: callers refuse
        to delete an attached policy)."""

    @abc.abstractmethod
    def insert_policy_version(self, version: PolicyVersion) -> None: ...
    @abc.abstractmethod
    def get_policy_version(self, policy_id: str, version: int) -> PolicyVersion | None: ...
    @abc.abstractmethod
    def list_policy_versions(self, policy_id: str) -> list[PolicyVersion]:
        """Its versions, newest first."""

    @abc.abstractmethod
    def delete_policy_version(self, policy_id: str, version: int) -> None: ...

    # managed policies attached to roles, users and groups
    @abc.abstractmethod
    def attach_policy(self, attachment: PolicyAttachment) -> bool:
        """Attach; False (and nothing changed) when it was attached already."""

    @abc.abstractmethod
    def detach_policy(self, entity_id: str, policy_arn: str) -> bool:
        """Detach; whether it was attached."""

    @abc.abstractmethod
    def list_attached_policies(self, entity_id: str) -> list[PolicyAttachment]:
        """The entity's attachments, in the order they were made."""

    @abc.abstractmethod
    def list_policy_attachments(self, policy_arn: str) -> list[PolicyAttachment]:
        """Every attachment of the policy, in the order they were made."""

    @abc.abstractmethod
    def count_policy_attachments(self, account_id: str) -> dict[str, int]:
        """How many roles, users and groups of the account each attached policy ARN has."""

    @abc.abstractmethod
    def attached_documents(self, entity_ids: Sequence[str]) -> list[tuple[str, str | None]]:
        """(policy ARN, default version's document) of every policy attached to any of the
        entities, in their order and then the order of attachment; the document is None for
        an AWS-managed policy (not in the database). One read for a caller's evaluation."""

    @abc.abstractmethod
    def count_boundary_uses(self, account_id: str) -> dict[str, int]:
        """How many roles and users of the account each permissions boundary ARN bounds."""

    @abc.abstractmethod
    def list_policy_entities(self, account_id: str, policy_arn: str) -> list[PolicyEntity]:
        """The account's roles, users and groups the policy is attached to (usage
        PermissionsPolicy) and its roles and users it bounds (PermissionsBoundary)."""

    # groups, their members and their inline policies
    @abc.abstractmethod
    def insert_group(self, group: Group) -> None: ...
    @abc.abstractmethod
    def get_group(self, account_id: str, name: str) -> Group | None:
        """The account's group of this name, ignoring case."""

    @abc.abstractmethod
    def get_group_by_id(self, group_id: str) -> Group | None: ...
    @abc.abstractmethod
    def list_groups(
        self, account_id: str, path_prefix: str, after: str | None, limit: int
    ) -> list[Group]: ...
    @abc.abstractmethod
    def update_group(self, group: Group) -> None:
        """Rename or move the group (its name and path; its id stays). `Conflict` when the
        account has another group of the new name."""

    @abc.abstractmethod
    def delete_group(self, group_id: str) -> None: ...
    @abc.abstractmethod
    def add_group_member(self, group_id: str, user_id: str) -> bool:
        """Add the user; False (nothing changed) when it was a member already."""

    @abc.abstractmethod
    def remove_group_member(self, group_id: str, user_id: str) -> bool: ...
    @abc.abstractmethod
    def list_group_members(self, group_id: str, after: str | None, limit: int) -> list[User]:
        """The group's users by name (``after`` a name_lower)."""

    @abc.abstractmethod
    def count_group_members(self, group_id: str) -> int: ...
    @abc.abstractmethod
    def list_groups_for_user(self, user_id: str) -> list[Group]:
        """The user's groups by name."""

    @abc.abstractmethod
    def put_group_policy(self, policy: GroupPolicy) -> None: ...
    @abc.abstractmethod
    def get_group_policy(self, group_id: str, name: str) -> GroupPolicy | None: ...
    @abc.abstractmethod
    def list_group_policies(self, group_id: str) -> list[GroupPolicy]: ...
    @abc.abstractmethod
    def delete_group_policy(self, group_id: str, name: str) -> None: ...

    # instance profiles
    @abc.abstractmethod
    def insert_instance_profile(self, profile: InstanceProfile) -> None: ...
    @abc.abstractmethod
    def get_instance_profile(self, account_id: str, name: str) -> InstanceProfile | None: ...
    @abc.abstractmethod
    def get_instance_profile_by_id(self, profile_id: str) -> InstanceProfile | None: ...
    @abc.abstractmethod
    def list_instance_profiles(
        self, account_id: str, path_prefix: str, after: str | None, limit: int
    ) -> list[InstanceProfile]: ...
    @abc.abstractmethod
    def list_instance_profiles_for_role(
        self, role_id: str, after: str | None, limit: int
    ) -> list[InstanceProfile]: ...
    @abc.abstractmethod
    def set_instance_profile_role(self, profile_id: str, role_id: str | None) -> None: ...
    @abc.abstractmethod
    def delete_instance_profile(self, profile_id: str) -> None: ...

    # nodes and the instances placed on them
    @abc.abstractmethod
    def insert_node(self, node: Node) -> None: ...
    @abc.abstractmethod
    def get_node(self, name: str) -> Node | None: ...
    @abc.abstractmethod
    def list_nodes(self) -> list[Node]: ...
    @abc.abstractmethod
    def update_node(self, node: Node) -> None: ...
    @abc.abstractmethod
    def bump_node_revision(self, name: str) -> int: ...
    @abc.abstractmethod
    def active_instance_counts(self) -> dict[str, int]: ...
    @abc.abstractmethod
    def account_instance_count(self, account_id: str) -> int:
        """The account's instances that are not terminated (what its quota counts)."""

    @abc.abstractmethod
    def insert_instance(self, instance: Instance) -> None: ...
    @abc.abstractmethod
    def get_instance(self, instance_id: str) -> Instance | None: ...
    @abc.abstractmethod
    def get_instance_by_association(self, association_id: str) -> Instance | None: ...
    @abc.abstractmethod
    def list_instances(self, account_id: str, after: str | None, limit: int) -> list[Instance]: ...
    @abc.abstractmethod
    def list_node_instances(self, node_name: str) -> list[Instance]:
        """The instances placed on a node that are not terminated."""

    @abc.abstractmethod
    def update_instance(self, instance: Instance) -> None: ...
    @abc.abstractmethod
    def instances_by_client_token(self, account_id: str, token: str) -> list[Instance]:
        """The instances one RunInstances with this ClientToken launched, in launch order."""

    @abc.abstractmethod
    def live_addresses(self, subnet: str) -> set[str]:
        """The private addresses inside `subnet` (a CIDR) of the instances not terminated,
        whichever subnet each was given its address from: `subnet` itself, one overlapping it
        (a node re-enrolled with a wider ``--subnet``, or another node's), or none (an instance
        from before subnets, with a hashed link-local address)."""

    @abc.abstractmethod
    def mac_in_use(self, mac: str) -> bool:
        """Whether an instance not terminated has that MAC address."""

    @abc.abstractmethod
    def count_instances_with_profile(self, profile_id: str) -> int:
        """How many instances that are not terminated carry this instance profile."""

    # EC2 instance metadata defaults of an account
    @abc.abstractmethod
    def get_metadata_defaults(self, account_id: str) -> MetadataDefaults | None: ...
    @abc.abstractmethod
    def put_metadata_defaults(self, defaults: MetadataDefaults) -> None:
        """Replace the account's defaults (a row of all None is kept: "no preference")."""

    # EC2 key pairs (names are case-sensitive, unlike IAM's)
    @abc.abstractmethod
    def insert_key_pair(self, key_pair: KeyPair) -> None: ...
    @abc.abstractmethod
    def get_key_pair(self, account_id: str, name: str) -> KeyPair | None:
        """The account's key pair of exactly this name (EC2 compares names case-sensitively)."""

    @abc.abstractmethod
    def get_key_pair_by_id(self, key_pair_id: str) -> KeyPair | None: ...
    @abc.abstractmethod
    def list_key_pairs(self, account_id: str) -> list[KeyPair]:
        """Every key pair of the account (EC2's quota keeps that to thousands), by name."""

    @abc.abstractmethod
    def count_key_pairs(self, account_id: str) -> int: ...
    @abc.abstractmethod
    def delete_key_pair(self, key_pair_id: str) -> None:
        """Delete the key pair and its tags; instances launched with it keep their copy."""

    # tags of any entity, in the order they were first added
    @abc.abstractmethod
    def get_tags(self, entity_id: str) -> list[Tag]: ...
    @abc.abstractmethod
    def put_tags(self, entity_id: str, tags: Sequence[Tag]) -> None: ...
    @abc.abstractmethod
    def delete_tags(self, entity_id: str, keys: Sequence[str] | None = None) -> None: ...

    # what several controllers on PostgreSQL share (controller.shared): named texts, some secret
    @abc.abstractmethod
    def get_shared_state(self, name: str) -> str | None: ...
    @abc.abstractmethod
    def insert_shared_state(self, name: str, value: str, changed: str) -> None:
        """Add the named text; Conflict when it exists (it is never replaced this way)."""

    @abc.abstractmethod
    def replace_shared_state(self, name: str, expected: str, value: str, changed: str) -> bool:
        """Replace the named text if it is still ``expected``; whether it was."""

    # the audit log of credential issuance, when it is in the database
    @abc.abstractmethod
    def insert_audit_records(self, records: Sequence[AuditRow]) -> None: ...
    @abc.abstractmethod
    def list_audit_records(
        self, since: str | None, instance_id: str | None, after: int, limit: int
    ) -> list[tuple[int, str]]:
        """(id, record JSON) of the records after id ``after``, at or after ``since`` (ISO
        8601 UTC) and of ``instance_id`` when given, oldest first."""


class Store(abc.ABC):
    """A database holding RoleCall's state; `transaction()` and `run()` are the only ways in."""

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[Transaction]:
        """Begin a read-write transaction; commit on success, roll back on an exception."""

    def run(self, work: Callable[[Transaction], _T]) -> _T:
        """``work(tx)`` in one transaction, committed if it returns, rolled back if it raises.

        A backend may roll back a first try and call ``work`` again, so ``work`` must act only
        through ``tx`` (or on what it makes itself) until it returns. In return a backend may
        save work, as SQLite does for requests that only read what it has cached.
        """
        with self.transaction() as tx:
            return work(tx)

    @abc.abstractmethod
    def schema_version(self) -> int: ...

    @abc.abstractmethod
    def close(self) -> None: ...
