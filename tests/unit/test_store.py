"""The store keeps RoleCall's state: migrations, transactions, IAM's case-insensitive names, tags.

Every test that is not about one backend's plumbing runs against each backend in `BACKENDS`; a new
backend (PostgreSQL) is one more entry there, with no change to the tests.
"""

from __future__ import annotations

import itertools
import os
import re
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from controller.store.availability import RETRY_INTERVAL
from controller.store.base import Conflict, Store, StoreError, StoreUnavailable
from controller.store.migrate import TABLES
from controller.store.postgresql import PostgreSQLStore, describe_dsn
from controller.store.records import (
    AccessKey,
    Account,
    Instance,
    InstanceProfile,
    KeyPair,
    Node,
    Role,
    RolePolicy,
    Tag,
    User,
    UserPolicy,
)
from controller.store.sql import migrations, split_statements
from controller.store.sqlite import SQLiteStore
from tests.pg import Cluster
from tests.waiting import wait_until

ACCOUNT = "111111111111"
OTHER_ACCOUNT = "222222222222"
CREATED = "2024-05-01T12:00:00Z"
TRUST = '{"Version":"2012-10-17","Statement":[]}'


# Backends


@dataclass(frozen=True)
class Backend:
    """One database for one test: how to open a store on it, and raw SQL beside the store."""

    name: str
    #: How the backend names the database in its messages (a path, a URL).
    location: str
    open: Callable[[], Store]
    #: Run one statement outside any store (``?`` placeholders) and return its rows.
    execute: Callable[[str, Sequence[object]], list[tuple[object, ...]]]


@contextmanager
def sqlite_backend(tmp_path: Path) -> Iterator[Backend]:
    path = tmp_path / "rolecall.db"

    def execute(sql: str, args: Sequence[object] = ()) -> list[tuple[object, ...]]:
        connection = sqlite3.connect(path)
        try:
            with connection:
                return connection.execute(sql, tuple(args)).fetchall()
        finally:
            connection.close()

    yield Backend("sqlite", str(path), lambda: SQLiteStore(path), execute)


_SHARED: dict[int, str] = {}


def _shared_database(cluster: Cluster) -> str:
    """One migrated database per cluster for these tests, emptied before each: creating a
    database per test costs 0.2 to 0.8 s, emptying one a few milliseconds."""
    if id(cluster) not in _SHARED:
        dsn = cluster.dsn(cluster.create_database())
        PostgreSQLStore(dsn).close()
        _SHARED[id(cluster)] = dsn
    dsn = _SHARED[id(cluster)]
    import psycopg

    with psycopg.connect(dsn) as connection:
        connection.execute(f"TRUNCATE {', '.join(TABLES)}".encode())
        connection.execute("DELETE FROM schema_version")
        connection.execute(
            "INSERT INTO schema_version (version) VALUES (%s)",
            (migrations("postgresql")[-1][0],),
        )
    return dsn


@contextmanager
def postgresql_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    dsn = _shared_database(request.getfixturevalue("pg_cluster"))

    def execute(sql: str, args: Sequence[object] = ()) -> list[tuple[object, ...]]:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as connection:
            cursor = connection.execute(sql.replace("?", "%s").encode(), tuple(args))
            return list(cursor.fetchall()) if cursor.description else []

    yield Backend("postgresql", describe_dsn(dsn), lambda: PostgreSQLStore(dsn), execute)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest], AbstractContextManager[Backend]]] = {
    "sqlite": lambda request: sqlite_backend(request.getfixturevalue("tmp_path")),
    "postgresql": postgresql_backend,
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    with BACKENDS[request.param](request) as opened:
        yield opened


@pytest.fixture
def open_store(backend: Backend) -> Iterator[Callable[[], Store]]:
    """Opens stores on the test's database and closes every one of them afterwards."""
    opened: list[Store] = []

    def open_one() -> Store:
        store = backend.open()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[[], Store]) -> Store:
    """A migrated store holding two accounts."""
    fresh = open_store()
    with fresh.transaction() as tx:
        tx.insert_account(Account(ACCOUNT, "first", CREATED))
        tx.insert_account(Account(OTHER_ACCOUNT, "second", "2024-05-02T12:00:00Z"))
    return fresh


# Records

_serial = itertools.count(1)


def role(name: str, account_id: str = ACCOUNT, path: str = "/") -> Role:
    return Role(
        role_id=f"AROA{next(_serial):017d}",
        account_id=account_id,
        name=name,
        path=path,
        assume_role_policy=TRUST,
        description=None,
        max_session_duration=3600,
        created=CREATED,
    )


def profile(name: str, account_id: str = ACCOUNT, path: str = "/") -> InstanceProfile:
    return InstanceProfile(
        profile_id=f"AIPA{next(_serial):017d}",
        account_id=account_id,
        name=name,
        path=path,
        role_id=None,
        created=CREATED,
    )


def add_roles(store: Store, *roles: Role) -> None:
    with store.transaction() as tx:
        for each in roles:
            tx.insert_role(each)


def add_profiles(store: Store, *profiles: InstanceProfile) -> None:
    with store.transaction() as tx:
        for each in profiles:
            tx.insert_instance_profile(each)


def role_names(roles: Sequence[Role]) -> list[str]:
    return [each.name for each in roles]


def profile_names(profiles: Sequence[InstanceProfile]) -> list[str]:
    return [each.name for each in profiles]


# Migrations


def test_shipped_migrations_are_numbered_from_one_without_gaps() -> None:
    versions = [version for version, _ in migrations()]
    assert versions == list(range(1, len(versions) + 1))
    assert versions


def test_new_store_is_at_the_newest_shipped_schema_version(store: Store, backend: Backend) -> None:
    assert store.schema_version() == migrations(backend.name)[-1][0]


def test_migrated_store_records_one_schema_version_row(store: Store, backend: Backend) -> None:
    assert backend.execute("SELECT version FROM schema_version", ()) == [
        (migrations(backend.name)[-1][0],)
    ]


