"""The PostgreSQL store: several controllers share one database (issue 14).

**Isolation.** Every transaction is SERIALIZABLE. The invariants the callers check inside one
transaction (one role per instance profile, a name free before it is taken, a quota not yet
full, no instance on a retired node) are read-then-write rules; under SERIALIZABLE PostgreSQL
aborts one of two transactions whose reads and writes cross (SQLSTATE 40001), so they hold
across controllers exactly as SQLite's single writer makes them hold in one process. `run()`
rolls back and calls its work again on 40001 and on a deadlock (40P01), a few times with a short
jittered pause; `transaction()` (the CLI's way in: a block cannot be replayed) raises a
`StoreError` saying that nothing was changed and the command may be run again.

**Connections.** A psycopg_pool pool of ``pool_size`` connections. A connection found broken
(a restarted or failed-over server) is dropped and the pool checked; the work is tried again on
another connection only when the failure came before its COMMIT was sent. A failure while the
COMMIT is in flight leaves its outcome unknown: that is never retried, and the caller gets a
`StoreError` saying the change may or may not have been made. Messages name the server by host,
port, database and user only (`describe_dsn`); a password in the DSN never reaches them.

**An outage fails fast.** The store is called on the controller's reactor thread, so a call
waiting for a connection holds every other request. Once the server is found unreachable (no
connection within the wait, a connection lost and none to be had at once, or the pool's own
reconnection failing in its thread), calls fail at once with `StoreUnavailable` until the pool
has a connection again: each call looks whether the pool holds an idle one (cheap), and one call
per `RETRY_INTERVAL` waits briefly (`TRIAL_WAIT`) so that the pool tries to connect in its own
thread (`controller.store.availability`).

**Read cache.** As on SQLite (see `controller.store.sqlite`), identity and policy reads are kept
between transactions while the database is unchanged. The key is a database snapshot,
``pg_current_snapshot()``: two snapshots with the same ``xmax`` and in-progress list see exactly
the same committed rows, on every controller, and any write anywhere (by any controller) changes
it; no table or trigger is needed. `run()` first reads the current snapshot alone (one round
trip, no transaction): a request the cache answers entirely (an AssumeRole, a signed request's
identity and policies) ends there. Its first statement begins the SERIALIZABLE transaction and
reads that transaction's snapshot; if it is newer than the one cached answers were given at,
the work is tried again without the cache. Reads from the cache register no SIREAD lock, so a
transaction that goes on to write first reads again, in the database, what the cache gave it:
SERIALIZABLE then sees every read its decision rests on.
"""

from __future__ import annotations

import contextlib
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from controller.store.availability import RETRY_INTERVAL, Admission, Availability
from controller.store.base import Store, StoreError, StoreUnavailable, Transaction
from controller.store.cachedreads import CachedReads
from controller.store.sql import migrations, split_statements

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool

_T = TypeVar("_T")

#: Serialization failures and deadlocks are retried this many times in all.
ATTEMPTS = 8
#: How long a call waits for a connection from the pool while the store is up (the pool may be
#: connecting, after a start). The store is called on the reactor thread, which waits with it.
CONNECTION_TIMEOUT = 2.0
#: After a pooled connection was found broken (a restarted or failed-over server), how long the
#: call waits for a fresh one before the store is taken for down: long enough for a connection
#: to a server that is back (tens of ms), short for everything else the reactor holds.
RECONNECT_WAIT = 0.2
#: While the store is down, how long the interval's one trial call waits for a connection.
TRIAL_WAIT = 0.05
#: The pool retries a failed connection after a delay of 1 s doubling; it gives up after this
#: long (and the store is down), and the next trial starts afresh: attempts stay about
#: `RETRY_INTERVAL` apart however long the outage.
RECONNECT_TIMEOUT = 0.5
#: How long one of the pool's connection attempts may take, at most, for `_reconnect_failed`.
CONNECT_SECONDS = 10.0
#: pg_advisory_xact_lock key held while migrating ("rolecall" in ASCII, as a bigint).
MIGRATION_LOCK = 0x726F6C6563616C6C
_WRITES = re.compile(r"\s*(INSERT|UPDATE|DELETE)\b", re.IGNORECASE)


def describe_dsn(dsn: str) -> str:
    """Host, port, database and user of a DSN, for messages: never its password."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(dsn)
    except Exception:
        return "PostgreSQL (an unreadable dsn)"
    shown = [f"{key}={parts[key]}" for key in ("host", "port", "dbname", "user") if parts.get(key)]
    return "PostgreSQL " + (" ".join(shown) if shown else "(libpq defaults)")


def check_dsn(dsn: str) -> str | None:
    """What is wrong with a DSN's syntax (without its password), or None."""
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return "the PostgreSQL store needs psycopg: pip install 'psycopg[binary,pool]'"
    try:
        conninfo_to_dict(dsn)
    except Exception as error:
        return "not a valid libpq connection string: " + redact(str(error).strip(), dsn)
    return None


