"""The SQLite store's read cache: never an answer the transaction's snapshot would not give.

Other processes write the same file (the CLI, another controller): their commits must be seen by
the next transaction, whatever it has cached. Here they are another ``sqlite3`` connection or
another SQLiteStore on the same file. What both backends' caches promise is in
test_store_cache_backends.py; this file holds SQLite's own plumbing (its write lock, its retry).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.store.base import Transaction
from controller.store.records import AccessKey, Account, Role, RolePolicy
from controller.store.sqlite import SQLiteStore

ACCOUNT = "111111111111"
CREATED = "2024-05-01T12:00:00Z"
OLD_TRUST = '{"Version":"2012-10-17","Statement":[]}'
NEW_TRUST = '{"Version":"2012-10-17","Statement":[{"Effect":"Deny"}]}'
ROLE = Role("AROA00000000000000001", ACCOUNT, "web", "/", OLD_TRUST, None, 3600, CREATED)
KEY = AccessKey("AKIA0000000000000001", "secret" * 6 + "0123", ACCOUNT, None, "Active", CREATED)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "rolecall.db"


@pytest.fixture
def store(path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(path)
    with opened.transaction() as tx:
        tx.insert_account(Account(ACCOUNT, "test", CREATED))
        tx.insert_role(ROLE)
        tx.put_role_policy(RolePolicy(ROLE.role_id, "read", OLD_TRUST))
        tx.insert_access_key(KEY)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def other(path: Path, store: SQLiteStore) -> Iterator[sqlite3.Connection]:
    """Another connection to the same file, as another process would have."""
    connection = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        yield connection
    finally:
        connection.close()


def trust(tx: Transaction) -> str | None:
    role = tx.get_role(ACCOUNT, "WEB")
    return role.assume_role_policy if role is not None else None


def read_trust(store: SQLiteStore) -> str | None:
    with store.transaction() as tx:
        return trust(tx)


def test_run_answers_from_the_cache_while_another_connection_holds_the_write_lock(
    store: SQLiteStore, other: sqlite3.Connection
) -> None:
    assert store.run(trust) == OLD_TRUST
    other.execute("BEGIN IMMEDIATE")  # a writer in another process, mid-transaction
    try:
        # With BEGIN IMMEDIATE this would wait for the lock (and fail after 10 s).
        assert store.run(trust) == OLD_TRUST
    finally:
        other.execute("ROLLBACK")


def test_run_tries_again_when_the_database_changed_after_a_cached_answer(
    store: SQLiteStore, other: sqlite3.Connection
) -> None:
    assert store.run(trust) == OLD_TRUST  # cached
    tries: list[tuple[str | None, int]] = []
    changed = False

    def work(tx: Transaction) -> None:
        nonlocal changed
        cached = trust(tx)
        if not changed:  # another process commits between the cached answer and the next read
            changed = True
            other.execute("UPDATE roles SET assume_role_policy = ?", (NEW_TRUST,))
            other.execute("DELETE FROM role_policies")
        tries.append((cached, len(tx.list_role_policies(ROLE.role_id))))

    store.run(work)
    # The first try would have mixed two snapshots (the old trust policy, no role policies):
    # it ended at its first read, and the second saw only the new one.
    assert tries == [(NEW_TRUST, 0)]


def test_run_tries_again_even_when_the_work_swallows_the_signal(
    store: SQLiteStore, other: sqlite3.Connection
) -> None:
    assert store.run(trust) == OLD_TRUST
    answers: list[str | None] = []

    def work(tx: Transaction) -> str | None:
        cached = trust(tx)
        if not answers:
            other.execute("UPDATE roles SET assume_role_policy = ?", (NEW_TRUST,))
        try:
            tx.list_role_policies(ROLE.role_id)
        except BaseException:  # noqa: S110 - a careless handler, on purpose
            pass
        answers.append(cached)
        return cached

    assert store.run(work) == NEW_TRUST
    assert answers == [OLD_TRUST, NEW_TRUST]