def test_reopening_keeps_the_data(open_store: Callable[[], Store]) -> None:
    first = open_store()
    with first.transaction() as tx:
        tx.insert_account(Account(ACCOUNT, "first", CREATED))
    first.close()
    with open_store().transaction() as tx:
        assert tx.get_account(ACCOUNT) == Account(ACCOUNT, "first", CREATED)


def test_reopening_does_not_run_the_migrations_again(
    open_store: Callable[[], Store], backend: Backend
) -> None:
    open_store().close()
    reopened = open_store()
    assert reopened.schema_version() == migrations(backend.name)[-1][0]
    assert backend.execute("SELECT version FROM schema_version", ()) == [
        (migrations(backend.name)[-1][0],)
    ]


def test_newer_schema_version_is_refused_naming_both_versions(
    open_store: Callable[[], Store], backend: Backend
) -> None:
    open_store().close()
    shipped = migrations(backend.name)[-1][0]
    newer = shipped + 41
    backend.execute("UPDATE schema_version SET version = ?", (newer,))
    with pytest.raises(StoreError) as raised:
        open_store()
    message = str(raised.value).replace(backend.location, "<database>")
    assert re.search(rf"\b{newer}\b", message), message
    assert re.search(rf"\b{shipped}\b", message), message


def test_each_backend_has_exactly_one_migration_per_version() -> None:
    for name in BACKENDS:
        versions = [version for version, _ in migrations(name)]
        assert versions == list(range(1, len(versions) + 1)), name
    assert len(migrations("sqlite")) == len(migrations("postgresql"))


# PostgreSQL plumbing


def test_an_empty_postgresql_database_is_migrated_to_the_newest_version(pg_dsn: str) -> None:
    store = PostgreSQLStore(pg_dsn)
    try:
        assert store.schema_version() == migrations("postgresql")[-1][0]
        with store.transaction() as tx:
            tx.insert_account(Account(ACCOUNT, "first", CREATED))
            tx.insert_role(role("b-role"))
            tx.insert_role(role("a_role"))
            tx.insert_role(role("ab"))
            # Code point order, as on SQLite, whatever the database's locale ("_" < "b" < "-"
            # would not hold under en_US).
            assert role_names(tx.list_roles(ACCOUNT, "/", None, 10)) == ["a_role", "ab", "b-role"]
    finally:
        store.close()


def test_controllers_starting_at_once_migrate_the_database_once(pg_dsn: str) -> None:
    """Two stores opened at the same moment on an empty database: the advisory lock makes the
    second wait for the first's migration, then find nothing to do."""
    import psycopg

    opened: list[PostgreSQLStore] = []
    failures: list[BaseException] = []
    start = threading.Barrier(3)

    def open_one() -> None:
        start.wait()
        try:
            opened.append(PostgreSQLStore(pg_dsn))
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=open_one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for store in opened:
        store.close()
    assert failures == []
    with psycopg.connect(pg_dsn) as connection:
        rows = connection.execute("SELECT version FROM schema_version").fetchall()
    assert rows == [(migrations("postgresql")[-1][0],)]


def test_a_dsn_password_never_shows_in_a_store_error(pg_cluster: Cluster, pg_dsn: str) -> None:
    secret = "Sup3r-s3cret-pw"
    wrong = pg_dsn.replace(f"passfile={pg_cluster.passfile}", f"password={secret}")
    with pytest.raises(StoreError) as refused:
        PostgreSQLStore(wrong)
    message = str(refused.value)
    assert "password authentication failed" in message
    assert secret not in message
    assert f"port={pg_cluster.primary.port}" in message
    # A malformed DSN: libpq's own message may quote a piece of it.
    for malformed in (f"host=127.0.0.1 password={secret} {secret}", f"postgresql://u:{secret}@/"):
        with pytest.raises(StoreError) as bad:
            PostgreSQLStore(malformed + " connect_timeout=2")
        assert secret not in str(bad.value)


def test_describe_dsn_names_host_port_database_and_user_only() -> None:
    described = describe_dsn("host=db1,db2 port=5432 dbname=rc user=rc password=hunter2")
    assert described == "PostgreSQL host=db1,db2 port=5432 dbname=rc user=rc"
    assert "hunter2" not in describe_dsn("postgresql://rc:hunter2@db1:5432/rc")


def test_a_stopped_server_fails_calls_at_once_but_one_trial_per_interval_until_it_is_back(
    pg_cluster: Cluster, pg_dsn: str
) -> None:
    """The store is called on the controller's reactor thread: once a call found the server
    unreachable (a StoreError naming the server, no password), the calls that follow raise
    StoreUnavailable without asking the pool for a connection (which would wait), except one
    trial per interval (the monotonic clock is the test's); a trial finds the server once it is
    back. Then a restart kills every pooled connection, and the next call still works: its
    COMMIT was never sent, so it is tried again on a fresh connection."""
    clock = Clock()
    # After the restart the call waits for a fresh connection: a busy test machine may need
    # more than the default's fraction of a second for it.
    store = PostgreSQLStore(pg_dsn, pool_size=2, clock=clock.seconds, reconnect_wait=1.0)

    def get_account() -> Account | None:
        return store.run(lambda tx: tx.get_account(ACCOUNT))

    def pool_asked() -> int:
        return int(store._pool.get_stats().get("requests_num", 0))

    try:
        store.run(lambda tx: tx.insert_account(Account(ACCOUNT, "first", CREATED)))
        pg_cluster.pg_ctl(pg_cluster.primary, "stop", "-m", "immediate", "-w")
        try:
            # Its pooled connection is broken, and no fresh one comes: the store is down.
            with pytest.raises(StoreUnavailable) as first:
                get_account()
            assert f"port={pg_cluster.primary.port}" in str(first.value)
            assert store.availability.down
            asked = pool_asked()
            for _ in range(5):
                with pytest.raises(StoreUnavailable) as refused:
                    get_account()
                assert "is unavailable" in str(refused.value)
            assert pool_asked() == asked, "a call waited for a connection while down"
            clock.advance(RETRY_INTERVAL)
            with pytest.raises(StoreUnavailable):
                get_account()  # the interval's trial: the pool is asked, and has none
            with pytest.raises(StoreUnavailable):
                get_account()
            assert pool_asked() == asked + 1
        finally:
            pg_cluster.pg_ctl(
                pg_cluster.primary, "start", "-w", "-o", f"-p {pg_cluster.primary.port}"
            )

        def back() -> bool:
            clock.advance(RETRY_INTERVAL)
            return _reachable(store)

        wait_until(back, 15, "a trial to find the server back")
        assert not store.availability.down
        pg_cluster.restart(pg_cluster.primary, "immediate")
        assert get_account() == Account(ACCOUNT, "first", CREATED)
    finally:
        store.close()