def _secrets_of(dsn: str) -> list[str]:
    """The password(s) a DSN spells out, to be cut from any message that quotes the DSN."""
    found = re.findall(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn)
    found += re.findall(r"://[^:/@\s]*:([^@\s]+)@", dsn)
    with contextlib.suppress(Exception):  # an unreadable dsn: the patterns above are all
        from psycopg.conninfo import conninfo_to_dict

        found.append(str(conninfo_to_dict(dsn).get("password") or ""))
    return sorted({value.strip("'") for value in found if value.strip("'")}, key=len, reverse=True)


def redact(message: str, dsn: str) -> str:
    """`message` with every password of `dsn` replaced by ``***``."""
    for secret in _secrets_of(dsn):
        message = message.replace(secret, "***")
    return message


class _Unknown(StoreError):
    """The connection failed while a COMMIT was in flight: it may or may not have committed."""


class PostgreSQLStore(Store):
    """RoleCall's state in a PostgreSQL database (libpq `dsn`), shared by several controllers."""

    def __init__(
        self,
        dsn: str,
        pool_size: int = 4,
        connection_timeout: float = CONNECTION_TIMEOUT,
        *,
        reconnect_wait: float = RECONNECT_WAIT,
        trial_wait: float = TRIAL_WAIT,
        retry_interval: float = RETRY_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            import psycopg
            import psycopg_pool
        except ImportError as error:  # pragma: no cover - a declared dependency
            raise StoreError(
                "the PostgreSQL store needs psycopg: pip install 'psycopg[binary,pool]'"
            ) from error
        self._psycopg = psycopg
        self.dsn = dsn
        self.location = describe_dsn(dsn)
        self._cache = SnapshotCache()
        self._connection_timeout = connection_timeout
        self._reconnect_wait = reconnect_wait
        self._trial_wait = trial_wait
        self.availability = Availability(retry_interval, clock)
        self._migrate()
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = (
            psycopg_pool.ConnectionPool(
                dsn,
                min_size=1,
                max_size=max(1, pool_size),
                kwargs={"autocommit": True},
                open=False,
                timeout=connection_timeout,
                reconnect_timeout=RECONNECT_TIMEOUT,
                reconnect_failed=self._reconnect_failed,
                name="rolecall-store",
            )
        )
        # The migration's connection has just shown that the DSN works: the pool connects in
        # the background, and the first call waits for it (at most `connection_timeout`).
        self._pool.open(wait=False)

    def _error(self, what: str, error: BaseException) -> StoreError:
        detail = redact(str(error).strip(), self.dsn) or type(error).__name__
        return StoreError(f"{what} the store ({self.location}): {detail}")

    def _reconnect_failed(self, pool: object) -> None:
        """The pool's thread could not connect for RECONNECT_TIMEOUT: calls fail fast (unless
        one succeeded since that attempt began: its failure is old news)."""
        self.availability.failed_in_background(
            f"the pool could not connect for {RECONNECT_TIMEOUT:g} s",
            RECONNECT_TIMEOUT + CONNECT_SECONDS,
        )

    def _unavailable(self, problem: str) -> StoreUnavailable:
        return StoreUnavailable(f"the store ({self.location}) is unavailable: {problem}")

    def _connection_lost(self, error: BaseException) -> StoreUnavailable:
        detail = redact(str(error).strip().splitlines()[0] if str(error).strip() else "", self.dsn)
        problem = "lost the connection" + (f" ({detail})" if detail else "")
        self.availability.failed(problem)
        return self._unavailable(problem)

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return self._psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
        except Exception as error:
            raise self._error("cannot connect to", error) from None

    # schema

    def _migrate(self) -> None:
        """Apply the shipped migrations under an advisory lock (two controllers starting at once
        migrate one after the other), in one transaction; refuse a newer schema."""
        with self._connect() as connection:
            try:
                with connection.transaction():
                    connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                    connection.execute(
                        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
                    )
                    current = _read_version(connection)
                    shipped = migrations("postgresql")
                    newest = shipped[-1][0] if shipped else 0
                    if current > newest:
                        raise StoreError(
                            f"the store ({self.location}) has schema version {current}, newer"
                            f" than this RoleCall knows ({newest}); upgrade RoleCall"
                        )
                    for version, script in shipped:
                        if version > current:
                            for statement in split_statements(script):
                                connection.execute(statement.encode())
                            connection.execute("DELETE FROM schema_version")
                            connection.execute(
                                "INSERT INTO schema_version (version) VALUES (%s)", (version,)
                            )
            except StoreError:
                raise
            except self._psycopg.Error as error:
                raise self._error("cannot migrate", error) from None

    def schema_version(self) -> int:
        with self._connection() as connection:
            try:
                version = _read_version(connection)
            except self._psycopg.OperationalError as error:
                if connection.broken:
                    raise self._connection_lost(error) from None
                raise self._error("cannot read the schema version of", error) from None
        self.availability.succeeded()
        return version

    # transactions

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A SERIALIZABLE transaction for a block. A block cannot be run again: a serialization
        failure ends it with a StoreError saying nothing changed (run the command again)."""
        with self._connection() as connection:
            tx = _PgTransaction(connection, None)
            try:
                tx.begin()
                try:
                    yield tx
                except BaseException:
                    tx.rollback()
                    raise
                tx.commit()
                self.availability.succeeded()
            except self._psycopg.errors.SerializationFailure as error:
                raise StoreError(
                    "a concurrent change conflicted with this one and nothing was changed;"
                    " try again"
                ) from error
            except self._psycopg.errors.DeadlockDetected as error:
                raise StoreError(
                    "a concurrent change deadlocked with this one and nothing was changed;"
                    " try again"
                ) from error
            except _Unknown:
                raise
            except self._psycopg.OperationalError as error:
                if connection.broken:
                    raise self._connection_lost(error) from None
                raise self._error("lost the connection to", error) from None

    def run(self, work: Callable[[Transaction], _T]) -> _T:
        psycopg = self._psycopg
        reconnected = False
        use_cache = True
        for attempt in range(ATTEMPTS):
            with self._connection(after_loss=reconnected) as connection:
                tx = _PgTransaction(connection, self._cache if use_cache else None)
                try:
                    tx.start()
                    result = work(tx)
                    if tx.stale:  # work caught the signal: its answer may rest on a stale one
                        raise _StaleCache
                    tx.commit()
                    self.availability.succeeded()
                    return result
                except _StaleCache:
                    tx.rollback()
                    use_cache = False  # a second try has no cached answer to be stale
                    continue
                except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected):
                    tx.rollback()
                except _Unknown:
                    raise
                except psycopg.OperationalError as error:
                    if connection.broken and not reconnected:
                        # A server restarted or failed over: every pooled connection may be
                        # dead. Nothing was committed (the COMMIT was not sent); try once more
                        # on a fresh connection.
                        reconnected = True
                        self._pool.check()
                        continue
                    tx.rollback()
                    if connection.broken:
                        raise self._connection_lost(error) from None
                    raise self._error("lost the connection to", error) from None
                except BaseException:
                    tx.rollback()
                    raise
            # Two transactions that collided and retry at once may collide again.
            time.sleep(random.uniform(0, 0.002 * 2**attempt))  # noqa: S311 - jitter
        raise StoreError(
            f"the store ({self.location}) kept failing this transaction with serialization"
            f" conflicts ({ATTEMPTS} tries); nothing was changed"
        )

    @contextmanager
    def _connection(self, after_loss: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; `after_loss`: the call's connection was just found broken.

        Waits for one only while the store is up; while it is down, fails at once unless the
        pool has an idle connection or this is the interval's trial (see the module's doc)."""
        import psycopg_pool

        admission = self.availability.admit(self._has_idle_connection)
        if admission is Admission.REFUSE:
            raise self._unavailable(self.availability.problem or "down")
        if admission is Admission.TRY:
            timeout = self._trial_wait
        elif after_loss:
            timeout = self._reconnect_wait
        else:
            timeout = self._connection_timeout
        try:
            connection = self._pool.getconn(timeout)
        except psycopg_pool.PoolTimeout:
            problem = f"no connection within {timeout:g} s"
            self.availability.failed(problem)
            raise self._unavailable(problem) from None
        except psycopg_pool.PoolClosed as error:
            raise StoreError(f"the store ({self.location}) is closed") from error
        try:
            yield connection
        finally:
            self._pool.putconn(connection)

    def _has_idle_connection(self) -> bool:
        """Whether the pool holds a connection ready (a look, no wait)."""
        return self._pool.get_stats().get("pool_available", 0) > 0

    def close(self) -> None:
        self._pool.close()


def _read_version(connection: psycopg.Connection[Any]) -> int:
    row = connection.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


class SnapshotCache:
    """Answers of a few reads, valid for one database snapshot (``pg_current_snapshot()``).

    The current (snapshot, answers) pair is replaced as a whole, so threads sharing a store
    never see answers filed under another snapshot."""

    MAX_ENTRIES = 4096

    def __init__(self) -> None:
        self.current: tuple[str, dict[tuple[Any, ...], Any]] = ("", {})

    def entries_for(self, snapshot: str) -> dict[tuple[Any, ...], Any]:
        version, entries = self.current
        if version != snapshot:
            entries = {}
            self.current = (snapshot, entries)
        return entries


class _StaleCache(BaseException):
    """The cache answered a transaction whose database snapshot turned out newer: try again.

    A BaseException, so that no ``except Exception`` in the work swallows it."""


_SNAPSHOT = b"SELECT pg_current_snapshot()"
#: libpq's PGRES_TUPLES_OK (psycopg.pq.ExecStatus.TUPLES_OK), without importing psycopg here.
_TUPLES_OK = 2


class _PgTransaction(CachedReads):
    """A SERIALIZABLE transaction on one pooled connection (in autocommit mode, so that BEGIN
    and the snapshot read go in one round trip).

    With a cache, `start` reads only the current snapshot (one round trip, no transaction): a
    request answered from the cache alone ends there, with no BEGIN and no COMMIT. Its first
    statement then begins the transaction and reads its snapshot; if that is newer than the
    cached answers already given, the work is tried again without the cache (`_StaleCache`), so
    every answer a transaction sees is its snapshot's."""

    def __init__(self, connection: psycopg.Connection[Any], cache: SnapshotCache | None) -> None:
        import psycopg

        super().__init__(
            connection.cursor(),
            placeholder="%s",
            is_constraint_violation=lambda error: isinstance(error, psycopg.IntegrityError),
        )
        self._connection = connection
        self._cache = cache
        self._snapshot = ""
        self._entries: dict[tuple[Any, ...], Any] = {}
        self._served: list[tuple[Any, ...]] = []
        self._written = False
        self._open = False
        self.stale = False

    def start(self) -> None:
        if self._cache is None:
            self.begin()
            return
        # Straight through libpq: most requests end here, and the cursor's adaptation and
        # loading of one text value cost half of this round trip's CPU (measured: 38 against
        # 75 us). Anything but a row (an error) goes the cursor's way, which raises it properly.
        result = self._connection.pgconn.exec_(_SNAPSHOT)
        if result.status == _TUPLES_OK and result.ntuples == 1:
            value = result.get_value(0, 0)
            self._snapshot = value.decode("ascii") if value is not None else ""
        else:
            self._snapshot = str(self._cursor.execute(_SNAPSHOT).fetchone()[0])
        self._entries = self._cache.entries_for(self._snapshot)

    def begin(self) -> None:
        self._cursor.execute("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT pg_current_snapshot()")
        self._open = True
        self._cursor.nextset()  # the first result is BEGIN's
        row = self._cursor.fetchone()
        snapshot = str(row[0]) if row is not None else ""
        if self._cache is None or snapshot == self._snapshot:
            return
        if self._served:
            self.stale = True
            raise _StaleCache
        self._snapshot = snapshot
        self._entries = self._cache.entries_for(snapshot)

    def commit(self) -> None:
        import psycopg

        if not self._open:  # answered from the cache alone: there is no transaction
            return
        try:
            self._cursor.execute("COMMIT")
        except psycopg.errors.SerializationFailure:
            self._open = False  # a failed COMMIT rolls back: known outcome
            raise
        except psycopg.OperationalError as error:
            self._open = False
            raise _Unknown(
                "the connection to the store failed while committing: the change may or may"
                f" not have been made ({type(error).__name__})"
            ) from None
        self._open = False

    def rollback(self) -> None:
        if not self._open:
            return
        self._open = False
        if self._connection.broken or self._connection.closed:
            return
        try:
            self._cursor.execute("ROLLBACK")
        except Exception:  # the pool discards a connection left in a bad state
            return

    def _run(self, sql: str, args: Sequence[object] = ()) -> Any:
        if not self._open:
            self.begin()
        if not self._written and _WRITES.match(sql):
            self._written = True
            self._register_served()
        return super()._run(sql, args)

    def _register_served(self) -> None:
        """Read again in the database what the cache answered, so that SERIALIZABLE knows this
        transaction's decision rests on those rows (the answers cannot differ: same snapshot)."""
        served, self._served = self._served, []
        for read, *args in served:
            read(self, *args)

    def _cached(self, read: Callable[..., _T], *args: str) -> _T:
        if self._cache is None or self._written:
            return read(self, *args)
        key = (read, *args)
        if key in self._entries:
            self._served.append(key)
            return self._entries[key]  # type: ignore[no-any-return]
        value = read(self, *args)  # may begin the transaction, at a newer snapshot
        entries = self._entries
        if len(entries) >= SnapshotCache.MAX_ENTRIES:
            entries.clear()
        entries[key] = value
        return value
