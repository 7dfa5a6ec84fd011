"""``rolecall-controller migrate-store --to DSN``: an SQLite store copied into PostgreSQL,
idempotently, verified by counts and checksums, the SQLite file untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import psycopg
import pytest

from controller.cli import main
from controller.store.base import Store
from controller.store.migrate import TABLES, copy_to_postgresql
from controller.store.postgresql import PostgreSQLStore
from controller.store.records import Account, Node, Tag
from controller.store.sqlite import SQLiteStore
from tests.unit.test_store import instance, key_pair, profile, role

ACCOUNT = "111122223333"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """An initialised state directory whose SQLite store holds one of everything."""
    directory = tmp_path / "state"
    assert main(["--state-dir", str(directory), "init", "--account-id", ACCOUNT]) == 0
    store = SQLiteStore(directory / "rolecall.db")
    try:
        with store.transaction() as tx:
            web = role("Web", ACCOUNT)
            tx.insert_role(web)
            tx.put_tags(web.role_id, [Tag("team", "a"), Tag("Cost", "b")])
            box = profile("box", ACCOUNT)
            tx.insert_instance_profile(box)
            tx.set_instance_profile_role(box.profile_id, web.role_id)
            tx.insert_node(Node("hv1", "0a", "2024-05-01T00:00:00Z", None, None, 3, 10))
            tx.insert_instance(instance("i-0000000000000001", ACCOUNT, "running"))
            tx.insert_key_pair(key_pair("deploy", ACCOUNT))
    finally:
        store.close()
    return directory


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def migrate(state: Path, dsn: str) -> int:
    return main(["--state-dir", str(state), "migrate-store", "--to", dsn])


def snapshot(store: Store) -> dict[str, Any]:
    with store.transaction() as tx:
        roles = tx.list_roles(ACCOUNT, "/", None, 100)
        return {
            "accounts": tx.list_accounts(),
            "roles": roles,
            "tags": [tx.get_tags(each.role_id) for each in roles],
            "profiles": tx.list_instance_profiles(ACCOUNT, "/", None, 100),
            "nodes": tx.list_nodes(),
            "instances": tx.list_instances(ACCOUNT, None, 100),
            "key_pairs": tx.list_key_pairs(ACCOUNT),
            "keys": tx.list_access_keys(ACCOUNT, None),
        }


def test_the_copy_holds_what_the_sqlite_store_holds_and_leaves_the_file_unchanged(
    state: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    database = state / "rolecall.db"
    before = digest(database)
    assert migrate(state, pg_dsn) == 0
    out = capsys.readouterr().out
    assert digest(database) == before
    assert "every table's count and checksum match" in out
    for table in TABLES:
        assert any(
            line.startswith(table + " ") and line.endswith("ok") for line in out.splitlines()
        )
    sqlite_store, pg_store = SQLiteStore(database), PostgreSQLStore(pg_dsn)
    try:
        assert snapshot(pg_store) == snapshot(sqlite_store)
    finally:
        sqlite_store.close()
        pg_store.close()


def test_a_second_run_copies_nothing_and_a_later_one_only_what_is_new(
    state: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert migrate(state, pg_dsn) == 0
    capsys.readouterr()
    assert migrate(state, pg_dsn) == 0
    assert "Nothing new to copy" in capsys.readouterr().out
    store = SQLiteStore(state / "rolecall.db")
    try:
        store.run(lambda tx: tx.insert_role(role("Later", ACCOUNT)))
    finally:
        store.close()
    assert migrate(state, pg_dsn) == 0
    assert "Copied 1 rows" in capsys.readouterr().out


def test_a_target_holding_other_data_is_refused_and_nothing_is_copied(
    state: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    other = PostgreSQLStore(pg_dsn)
    try:
        other.run(lambda tx: tx.insert_account(Account("999999999999", "else", "then")))
    finally:
        other.close()
    assert migrate(state, pg_dsn) == 1
    error = capsys.readouterr().err
    assert "holds 1 row(s) of accounts that the SQLite store" in error
    assert "nothing was copied" in error
    with psycopg.connect(pg_dsn) as connection:
        assert connection.execute("SELECT COUNT(*) FROM roles").fetchone() == (0,)
        assert connection.execute("SELECT account_id FROM accounts").fetchall() == [
            ("999999999999",)
        ]


def test_a_copy_that_fails_before_its_commit_leaves_the_target_empty(
    state: Path, pg_dsn: str
) -> None:
    def fail(connection: object) -> None:
        raise RuntimeError("the connection broke mid-copy")

    with pytest.raises(RuntimeError):
        copy_to_postgresql(state / "rolecall.db", pg_dsn, before_commit=fail)
    with psycopg.connect(pg_dsn) as connection:
        for table in TABLES:
            counted = connection.execute(f"SELECT COUNT(*) FROM {table}")  # noqa: S608 - ours
            assert counted.fetchone() == (0,), table


def test_a_bad_dsn_is_refused_naming_the_flag_without_its_password(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert migrate(state, "host=db password=hunter2 hunter2") == 1
    error = capsys.readouterr().err
    assert "--to: not a valid libpq connection string" in error
    assert "hunter2" not in error