def _reachable(store: Store) -> bool:
    try:
        return store.run(lambda tx: tx.get_account(ACCOUNT)) == Account(ACCOUNT, "first", CREATED)
    except StoreError:
        return False


# SQLite plumbing


def test_sqlite_file_is_created_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "rolecall.db"
    previous = os.umask(0o022)
    try:
        store = SQLiteStore(path)
    finally:
        os.umask(previous)
    store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_sqlite_write_ahead_log_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "rolecall.db"
    previous = os.umask(0o022)
    try:
        store = SQLiteStore(path)
        try:
            with store.transaction() as tx:
                tx.insert_account(Account(ACCOUNT, "first", CREATED))
            wal = Path(f"{path}-wal")
            assert wal.exists()
            assert stat.S_IMODE(wal.stat().st_mode) == 0o600
        finally:
            store.close()
    finally:
        os.umask(previous)


def test_sqlite_journal_mode_is_wal(tmp_path: Path) -> None:
    path = tmp_path / "rolecall.db"
    SQLiteStore(path).close()
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        connection.close()


def test_sqlite_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "rolecall.db"
    path.write_bytes(b"this is not an SQLite database, it only has its name" * 40)
    with pytest.raises(StoreError, match="cannot open the SQLite store"):
        SQLiteStore(path)


# Transactions


def test_transaction_commits_when_its_block_succeeds(store: Store) -> None:
    with store.transaction() as tx:
        tx.insert_account(Account("333333333333", "third", CREATED))
    with store.transaction() as tx:
        assert tx.get_account("333333333333") == Account("333333333333", "third", CREATED)


def test_transaction_rolls_back_when_its_block_raises(store: Store) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.transaction() as tx:
        tx.insert_account(Account("333333333333", "third", CREATED))
        tx.insert_role(role("web"))
        raise Boom
    with store.transaction() as tx:
        assert tx.get_account("333333333333") is None
        assert tx.get_role(ACCOUNT, "web") is None


def test_conflict_rolls_back_the_whole_transaction(store: Store) -> None:
    add_roles(store, role("existing"))
    with pytest.raises(Conflict), store.transaction() as tx:
        tx.insert_role(role("fresh"))
        tx.insert_role(role("EXISTING"))
    with store.transaction() as tx:
        assert tx.get_role(ACCOUNT, "fresh") is None


def test_store_can_be_used_again_after_a_rolled_back_transaction(store: Store) -> None:
    with pytest.raises(ValueError), store.transaction():
        raise ValueError("abandon")
    add_roles(store, role("after"))
    with store.transaction() as tx:
        assert tx.get_role(ACCOUNT, "after") is not None


# Accounts and access keys


def test_accounts_are_listed_in_creation_order(store: Store) -> None:
    with store.transaction() as tx:
        tx.insert_account(Account("000000000000", "earliest", "2024-01-01T00:00:00Z"))
        listed = [account.account_id for account in tx.list_accounts()]
    assert listed == ["000000000000", ACCOUNT, OTHER_ACCOUNT]


def test_access_keys_are_listed_for_the_root_or_for_one_user(store: Store) -> None:
    root_key = AccessKey("AKIAROOT000000000001", "secret-1", ACCOUNT, None, "Active", CREATED)
    user_key = AccessKey("AKIAUSER000000000001", "secret-2", ACCOUNT, "alice", "Active", CREATED)
    with store.transaction() as tx:
        tx.insert_access_key(root_key)
        tx.insert_access_key(user_key)
        assert tx.list_access_keys(ACCOUNT, None) == [root_key]
        assert tx.list_access_keys(ACCOUNT, "alice") == [user_key]
        assert tx.get_access_key("AKIAUSER000000000001") == user_key


def test_access_key_id_is_unique(store: Store) -> None:
    key = AccessKey("AKIAROOT000000000001", "secret-1", ACCOUNT, None, "Active", CREATED)
    with pytest.raises(Conflict), store.transaction() as tx:
        tx.insert_access_key(key)
        tx.insert_access_key(key)


def test_access_key_repr_never_shows_the_secret() -> None:
    key = AccessKey(
        "AKIAROOT000000000001", "wJalrXUtnFEMI/K7MDENG", ACCOUNT, None, "Active", CREATED
    )
    shown = [repr(key), str(key), f"{key}", repr([key]), repr({"key": key})]
    assert not [text for text in shown if "wJalrXUtnFEMI" in text]
    assert "AKIAROOT000000000001" in repr(key)


# Unique names


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("web", "web"),
        ("web", "WEB"),
        ("Web-Server", "wEB-sERVER"),
    ],
)
def test_role_name_taken_in_any_case_is_a_conflict(store: Store, first: str, second: str) -> None:
    add_roles(store, role(first))
    with pytest.raises(Conflict), store.transaction() as tx:
        tx.insert_role(role(second))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("web", "web"),
        ("web", "WEB"),
        ("Web-Profile", "wEB-pROFILE"),
    ],
)
def test_instance_profile_name_taken_in_any_case_is_a_conflict(
    store: Store, first: str, second: str
) -> None:
    add_profiles(store, profile(first))
    with pytest.raises(Conflict), store.transaction() as tx:
        tx.insert_instance_profile(profile(second))


