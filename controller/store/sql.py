"""The `Transaction` in portable SQL over any DB-API cursor; backends differ only in plumbing.

Statements are written with ``?`` placeholders; a backend whose driver wants ``%s`` (psycopg)
passes ``placeholder="%s"``. Migrations are the numbered files in ``migrations/``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from controller.store.base import AuditRow, Transaction
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

_ROLE_COLUMNS = (
    "role_id, account_id, name, path, assume_role_policy, description, "
    "max_session_duration, created, permissions_boundary, last_used, last_used_region"
)
_PROFILE_COLUMNS = "profile_id, account_id, name, path, role_id, created"
_KEY_COLUMNS = "access_key_id, secret_access_key, account_id, user_name, status, created"
_USER_COLUMNS = "user_id, account_id, name, path, created, permissions_boundary"
_POLICY_COLUMNS = (
    "policy_id, account_id, name, path, description, default_version, next_version, created,"
    " updated"
)
_ATTACHMENT_COLUMNS = "entity_id, entity_kind, account_id, policy_arn, policy_id"
_GROUP_COLUMNS = "group_id, account_id, name, path, created"
_NODE_COLUMNS = (
    "name, certificate_serial, enrolled, retired, last_contact, revision, capacity, subnet"
)
_INSTANCE_COLUMNS = (
    "instance_id, account_id, reservation_id, image_id, instance_type, node_name, netns, state,"
    " launched, terminated, private_ip, http_tokens, hop_limit, http_endpoint, association_id,"
    " association_state, profile_id, launch_index, user_data, mac, interface_id, subnet,"
    " security_groups, metadata_tags, identity_document, identity_signature, identity_pkcs7,"
    " identity_rsa2048, client_token, request_digest, key_name, public_key, previous_node"
)
_KEY_PAIR_COLUMNS = "key_pair_id, account_id, name, key_type, fingerprint, public_key, created"


def migrations(backend: str = "sqlite") -> list[tuple[int, str]]:
    """The schema migrations shipped with the package for `backend`, as (version, SQL) in order.

    A file ``NNNN_name.sql`` is portable; ``NNNN_name.sqlite.sql`` and
    ``NNNN_name.postgresql.sql`` are one backend's variants of version NNNN (each backend has
    exactly one file per version)."""
    found: dict[int, str] = {}
    for entry in resources.files("controller.store").joinpath("migrations").iterdir():
        match = re.fullmatch(r"([0-9]{4})_[a-z0-9_]+(?:\.(sqlite|postgresql))?\.sql", entry.name)
        if match is None or match.group(2) not in (None, backend):
            continue
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two migrations numbered {version:04d} for {backend}")
        found[version] = entry.read_text(encoding="utf-8")
    return sorted(found.items())


def split_statements(script: str) -> list[str]:
    """A migration's statements. Our files use ``;`` only as a terminator, never in strings,
    except inside a ``$$``-quoted function body (PostgreSQL's triggers), kept whole."""
    without_comments = re.sub(r"--[^\n]*", "", script)
    statements, current = [], []
    for index, piece in enumerate(without_comments.split("$$")):
        if index % 2:  # inside $$ ... $$
            current.append(f"$${piece}$$")
            continue
        parts = piece.split(";")
        current.append(parts[0])
        for part in parts[1:]:
            statements.append("".join(current))
            current = [part]
    statements.append("".join(current))
    return [statement.strip() for statement in statements if statement.strip()]


class SqlTransaction(Transaction):
    """Every store operation as one or two SQL statements on the given cursor."""

    def __init__(
        self,
        cursor: Any,
        *,
        placeholder: str = "?",
        is_constraint_violation: Callable[[Exception], bool],
    ) -> None:
        self._cursor = cursor
        self._placeholder = placeholder
        self._is_constraint_violation = is_constraint_violation

    def _run(self, sql: str, args: Sequence[object] = ()) -> Any:
        from controller.store.base import Conflict

        if self._placeholder != "?":
            sql = sql.replace("?", self._placeholder)
        try:
            self._cursor.execute(sql, tuple(args))
        except Exception as error:
            if self._is_constraint_violation(error):
                raise Conflict(str(error)) from error
            raise
        return self._cursor

    def _rows(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return list(self._run(sql, args).fetchall())

    def _row(self, sql: str, args: Sequence[object] = ()) -> tuple[Any, ...] | None:
        rows = self._rows(sql, args)
        return rows[0] if rows else None

    # accounts and keys
    def insert_account(self, account: Account) -> None:
        self._run(
            "INSERT INTO accounts (account_id, name, created) VALUES (?, ?, ?)",
            (account.account_id, account.name, account.created),
        )

    def get_account(self, account_id: str) -> Account | None:
        row = self._row(
            "SELECT account_id, name, created FROM accounts WHERE account_id = ?", (account_id,)
        )
        return Account(*row) if row else None

    def list_accounts(self) -> list[Account]:
        return [
            Account(*row)
            for row in self._rows("SELECT account_id, name, created FROM accounts ORDER BY created")
        ]

    def insert_access_key(self, key: AccessKey) -> None:
        self._run(
            f"INSERT INTO access_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            (
                key.access_key_id,
                key.secret_access_key,
                key.account_id,
                key.user_name,
                key.status,
                key.created,
            ),
        )

    def get_access_key(self, access_key_id: str) -> AccessKey | None:
        row = self._row(
            f"SELECT {_KEY_COLUMNS} FROM access_keys WHERE access_key_id = ?", (access_key_id,)
        )
        return AccessKey(*row) if row else None

    def list_access_keys(self, account_id: str, user_name: str | None) -> list[AccessKey]:
        if user_name is None:
            rows = self._rows(
                f"SELECT {_KEY_COLUMNS} FROM access_keys"
                " WHERE account_id = ? AND user_name IS NULL ORDER BY created",
                (account_id,),
            )
        else:
            rows = self._rows(
                f"SELECT {_KEY_COLUMNS} FROM access_keys"
                " WHERE account_id = ? AND user_name = ? ORDER BY created",
                (account_id, user_name),
            )
        return [AccessKey(*row) for row in rows]

    def set_access_key_status(self, access_key_id: str, status: str) -> None:
        self._run(
            "UPDATE access_keys SET status = ? WHERE access_key_id = ?", (status, access_key_id)
        )

    def delete_access_key(self, access_key_id: str) -> None:
        self._run("DELETE FROM access_keys WHERE access_key_id = ?", (access_key_id,))

    # users
    def insert_user(self, user: User) -> None:
        self._run(
            f"INSERT INTO users ({_USER_COLUMNS}, name_lower) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                user.user_id,
                user.account_id,
                user.name,
                user.path,
                user.created,
                user.permissions_boundary,
                user.name.lower(),
            ),
        )

    def get_user(self, account_id: str, name: str) -> User | None:
        row = self._row(
            f"SELECT {_USER_COLUMNS} FROM users WHERE account_id = ? AND name_lower = ?",
            (account_id, name.lower()),
        )
        return User(*row) if row else None

    def list_users(
        self, account_id: str, path_prefix: str, after: str | None, limit: int
    ) -> list[User]:
        rows = self._rows(
            f"SELECT {_USER_COLUMNS} FROM users WHERE account_id = ?"
            " AND substr(path, 1, ?) = ? AND name_lower > ? ORDER BY name_lower LIMIT ?",
            (account_id, len(path_prefix), path_prefix, after or "", limit),
        )
        return [User(*row) for row in rows]

    def delete_user(self, user_id: str) -> None:
        self._run("DELETE FROM tags WHERE entity_id = ?", (user_id,))
        self._run("DELETE FROM users WHERE user_id = ?", (user_id,))

    def set_user_permissions_boundary(self, user_id: str, policy_arn: str | None) -> None:
        self._run(
            "UPDATE users SET permissions_boundary = ? WHERE user_id = ?", (policy_arn, user_id)
        )

    def put_user_policy(self, policy: UserPolicy) -> None:
        self._run(
            "DELETE FROM user_policies WHERE user_id = ? AND name_lower = ?",
            (policy.user_id, policy.name.lower()),
        )
        self._run(
            "INSERT INTO user_policies (user_id, name, name_lower, document) VALUES (?, ?, ?, ?)",
            (policy.user_id, policy.name, policy.name.lower(), policy.document),
        )

    def get_user_policy(self, user_id: str, name: str) -> UserPolicy | None:
        row = self._row(
            "SELECT user_id, name, document FROM user_policies"
            " WHERE user_id = ? AND name_lower = ?",
            (user_id, name.lower()),
        )
        return UserPolicy(*row) if row else None

    def list_user_policies(self, user_id: str) -> list[UserPolicy]:
        rows = self._rows(
            "SELECT user_id, name, document FROM user_policies WHERE user_id = ?"
            " ORDER BY name_lower",
            (user_id,),
        )
        return [UserPolicy(*row) for row in rows]

    def delete_user_policy(self, user_id: str, name: str) -> None:
        self._run(
            "DELETE FROM user_policies WHERE user_id = ? AND name_lower = ?",
            (user_id, name.lower()),
        )

    # roles
    def insert_role(self, role: Role) -> None:
        self._run(
            f"INSERT INTO roles ({_ROLE_COLUMNS}, name_lower)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                role.role_id,
                role.account_id,
                role.name,
                role.path,
                role.assume_role_policy,
                role.description,
                role.max_session_duration,
                role.created,
                role.permissions_boundary,
                role.last_used,
                role.last_used_region,
                role.name.lower(),
            ),
        )

    def get_role(self, account_id: str, name: str) -> Role | None:
        row = self._row(
            f"SELECT {_ROLE_COLUMNS} FROM roles WHERE account_id = ? AND name_lower = ?",
            (account_id, name.lower()),
        )
        return Role(*row) if row else None

    def get_role_by_id(self, role_id: str) -> Role | None:
        row = self._row(f"SELECT {_ROLE_COLUMNS} FROM roles WHERE role_id = ?", (role_id,))
        return Role(*row) if row else None

    def list_roles(
        self, account_id: str, path_prefix: str, after: str | None, limit: int
    ) -> list[Role]:
        rows = self._rows(
            f"SELECT {_ROLE_COLUMNS} FROM roles WHERE account_id = ?"
            " AND substr(path, 1, ?) = ? AND name_lower > ? ORDER BY name_lower LIMIT ?",
            (account_id, len(path_prefix), path_prefix, after or "", limit),
        )
        return [Role(*row) for row in rows]

    def update_role(self, role: Role) -> None:
        self._run(
            "UPDATE roles SET assume_role_policy = ?, description = ?, max_session_duration = ?,"
            " permissions_boundary = ? WHERE role_id = ?",
            (
                role.assume_role_policy,
                role.description,
                role.max_session_duration,
                role.permissions_boundary,
                role.role_id,
            ),
        )

    def record_roles_last_used(self, uses: Sequence[tuple[str, str, str]]) -> None:
        for role_id, when, region in uses:
            self._run(
                "UPDATE roles SET last_used = ?, last_used_region = ?"
                " WHERE role_id = ? AND (last_used IS NULL OR last_used < ?)",
                (when, region, role_id, when),
            )

    def delete_role(self, role_id: str) -> None:
        self._run("DELETE FROM tags WHERE entity_id = ?", (role_id,))
        self._run("DELETE FROM roles WHERE role_id = ?", (role_id,))

    # inline role policies
    def put_role_policy(self, policy: RolePolicy) -> None:
        self._run(
            "DELETE FROM role_policies WHERE role_id = ? AND name_lower = ?",
            (policy.role_id, policy.name.lower()),
        )
        self._run(
            "INSERT INTO role_policies (role_id, name, name_lower, document) VALUES (?, ?, ?, ?)",
            (policy.role_id, policy.name, policy.name.lower(), policy.document),
        )

    def get_role_policy(self, role_id: str, name: str) -> RolePolicy | None:
        row = self._row(
            "SELECT role_id, name, document FROM role_policies"
            " WHERE role_id = ? AND name_lower = ?",
            (role_id, name.lower()),
        )
        return RolePolicy(*row) if row else None

    def list_role_policies(self, role_id: str) -> list[RolePolicy]:
        rows = self._rows(
            "SELECT role_id, name, document FROM role_policies WHERE role_id = ?"
            " ORDER BY name_lower",
            (role_id,),
        )
        return [RolePolicy(*row) for row in rows]

    def delete_role_policy(self, role_id: str, name: str) -> None:
        self._run(
            "DELETE FROM role_policies WHERE role_id = ? AND name_lower = ?",
            (role_id, name.lower()),
        )

    # customer-managed policies and their versions
    def insert_managed_policy(self, policy: ManagedPolicy) -> None:
        self._run(
            f"INSERT INTO managed_policies ({_POLICY_COLUMNS}, name_lower)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                policy.policy_id,
                policy.account_id,
                policy.name,
                policy.path,
                policy.description,
                policy.default_version,
                policy.next_version,
                policy.created,
                policy.updated,
                policy.name.lower(),
            ),
        )

    def get_managed_policy(self, account_id: str, name: str) -> ManagedPolicy | None:
        row = self._row(
            f"SELECT {_POLICY_COLUMNS} FROM managed_policies"
            " WHERE account_id = ? AND name_lower = ?",
            (account_id, name.lower()),
        )
        return ManagedPolicy(*row) if row else None

    def get_managed_policy_by_id(self, policy_id: str) -> ManagedPolicy | None:
        row = self._row(
            f"SELECT {_POLICY_COLUMNS} FROM managed_policies WHERE policy_id = ?", (policy_id,)
        )
        return ManagedPolicy(*row) if row else None

    def list_managed_policies(
        self, account_id: str, path_prefix: str, after: str | None, limit: int
    ) -> list[ManagedPolicy]:
        rows = self._rows(
            f"SELECT {_POLICY_COLUMNS} FROM managed_policies WHERE account_id = ?"
            " AND substr(path, 1, ?) = ? AND name_lower > ? ORDER BY name_lower LIMIT ?",
            (account_id, len(path_prefix), path_prefix, after or "", limit),
        )
        return [ManagedPolicy(*row) for row in rows]

    def update_managed_policy(self, policy: ManagedPolicy) -> None:
        self._run(
            "UPDATE managed_policies SET description = ?, default_version = ?,"
            " next_version = ?, updated = ? WHERE policy_id = ?",
            (
                policy.description,
                policy.default_version,
                policy.next_version,
                policy.updated,
                policy.policy_id,
            ),
        )

    def delete_managed_policy(self, policy_id: str) -> None:
        self._run("DELETE FROM tags WHERE entity_id = ?", (policy_id,))
        self._run("DELETE FROM managed_policy_versions WHERE policy_id = ?", (policy_id,))
        self._run("DELETE FROM managed_policies WHERE policy_id = ?", (policy_id,))

    def insert_policy_version(self, version: PolicyVersion) -> None:
        self._run(
            "INSERT INTO managed_policy_versions (policy_id, version, document, created)"
            " VALUES (?, ?, ?, ?)",
            (version.policy_id, version.version, version.document, version.created),
        )

    def get_policy_version(self, policy_id: str, version: int) -> PolicyVersion | None:
        row = self._row(
            "SELECT policy_id, version, document, created FROM managed_policy_versions"
            " WHERE policy_id = ? AND version = ?",
            (policy_id, version),
        )
        return PolicyVersion(*row) if row else None

    def list_policy_versions(self, policy_id: str) -> list[PolicyVersion]:
        rows = self._rows(
            "SELECT policy_id, version, document, created FROM managed_policy_versions"
            " WHERE policy_id = ? ORDER BY version DESC",
            (policy_id,),
        )
        return [PolicyVersion(*row) for row in rows]

    def delete_policy_version(self, policy_id: str, version: int) -> None:
        self._run(
            "DELETE FROM managed_policy_versions WHERE policy_id = ? AND version = ?",
            (policy_id, version),
        )

    # managed policies attached to roles, users and groups
    def attach_policy(self, attachment: PolicyAttachment) -> bool:
        if self._row(
            "SELECT 1 FROM policy_attachments WHERE entity_id = ? AND policy_arn = ?",
            (attachment.entity_id, attachment.policy_arn),
        ):
            return False
        order = self._row(
            "SELECT COALESCE(MAX(attached), 0) + 1 FROM policy_attachments WHERE entity_id = ?",
            (attachment.entity_id,),
        )
        self._run(
            f"INSERT INTO policy_attachments ({_ATTACHMENT_COLUMNS}, attached)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                attachment.entity_id,
                attachment.entity_kind,
                attachment.account_id,
                attachment.policy_arn,
                attachment.policy_id,
                order[0] if order else 1,
            ),
        )
        return True

    def detach_policy(self, entity_id: str, policy_arn: str) -> bool:
        attached = self._row(
            "SELECT 1 FROM policy_attachments WHERE entity_id = ? AND policy_arn = ?",
            (entity_id, policy_arn),
        )
        if attached:
            self._run(
                "DELETE FROM policy_attachments WHERE entity_id = ? AND policy_arn = ?",
                (entity_id, policy_arn),
            )
        return attached is not None

    def list_attached_policies(self, entity_id: str) -> list[PolicyAttachment]:
        rows = self._rows(
            f"SELECT {_ATTACHMENT_COLUMNS} FROM policy_attachments WHERE entity_id = ?"
            " ORDER BY attached",
            (entity_id,),
        )
        return [PolicyAttachment(*row) for row in rows]

    def list_policy_attachments(self, policy_arn: str) -> list[PolicyAttachment]:
        rows = self._rows(
            f"SELECT {_ATTACHMENT_COLUMNS} FROM policy_attachments WHERE policy_arn = ?"
            " ORDER BY entity_kind, entity_id",
            (policy_arn,),
        )
        return [PolicyAttachment(*row) for row in rows]

    def count_policy_attachments(self, account_id: str) -> dict[str, int]:
        rows = self._rows(
            "SELECT policy_arn, COUNT(*) FROM policy_attachments WHERE account_id = ?"
            " GROUP BY policy_arn",
            (account_id,),
        )
        return {arn: count for arn, count in rows}

    def attached_documents(self, entity_ids: Sequence[str]) -> list[tuple[str, str | None]]:
        if not entity_ids:
            return []
        marks = ", ".join("?" for _ in entity_ids)
        rows = self._rows(
            "SELECT a.entity_id, a.policy_arn, v.document FROM policy_attachments a"
            " LEFT JOIN managed_policies p ON p.policy_id = a.policy_id"
            " LEFT JOIN managed_policy_versions v"
            " ON v.policy_id = p.policy_id AND v.version = p.default_version"
            f" WHERE a.entity_id IN ({marks}) ORDER BY a.entity_id, a.attached",
            tuple(entity_ids),
        )
        order = {entity_id: index for index, entity_id in enumerate(entity_ids)}
        rows.sort(key=lambda row: order[row[0]])  # stable: attachment order kept within one
        return [(arn, document) for _, arn, document in rows]

    def count_boundary_uses(self, account_id: str) -> dict[str, int]:
        rows = self._rows(
            "SELECT permissions_boundary, COUNT(*) FROM ("
            " SELECT permissions_boundary FROM roles"
            " WHERE account_id = ? AND permissions_boundary IS NOT NULL"
            " UNION ALL SELECT permissions_boundary FROM users"
            " WHERE account_id = ? AND permissions_boundary IS NOT NULL"
            ") bounded GROUP BY permissions_boundary",
            (account_id, account_id),
        )
        return {arn: count for arn, count in rows}

    def list_policy_entities(self, account_id: str, policy_arn: str) -> list[PolicyEntity]:
        attached = (
            "SELECT {kind}, e.{id}, e.name, e.path, 'PermissionsPolicy' FROM policy_attachments a"
            " JOIN {table} e ON e.{id} = a.entity_id"
            " WHERE a.account_id = ? AND a.policy_arn = ?"
        )
        bounded = (
            "SELECT {kind}, {id}, name, path, 'PermissionsBoundary' FROM {table}"
            " WHERE account_id = ? AND permissions_boundary = ?"
        )
        parts = [
            attached.format(kind="'role'", id="role_id", table="roles"),
            attached.format(kind="'user'", id="user_id", table="users"),
            attached.format(kind="'group'", id="group_id", table="iam_groups"),
            bounded.format(kind="'role'", id="role_id", table="roles"),
            bounded.format(kind="'user'", id="user_id", table="users"),
        ]
        rows = self._rows(" UNION ALL ".join(parts), (account_id, policy_arn) * len(parts))
        entities = [PolicyEntity(*row) for row in rows]
        return sorted(entities, key=lambda entity: (entity.kind, entity.name.lower(), entity.usage))

    # groups, their members and their inline policies
    def insert_group(self, group: Group) -> None:
        self._run(
            f"INSERT INTO iam_groups ({_GROUP_COLUMNS}, name_lower) VALUES (?, ?, ?, ?, ?, ?)",
            (
                group.group_id,
                group.account_id,
                group.name,
                group.path,
                group.created,
                group.name.lower(),
            ),
        )

    def get_group(self, account_id: str, name: str) -> Group | None:
        row = self._row(
            f"SELECT {_GROUP_COLUMNS} FROM iam_groups WHERE account_id = ? AND name_lower = ?",
            (account_id, name.lower()),
        )
        return Group(*row) if row else None

    def get_group_by_id(self, group_id: str) -> Group | None:
        row = self._row(f"SELECT {_GROUP_COLUMNS} FROM iam_groups WHERE group_id = ?", (group_id,))
        return Group(*row) if row else None

    def list_groups(
        self, account_id: str, path_prefix: str, after: str | None, limit: int
    ) -> list[Group]:
        rows = self._rows(
            f"SELECT {_GROUP_COLUMNS} FROM iam_groups WHERE account_id = ?"
            " AND substr(path, 1, ?) = ? AND name_lower > ? ORDER BY name_lower LIMIT ?",
            (account_id, len(path_prefix), path_prefix, after or "", limit),
        )
        return [Group(*row) for row in rows]

    def update_group(self, group: Group) -> None:
        self._run(
            "UPDATE iam_groups SET name = ?, name_lower = ?, path = ? WHERE group_id = ?",
            (group.name, group.name.lower(), group.path, group.group_id),
        )

    def delete_group(self, group_id: str) -> None:
        self._run("DELETE FROM group_members WHERE group_id = ?", (group_id,))
        self._run("DELETE FROM group_policies WHERE group_id = ?", (group_id,))
        self._run("DELETE FROM iam_groups WHERE group_id = ?", (group_id,))

    def add_group_member(self, group_id: str, user_id: str) -> bool:
        if self._row(
            "SELECT 1 FROM group_members WHERE group_id = ? AND user_id = ?", (group_id, user_id)
        ):
            return False
        self._run(
            "INSERT INTO group_members (group_id, user_id) VALUES (?, ?)", (group_id, user_id)
        )
        return True

    def remove_group_member(self, group_id: str, user_id: str) -> bool:
        member = self._row(
            "SELECT 1 FROM group_members WHERE group_id = ? AND user_id = ?", (group_id, user_id)
        )
        if member:
            self._run(
                "DELETE FROM group_members WHERE group_id = ? AND user_id = ?", (group_id, user_id)
            )
        return member is not None

    def list_group_members(self, group_id: str, after: str | None, limit: int) -> list[User]:
        columns = ", ".join(f"u.{column.strip()}" for column in _USER_COLUMNS.split(","))
        rows = self._rows(
            f"SELECT {columns} FROM group_members m JOIN users u ON u.user_id = m.user_id"
            " WHERE m.group_id = ? AND u.name_lower > ? ORDER BY u.name_lower LIMIT ?",
            (group_id, after or "", limit),
        )
        return [User(*row) for row in rows]

    def count_group_members(self, group_id: str) -> int:
        row = self._row("SELECT COUNT(*) FROM group_members WHERE group_id = ?", (group_id,))
        return int(row[0]) if row else 0

    def list_groups_for_user(self, user_id: str) -> list[Group]:
        columns = ", ".join(f"g.{column.strip()}" for column in _GROUP_COLUMNS.split(","))
        rows = self._rows(
            f"SELECT {columns} FROM group_members m JOIN iam_groups g ON g.group_id = m.group_id"
            " WHERE m.user_id = ? ORDER BY g.name_lower",
            (user_id,),
        )
        return [Group(*row) for row in rows]

    def put_group_policy(self, policy: GroupPolicy) -> None:
        self._run(
            "DELETE FROM group_policies WHERE group_id = ? AND name_lower = ?",
            (policy.group_id, policy.name.lower()),
        )
        self._run(
            "INSERT INTO group_policies (group_id, name, name_lower, document) VALUES (?, ?, ?, ?)",
            (policy.group_id, policy.name, policy.name.lower(), policy.document),
        )

    def get_group_policy(self, group_id: str, name: str) -> GroupPolicy | None:
        row = self._row(
            "SELECT group_id, name, document FROM group_policies"
            " WHERE group_id = ? AND name_lower = ?",
            (group_id, name.lower()),
        )
        return GroupPolicy(*row) if row else None

    def list_group_policies(self, group_id: str) -> list[GroupPolicy]:
        rows = self._rows(
            "SELECT group_id, name, document FROM group_policies WHERE group_id = ?"
            " ORDER BY name_lower",
            (group_id,),
        )
        return [GroupPolicy(*row) for row in rows]

    def delete_group_policy(self, group_id: str, name: str) -> None:
        self._run(
            "DELETE FROM group_policies WHERE group_id = ? AND name_lower = ?",
            (group_id, name.lower()),
        )

    # instance profiles
    def insert_instance_profile(self, profile: InstanceProfile) -> None:
        self._run(
            f"INSERT INTO instance_profiles ({_PROFILE_COLUMNS}, name_lower)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                profile.profile_id,
                profile.account_id,
                profile.name,
                profile.path,
                profile.role_id,
                profile.created,
                profile.name.lower(),
            ),
        )

    def get_instance_profile(self, account_id: str, name: str) -> InstanceProfile | None:
        row = self._row(
            f"SELECT {_PROFILE_COLUMNS} FROM instance_profiles"
            " WHERE account_id = ? AND name_lower = ?",
            (account_id, name.lower()),
        )
        return InstanceProfile(*row) if row else None

    def get_instance_profile_by_id(self, profile_id: str) -> InstanceProfile | None:
        row = self._row(
            f"SELECT {_PROFILE_COLUMNS} FROM instance_profiles WHERE profile_id = ?",
            (profile_id,),
        )
        return InstanceProfile(*row) if row else None

    def list_instance_profiles(
        self, account_id: str, path_prefix: str, after: str | None, limit: int
    ) -> list[InstanceProfile]:
        rows = self._rows(
            f"SELECT {_PROFILE_COLUMNS} FROM instance_profiles WHERE account_id = ?"
            " AND substr(path, 1, ?) = ? AND name_lower > ? ORDER BY name_lower LIMIT ?",
            (account_id, len(path_prefix), path_prefix, after or "", limit),
        )
        return [InstanceProfile(*row) for row in rows]

    def list_instance_profiles_for_role(
        self, role_id: str, after: str | None, limit: int
    ) -> list[InstanceProfile]:
        rows = self._rows(
            f"SELECT {_PROFILE_COLUMNS} FROM instance_profiles WHERE role_id = ?"
            " AND name_lower > ? ORDER BY name_lower LIMIT ?",
            (role_id, after or "", limit),
        )
        return [InstanceProfile(*row) for row in rows]

    def set_instance_profile_role(self, profile_id: str, role_id: str | None) -> None:
        self._run(
            "UPDATE instance_profiles SET role_id = ? WHERE profile_id = ?", (role_id, profile_id)
        )

    def delete_instance_profile(self, profile_id: str) -> None:
        self._run("DELETE FROM tags WHERE entity_id = ?", (profile_id,))
        self._run("DELETE FROM instance_profiles WHERE profile_id = ?", (profile_id,))

    # nodes and instances
    def insert_node(self, node: Node) -> None:
        self._run(
            f"INSERT INTO nodes ({_NODE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                node.name,
                node.certificate_serial,
                node.enrolled,
                node.retired,
                node.last_contact,
                node.revision,
                node.capacity,
                node.subnet,
            ),
        )

    def get_node(self, name: str) -> Node | None:
        row = self._row(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE name = ?", (name,))
        return Node(*row) if row else None

    def list_nodes(self) -> list[Node]:
        return [
            Node(*row) for row in self._rows(f"SELECT {_NODE_COLUMNS} FROM nodes ORDER BY name")
        ]

    def update_node(self, node: Node) -> None:
        self._run(
            "UPDATE nodes SET certificate_serial = ?, retired = ?, last_contact = ?, revision = ?,"
            " capacity = ?, subnet = ? WHERE name = ?",
            (
                node.certificate_serial,
                node.retired,
                node.last_contact,
                node.revision,
                node.capacity,
                node.subnet,
                node.name,
            ),
        )

    def bump_node_revision(self, name: str) -> int:
        self._run("UPDATE nodes SET revision = revision + 1 WHERE name = ?", (name,))
        row = self._row("SELECT revision FROM nodes WHERE name = ?", (name,))
        return int(row[0]) if row else 0

    def active_instance_counts(self) -> dict[str, int]:
        rows = self._rows(
            "SELECT node_name, COUNT(*) FROM instances WHERE state != 'terminated'"
            " GROUP BY node_name"
        )
        return {str(name): int(count) for name, count in rows}

    def account_instance_count(self, account_id: str) -> int:
        row = self._row(
            "SELECT COUNT(*) FROM instances WHERE account_id = ? AND state != 'terminated'",
            (account_id,),
        )
        return int(row[0]) if row else 0

    def insert_instance(self, instance: Instance) -> None:
        values = [getattr(instance, name.strip()) for name in _INSTANCE_COLUMNS.split(",")]
        marks = ", ".join("?" for _ in values)
        self._run(f"INSERT INTO instances ({_INSTANCE_COLUMNS}) VALUES ({marks})", values)

    def get_instance(self, instance_id: str) -> Instance | None:
        row = self._row(
            f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE instance_id = ?", (instance_id,)
        )
        return Instance(*row) if row else None

    def get_instance_by_association(self, association_id: str) -> Instance | None:
        row = self._row(
            f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE association_id = ?",
            (association_id,),
        )
        return Instance(*row) if row else None

    def list_instances(self, account_id: str, after: str | None, limit: int) -> list[Instance]:
        rows = self._rows(
            f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE account_id = ? AND instance_id > ?"
            " ORDER BY instance_id LIMIT ?",
            (account_id, after or "", limit),
        )
        return [Instance(*row) for row in rows]

    def list_node_instances(self, node_name: str) -> list[Instance]:
        rows = self._rows(
            f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE node_name = ?"
            " AND state != 'terminated' ORDER BY instance_id",
            (node_name,),
        )
        return [Instance(*row) for row in rows]

    def update_instance(self, instance: Instance) -> None:
        names = [name.strip() for name in _INSTANCE_COLUMNS.split(",")][1:]
        assignments = ", ".join(f"{name} = ?" for name in names)
        values = [getattr(instance, name) for name in names] + [instance.instance_id]
        self._run(f"UPDATE instances SET {assignments} WHERE instance_id = ?", values)

    def instances_by_client_token(self, account_id: str, token: str) -> list[Instance]:
        rows = self._rows(
            f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE account_id = ? AND client_token = ?"
            " ORDER BY launch_index",
            (account_id, token),
        )
        return [Instance(*row) for row in rows]

    def live_addresses(self, subnet: str) -> set[str]:
        network = ipaddress.ip_network(subnet, strict=False)
        given_from = self._rows("SELECT DISTINCT subnet FROM instances WHERE state != 'terminated'")
        found: set[str] = set()
        for (other,) in given_from:
            if other is None:  # from before subnets: a hashed link-local address
                rows = self._rows(
                    "SELECT private_ip FROM instances WHERE subnet IS NULL"
                    " AND state != 'terminated'"
                )
            elif ipaddress.ip_network(other, strict=False) == network:
                # Each inside its subnet (given from it, or checked when it moved there): no
                # address parsed, which cost 16 µs each, 0.16 s a RunInstances at 10,000.
                found.update(
                    str(address)
                    for (address,) in self._rows(
                        "SELECT private_ip FROM instances"
                        " WHERE subnet = ? AND state != 'terminated'",
                        (other,),
                    )
                )
                continue
            elif ipaddress.ip_network(other, strict=False).overlaps(network):
                rows = self._rows(
                    "SELECT private_ip FROM instances WHERE subnet = ? AND state != 'terminated'",
                    (other,),
                )
            else:
                continue
            found.update(
                str(address) for (address,) in rows if ipaddress.ip_address(address) in network
            )
        return found

    def mac_in_use(self, mac: str) -> bool:
        row = self._row("SELECT 1 FROM instances WHERE mac = ? AND state != 'terminated'", (mac,))
        return row is not None

    def count_instances_with_profile(self, profile_id: str) -> int:
        row = self._row(
            "SELECT COUNT(*) FROM instances WHERE profile_id = ? AND state != 'terminated'",
            (profile_id,),
        )
        return int(row[0]) if row else 0

    # EC2 instance metadata defaults of an account
    def get_metadata_defaults(self, account_id: str) -> MetadataDefaults | None:
        row = self._row(
            "SELECT account_id, http_tokens, hop_limit, http_endpoint, metadata_tags, changed"
            " FROM instance_metadata_defaults WHERE account_id = ?",
            (account_id,),
        )
        return MetadataDefaults(*row) if row else None

    def put_metadata_defaults(self, defaults: MetadataDefaults) -> None:
        self._run(
            "DELETE FROM instance_metadata_defaults WHERE account_id = ?", (defaults.account_id,)
        )
        self._run(
            "INSERT INTO instance_metadata_defaults"
            " (account_id, http_tokens, hop_limit, http_endpoint, metadata_tags, changed)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                defaults.account_id,
                defaults.http_tokens,
                defaults.hop_limit,
                defaults.http_endpoint,
                defaults.metadata_tags,
                defaults.changed,
            ),
        )

    # key pairs
    def insert_key_pair(self, key_pair: KeyPair) -> None:
        self._run(
            f"INSERT INTO key_pairs ({_KEY_PAIR_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                key_pair.key_pair_id,
                key_pair.account_id,
                key_pair.name,
                key_pair.key_type,
                key_pair.fingerprint,
                key_pair.public_key,
                key_pair.created,
            ),
        )

    def get_key_pair(self, account_id: str, name: str) -> KeyPair | None:
        row = self._row(
            f"SELECT {_KEY_PAIR_COLUMNS} FROM key_pairs WHERE account_id = ? AND name = ?",
            (account_id, name),
        )
        return KeyPair(*row) if row else None

    def get_key_pair_by_id(self, key_pair_id: str) -> KeyPair | None:
        row = self._row(
            f"SELECT {_KEY_PAIR_COLUMNS} FROM key_pairs WHERE key_pair_id = ?", (key_pair_id,)
        )
        return KeyPair(*row) if row else None

    def list_key_pairs(self, account_id: str) -> list[KeyPair]:
        rows = self._rows(
            f"SELECT {_KEY_PAIR_COLUMNS} FROM key_pairs WHERE account_id = ?", (account_id,)
        )
        # Ordered here, by code point: database collations differ (PostgreSQL's follows the
        # locale), and an account holds a few thousand key pairs at most.
        return sorted((KeyPair(*row) for row in rows), key=lambda key_pair: key_pair.name)

    def count_key_pairs(self, account_id: str) -> int:
        row = self._row("SELECT COUNT(*) FROM key_pairs WHERE account_id = ?", (account_id,))
        return int(row[0]) if row else 0

    def delete_key_pair(self, key_pair_id: str) -> None:
        self._run("DELETE FROM tags WHERE entity_id = ?", (key_pair_id,))
        self._run("DELETE FROM key_pairs WHERE key_pair_id = ?", (key_pair_id,))

    # tags
    def get_tags(self, entity_id: str) -> list[Tag]:
        rows = self._rows(
            "SELECT key, value FROM tags WHERE entity_id = ? ORDER BY position, key_lower",
            (entity_id,),
        )
        return [Tag(*row) for row in rows]

    def put_tags(self, entity_id: str, tags: Sequence[Tag]) -> None:
        row = self._row("SELECT MAX(position) FROM tags WHERE entity_id = ?", (entity_id,))
        position = (row[0] if row and row[0] is not None else 0) + 1
        for tag in tags:
            existing = self._row(
                "SELECT position FROM tags WHERE entity_id = ? AND key_lower = ?",
                (entity_id, tag.key.lower()),
            )
            if existing:
                self._run(
                    "UPDATE tags SET key = ?, value = ? WHERE entity_id = ? AND key_lower = ?",
                    (tag.key, tag.value, entity_id, tag.key.lower()),
                )
            else:
                self._run(
                    "INSERT INTO tags (entity_id, key, key_lower, value, position)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (entity_id, tag.key, tag.key.lower(), tag.value, position),
                )
                position += 1

    def delete_tags(self, entity_id: str, keys: Sequence[str] | None = None) -> None:
        if keys is None:
            self._run("DELETE FROM tags WHERE entity_id = ?", (entity_id,))
            return
        for key in keys:
            self._run(
                "DELETE FROM tags WHERE entity_id = ? AND key_lower = ?", (entity_id, key.lower())
            )

    # shared state and the audit log (controller.shared)
    def get_shared_state(self, name: str) -> str | None:
        row = self._row("SELECT value FROM shared_state WHERE name = ?", (name,))
        return str(row[0]) if row else None

    def insert_shared_state(self, name: str, value: str, changed: str) -> None:
        self._run(
            "INSERT INTO shared_state (name, value, changed) VALUES (?, ?, ?)",
            (name, value, changed),
        )

    def replace_shared_state(self, name: str, expected: str, value: str, changed: str) -> bool:
        cursor = self._run(
            "UPDATE shared_state SET value = ?, changed = ? WHERE name = ? AND value = ?",
            (value, changed, name, expected),
        )
        return bool(cursor.rowcount == 1)

    def insert_audit_records(self, records: Sequence[AuditRow]) -> None:
        if not records:
            return
        marks = ", ".join("(?, ?, ?)" for _ in records)
        self._run(
            f"INSERT INTO audit_log (time, instance_id, record) VALUES {marks}",
            [value for record in records for value in record],
        )

    def list_audit_records(
        self, since: str | None, instance_id: str | None, after: int, limit: int
    ) -> list[tuple[int, str]]:
        conditions = ["id > ?"]
        args: list[object] = [after]
        if since is not None:
            conditions.append("time >= ?")
            args.append(since)
        if instance_id is not None:
            conditions.append("instance_id = ?")
            args.append(instance_id)
        rows = self._rows(
            f"SELECT id, record FROM audit_log WHERE {' AND '.join(conditions)}"
            " ORDER BY id LIMIT ?",
            [*args, limit],
        )
        return [(int(row_id), str(record)) for row_id, record in rows]
