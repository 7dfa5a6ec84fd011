"""controller.audit: every record on disk before its caller hears so, concurrent records sharing
one fsync. The thread is a fake whose calls the test runs, so it decides what overlaps."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred

from controller.audit import AuditLog


class Thread:
    """Runs nothing until told: `finish()` runs the oldest call and fires its Deferred."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[[], None], Deferred[None]]] = []

    def __call__(self, call: Callable[[], None]) -> Deferred[None]:
        self.calls.append((call, Deferred()))
        return self.calls[-1][1]

    def finish(self) -> None:
        call, done = self.calls.pop(0)
        try:
            call()
        except OSError as error:
            done.errback(error)
        else:
            done.callback(None)


def record(number: int) -> dict[str, object]:
    return {"event": "instance-credentials", "access_key_id": f"ASIA{number:016d}"}


def written(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_records_arriving_during_an_fsync_share_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd) or real_fsync(fd))
    thread = Thread()
    audit = AuditLog(tmp_path / "audit.log", run_in_thread=thread)
    done: list[int] = []
    audit.append(record(1)).addCallback(lambda _: done.append(1))
    for number in (2, 3, 4):
        audit.append(record(number)).addCallback(lambda _, n=number: done.append(n))
    assert len(thread.calls) == 1  # 2 to 4 wait for the fsync under way
    thread.finish()
    assert done == [1] and len(fsyncs) == 1
    assert len(thread.calls) == 1  # 2 to 4 together
    thread.finish()
    assert done == [1, 2, 3, 4] and len(fsyncs) == 2
    assert written(audit.path) == [record(n) for n in (1, 2, 3, 4)]
    assert thread.calls == []


def test_no_caller_hears_before_its_record_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    thread = Thread()
    audit = AuditLog(tmp_path / "audit.log", run_in_thread=thread)
    audit.append(record(1)).addCallback(lambda _: events.append("answered 1"))
    audit.append(record(2)).addCallback(lambda _: events.append("answered 2"))
    assert events == []
    thread.finish()
    thread.finish()
    assert events == ["fsync", "answered 1", "fsync", "answered 2"]


def test_every_caller_of_a_group_that_cannot_be_written_hears_the_error(
    tmp_path: Path,
) -> None:
    thread = Thread()
    audit = AuditLog(tmp_path / "audit.log", run_in_thread=thread)
    audit.path.mkdir()  # an audit log that cannot be opened for writing
    failures: list[object] = []
    for number in (1, 2, 3):
        audit.append(record(number)).addErrback(lambda failure: failures.append(failure.type))
    thread.finish()
    thread.finish()
    assert failures == [IsADirectoryError] * 3
    # And the log works again once it can be written.
    audit.path.rmdir()
    done: list[bool] = []
    audit.append(record(4)).addCallback(lambda _: done.append(True))
    thread.finish()
    assert done == [True]
    assert written(audit.path) == [record(4)]


def test_write_appends_and_syncs_one_record_at_once(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    audit.write(record(1))
    audit.write(record(2))
    assert written(audit.path) == [record(1), record(2)]
    assert (audit.path.stat().st_mode & 0o777) == 0o600