def test_role_name_may_be_reused_in_another_account(store: Store) -> None:
    add_roles(store, role("web"), role("WEB", account_id=OTHER_ACCOUNT))
    with store.transaction() as tx:
        assert tx.get_role(ACCOUNT, "web").name == "web"  # type: ignore[union-attr]
        assert tx.get_role(OTHER_ACCOUNT, "web").name == "WEB"  # type: ignore[union-attr]


def test_instance_profile_name_may_be_reused_in_another_account(store: Store) -> None:
    add_profiles(store, profile("web"), profile("WEB", account_id=OTHER_ACCOUNT))
    with store.transaction() as tx:
        assert tx.get_instance_profile(ACCOUNT, "web").name == "web"  # type: ignore[union-attr]
        assert tx.get_instance_profile(OTHER_ACCOUNT, "web").name == "WEB"  # type: ignore[union-attr]


def test_role_and_instance_profile_may_share_a_name(store: Store) -> None:
    add_roles(store, role("web"))
    add_profiles(store, profile("web"))
    with store.transaction() as tx:
        assert tx.get_role(ACCOUNT, "web") is not None
        assert tx.get_instance_profile(ACCOUNT, "web") is not None


# Roles


def test_role_is_stored_as_given(store: Store) -> None:
    stored = Role(
        role_id="AROA00000000000000001",
        account_id=ACCOUNT,
        name="Web",
        path="/app/",
        assume_role_policy=TRUST,
        description="the web tier",
        max_session_duration=7200,
        created=CREATED,
    )
    add_roles(store, stored)
    with store.transaction() as tx:
        assert tx.get_role(ACCOUNT, "Web") == stored
        assert tx.get_role_by_id("AROA00000000000000001") == stored


@pytest.mark.parametrize("asked", ["Web-Server", "web-server", "WEB-SERVER", "wEb-SeRvEr"])
def test_get_role_ignores_case(store: Store, asked: str) -> None:
    add_roles(store, role("Web-Server"))
    with store.transaction() as tx:
        found = tx.get_role(ACCOUNT, asked)
    assert found is not None
    assert found.name == "Web-Server"


def test_get_role_does_not_see_another_accounts_role(store: Store) -> None:
    add_roles(store, role("web", account_id=OTHER_ACCOUNT))
    with store.transaction() as tx:
        assert tx.get_role(ACCOUNT, "web") is None


def test_update_role_changes_trust_description_and_duration_only(store: Store) -> None:
    original = role("web", path="/app/")
    add_roles(store, original)
    changed = Role(
        role_id=original.role_id,
        account_id=original.account_id,
        name="renamed",
        path="/moved/",
        assume_role_policy='{"Version":"2012-10-17","Statement":[{}]}',
        description="now described",
        max_session_duration=43200,
        created="2030-01-01T00:00:00Z",
    )
    with store.transaction() as tx:
        tx.update_role(changed)
        found = tx.get_role_by_id(original.role_id)
    assert found == Role(
        role_id=original.role_id,
        account_id=ACCOUNT,
        name="web",
        path="/app/",
        assume_role_policy='{"Version":"2012-10-17","Statement":[{}]}',
        description="now described",
        max_session_duration=43200,
        created=CREATED,
    )


def test_list_roles_orders_by_lower_cased_name(store: Store) -> None:
    names = ["beta", "Alpha", "a_b", "a-b", "a.b", "aB", "Gamma", "a@b", "a=b", "a+b", "a,b", "A0"]
    add_roles(store, *(role(name) for name in names))
    with store.transaction() as tx:
        listed = role_names(tx.list_roles(ACCOUNT, "/", None, 100))
    assert listed == sorted(names, key=str.lower)


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("/", ["application", "nested", "root", "team"]),
        ("/app/", ["nested", "team"]),
        ("/app/web/", ["nested"]),
        ("/app", ["application", "nested", "team"]),
        ("/none/", []),
    ],
)
def test_list_roles_keeps_roles_whose_path_starts_with_the_prefix(
    store: Store, prefix: str, expected: list[str]
) -> None:
    add_roles(
        store,
        role("root", path="/"),
        role("team", path="/app/"),
        role("nested", path="/app/web/"),
        role("application", path="/application/"),
    )
    with store.transaction() as tx:
        assert role_names(tx.list_roles(ACCOUNT, prefix, None, 100)) == expected


def test_list_roles_shows_only_the_accounts_roles(store: Store) -> None:
    add_roles(store, role("mine"), role("theirs", account_id=OTHER_ACCOUNT))
    with store.transaction() as tx:
        assert role_names(tx.list_roles(ACCOUNT, "/", None, 100)) == ["mine"]


def test_list_roles_returns_at_most_limit_roles(store: Store) -> None:
    add_roles(store, *(role(name) for name in ["a", "b", "c", "d"]))
    with store.transaction() as tx:
        assert role_names(tx.list_roles(ACCOUNT, "/", None, 3)) == ["a", "b", "c"]


def test_list_roles_starts_after_the_given_lower_cased_name(store: Store) -> None:
    add_roles(store, *(role(name) for name in ["Alpha", "Beta", "Gamma", "delta"]))
    with store.transaction() as tx:
        assert role_names(tx.list_roles(ACCOUNT, "/", "beta", 100)) == ["delta", "Gamma"]


def test_list_roles_pages_cover_every_role_once(store: Store) -> None:
    names = [f"Role{number:02d}" for number in range(7)]
    add_roles(store, *(role(name) for name in reversed(names)))
    seen: list[str] = []
    after = None
    with store.transaction() as tx:
        while True:
            page = tx.list_roles(ACCOUNT, "/", after, 3)
            if not page:
                break
            seen += role_names(page)
            after = page[-1].name.lower()
    assert seen == names


# Inline role policies


