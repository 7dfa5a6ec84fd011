"""Both backends' read caches: never an answer the transaction's snapshot would not give.

Other processes write the same database (the CLI, another controller): their commits must be seen
by the next transaction, whatever it has cached. Here they are another plain connection or another
store on the same database. SQLite's own plumbing is in test_store_cache.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from controller.store.base import Store, Transaction
from controller.store.postgresql import PostgreSQLStore
from controller.store.records import AccessKey, Account, Role, RolePolicy
from controller.store.sql import SqlTransaction
from controller.store.sqlite import SQLiteStore

ACCOUNT = "111111111111"
CREATED = "2024-05-01T12:00:00Z"
OLD_TRUST = '{"Version":"2012-10-17","Statement":[]}'
NEW_TRUST = '{"Version":"2012-10-17","Statement":[{"Effect":"Deny"}]}'
ROLE = Role("AROA00000000000000001", ACCOUNT, "web", "/", OLD_TRUST, None, 3600, CREATED)
KEY = AccessKey("AKIA0000000000000001", "secret" * 6 + "0123", ACCOUNT, None, "Active", CREATED)


class Other:
    """Another connection to the same database, as another process would have (autocommit;
    ``?`` placeholders on both backends)."""

    def __init__(self, execute: Callable[[str, Sequence[object]], Any]) -> None:
        self._execute = execute

    def execute(self, sql: str, args: Sequence[object] = ()) -> Any:
        return self._execute(sql, args)


@pytest.fixture(params=["sqlite", "postgresql"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Opens stores on one fresh database of the backend; closes them all afterwards."""
    opened: list[Store] = []
    if request.param == "sqlite":
        path = tmp_path / "rolecall.db"

        def open_one() -> Store:
            opened.append(SQLiteStore(path))
            return opened[-1]

    else:
        dsn: str = request.getfixturevalue("pg_dsn")

        def open_one() -> Store:
            opened.append(PostgreSQLStore(dsn, pool_size=1))
            return opened[-1]

    yield open_one
    for each in opened:
        each.close()


@pytest.fixture
def store(opener: Callable[[], Store]) -> Store:
    opened = opener()
    with opened.transaction() as tx:
        tx.insert_account(Account(ACCOUNT, "test", CREATED))
        tx.insert_role(ROLE)
        tx.put_role_policy(RolePolicy(ROLE.role_id, "read", OLD_TRUST))
        tx.insert_access_key(KEY)
    return opened


@pytest.fixture
def reopen(opener: Callable[[], Store], store: Store) -> Callable[[], Store]:
    return opener


@pytest.fixture
def other(store: Store) -> Iterator[Other]:
    if isinstance(store, SQLiteStore):
        connection = sqlite3.connect(store.path, isolation_level=None, timeout=10)
        try:
            yield Other(connection.execute)
        finally:
            connection.close()
        return
    import psycopg

    assert isinstance(store, PostgreSQLStore)
    with psycopg.connect(store.dsn, autocommit=True) as pg:
        yield Other(lambda sql, args: pg.execute(sql.replace("?", "%s").encode(), tuple(args)))


def trust(tx: Transaction) -> str | None:
    role = tx.get_role(ACCOUNT, "WEB")
    return role.assume_role_policy if role is not None else None


def read_trust(store: Store) -> str | None:
    with store.transaction() as tx:
        return trust(tx)


def test_a_change_committed_by_another_connection_is_seen_by_the_next_transaction(
    store: Store, other: Other
) -> None:
    assert read_trust(store) == OLD_TRUST  # now cached
    other.execute("UPDATE roles SET assume_role_policy = ?", (NEW_TRUST,))
    assert read_trust(store) == NEW_TRUST
    assert store.run(trust) == NEW_TRUST


def test_a_change_committed_by_another_store_is_seen_by_run(
    store: Store, reopen: Callable[[], Store]
) -> None:
    assert store.run(trust) == OLD_TRUST
    with reopen().transaction() as tx:
        tx.update_role(Role(**{**ROLE.__dict__, "assume_role_policy": NEW_TRUST}))
    assert store.run(trust) == NEW_TRUST


