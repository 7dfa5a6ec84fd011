"""controller.shared: the key ring, node CA and identity as rows every controller reads, and the
audit log as a table. The rules are the backend's SQL, run here on SQLite (whose schema has the
same tables); tests/e2e/test_controllers.py runs them on PostgreSQL with several controllers."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred

from controller.audit import DatabaseAuditLog
from controller.errors import InvalidClientTokenId
from controller.keyring import KeyRingError, ensure_key_ring, key_ring_from_text, key_ring_to_text
from controller.sessions import Sessions
from controller.shared import (
    IDENTITY_CERT,
    IDENTITY_KEY,
    NODE_CA_CERT,
    NODE_CA_KEY,
    TOKEN_KEYS,
    KeyRingRow,
    ensure_key_ring_in,
    ensure_pair_in,
    load_key_ring_in,
    load_pair_in,
    revoke_key_ring_in,
    rotate_key_ring_in,
)
from controller.store.base import StoreError
from controller.store.sql import SqlTransaction
from controller.store.sqlite import SQLiteStore
from controller.tokens import seal
from tests.unit.test_tokens import assumed_role_claims

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "rolecall.db")
    try:
        yield opened
    finally:
        opened.close()


def test_the_first_init_makes_the_ring_and_later_ones_find_it(store: SQLiteStore) -> None:
    made, how = ensure_key_ring_in(store, NOW)
    found, again = ensure_key_ring_in(store, NOW + timedelta(hours=1))
    assert (how, again) == ("created", "existing")
    assert found == made


def test_a_state_directory_moved_from_sqlite_keeps_its_ring(
    store: SQLiteStore, tmp_path: Path
) -> None:
    file_ring = ensure_key_ring(tmp_path / "token-keys.json", NOW)
    ring, how = ensure_key_ring_in(store, NOW, adopt=tmp_path / "token-keys.json")
    assert how == "adopted" and ring == file_ring == load_key_ring_in(store)


def test_a_token_sealed_with_a_key_rotated_in_elsewhere_opens_at_once(
    store: SQLiteStore,
) -> None:
    # Controller B holds the ring from before; the CLI rotates; controller A seals with the
    # new key before B's periodic refresh: B re-reads the row on meeting the unknown key id.
    ensure_key_ring_in(store, NOW)
    on_b = KeyRingRow(store)
    rotated = rotate_key_ring_in(store, NOW)
    assert on_b.ring.get(rotated.active_id) is None
    claims = assumed_role_claims()
    token = seal(claims, KeyRingRow(store).ring)
    assert Sessions(on_b).open(token, claims.issued) == claims
    assert on_b.ring == rotated


def test_a_revoked_key_stops_opening_tokens_once_refreshed(store: SQLiteStore) -> None:
    ring, _ = ensure_key_ring_in(store, NOW)
    held = KeyRingRow(store)
    claims = assumed_role_claims()
    token = seal(claims, ring)
    revoke_key_ring_in(store, NOW)
    assert Sessions(held).open(token, claims.issued) == claims  # not refreshed yet
    assert held.refresh() is True
    with pytest.raises(InvalidClientTokenId):
        Sessions(held).open(token, claims.issued)


def test_refresh_reads_one_row_and_changes_nothing_when_it_is_the_same(
    store: SQLiteStore,
) -> None:
    ensure_key_ring_in(store, NOW)
    held = KeyRingRow(store)
    ring = held.ring
    assert held.refresh() is False
    assert held.ring is ring and held.reads == 2


def test_two_rotations_at_once_both_count(store: SQLiteStore, tmp_path: Path) -> None:
    # A second store on the same file is a second controller host; the compare-and-set makes
    # the rotation that read the old ring first try again instead of undoing the other.
    ensure_key_ring_in(store, NOW)
    other = SQLiteStore(tmp_path / "rolecall.db")
    try:
        first = rotate_key_ring_in(store, NOW)
        second = rotate_key_ring_in(other, NOW)
    finally:
        other.close()
    assert first.active_id in {key.key_id for key in second.keys}
    assert len(load_key_ring_in(store).keys) == 3


def test_a_rotation_that_loses_the_race_reads_again(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_key_ring_in(store, NOW)
    real_replace = SqlTransaction.replace_shared_state
    raced: list[str] = []

    def racing(tx: SqlTransaction, name: str, expected: str, value: str, changed: str) -> bool:
        if not raced:  # another controller rotates between this one's read and its write
            theirs = key_ring_from_text(expected).rotated(NOW)
            raced.append(theirs.active_id)
            assert real_replace(tx, name, expected, key_ring_to_text(theirs), changed)
        return real_replace(tx, name, expected, value, changed)

    monkeypatch.setattr(SqlTransaction, "replace_shared_state", racing)
    mine = rotate_key_ring_in(store, NOW)
    stored = load_key_ring_in(store)
    assert stored == mine
    assert stored.get(raced[0]) is not None  # theirs was kept, not overwritten


def test_a_missing_ring_is_a_clear_error(store: SQLiteStore) -> None:
    with pytest.raises(KeyRingError, match=r"does not exist \(rolecall-controller init makes it"):
        KeyRingRow(store)
    with pytest.raises(KeyRingError, match="does not exist"):
        rotate_key_ring_in(store, NOW)


def test_a_bad_ring_row_is_refused_without_showing_it(store: SQLiteStore) -> None:
    with store.transaction() as tx:
        tx.insert_shared_state(TOKEN_KEYS, '{"format": 1, "secret": "c2VjcmV0"', "t")
    with pytest.raises(KeyRingError) as caught:
        load_key_ring_in(store)
    assert "c2VjcmV0" not in str(caught.value)
    assert "in the database" in str(caught.value)


def _pair(tag: str) -> Callable[[], tuple[bytes, bytes]]:
    return lambda: (f"KEY {tag}".encode(), f"CERT {tag}".encode())


def test_the_node_ca_is_made_once_and_every_later_init_shares_it(store: SQLiteStore) -> None:
    names = (NODE_CA_KEY, NODE_CA_CERT)
    assert ensure_pair_in(store, names, _pair("first"), NOW) == (
        b"KEY first",
        b"CERT first",
        "created",
    )
    assert ensure_pair_in(store, names, _pair("second"), NOW) == (
        b"KEY first",
        b"CERT first",
        "existing",
    )
    assert load_pair_in(store, names) == (b"KEY first", b"CERT first")


def test_an_existing_pair_of_files_is_adopted(store: SQLiteStore, tmp_path: Path) -> None:
    key, cert = tmp_path / "instance-identity.key", tmp_path / "instance-identity.pem"
    key.write_bytes(b"KEY file")
    cert.write_bytes(b"CERT file")
    got = ensure_pair_in(store, (IDENTITY_KEY, IDENTITY_CERT), _pair("new"), NOW, (key, cert))
    assert got == (b"KEY file", b"CERT file", "adopted")


def test_half_a_pair_in_the_database_is_an_error(store: SQLiteStore) -> None:
    with store.transaction() as tx:
        tx.insert_shared_state(NODE_CA_CERT, "CERT", "t")
    with pytest.raises(StoreError, match=r"holds node-ca\.pem but not node-ca\.key"):
        load_pair_in(store, (NODE_CA_KEY, NODE_CA_CERT))


class Thread:
    """Runs calls only when told, so the test decides what overlaps."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[[], None], Deferred[None]]] = []

    def __call__(self, call: Callable[[], None]) -> Deferred[None]:
        self.calls.append((call, Deferred()))
        return self.calls[-1][1]

    def finish(self) -> None:
        call, done = self.calls.pop(0)
        try:
            call()
        except Exception as error:
            done.errback(error)
        else:
            done.callback(None)


