"""RoleLastUsed's recorder: uses wait in memory and are written in one transaction every
interval and when the service stops; a failed write keeps them. Time moves only through a Clock;
the store is a real SQLite one."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher

from controller.lastused import PendingUses, RoleLastUsedService, region_of
from controller.store.base import Store, StoreUnavailable, Transaction
from controller.store.records import Account, Role
from controller.store.sqlite import SQLiteStore

_T = TypeVar("_T")
ACCOUNT = "123456789012"
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


class FlakyStore(Store):
    """A real store whose transactions can be made to fail as an unreachable database's do,
    and which counts the transactions that wrote."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.down = False
        self.runs = 0

    def transaction(self):  # type: ignore[no-untyped-def]
        return self.store.transaction()

    def run(self, work: Callable[[Transaction], _T]) -> _T:
        if self.down:
            raise StoreUnavailable("no connection to the database")
        self.runs += 1
        return self.store.run(work)

    def schema_version(self) -> int:
        return self.store.schema_version()

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def store() -> Iterator[FlakyStore]:
    real = SQLiteStore(":memory:")
    with real.transaction() as tx:
        tx.insert_account(Account(ACCOUNT, "test", "2026-01-01T00:00:00Z"))
        for name in ("alpha", "beta"):
            tx.insert_role(
                Role(f"AROA{name.upper()}", ACCOUNT, name, "/", "{}", None, 3600, "2026-01-01")
            )
    flaky = FlakyStore(real)
    try:
        yield flaky
    finally:
        real.close()


@pytest.fixture
def errors() -> Iterator[list[str]]:
    seen: list[str] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == "rolecall.lastused" and event["log_level"].name in (
            "error",
            "critical",
        ):
            seen.append(event["log_format"])

    globalLogPublisher.addObserver(observe)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observe)


def last_used(store: FlakyStore, role_id: str) -> tuple[str | None, str | None]:
    role = store.store.run(lambda tx: tx.get_role_by_id(role_id))
    assert role is not None
    return role.last_used, role.last_used_region


def started(store: FlakyStore, clock: Clock, interval: float = 60) -> RoleLastUsedService:
    service = RoleLastUsedService(store, clock, interval)
    service.startService()
    return service


def test_uses_are_written_in_one_transaction_each_interval(store: FlakyStore) -> None:
    clock = Clock()
    service = started(store, clock)
    service.record("AROAALPHA", T0, "eu-west-1")
    service.record("AROABETA", T0, "us-east-1")
    service.record("AROAALPHA", T0 + timedelta(seconds=5), "us-west-2")
    assert service.waiting() == 2
    clock.advance(59)
    assert store.runs == 0
    assert last_used(store, "AROAALPHA") == (None, None)
    clock.advance(1)
    assert store.runs == 1
    assert last_used(store, "AROAALPHA") == ("2026-03-01T12:00:05Z", "us-west-2")
    assert last_used(store, "AROABETA") == ("2026-03-01T12:00:00Z", "us-east-1")
    assert service.waiting() == 0
    clock.advance(60)
    assert store.runs == 1  # nothing waiting: no transaction
    service.stopService()
    assert clock.getDelayedCalls() == []


def test_stopping_writes_what_waits(store: FlakyStore) -> None:
    clock = Clock()
    service = started(store, clock)
    service.record("AROABETA", T0, "eu-central-1")
    service.stopService()
    assert last_used(store, "AROABETA") == ("2026-03-01T12:00:00Z", "eu-central-1")
    assert clock.getDelayedCalls() == []


def test_a_failed_flush_keeps_the_uses_logs_one_line_and_the_loop_goes_on(
    store: FlakyStore, errors: list[str]
) -> None:
    clock = Clock()
    service = started(store, clock)
    service.record("AROAALPHA", T0, "eu-west-1")
    store.down = True
    clock.advance(60)
    assert service.waiting() == 1
    assert len(errors) == 1
    # A newer use recorded while the database is down wins over the one kept.
    service.record("AROAALPHA", T0 + timedelta(minutes=1), "us-east-1")
    store.down = False
    clock.advance(60)
    assert service.waiting() == 0
    assert last_used(store, "AROAALPHA") == ("2026-03-01T12:01:00Z", "us-east-1")
    service.stopService()


def test_a_failed_flush_at_stop_does_not_raise(store: FlakyStore, errors: list[str]) -> None:
    clock = Clock()
    service = started(store, clock)
    service.record("AROAALPHA", T0, "eu-west-1")
    store.down = True
    service.stopService()
    assert len(errors) == 1
    assert clock.getDelayedCalls() == []


def test_an_older_use_does_not_replace_a_newer_one() -> None:
    pending = PendingUses()
    pending.record("AROA1", T0 + timedelta(seconds=1), "eu-west-1")
    pending.record("AROA1", T0, "us-east-1")
    pending.add([("AROA1", "2026-03-01T11:00:00Z", "ap-south-1")])
    assert pending.take() == [("AROA1", "2026-03-01T12:00:01Z", "eu-west-1")]
    assert len(pending) == 0


@pytest.mark.parametrize(
    ("signed", "recorded"),
    [
        ("eu-west-1", "eu-west-1"),
        ("us-gov-west-1", "us-gov-west-1"),
        ("RoleCall", "us-east-1"),
        ("x" * 200, "us-east-1"),
        ("eu-west-1\n", "us-east-1"),
    ],
)
def test_the_region_recorded_is_the_signing_regions_name_or_rolecalls(
    signed: str, recorded: str
) -> None:
    assert region_of(signed) == recorded
