"""The reads a store may answer from its cache: the ones every API request makes.

Who is calling and what they may do (an access key, a user or role and its policies, tags), and
what a request signed with instance credentials checks (still running, still holding the role,
on a node still enrolled). Each backend's transaction decides in `_cached` whether the answer may
come from its cache (SQLite: `PRAGMA data_version`; PostgreSQL: the database snapshot).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import TypeVar

from controller.store.records import (
    AccessKey,
    Group,
    GroupPolicy,
    Instance,
    InstanceProfile,
    Node,
    Role,
    RolePolicy,
    Tag,
    User,
    UserPolicy,
)
from controller.store.sql import SqlTransaction

_T = TypeVar("_T")


class CachedReads(SqlTransaction):
    """`SqlTransaction` whose cacheable reads go through `_cached`.

    Records are frozen, so a cached one may be handed out again; lists are kept as tuples and
    handed out as new lists. Names are case-insensitive: one entry per lowercase name."""

    @abc.abstractmethod
    def _cached(self, read: Callable[..., _T], *args: str) -> _T:
        """``read(self, *args)``, answered from the cache when it may be."""

    def get_access_key(self, access_key_id: str) -> AccessKey | None:
        return self._cached(SqlTransaction.get_access_key, access_key_id)

    def get_user(self, account_id: str, name: str) -> User | None:
        return self._cached(_get_user, account_id, name.lower())

    def get_role(self, account_id: str, name: str) -> Role | None:
        return self._cached(_get_role, account_id, name.lower())

    def get_role_by_id(self, role_id: str) -> Role | None:
        return self._cached(SqlTransaction.get_role_by_id, role_id)

    def list_user_policies(self, user_id: str) -> list[UserPolicy]:
        return list(self._cached(_user_policies, user_id))

    def list_role_policies(self, role_id: str) -> list[RolePolicy]:
        return list(self._cached(_role_policies, role_id))

    def get_tags(self, entity_id: str) -> list[Tag]:
        return list(self._cached(_tags, entity_id))

    def list_groups_for_user(self, user_id: str) -> list[Group]:
        return list(self._cached(_groups_for_user, user_id))

    def list_group_policies(self, group_id: str) -> list[GroupPolicy]:
        return list(self._cached(_group_policies, group_id))

    def attached_documents(self, entity_ids: Sequence[str]) -> list[tuple[str, str | None]]:
        return list(self._cached(_attached_documents, *entity_ids))

    def get_instance(self, instance_id: str) -> Instance | None:
        return self._cached(SqlTransaction.get_instance, instance_id)

    def get_instance_profile_by_id(self, profile_id: str) -> InstanceProfile | None:
        return self._cached(SqlTransaction.get_instance_profile_by_id, profile_id)

    def get_node(self, name: str) -> Node | None:
        return self._cached(SqlTransaction.get_node, name)


def _get_user(tx: SqlTransaction, account_id: str, name_lower: str) -> User | None:
    return SqlTransaction.get_user(tx, account_id, name_lower)


def _get_role(tx: SqlTransaction, account_id: str, name_lower: str) -> Role | None:
    return SqlTransaction.get_role(tx, account_id, name_lower)


def _user_policies(tx: SqlTransaction, user_id: str) -> tuple[UserPolicy, ...]:
    return tuple(SqlTransaction.list_user_policies(tx, user_id))


def _role_policies(tx: SqlTransaction, role_id: str) -> tuple[RolePolicy, ...]:
    return tuple(SqlTransaction.list_role_policies(tx, role_id))


def _tags(tx: SqlTransaction, entity_id: str) -> tuple[Tag, ...]:
    return tuple(SqlTransaction.get_tags(tx, entity_id))


def _groups_for_user(tx: SqlTransaction, user_id: str) -> tuple[Group, ...]:
    return tuple(SqlTransaction.list_groups_for_user(tx, user_id))


def _group_policies(tx: SqlTransaction, group_id: str) -> tuple[GroupPolicy, ...]:
    return tuple(SqlTransaction.list_group_policies(tx, group_id))


def _attached_documents(tx: SqlTransaction, *entity_ids: str) -> tuple[tuple[str, str | None], ...]:
    return tuple(SqlTransaction.attached_documents(tx, entity_ids))