def record(number: int) -> dict[str, object]:
    return {
        "time": f"2024-05-01T12:00:{number:02d}Z",
        "event": "instance-credentials",
        "instance_id": f"i-{number:017x}",
        "access_key_id": f"ASIA{number:016d}",
    }


def test_audit_records_arriving_during_a_commit_go_in_the_next_one(store: SQLiteStore) -> None:
    thread = Thread()
    audit = DatabaseAuditLog(store, run_in_thread=thread)
    done: list[int] = []
    for number in (1, 2, 3):
        audit.append(record(number)).addCallback(lambda _, n=number: done.append(n))
    assert len(thread.calls) == 1
    with store.transaction() as tx:
        assert tx.list_audit_records(None, None, 0, 10) == []
    thread.finish()
    assert done == [1]
    thread.finish()
    assert done == [1, 2, 3] and thread.calls == []
    with store.transaction() as tx:
        rows = tx.list_audit_records(None, None, 0, 10)
        by_instance = tx.list_audit_records(None, record(2)["instance_id"], 0, 10)  # type: ignore[arg-type]
        since = tx.list_audit_records("2024-05-01T12:00:03Z", None, 0, 10)
    assert [json.loads(text) for _, text in rows] == [record(1), record(2), record(3)]
    assert [json.loads(text) for _, text in by_instance] == [record(2)]
    assert [json.loads(text) for _, text in since] == [record(3)]


def test_every_caller_hears_when_the_audit_table_cannot_be_written(
    store: SQLiteStore,
) -> None:
    thread = Thread()
    audit = DatabaseAuditLog(store, run_in_thread=thread)
    store.close()  # a database that cannot be reached
    failures: list[object] = []
    for number in (1, 2):
        audit.append(record(number)).addErrback(lambda failure: failures.append(failure.value))
    thread.finish()
    thread.finish()
    assert len(failures) == 2 and all(isinstance(error, Exception) for error in failures)


def test_without_notifications_a_revocation_reaches_a_controller_at_its_next_timed_reread(
    store: SQLiteStore,
) -> None:
    # The listener down: only KeyRingRefresh's timer re-reads the row, every 30 s.
    from twisted.internet.task import Clock

    from controller.compose import KEY_RING_REFRESH_SECONDS, KeyRingRefresh

    ring, _ = ensure_key_ring_in(store, NOW)
    held = KeyRingRow(store)
    sessions = Sessions(held)
    claims = assumed_role_claims()
    token = seal(claims, ring)
    clock = Clock()
    refresh = KeyRingRefresh(sessions, KEY_RING_REFRESH_SECONDS, clock)
    refresh.startService()
    try:
        revoke_key_ring_in(store, NOW)
        clock.advance(KEY_RING_REFRESH_SECONDS - 1)
        assert sessions.open(token, claims.issued) == claims
        clock.advance(1)
        with pytest.raises(InvalidClientTokenId):
            sessions.open(token, claims.issued)
    finally:
        refresh.stopService()
    assert clock.getDelayedCalls() == []


def test_a_ring_that_cannot_be_read_fails_the_request_as_a_store_failure(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A token naming a key this controller does not hold, while the database is unreachable:
    # the caller hears "try again" (ServiceFailure), not that its token is invalid.
    from controller import shared

    ensure_key_ring_in(store, NOW)
    held = KeyRingRow(store)
    claims = assumed_role_claims()
    token = seal(claims, rotate_key_ring_in(store, NOW))

    def unreachable(_store: object, _name: str) -> str:
        raise StoreError("cannot connect to the store (PostgreSQL host=db1)")

    monkeypatch.setattr(shared, "read_shared", unreachable)
    with pytest.raises(StoreError, match=r"in the database .* cannot be read: cannot connect"):
        Sessions(held).open(token, claims.issued)