def test_put_role_policy_replaces_the_policy_of_the_same_name_in_any_case(store: Store) -> None:
    owner = role("web")
    add_roles(store, owner)
    with store.transaction() as tx:
        tx.put_role_policy(RolePolicy(owner.role_id, "ReadOnly", '{"first":1}'))
        tx.put_role_policy(RolePolicy(owner.role_id, "READONLY", '{"second":2}'))
        listed = tx.list_role_policies(owner.role_id)
    assert listed == [RolePolicy(owner.role_id, "READONLY", '{"second":2}')]


def test_list_role_policies_orders_by_lower_cased_name(store: Store) -> None:
    owner = role("web")
    add_roles(store, owner)
    names = ["zeta", "Beta", "alpha", "Delta"]
    with store.transaction() as tx:
        for name in names:
            tx.put_role_policy(RolePolicy(owner.role_id, name, "{}"))
        listed = [policy.name for policy in tx.list_role_policies(owner.role_id)]
    assert listed == ["alpha", "Beta", "Delta", "zeta"]


def test_get_role_policy_ignores_case(store: Store) -> None:
    owner = role("web")
    add_roles(store, owner)
    with store.transaction() as tx:
        tx.put_role_policy(RolePolicy(owner.role_id, "ReadOnly", "{}"))
        assert tx.get_role_policy(owner.role_id, "readonly") == RolePolicy(
            owner.role_id, "ReadOnly", "{}"
        )


def test_delete_role_policy_ignores_case(store: Store) -> None:
    owner = role("web")
    add_roles(store, owner)
    with store.transaction() as tx:
        tx.put_role_policy(RolePolicy(owner.role_id, "ReadOnly", "{}"))
        tx.put_role_policy(RolePolicy(owner.role_id, "Other", "{}"))
        tx.delete_role_policy(owner.role_id, "READONLY")
        assert [policy.name for policy in tx.list_role_policies(owner.role_id)] == ["Other"]


def test_role_policies_belong_to_their_role(store: Store) -> None:
    first, second = role("first"), role("second")
    add_roles(store, first, second)
    with store.transaction() as tx:
        tx.put_role_policy(RolePolicy(first.role_id, "Same", '{"first":1}'))
        tx.put_role_policy(RolePolicy(second.role_id, "Same", '{"second":2}'))
        assert tx.get_role_policy(first.role_id, "Same") == RolePolicy(
            first.role_id, "Same", '{"first":1}'
        )


def test_deleting_a_role_deletes_its_policies(store: Store) -> None:
    doomed = role("doomed")
    add_roles(store, doomed)
    with store.transaction() as tx:
        tx.put_role_policy(RolePolicy(doomed.role_id, "One", "{}"))
        tx.put_role_policy(RolePolicy(doomed.role_id, "Two", "{}"))
    with store.transaction() as tx:
        tx.delete_role(doomed.role_id)
    with store.transaction() as tx:
        assert tx.get_role_by_id(doomed.role_id) is None
        assert tx.list_role_policies(doomed.role_id) == []


def test_deleting_a_role_deletes_its_tags(store: Store) -> None:
    doomed = role("doomed")
    add_roles(store, doomed)
    with store.transaction() as tx:
        tx.put_tags(doomed.role_id, [Tag("team", "web")])
    with store.transaction() as tx:
        tx.delete_role(doomed.role_id)
    with store.transaction() as tx:
        assert tx.get_tags(doomed.role_id) == []


def test_deleting_a_role_keeps_other_roles_policies_and_tags(store: Store) -> None:
    doomed, kept = role("doomed"), role("kept")
    add_roles(store, doomed, kept)
    with store.transaction() as tx:
        for each in (doomed, kept):
            tx.put_role_policy(RolePolicy(each.role_id, "Policy", "{}"))
            tx.put_tags(each.role_id, [Tag("team", "web")])
        tx.delete_role(doomed.role_id)
        assert tx.list_role_policies(kept.role_id) == [RolePolicy(kept.role_id, "Policy", "{}")]
        assert tx.get_tags(kept.role_id) == [Tag("team", "web")]


# Instance profiles


@pytest.mark.parametrize("asked", ["Web-Profile", "web-profile", "WEB-PROFILE"])
def test_get_instance_profile_ignores_case(store: Store, asked: str) -> None:
    add_profiles(store, profile("Web-Profile"))
    with store.transaction() as tx:
        found = tx.get_instance_profile(ACCOUNT, asked)
    assert found is not None
    assert found.name == "Web-Profile"


def test_instance_profile_starts_without_a_role(store: Store) -> None:
    add_profiles(store, profile("web"))
    with store.transaction() as tx:
        assert tx.get_instance_profile(ACCOUNT, "web").role_id is None  # type: ignore[union-attr]


def test_set_instance_profile_role_attaches_the_role(store: Store) -> None:
    web_role, web_profile = role("web"), profile("web")
    add_roles(store, web_role)
    add_profiles(store, web_profile)
    with store.transaction() as tx:
        tx.set_instance_profile_role(web_profile.profile_id, web_role.role_id)
    with store.transaction() as tx:
        found = tx.get_instance_profile(ACCOUNT, "web")
    assert found is not None
    assert found.role_id == web_role.role_id


def test_set_instance_profile_role_to_none_detaches_the_role(store: Store) -> None:
    web_role, web_profile = role("web"), profile("web")
    add_roles(store, web_role)
    add_profiles(store, web_profile)
    with store.transaction() as tx:
        tx.set_instance_profile_role(web_profile.profile_id, web_role.role_id)
        tx.set_instance_profile_role(web_profile.profile_id, None)
        found = tx.get_instance_profile(ACCOUNT, "web")
        for_role = tx.list_instance_profiles_for_role(web_role.role_id, None, 100)
    assert found is not None
    assert found.role_id is None
    assert for_role == []


