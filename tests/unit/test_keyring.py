"""The token key ring file: private, atomic, clear errors, rotation, and following changes."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller import keyring
from controller.errors import InvalidClientTokenId
from controller.keyring import (
    KeyRingError,
    KeyRingFile,
    ensure_key_ring,
    key_ring_from_text,
    key_ring_to_text,
    load_key_ring,
    rotate_key_ring,
    save_key_ring,
)
from controller.tokens import DEFAULT_KEEP_FOR, new_key_ring, seal, unseal
from tests.unit.test_tokens import assumed_role_claims

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "token-keys.json"


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that would leave new files world-readable, so the code must set 0600 itself."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def document(path: Path) -> dict[str, object]:
    result: dict[str, object] = json.loads(path.read_text())
    return result


def write_private(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def expect_error(path: Path, problem: str) -> KeyRingError:
    with pytest.raises(KeyRingError) as raised:
        load_key_ring(path)
    assert str(path) in str(raised.value)
    assert problem in str(raised.value)
    return raised.value


# --- creating and saving ---------------------------------------------------------------------


@pytest.mark.usefixtures("open_umask")
def test_ensure_creates_the_file_readable_by_its_owner_only(path: Path) -> None:
    ring = ensure_key_ring(path, NOW)
    assert mode_of(path) == 0o600
    assert load_key_ring(path) == ring
    assert len(ring.keys) == 1 and ring.active().created == NOW


def test_ensure_keeps_an_existing_ring(path: Path) -> None:
    first = ensure_key_ring(path, NOW)
    before = path.read_bytes()
    assert ensure_key_ring(path, NOW + HOUR) == first
    assert path.read_bytes() == before


def test_ensure_takes_the_ring_another_process_created_meanwhile(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = new_key_ring(NOW)
    save_key_ring(path, theirs)
    monkeypatch.setattr("controller.keyring.os.path.lexists", lambda _: False)  # lost the race
    assert ensure_key_ring(path, NOW) == theirs
    assert load_key_ring(path) == theirs
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


@pytest.mark.usefixtures("open_umask")
def test_save_writes_mode_0600_even_over_a_looser_file(path: Path) -> None:
    path.write_text("old")
    path.chmod(0o644)
    save_key_ring(path, new_key_ring(NOW))
    assert mode_of(path) == 0o600


def test_save_then_load_gives_the_same_ring(path: Path) -> None:
    ring = new_key_ring(NOW).rotated(NOW + HOUR, keep_for=HOUR)
    save_key_ring(path, ring)
    assert load_key_ring(path) == ring


def test_save_replaces_the_file_rather_than_rewriting_it(path: Path) -> None:
    save_key_ring(path, new_key_ring(NOW))
    before = path.stat().st_ino
    with path.open("rb") as old_reader:
        save_key_ring(path, new_key_ring(NOW))
        old = old_reader.read()
    assert path.stat().st_ino != before
    assert key_ring_from_text(old.decode()) != load_key_ring(path)  # a reader saw one whole ring
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left


def test_save_syncs_the_file_and_its_directory(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[bool] = []
    real_fsync = os.fsync

    def fsync(descriptor: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(descriptor).st_mode))
        real_fsync(descriptor)

    monkeypatch.setattr("controller.keyring.os.fsync", fsync)
    save_key_ring(path, new_key_ring(NOW))
    assert synced == [False, True]


def test_a_failed_save_leaves_the_old_file_and_no_temporary(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = new_key_ring(NOW)
    save_key_ring(path, old)

    def fail(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("controller.keyring.os.replace", fail)
    with pytest.raises(KeyRingError, match="No space left on device") as raised:
        save_key_ring(path, new_key_ring(NOW))
    assert str(path) in str(raised.value)
    assert load_key_ring(path) == old
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_save_into_a_missing_directory_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "token-keys.json"
    with pytest.raises(KeyRingError, match="cannot be written") as raised:
        save_key_ring(missing, new_key_ring(NOW))
    assert str(missing) in str(raised.value)


def test_the_file_holds_the_documented_json(path: Path) -> None:
    ring = ensure_key_ring(path, NOW)
    content = document(path)
    assert content["format"] == 1
    assert content["active"] == ring.active_id
    assert content["keys"] == [
        {
            "id": ring.active_id,
            "secret": base64.b64encode(ring.active().secret).decode(),
            "created": "2024-05-01T12:00:00+00:00",
            "retire_after": None,
        }
    ]


# --- loading ---------------------------------------------------------------------------------


def test_missing_file_is_an_error_naming_it(path: Path) -> None:
    expect_error(path, "does not exist")


def test_a_directory_is_an_error_naming_it(path: Path) -> None:
    path.mkdir(mode=0o700)
    expect_error(path, "is not a regular file")


def test_an_unreadable_file_is_an_error_naming_it(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_key_ring(path, new_key_ring(NOW))

    def denied(*_: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("controller.keyring.os.open", denied)  # chmod 000 does not stop root
    expect_error(path, "cannot be opened: Permission denied")


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660, 0o620, 0o602, 0o666, 0o610])
def test_a_file_open_to_group_or_others_is_refused(path: Path, mode: int) -> None:
    save_key_ring(path, new_key_ring(NOW))
    path.chmod(mode)
    error = expect_error(path, "is open to group or others")
    assert f"mode {mode:04o}" in str(error)
    assert f"chmod 600 {path}" in str(error)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_file_for_its_owner_only_is_accepted(path: Path, mode: int) -> None:
    ring = new_key_ring(NOW)
    save_key_ring(path, ring)
    path.chmod(mode)
    assert load_key_ring(path) == ring


@pytest.mark.parametrize("text", ["", "{", '{"format": 1, ', "not json", "\x00"])
def test_corrupt_json_is_refused(path: Path, text: str) -> None:
    write_private(path, text)
    expect_error(path, "is not valid JSON")


def test_text_that_is_not_utf8_is_refused(path: Path) -> None:
    path.write_bytes(b"\xff\xfe{}")
    path.chmod(0o600)
    expect_error(path, "is not UTF-8 text")


def _valid(path: Path) -> dict[str, object]:
    save_key_ring(path, new_key_ring(NOW))
    return document(path)


def _first_key(content: dict[str, object]) -> dict[str, object]:
    keys = content["keys"]
    assert isinstance(keys, list)
    first: dict[str, object] = keys[0]
    return first


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d.pop("active"), "must be a JSON object with the members"),
        (lambda d: d.update(extra=1), "must be a JSON object with the members"),
        (lambda d: d.update(format=2), "unknown format"),
        (lambda d: d.update(format=True), "unknown format"),
        (lambda d: d.update(keys=[]), "keys must be a non-empty list"),
        (lambda d: d.update(keys={}), "keys must be a non-empty list"),
        (lambda d: d.update(active="0badf00d"), "active token key 0badf00d is not in"),
        (lambda d: d.update(active=7), "active must be a key id"),
        (lambda d: _first_key(d).update(id="KEY"), "8 lowercase hexadecimal digits"),
        (lambda d: _first_key(d).update(id=12345678), "keys[0].id must be a string"),
        (lambda d: _first_key(d).update(secret="c2hvcnQ="), "the secret must be 32 bytes"),
        (lambda d: _first_key(d).update(secret="not base64!"), "keys[0].secret must be base64"),
        (lambda d: _first_key(d).update(secret=None), "keys[0].secret must be base64"),
        (
            lambda d: _first_key(d).update(created="yesterday"),
            "keys[0].created must be an ISO 8601 time",
        ),
        (lambda d: _first_key(d).update(created="2024-05-01T12:00:00"), "must include a UTC"),
        (
            lambda d: _first_key(d).update(retire_after=5),
            "keys[0].retire_after must be an ISO 8601 time",
        ),
        (lambda d: _first_key(d).update(note="x"), "keys[0] must have exactly the members"),
        (lambda d: d.update(keys=["key"]), "keys[0] must be an object"),
    ],
)
def test_a_malformed_ring_is_refused_saying_what_is_wrong(
    path: Path, change: object, problem: str
) -> None:
    content = _valid(path)
    assert callable(change)
    change(content)
    write_private(path, json.dumps(content))
    expect_error(path, problem)


def test_errors_never_show_a_secret(path: Path) -> None:
    content = _valid(path)
    secret = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="  # base64, but 26 bytes
    _first_key(content)["secret"] = secret
    write_private(path, json.dumps(content))
    error = expect_error(path, "the secret must be 32 bytes")
    assert secret not in str(error) and secret not in repr(error)


# --- rotation --------------------------------------------------------------------------------


def test_rotation_adds_an_active_key_and_keeps_the_old_one_until_its_retire_after(
    path: Path,
) -> None:
    first = ensure_key_ring(path, NOW)
    rotated = rotate_key_ring(path, NOW + HOUR, keep_for=HOUR)
    assert load_key_ring(path) == rotated
    assert rotated.active_id != first.active_id
    old = rotated.get(first.active_id)
    assert old is not None and old.retire_after == NOW + 2 * HOUR
    assert old.secret == first.active().secret
    assert mode_of(path) == 0o600


def test_rotation_drops_keys_past_their_retire_after(path: Path) -> None:
    first = ensure_key_ring(path, NOW)
    second = rotate_key_ring(path, NOW + HOUR, keep_for=HOUR)
    kept = rotate_key_ring(path, NOW + 2 * HOUR, keep_for=HOUR)  # first retires at exactly now
    assert {key.key_id for key in kept.keys} == {
        first.active_id,
        second.active_id,
        kept.active_id,
    }
    third = rotate_key_ring(path, NOW + 2 * HOUR + timedelta(seconds=1), keep_for=HOUR)
    assert third.get(first.active_id) is None
    assert third.get(second.active_id) is not None
    assert load_key_ring(path) == third


def test_rotation_keeps_the_old_key_36_hours_and_5_minutes_by_default(path: Path) -> None:
    first = ensure_key_ring(path, NOW)
    rotated = rotate_key_ring(path, NOW)
    old = rotated.get(first.active_id)
    assert DEFAULT_KEEP_FOR == timedelta(seconds=129_600 + 300)
    assert old is not None and old.retire_after == NOW + DEFAULT_KEEP_FOR


def test_rotating_a_missing_ring_names_the_file(path: Path) -> None:
    with pytest.raises(KeyRingError, match="does not exist") as raised:
        rotate_key_ring(path, NOW)
    assert str(path) in str(raised.value)


def test_rotating_a_loose_file_is_refused(path: Path) -> None:
    ensure_key_ring(path, NOW)
    path.chmod(0o644)
    with pytest.raises(KeyRingError, match="is open to group or others"):
        rotate_key_ring(path, NOW)


def test_concurrent_rotations_lose_no_key(path: Path) -> None:
    first = ensure_key_ring(path, NOW)
    results: list[object] = []
    with keyring._locked(path):
        # Another rotation starts while this one holds the lock and must wait for it.
        other = threading.Thread(target=lambda: results.append(rotate_key_ring(path, NOW)))
        other.start()
        other.join(timeout=0.2)
        assert other.is_alive()
        mine = load_key_ring(path).rotated(NOW, DEFAULT_KEEP_FOR)
        save_key_ring(path, mine)
    other.join(timeout=10)
    assert not other.is_alive()
    final = load_key_ring(path)
    assert results == [final]
    assert final.get(first.active_id) is not None
    assert final.get(mine.active_id) is not None
    assert len(final.keys) == 3


# --- a running controller's view ---------------------------------------------------------------


def test_key_ring_file_loads_the_ring_once(path: Path) -> None:
    ring = ensure_key_ring(path, NOW)
    held = KeyRingFile(path)
    assert held.ring == ring
    assert held.reads == 1


def test_refresh_does_not_read_an_unchanged_file(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_key_ring(path, NOW)
    held = KeyRingFile(path)

    def no_read(_: Path) -> None:
        raise AssertionError("refresh read an unchanged file")

    monkeypatch.setattr(keyring, "_read", no_read)
    assert not any(held.refresh() for _ in range(100))
    assert held.reads == 1


def test_refresh_picks_up_a_rotation_written_through_another_path(path: Path) -> None:
    ensure_key_ring(path, NOW)
    held = KeyRingFile(path)
    other_name = path.parent / "." / path.name
    link = path.parent / "link.json"
    link.symlink_to(path)
    rotated = rotate_key_ring(other_name, NOW + HOUR)
    assert held.refresh()
    assert held.ring == rotated
    assert held.reads == 2
    assert not held.refresh()
    again = rotate_key_ring(link, NOW + 2 * HOUR)
    assert link.is_symlink()  # the file it names was replaced, not the link
    assert held.refresh()
    assert held.ring == again


def test_refresh_picks_up_an_edit_in_place(path: Path) -> None:
    ensure_key_ring(path, NOW)
    held = KeyRingFile(path)
    replacement = new_key_ring(NOW)
    with path.open("w") as stream:  # same file, new contents
        stream.write(key_ring_to_text(replacement))
    assert held.refresh()
    assert held.ring == replacement


def test_refresh_keeps_the_ring_when_the_file_breaks_and_recovers(path: Path) -> None:
    ring = ensure_key_ring(path, NOW)
    held = KeyRingFile(path)
    write_private(path, "{ broken")
    with pytest.raises(KeyRingError, match="is not valid JSON"):
        held.refresh()
    assert held.ring == ring
    path.unlink()
    with pytest.raises(KeyRingError, match="cannot be examined") as raised:
        held.refresh()
    assert str(path) in str(raised.value)
    assert held.ring == ring
    rotated = ring.rotated(NOW + HOUR, keep_for=HOUR)
    save_key_ring(path, rotated)
    assert held.refresh()
    assert held.ring == rotated


def test_key_ring_file_refuses_a_loose_file_from_the_start(path: Path) -> None:
    ensure_key_ring(path, NOW)
    path.chmod(0o644)
    with pytest.raises(KeyRingError, match="is open to group or others"):
        KeyRingFile(path)


# -- ownership, the state directory, and the emergency revoke ------------------------------------

NOBODY = 65534


def test_a_ring_owned_by_another_user_is_refused_saying_whom_to_run_as(path: Path) -> None:
    """As when root runs rotate-token-key on the service user's state: refused, unchanged."""
    save_key_ring(path, new_key_ring(NOW))
    before = path.read_bytes()
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(KeyRingError, match=r"belongs to .*runuser -u "):
        load_key_ring(path)
    with pytest.raises(KeyRingError, match="belongs to"):
        rotate_key_ring(path, NOW)
    assert path.read_bytes() == before
    assert os.stat(path).st_uid == NOBODY


