"""The embedded SQLite store: one file in the state directory, WAL, versioned migrations.

It serves a single controller process; calls are short and run on the reactor thread. Other
processes (the CLI, another controller) may write the same file at any time.

Every API request reads who is calling and what they may do (an access key, a user or role and
its policies). :class:`ReadCache` keeps those answers between transactions for as long as the
database is unchanged: SQLite's ``PRAGMA data_version`` changes when another connection commits,
and this connection's own writes show in its change count; either empties the cache.

``transaction()`` begins with ``BEGIN IMMEDIATE`` and reads ``data_version`` inside it, once
writers are shut out. ``run()`` (the API's way in) reads ``data_version`` first and begins only
at its first statement: a request answered from the cache alone takes no lock. If the database
changed between that read and the ``BEGIN`` after some answers came from the cache, those
answers may be older than the transaction's snapshot: ``run()`` rolls back and calls its work
once more, with an empty cache. So every answer a transaction sees is its snapshot's.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from controller.store.base import Store, StoreError, Transaction
from controller.store.cachedreads import CachedReads
from controller.store.sql import migrations, split_statements

_T = TypeVar("_T")


def _is_constraint_violation(error: Exception) -> bool:
    return isinstance(error, sqlite3.IntegrityError)


class SQLiteStore(Store):
    """RoleCall's state in one SQLite database file (created 0600)."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            # Private before SQLite writes a byte, and kept private: it holds secret access keys.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            os.chmod(self.path, 0o600)
        self._connection = sqlite3.connect(self.path, isolation_level=None, timeout=10)
        self._cursor = self._connection.cursor()  # one for all transactions: they run in turn
        self._cache = ReadCache()
        try:
            self._connection.execute("PRAGMA journal_mode = WAL")
            self._connection.execute("PRAGMA synchronous = FULL")
            self._connection.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except BaseException as error:
            self._connection.close()
            if isinstance(error, sqlite3.DatabaseError):
                raise StoreError(f"cannot open the SQLite store {self.path}: {error}") from error
            raise

    def _migrate(self) -> None:
        cursor = self._connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            cursor.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = self._read_version(cursor)
            shipped = migrations()
            newest = shipped[-1][0] if shipped else 0
            if current > newest:
                raise StoreError(
                    f"the store {self.path} has schema version {current}, newer than this"
                    f" RoleCall knows ({newest}); upgrade RoleCall"
                )
            for version, script in shipped:
                if version > current:
                    for statement in split_statements(script):
                        cursor.execute(statement)
                    cursor.execute("DELETE FROM schema_version")
                    cursor.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            cursor.execute("COMMIT")
        except BaseException:
            cursor.execute("ROLLBACK")
            raise

    @staticmethod
    def _read_version(cursor: sqlite3.Cursor) -> int:
        row = cursor.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def schema_version(self) -> int:
        return self._read_version(self._connection.cursor())

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        tx = self._transaction()
        tx.begin()
        try:
            yield tx
        except BaseException:
            tx.end(commit=False)
            raise
        tx.end(commit=True)

    def run(self, work: Callable[[Transaction], _T]) -> _T:
        for _attempt in range(_ATTEMPTS):
            tx = self._transaction()
            self._cache.validate(self._data_version())
            try:
                result = work(tx)
            except _StaleCache:
                tx.end(commit=False)
                continue
            except BaseException:
                tx.end(commit=False)
                raise
            if tx.stale:  # work caught the signal: its answer may be the stale one
                tx.end(commit=False)
                continue
            tx.end(commit=True)
            return result
        # A second try starts with an empty cache: it has no cached answer to be stale.
        raise StoreError("the SQLite store changed under every try of a transaction")

    def _transaction(self) -> _CachedTransaction:
        return _CachedTransaction(self._connection, self._cursor, self._cache, self._data_version)

    def _data_version(self) -> int:
        return int(self._cursor.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        self._connection.close()


_ATTEMPTS = 2


class _StaleCache(BaseException):
    """The cache answered a transaction that then saw a newer snapshot: try it again.

    A BaseException, so that no ``except Exception`` in the work swallows it.
    """


class ReadCache:
    """Answers of a few reads, valid while the database is at one ``data_version``."""

    #: Entries kept at most; past that the cache starts again empty.
    MAX_ENTRIES = 4096

    def __init__(self) -> None:
        self.entries: dict[tuple[Any, ...], Any] = {}
        self.version: int | None = None

    def validate(self, version: int) -> None:
        """Empty the cache unless the database is still at the version its answers are from."""
        if version != self.version:
            self.entries.clear()
            self.version = version

    def clear(self) -> None:
        self.entries.clear()


class _CachedTransaction(CachedReads):
    """A transaction that begins at its first statement, and whose identity and policy reads go
    through the store's ReadCache until it writes (from then on it reads its own changes)."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        cursor: sqlite3.Cursor,
        cache: ReadCache,
        data_version: Callable[[], int],
    ) -> None:
        super().__init__(cursor, is_constraint_violation=_is_constraint_violation)
        self._connection = connection
        self._cache = cache
        self._entries = cache.entries
        self._data_version = data_version
        self._changes = connection.total_changes
        self._begun = False
        self._served = False  # an answer came from the cache before the transaction began
        self.stale = False

    def begin(self) -> None:
        try:
            self._cursor.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            raise StoreError(f"the SQLite store is unavailable: {error}") from error
        self._begun = True
        # Inside the transaction: no other connection can commit until it ends.
        version = self._data_version()
        if version != self._cache.version:
            if self._served:
                self.stale = True
                raise _StaleCache
            self._cache.validate(version)

    def end(self, *, commit: bool) -> None:
        if self._begun:
            self._begun = False
            self._cursor.execute("COMMIT" if commit else "ROLLBACK")
        if self._connection.total_changes != self._changes:  # data_version ignores our own
            self._cache.clear()

    def _run(self, sql: str, args: Sequence[object] = ()) -> Any:
        if not self._begun:
            self.begin()
        return super()._run(sql, args)

    def _cached(self, read: Callable[..., _T], *args: str) -> _T:
        """``read(self, *args)``, answered from the cache when it may be."""
        if self._connection.total_changes != self._changes:
            return read(self, *args)
        key = (read, *args)
        entries = self._entries
        if key in entries:
            if not self._begun:
                self._served = True
            return entries[key]  # type: ignore[no-any-return]
        value = read(self, *args)
        if len(entries) >= ReadCache.MAX_ENTRIES:
            entries.clear()
        entries[key] = value
        return value