def test_list_instance_profiles_for_role_lists_its_profiles_by_lower_cased_name(
    store: Store,
) -> None:
    web_role, other_role = role("web"), role("other")
    add_roles(store, web_role, other_role)
    profiles = [profile("zeta"), profile("Beta"), profile("alpha"), profile("elsewhere")]
    add_profiles(store, *profiles)
    with store.transaction() as tx:
        for each in profiles[:3]:
            tx.set_instance_profile_role(each.profile_id, web_role.role_id)
        tx.set_instance_profile_role(profiles[3].profile_id, other_role.role_id)
        listed = profile_names(tx.list_instance_profiles_for_role(web_role.role_id, None, 100))
    assert listed == ["alpha", "Beta", "zeta"]


def test_list_instance_profiles_for_role_pages_with_after_and_limit(store: Store) -> None:
    web_role = role("web")
    add_roles(store, web_role)
    profiles = [profile(name) for name in ["a", "B", "c", "D"]]
    add_profiles(store, *profiles)
    with store.transaction() as tx:
        for each in profiles:
            tx.set_instance_profile_role(each.profile_id, web_role.role_id)
        page = profile_names(tx.list_instance_profiles_for_role(web_role.role_id, "b", 1))
    assert page == ["c"]


def test_list_instance_profiles_filters_by_path_and_pages(store: Store) -> None:
    add_profiles(
        store,
        profile("root", path="/"),
        profile("Beta", path="/app/"),
        profile("alpha", path="/app/"),
        profile("gamma", path="/app/web/"),
        profile("theirs", account_id=OTHER_ACCOUNT, path="/app/"),
    )
    with store.transaction() as tx:
        first = profile_names(tx.list_instance_profiles(ACCOUNT, "/app/", None, 2))
        rest = profile_names(tx.list_instance_profiles(ACCOUNT, "/app/", "beta", 2))
    assert (first, rest) == (["alpha", "Beta"], ["gamma"])


def test_deleting_an_instance_profile_deletes_it_and_its_tags(store: Store) -> None:
    doomed = profile("doomed")
    add_profiles(store, doomed)
    with store.transaction() as tx:
        tx.put_tags(doomed.profile_id, [Tag("team", "web")])
        tx.delete_instance_profile(doomed.profile_id)
        assert tx.get_instance_profile(ACCOUNT, "doomed") is None
        assert tx.get_tags(doomed.profile_id) == []


# Tags

ENTITY = "AROA00000000000000099"


def test_tags_are_listed_in_the_order_first_added(store: Store) -> None:
    with store.transaction() as tx:
        tx.put_tags(ENTITY, [Tag("zulu", "1"), Tag("alpha", "2")])
        tx.put_tags(ENTITY, [Tag("Mike", "3")])
        assert tx.get_tags(ENTITY) == [Tag("zulu", "1"), Tag("alpha", "2"), Tag("Mike", "3")]


def test_put_tags_replaces_a_key_given_in_another_case_in_its_first_place(store: Store) -> None:
    with store.transaction() as tx:
        tx.put_tags(ENTITY, [Tag("Team", "web"), Tag("env", "prod")])
        tx.put_tags(ENTITY, [Tag("TEAM", "db"), Tag("owner", "ops")])
        assert tx.get_tags(ENTITY) == [Tag("TEAM", "db"), Tag("env", "prod"), Tag("owner", "ops")]


def test_put_tags_with_a_key_twice_in_one_call_keeps_the_last_value(store: Store) -> None:
    with store.transaction() as tx:
        tx.put_tags(ENTITY, [Tag("team", "web"), Tag("Team", "db")])
        assert tx.get_tags(ENTITY) == [Tag("Team", "db")]


def test_tag_added_again_after_deletion_goes_last(store: Store) -> None:
    with store.transaction() as tx:
        tx.put_tags(ENTITY, [Tag("a", "1"), Tag("b", "2")])
        tx.delete_tags(ENTITY, ["a"])
        tx.put_tags(ENTITY, [Tag("a", "3")])
        assert tx.get_tags(ENTITY) == [Tag("b", "2"), Tag("a", "3")]


def test_delete_tags_removes_the_given_keys_in_any_case(store: Store) -> None:
    with store.transaction() as tx:
        tx.put_tags(ENTITY, [Tag("Team", "web"), Tag("env", "prod"), Tag("owner", "ops")])
        tx.delete_tags(ENTITY, ["team", "OWNER", "absent"])
        assert tx.get_tags(ENTITY) == [Tag("env", "prod")]


def test_delete_tags_without_keys_removes_every_tag(store: Store) -> None:
    with store.transaction() as tx:
        tx.put_tags(ENTITY, [Tag("Team", "web"), Tag("env", "prod")])
        tx.delete_tags(ENTITY)
        assert tx.get_tags(ENTITY) == []


def test_delete_tags_with_an_empty_key_list_removes_nothing(store: Store) -> None:
    with store.transaction() as tx:
        tx.put_tags(ENTITY, [Tag("Team", "web")])
        tx.delete_tags(ENTITY, [])
        assert tx.get_tags(ENTITY) == [Tag("Team", "web")]


def test_tags_belong_to_their_entity(store: Store) -> None:
    with store.transaction() as tx:
        tx.put_tags(ENTITY, [Tag("team", "web")])
        tx.put_tags("AIPA00000000000000099", [Tag("team", "db")])
        tx.delete_tags("AIPA00000000000000099")
        assert tx.get_tags(ENTITY) == [Tag("team", "web")]


def test_a_version_one_sqlite_database_is_upgraded_keeping_its_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    connection = sqlite3.connect(path)
    version, script = migrations()[0]
    assert version == 1
    for statement in split_statements(script):
        connection.execute(statement)
    connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    connection.execute("INSERT INTO schema_version VALUES (1)")
    connection.execute("INSERT INTO accounts VALUES ('111122223333', 'old', 'then')")
    connection.commit()
    connection.close()
    store = SQLiteStore(path)
    try:
        assert store.schema_version() == migrations("sqlite")[-1][0]
        with store.transaction() as tx:
            assert tx.get_account("111122223333") == Account("111122223333", "old", "then")
            tx.insert_user(User("AIDAUPGRADED", "111122223333", "alice", "/", "now"))
    finally:
        store.close()


