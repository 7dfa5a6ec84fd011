"""The append-only audit log of credential issuance: one JSON object per line, never a secret.

A record is on disk (written and fsync'd) before its credential is handed out. `append` commits
records in groups: those that arrive while an fsync is under way are written together and made
durable by the next single fsync, which runs in a thread so the reactor keeps issuing meanwhile.
An fsync costs milliseconds on a disk, and a node that starts a thousand instances asks for a
thousand credentials at once: one fsync each, on the reactor, was most of what issuing cost.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

#: Runs a blocking call off the reactor: `twisted.internet.threads.deferToThread` by default.
RunInThread = Callable[[Callable[[], None]], Deferred[None]]


def _default_run_in_thread(call: Callable[[], None]) -> Deferred[None]:
    from twisted.internet.threads import deferToThread

    return deferToThread(call)


class AuditLog:
    """Appends records to a file (0600) and flushes them to disk before their callers hear they
    are written, so a credential is never handed out without its trace."""

    def __init__(self, path: Path, run_in_thread: RunInThread | None = None) -> None:
        self.path = path
        self._run_in_thread = run_in_thread or _default_run_in_thread
        #: Records waiting for the fsync under way to finish, each with its caller's Deferred.
        self._waiting: list[tuple[bytes, Deferred[None]]] = []
        self._committing = False

    def write(self, record: Mapping[str, object]) -> None:
        """Append one record and fsync it, blocking. Raises OSError when it cannot."""
        self._write_lines([_line(record)])

    def append(self, record: Mapping[str, object]) -> Deferred[None]:
        """Append one record: fires once it is fsync'd, with the records of concurrent callers
        (one fsync for all of them); fails with OSError when it cannot be written."""
        written: Deferred[None] = Deferred()
        self._waiting.append((_line(record), written))
        if not self._committing:
            self._commit()
        return written

    def _commit(self) -> None:
        group, self._waiting = self._waiting, []
        self._committing = True
        lines = [line for line, _ in group]
        done = self._run_in_thread(lambda: self._write_lines(lines))

        def settle(result: object) -> None:
            self._committing = False
            if self._waiting:
                self._commit()  # those that arrived meanwhile: the next group
            for _, written in group:
                if isinstance(result, Failure):
                    written.errback(result)
                else:
                    written.callback(None)

        done.addBoth(settle)

    def _write_lines(self, lines: list[bytes]) -> None:
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            pending = memoryview(b"".join(lines))
            while pending:
                pending = pending[os.write(descriptor, pending) :]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _line(record: Mapping[str, object]) -> bytes:
    return (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")
