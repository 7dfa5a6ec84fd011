"""The append-only audit log of credential issuance: one JSON object per record, never a secret.

A record is durable (in a file, written and fsync'd; or in the database's ``audit_log`` table,
committed) before its credential is handed out. `append` commits records in groups: those that
arrive while a commit is under way are written together by the next single commit, which runs in
a thread so the reactor keeps issuing meanwhile. An fsync (or a database commit) costs
milliseconds, and a node that starts a thousand instances asks for a thousand credentials at
once: one commit each, on the reactor, was most of what issuing cost.

With SQLite the log is a file (:class:`AuditLog`); with PostgreSQL, where every controller
issues, it is the shared table (:class:`DatabaseAuditLog`), read with ``rolecall-controller
audit``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from controller.store.base import AuditRow, Store, StoreError

#: Runs a blocking call off the reactor: `twisted.internet.threads.deferToThread` by default.
RunInThread = Callable[[Callable[[], None]], Deferred[None]]


def _default_run_in_thread(call: Callable[[], None]) -> Deferred[None]:
    from twisted.internet.threads import deferToThread

    return deferToThread(call)


class GroupCommitLog:
    """An audit log: records handed to ``_write_records`` in groups, one commit at a time, in
    a thread (a file or the database's table: the subclasses)."""

    def __init__(self, run_in_thread: RunInThread | None = None) -> None:
        self._run_in_thread = run_in_thread or _default_run_in_thread
        #: Records waiting for the commit under way to finish, each with its caller's Deferred.
        self._waiting: list[tuple[str, Mapping[str, object], Deferred[None]]] = []
        self._committing = False

    def write(self, record: Mapping[str, object]) -> None:
        """Append one record and make it durable, blocking; raises when it cannot."""
        self._write_records([(_text(record), record)])

    def append(self, record: Mapping[str, object]) -> Deferred[None]:
        """Append one record: fires once it is durable, with the records of concurrent callers
        (one commit for all of them); fails (OSError, StoreError) when it cannot be written."""
        written: Deferred[None] = Deferred()
        self._waiting.append((_text(record), record, written))
        if not self._committing:
            self._commit()
        return written

    def _commit(self) -> None:
        group, self._waiting = self._waiting, []
        self._committing = True
        records = [(text, record) for text, record, _ in group]
        done = self._run_in_thread(lambda: self._write_records(records))

        def settle(result: object) -> None:
            self._committing = False
            if self._waiting:
                self._commit()  # those that arrived meanwhile: the next group
            for _, _, written in group:
                if isinstance(result, Failure):
                    written.errback(result)
                else:
                    written.callback(None)

        done.addBoth(settle)

    def _write_records(self, records: Sequence[tuple[str, Mapping[str, object]]]) -> None:
        raise NotImplementedError


class AuditLog(GroupCommitLog):
    """Appends records to a file (0600) and flushes them to disk before their callers hear they
    are written, so a credential is never handed out without its trace."""

    def __init__(self, path: Path, run_in_thread: RunInThread | None = None) -> None:
        super().__init__(run_in_thread)
        self.path = path

    def _write_records(self, records: Sequence[tuple[str, Mapping[str, object]]]) -> None:
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            pending = memoryview("".join(text + "\n" for text, _ in records).encode("utf-8"))
            while pending:
                pending = pending[os.write(descriptor, pending) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


class DatabaseAuditLog(GroupCommitLog):
    """Inserts records into the database's ``audit_log`` table, one transaction per group,
    committed before their callers hear they are written.

    ``store`` is used from the commit's thread only, one group at a time: the controller gives
    this log a store of its own (one connection), apart from the one the reactor uses.
    """

    def __init__(self, store: Store, run_in_thread: RunInThread | None = None) -> None:
        super().__init__(run_in_thread)
        self.store = store

    def _write_records(self, records: Sequence[tuple[str, Mapping[str, object]]]) -> None:
        rows: list[AuditRow] = [
            (str(record.get("time", "")), _instance(record), text) for text, record in records
        ]
        try:
            self.store.run(lambda tx: tx.insert_audit_records(rows))
        except StoreError:
            raise
        except Exception as error:  # the driver's own (a revoked privilege, a full disk): one line
            lines = str(error).strip().splitlines()
            raise StoreError(
                f"cannot insert into audit_log: {lines[0] if lines else type(error).__name__}"
            ) from None


def _instance(record: Mapping[str, object]) -> str | None:
    instance_id = record.get("instance_id")
    return instance_id if isinstance(instance_id, str) else None


def _text(record: Mapping[str, object]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"))