def test_user_names_are_unique_per_account_ignoring_case(store: Store) -> None:
    with store.transaction() as tx:
        tx.insert_account(Account("111122223333", "a", "t"))
        tx.insert_account(Account("444455556666", "b", "t"))
        tx.insert_user(User("AIDA1", "111122223333", "Alice", "/", "t"))
        tx.insert_user(User("AIDA2", "444455556666", "alice", "/", "t"))
    with pytest.raises(Conflict), store.transaction() as tx:
        tx.insert_user(User("AIDA3", "111122223333", "ALICE", "/", "t"))
    with store.transaction() as tx:
        assert tx.get_user("111122223333", "alice") == User(
            "AIDA1", "111122223333", "Alice", "/", "t"
        )


def test_user_policies_replace_list_and_go_with_the_user(store: Store) -> None:
    with store.transaction() as tx:
        tx.insert_account(Account("111122223333", "a", "t"))
        tx.insert_user(User("AIDA1", "111122223333", "alice", "/", "t"))
        tx.put_user_policy(UserPolicy("AIDA1", "b", "{1}"))
        tx.put_user_policy(UserPolicy("AIDA1", "a", "{2}"))
        tx.put_user_policy(UserPolicy("AIDA1", "B", "{3}"))
        assert [(p.name, p.document) for p in tx.list_user_policies("AIDA1")] == [
            ("a", "{2}"),
            ("B", "{3}"),
        ]
        tx.delete_user_policy("AIDA1", "a")
        assert tx.get_user_policy("AIDA1", "A") is None
        tx.delete_user("AIDA1")
        assert tx.list_user_policies("AIDA1") == []
        assert tx.get_user("111122223333", "alice") is None


def test_access_key_status_changes_and_keys_are_deleted(store: Store) -> None:
    with store.transaction() as tx:
        tx.insert_account(Account("111122223333", "a", "t"))
        tx.insert_access_key(AccessKey("AKIA1", "s", "111122223333", "alice", "Active", "t"))
        tx.set_access_key_status("AKIA1", "Inactive")
        key = tx.get_access_key("AKIA1")
        assert key is not None and key.status == "Inactive"
        assert [k.access_key_id for k in tx.list_access_keys("111122223333", "alice")] == ["AKIA1"]
        tx.delete_access_key("AKIA1")
        assert tx.get_access_key("AKIA1") is None


def test_a_nodes_capacity_is_stored_and_changed(store: Store) -> None:
    with store.transaction() as tx:
        tx.insert_node(Node("hv1", "00", CREATED, None, None, 0, 12))
        tx.insert_node(Node("hv2", "00", CREATED, None, None, 0))
    with store.transaction() as tx:
        hv1, hv2 = tx.list_nodes()
        assert (hv1.capacity, hv2.capacity) == (12, None)
        tx.update_node(replace(hv2, capacity=3))
    with store.transaction() as tx:
        stored = tx.get_node("hv2")
        assert stored is not None and stored.capacity == 3


def test_an_accounts_instance_count_leaves_out_terminated_and_other_accounts(
    store: Store,
) -> None:
    with store.transaction() as tx:
        tx.insert_node(Node("hv1", "00", CREATED, None, None, 0))
        for number, (account, state) in enumerate(
            [(ACCOUNT, "running"), (ACCOUNT, "pending"), (ACCOUNT, "terminated"),
             (OTHER_ACCOUNT, "running")]
        ):  # fmt: skip
            tx.insert_instance(instance(f"i-{number:017d}", account, state))
    with store.transaction() as tx:
        assert tx.account_instance_count(ACCOUNT) == 2
        assert tx.account_instance_count(OTHER_ACCOUNT) == 1


def instance(instance_id: str, account_id: str, state: str) -> Instance:
    return Instance(
        instance_id=instance_id,
        account_id=account_id,
        reservation_id="r-1",
        image_id="emi-1",
        instance_type="m1.small",
        node_name="hv1",
        netns=f"rc-{instance_id}",
        state=state,
        launched=CREATED,
        terminated=None,
        private_ip="169.254.1.1",
        http_tokens="required",
        hop_limit=1,
        http_endpoint="enabled",
        association_id=None,
        association_state=None,
        profile_id=None,
        launch_index=0,
    )


# EC2 key pairs (issue 12)

PUBLIC_LINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def key_pair(name: str, account_id: str = ACCOUNT, key_pair_id: str | None = None) -> KeyPair:
    return KeyPair(
        key_pair_id=key_pair_id or f"key-{next(_serial):017x}",
        account_id=account_id,
        name=name,
        key_type="ed25519",
        fingerprint="kq7JbGw0rYQJ0j0DKX3Y2s1wGkZl5m1Yc1oZ6xXjvYg=",
        public_key=f"{PUBLIC_LINE} {name}",
        created=CREATED,
    )


def test_a_key_pair_is_stored_as_given_and_found_by_name_and_by_id(store: Store) -> None:
    stored = key_pair("deploy")
    with store.transaction() as tx:
        tx.insert_key_pair(stored)
    with store.transaction() as tx:
        assert tx.get_key_pair(ACCOUNT, "deploy") == stored
        assert tx.get_key_pair_by_id(stored.key_pair_id) == stored
        assert tx.get_key_pair(OTHER_ACCOUNT, "deploy") is None
        assert tx.get_key_pair_by_id("key-00000000000000000") is None


def test_key_pair_names_are_case_sensitive_as_in_ec2(store: Store) -> None:
    with store.transaction() as tx:
        tx.insert_key_pair(key_pair("Deploy"))
        tx.insert_key_pair(key_pair("deploy"))
    with store.transaction() as tx:
        assert tx.get_key_pair(ACCOUNT, "DEPLOY") is None
        found = tx.get_key_pair(ACCOUNT, "Deploy")
        assert found is not None and found.name == "Deploy"
        assert tx.count_key_pairs(ACCOUNT) == 2


