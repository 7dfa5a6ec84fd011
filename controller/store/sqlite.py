"""The embedded SQLite store: one file in the state directory, WAL, versioned migrations.

It serves a single controller process; calls are short and run on the reactor thread.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from controller.store.base import Store, StoreError, Transaction
from controller.store.sql import SqlTransaction, migrations, split_statements


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
        cursor = self._connection.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            raise StoreError(f"the SQLite store is unavailable: {error}") from error
        try:
            yield SqlTransaction(cursor, is_constraint_violation=_is_constraint_violation)
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        else:
            cursor.execute("COMMIT")

    def close(self) -> None:
        self._connection.close()
