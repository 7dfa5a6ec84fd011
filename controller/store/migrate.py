"""Copy an SQLite store into PostgreSQL (``rolecall-controller migrate-store``, issue 14 item 5).

The SQLite file is opened read-only and read in one transaction (one snapshot). The target is
migrated to the same schema version, then checked table by table: every row it holds must be a
row of the source, exactly. Rows it lacks are copied, all tables in one transaction (nothing is
copied if anything fails), and both sides are then counted and checksummed again. A second run
finds nothing to copy and says so; a target holding a row the source has not (another cloud's
data, or a row changed since) is refused before anything is written.

The checksum of a table is SHA-256 over its rows in a canonical form: each row as JSON (its
columns in schema order), the rows sorted. Both databases give the same Python values for the
schema's TEXT and INTEGER columns, so equal data gives equal checksums.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.store.base import StoreError
from controller.store.sql import migrations

#: The tables in an order that satisfies their foreign keys.
TABLES = (
    "accounts",
    "access_keys",
    "users",
    "user_policies",
    "roles",
    "role_policies",
    "instance_profiles",
    "tags",
    "nodes",
    "instances",
    "key_pairs",
    "managed_policies",
    "managed_policy_versions",
    "iam_groups",
    "group_members",
    "group_policies",
    "policy_attachments",
    "instance_metadata_defaults",
)

Row = tuple[Any, ...]
#: Column names are read from the SQLite file and spelled into SQL: only plain names pass.
_NAME = re.compile(r"[a-z_][a-z0-9_]*")


@dataclass(frozen=True)
class TableSummary:
    table: str
    rows: int
    checksum: str


@dataclass(frozen=True)
class Report:
    copied: dict[str, int]
    source: list[TableSummary]
    target: list[TableSummary]

    @property
    def verified(self) -> bool:
        return self.source == self.target


class MigrationRefused(StoreError):
    """The copy cannot be made as asked; nothing was written."""


def summarize(table: str, rows: Sequence[Row]) -> TableSummary:
    lines = sorted(json.dumps(list(row), ensure_ascii=False) for row in rows)
    digest = hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()
    return TableSummary(table, len(rows), digest)


def read_sqlite(path: Path) -> tuple[int, dict[str, tuple[list[str], list[Row]]]]:
    """The schema version and every table's columns and rows of the SQLite store at `path`,
    read in one transaction from a read-only connection (the file is not changed)."""
    if not path.exists():
        raise MigrationRefused(f"no SQLite store at {path}")
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise MigrationRefused(f"cannot open the SQLite store {path}: {error}") from error
    try:
        connection.execute("BEGIN")
        version_row = connection.execute("SELECT MAX(version) FROM schema_version").fetchone()
        version = int(version_row[0]) if version_row and version_row[0] is not None else 0
        tables: dict[str, tuple[list[str], list[Row]]] = {}
        for table in TABLES:
            columns = [str(row[1]) for row in connection.execute(f"PRAGMA table_info({table})")]
            odd = [column for column in columns if not _NAME.fullmatch(column)]
            if odd or not columns:
                raise MigrationRefused(f"the SQLite store {path} has an unexpected {table} table")
            rows = connection.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
            tables[table] = (columns, [tuple(row) for row in rows])
        connection.execute("COMMIT")
    except sqlite3.Error as error:
        raise MigrationRefused(f"cannot read the SQLite store {path}: {error}") from error
    finally:
        connection.close()
    return version, tables


def copy_to_postgresql(
    path: Path, dsn: str, *, before_commit: Callable[[Any], None] | None = None
) -> Report:
    """Copy the SQLite store at `path` into the PostgreSQL database `dsn` (see the module)."""
    import psycopg

    from controller.store.postgresql import PostgreSQLStore, describe_dsn, redact

    version, source = read_sqlite(path)
    newest = migrations("sqlite")[-1][0]
    if version != newest:
        raise MigrationRefused(
            f"the SQLite store {path} has schema version {version}, this RoleCall's is {newest}:"
            " start this RoleCall on it once (any rolecall-controller command upgrades it),"
            " then migrate"
        )
    where = describe_dsn(dsn)
    PostgreSQLStore(dsn, pool_size=1).close()  # the target's schema, migrated under its lock
    try:
        with psycopg.connect(dsn) as connection:
            with connection.transaction():
                # Controllers already on the target would change it under the check: shut
                # writers out until the copy commits (readers go on).
                connection.execute(f"LOCK TABLE {', '.join(TABLES)} IN EXCLUSIVE MODE")
                missing: dict[str, list[Row]] = {}
                for table in TABLES:
                    columns, rows = source[table]
                    present = _pg_rows(connection, table, columns)
                    wanted = set(rows)
                    foreign = [row for row in present if row not in wanted]
                    if foreign:
                        raise MigrationRefused(
                            f"the target ({where}) holds {len(foreign)} row(s) of {table} that"
                            f" the SQLite store {path} has not (another cloud's data, or rows"
                            " changed since an earlier copy); nothing was copied"
                        )
                    have = set(present)
                    missing[table] = [row for row in rows if row not in have]
                for table in TABLES:
                    columns, _ = source[table]
                    if missing[table]:
                        with connection.cursor().copy(
                            f"COPY {table} ({', '.join(columns)}) FROM STDIN".encode()
                        ) as copy:
                            for row in missing[table]:
                                copy.write_row(row)
                if before_commit is not None:
                    before_commit(connection)
            target = [
                summarize(table, _pg_rows(connection, table, source[table][0])) for table in TABLES
            ]
    except MigrationRefused:
        raise
    except psycopg.Error as error:
        detail = redact(str(error).strip(), dsn) or type(error).__name__
        raise StoreError(f"cannot copy into the target ({where}): {detail}") from None
    return Report(
        copied={table: len(rows) for table, rows in missing.items()},
        source=[summarize(table, source[table][1]) for table in TABLES],
        target=target,
    )


def _pg_rows(connection: Any, table: str, columns: list[str]) -> list[Row]:
    cursor = connection.execute(f"SELECT {', '.join(columns)} FROM {table}".encode())
    return [tuple(row) for row in cursor.fetchall()]