def test_an_access_key_deleted_elsewhere_stops_at_once(store: Store, other: Other) -> None:
    assert store.run(lambda tx: tx.get_access_key(KEY.access_key_id)) == KEY
    other.execute("DELETE FROM access_keys")
    assert store.run(lambda tx: tx.get_access_key(KEY.access_key_id)) is None


def test_a_transaction_reads_its_own_write_and_later_ones_see_it_committed(
    store: Store,
) -> None:
    assert read_trust(store) == OLD_TRUST
    with store.transaction() as tx:
        tx.update_role(Role(**{**ROLE.__dict__, "assume_role_policy": NEW_TRUST}))
        assert trust(tx) == NEW_TRUST
    assert read_trust(store) == NEW_TRUST
    assert store.run(trust) == NEW_TRUST


def test_a_rolled_back_write_leaves_the_committed_answer(store: Store) -> None:
    assert read_trust(store) == OLD_TRUST

    def change_then_fail(tx: Transaction) -> None:
        tx.update_role(Role(**{**ROLE.__dict__, "assume_role_policy": NEW_TRUST}))
        assert trust(tx) == NEW_TRUST
        raise RuntimeError("the request failed after writing")

    with pytest.raises(RuntimeError):
        store.run(change_then_fail)
    assert store.run(trust) == OLD_TRUST
    assert read_trust(store) == OLD_TRUST


def test_run_commits_what_its_work_writes(store: Store, other: Other) -> None:
    store.run(lambda tx: tx.delete_role_policy(ROLE.role_id, "read"))
    assert other.execute("SELECT COUNT(*) FROM role_policies").fetchone() == (0,)


def test_a_cached_list_cannot_be_changed_through_an_answer(store: Store) -> None:
    first = store.run(lambda tx: tx.list_role_policies(ROLE.role_id))
    first.clear()
    assert len(store.run(lambda tx: tx.list_role_policies(ROLE.role_id))) == 1


def test_run_answers_a_read_it_made_before_from_the_cache(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache is used at all: a second run at the same database state does not ask again."""
    asked: list[str] = []
    real = SqlTransaction.get_role

    def counted(tx: SqlTransaction, account_id: str, name: str) -> Role | None:
        asked.append(name)
        return real(tx, account_id, name)

    monkeypatch.setattr(SqlTransaction, "get_role", counted)
    assert store.run(trust) == OLD_TRUST
    assert store.run(trust) == OLD_TRUST
    assert asked == ["web"]


def test_a_transaction_never_mixes_a_cached_answer_with_a_newer_snapshot(
    store: Store, other: Other
) -> None:
    """Another process commits between a cached answer and the transaction's first statement:
    the store tries the work again without the cache, so it sees only the newer state."""
    assert store.run(trust) == OLD_TRUST  # cached
    seen: list[tuple[str | None, int]] = []
    changed = False

    def work(tx: Transaction) -> None:
        nonlocal changed
        cached = trust(tx)
        if not changed:
            changed = True
            other.execute("UPDATE roles SET assume_role_policy = ?", (NEW_TRUST,))
            other.execute("DELETE FROM role_policies")
        seen.append((cached, len(tx.list_role_policies(ROLE.role_id))))

    store.run(work)
    assert seen == [(NEW_TRUST, 0)]


def test_a_request_answered_from_the_cache_alone_waits_for_no_lock(
    store: Store, other: Other
) -> None:
    """Another process holds a lock that would hold up a read of the table (SQLite's write
    lock, PostgreSQL's ACCESS EXCLUSIVE): a request the cache answers does not wait for it."""
    assert store.run(trust) == OLD_TRUST
    if isinstance(store, SQLiteStore):
        other.execute("BEGIN IMMEDIATE")
    else:
        other.execute("BEGIN")
        other.execute("LOCK TABLE roles IN ACCESS EXCLUSIVE MODE")
    try:
        assert store.run(trust) == OLD_TRUST
    finally:
        other.execute("ROLLBACK")