def test_a_key_pair_name_taken_in_the_account_is_a_conflict(store: Store) -> None:
    with store.transaction() as tx:
        tx.insert_key_pair(key_pair("deploy"))
        tx.insert_key_pair(key_pair("deploy", OTHER_ACCOUNT))
    with pytest.raises(Conflict), store.transaction() as tx:
        tx.insert_key_pair(key_pair("deploy"))


def test_key_pairs_are_listed_for_their_account_by_name_in_code_point_order(
    store: Store,
) -> None:
    with store.transaction() as tx:
        for name in ("web", "Zeta", "alpha", "b"):
            tx.insert_key_pair(key_pair(name))
        tx.insert_key_pair(key_pair("other", OTHER_ACCOUNT))
    with store.transaction() as tx:
        assert [k.name for k in tx.list_key_pairs(ACCOUNT)] == ["Zeta", "alpha", "b", "web"]
        assert tx.count_key_pairs(ACCOUNT) == 4
        assert tx.count_key_pairs(OTHER_ACCOUNT) == 1


def test_deleting_a_key_pair_deletes_its_tags_and_nothing_else(store: Store) -> None:
    gone, kept = key_pair("gone"), key_pair("kept")
    with store.transaction() as tx:
        tx.insert_key_pair(gone)
        tx.insert_key_pair(kept)
        tx.put_tags(gone.key_pair_id, [Tag("team", "web")])
        tx.put_tags(kept.key_pair_id, [Tag("team", "db")])
        tx.delete_key_pair(gone.key_pair_id)
    with store.transaction() as tx:
        assert tx.get_key_pair_by_id(gone.key_pair_id) is None
        assert tx.get_tags(gone.key_pair_id) == []
        assert tx.list_key_pairs(ACCOUNT) == [kept]
        assert tx.get_tags(kept.key_pair_id) == [Tag("team", "db")]


def test_an_instance_keeps_the_key_it_was_launched_with_after_the_key_pair_goes(
    store: Store,
) -> None:
    deploy = key_pair("deploy")
    launched = replace(
        instance("i-00000000000000001", ACCOUNT, "pending"),
        key_name="deploy",
        public_key=deploy.public_key,
    )
    with store.transaction() as tx:
        tx.insert_node(Node("hv1", "00", CREATED, None, None, 0))
        tx.insert_key_pair(deploy)
        tx.insert_instance(launched)
        tx.insert_instance(instance("i-00000000000000002", ACCOUNT, "pending"))
        tx.delete_key_pair(deploy.key_pair_id)
    with store.transaction() as tx:
        assert tx.get_instance("i-00000000000000001") == launched
        keyless = tx.get_instance("i-00000000000000002")
        assert keyless is not None and (keyless.key_name, keyless.public_key) == (None, None)
        tx.update_instance(replace(launched, state="running"))
        running = tx.get_instance("i-00000000000000001")
        assert running is not None and running.public_key == deploy.public_key


def test_a_version_four_database_gets_key_pairs_and_keeps_its_instances(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    connection = sqlite3.connect(path)
    for version, script in migrations():
        if version <= 4:
            for statement in split_statements(script):
                connection.execute(statement)
    connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    connection.execute("INSERT INTO schema_version VALUES (4)")
    connection.execute("INSERT INTO accounts VALUES (?, 'old', 'then')", (ACCOUNT,))
    connection.execute("INSERT INTO nodes VALUES ('hv1', '00', 'then', NULL, NULL, 0, NULL)")
    connection.execute(
        "INSERT INTO instances VALUES ('i-00000000000000001', ?, 'r-1', 'emi-1', 'm1.small',"
        " 'hv1', 'rc-i', 'running', 'then', NULL, '169.254.1.1', 'required', 1, 'enabled',"
        " NULL, NULL, NULL, 0)",
        (ACCOUNT,),
    )
    connection.commit()
    connection.close()
    store = SQLiteStore(path)
    try:
        assert store.schema_version() >= 5
        with store.transaction() as tx:
            old = tx.get_instance("i-00000000000000001")
            assert old is not None and (old.state, old.key_name, old.public_key) == (
                "running",
                None,
                None,
            )
            tx.insert_key_pair(key_pair("deploy"))
            assert tx.count_key_pairs(ACCOUNT) == 1
    finally:
        store.close()


def test_live_addresses_are_those_inside_the_subnet_whichever_subnet_gave_them(
    store: Store,
) -> None:
    """A pool must not hand out an address a live instance has: one given from the same subnet,
    from an overlapping one (a node re-enrolled with a wider subnet), or from before subnets."""
    given = [
        ("10.0.0.4", "10.0.0.0/24", "running"),
        ("10.0.0.5", "10.0.0.0/24", "terminated"),
        ("10.0.1.4", "10.0.0.0/16", "pending"),
        ("10.0.0.6", "10.0.0.0/28", "running"),
        ("10.1.0.4", "10.1.0.0/24", "running"),
        ("169.254.7.9", None, "running"),
        ("169.254.7.10", None, "terminated"),
        ("169.254.1.4", "169.254.0.0/16", "running"),
    ]
    with store.transaction() as tx:
        tx.insert_node(Node("hv1", "00", CREATED, None, None, 0))
        for number, (address, subnet, state) in enumerate(given):
            tx.insert_instance(
                replace(
                    instance(f"i-{number:017d}", ACCOUNT, state),
                    private_ip=address,
                    subnet=subnet,
                )
            )
    with store.transaction() as tx:
        assert tx.live_addresses("10.0.0.0/24") == {"10.0.0.4", "10.0.0.6"}
        assert tx.live_addresses("10.0.0.0/16") == {"10.0.0.4", "10.0.0.6", "10.0.1.4"}
        assert tx.live_addresses("10.0.1.0/24") == {"10.0.1.4"}
        assert tx.live_addresses("10.1.0.0/16") == {"10.1.0.4"}
        assert tx.live_addresses("10.2.0.0/16") == set()
        assert tx.live_addresses("169.254.0.0/16") == {"169.254.7.9", "169.254.1.4"}