def test_the_state_directory_must_be_its_owners_alone(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    keyring.check_state_directory(state)
    state.chmod(0o750)
    with pytest.raises(keyring.StateDirectoryError, match="chmod 700"):
        keyring.check_state_directory(state)
    state.chmod(0o700)
    os.chown(state, NOBODY, NOBODY)
    with pytest.raises(keyring.StateDirectoryError, match="belongs to"):
        keyring.check_state_directory(state)


def test_an_emergency_revoke_leaves_one_new_key_and_no_old_token_opens(path: Path) -> None:
    claims = assumed_role_claims(issued=NOW, expires=NOW + HOUR)
    first = new_key_ring(NOW - HOUR)
    old = first.rotated(NOW - HOUR)  # the first key still verifies, the second seals
    tokens = [seal(claims, first), seal(claims, old)]
    save_key_ring(path, old)
    revoked = keyring.revoke_key_ring(path, NOW)
    assert [key.key_id for key in revoked.keys] == [revoked.active_id]
    assert revoked.active_id not in {key.key_id for key in old.keys}
    assert load_key_ring(path) == revoked
    for token in tokens:
        assert unseal(token, old, NOW) == claims
        with pytest.raises(InvalidClientTokenId):
            unseal(token, revoked, NOW)


def test_a_running_controller_reports_an_unreadable_ring_once_and_keeps_its_keys(
    path: Path,
) -> None:
    from twisted.internet.task import Clock
    from twisted.logger import globalLogPublisher

    from controller.compose import KeyRingRefresh
    from controller.sessions import Sessions

    ensure_key_ring(path, NOW)
    keys = KeyRingFile(path)
    loaded = keys.ring
    clock = Clock()
    refresh = KeyRingRefresh(Sessions(keys), 30, clock)
    events: list[dict[str, object]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        refresh.startService()
        save_key_ring(path, loaded.rotated(NOW))
        os.chown(path, NOBODY, NOBODY)  # as after `rotate-token-key` run by another user
        for _ in range(10):
            clock.advance(30)
        os.chown(path, os.geteuid(), os.getegid())
        clock.advance(30)
        refresh.stopService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    mine = [event for event in events if "key ring" in str(event.get("log_format"))]
    assert [str(event["log_format"]).split(" (")[0] for event in mine] == [
        "cannot re-read the token key ring",
        "the token key ring is readable again",
    ]
    assert "belongs to" in str(mine[0]["problem"])
    assert not any(event.get("log_failure") for event in mine)
    assert keys.ring.active_id != loaded.active_id  # the good file was picked up at the end
    assert clock.getDelayedCalls() == []
