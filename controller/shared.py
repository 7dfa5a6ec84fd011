"""What every controller on one PostgreSQL shares, kept in the database (table ``shared_state``).

On SQLite these are files in the state directory (``controller.keyring``, ``controller.cli``);
with several controllers each would make its own, so on PostgreSQL they are rows, one text each:

- ``token-keys``: the token key ring, as the file's JSON (``controller.keyring``);
- ``node-ca.key``, ``node-ca.pem``: the node CA, which signs every node's client certificate and
  every controller's node API certificate, so an agent trusts all controllers;
- ``instance-identity.key``, ``instance-identity.pem``: the key that signs identity documents.

A row is made once (``init``; never replaced, except the key ring, which rotates by
compare-and-set so two rotations at once both count). Writes to the table NOTIFY
``rolecall_shared_state`` (migration 0009), so a rotation reaches every controller at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from controller.config import ControllerConfig
from controller.keyring import KeyRingError, key_ring_from_text, key_ring_to_text, load_key_ring
from controller.store.base import AuditRow, Conflict, Store, StoreError, Transaction
from controller.tokens import DEFAULT_KEEP_FOR, KeyRing, new_key_ring
from controller.xmlout import format_time

TOKEN_KEYS = "token-keys"  # noqa: S105 (a row name, not a secret)
NODE_CA_KEY = "node-ca.key"
NODE_CA_CERT = "node-ca.pem"
IDENTITY_KEY = "instance-identity.key"
IDENTITY_CERT = "instance-identity.pem"
#: How the key ring is named in errors (never its content).
KEY_RING_SOURCE = "in the database (shared_state token-keys)"
#: Compare-and-set rounds before a rotation gives up (each lost round means another won).
_ROUNDS = 20


def read_shared(store: Store, name: str) -> str | None:
    """The named text, or None."""
    with store.transaction() as tx:
        return tx.get_shared_state(name)


def _insert_all(store: Store, rows: dict[str, str], now: datetime) -> bool:
    """Insert every row in one transaction; False when another process made one first."""
    try:
        with store.transaction() as tx:
            for name, value in rows.items():
                tx.insert_shared_state(name, value, format_time(now))
    except Conflict:
        return False
    return True


# --- the token key ring ---------------------------------------------------------------------


def ensure_key_ring_in(
    store: Store, now: datetime, adopt: Path | None = None
) -> tuple[KeyRing, str]:
    """The ring in the database, made when there is none: from the file ``adopt`` when it
    exists (a state directory moved from SQLite keeps its tokens valid), else one fresh key.
    Also how it came: ``"existing"``, ``"adopted"`` or ``"created"``."""
    text = read_shared(store, TOKEN_KEYS)
    if text is not None:
        return key_ring_from_text(text, KEY_RING_SOURCE), "existing"
    how = "created"
    ring = new_key_ring(now)
    if adopt is not None and adopt.exists():
        ring, how = load_key_ring(adopt), "adopted"
    if _insert_all(store, {TOKEN_KEYS: key_ring_to_text(ring)}, now):
        return ring, how
    text = read_shared(store, TOKEN_KEYS)  # another init made it meanwhile: theirs is the ring
    assert text is not None
    return key_ring_from_text(text, KEY_RING_SOURCE), "existing"


def load_key_ring_in(store: Store) -> KeyRing:
    """The ring in the database; KeyRingError when there is none or it is not a ring."""
    try:
        text = read_shared(store, TOKEN_KEYS)
    except StoreError as error:
        raise KeyRingError(KEY_RING_SOURCE, f"cannot be read: {error}") from None
    if text is None:
        raise KeyRingError(KEY_RING_SOURCE, "does not exist (rolecall-controller init makes it)")
    return key_ring_from_text(text, KEY_RING_SOURCE)


def _change_key_ring(store: Store, now: datetime, change: Callable[[KeyRing], KeyRing]) -> KeyRing:
    def attempt(tx: Transaction) -> KeyRing | None:
        text = tx.get_shared_state(TOKEN_KEYS)
        if text is None:
            raise KeyRingError(
                KEY_RING_SOURCE, "does not exist (rolecall-controller init makes it)"
            )
        ring = change(key_ring_from_text(text, KEY_RING_SOURCE))
        if tx.replace_shared_state(TOKEN_KEYS, text, key_ring_to_text(ring), format_time(now)):
            return ring
        return None

    # run() tries again on a serialization failure (PostgreSQL); the compare-and-set catches
    # a rotation that committed between this one's read and its write on any backend.
    for _round in range(_ROUNDS):
        ring = store.run(attempt)
        if ring is not None:
            return ring
    raise KeyRingError(KEY_RING_SOURCE, f"was changed by others {_ROUNDS} times in a row")


def rotate_key_ring_in(
    store: Store, now: datetime, keep_for: timedelta = DEFAULT_KEEP_FOR
) -> KeyRing:
    """Rotate the ring in the database (as ``controller.keyring.rotate_key_ring`` the file)."""
    return _change_key_ring(store, now, lambda ring: ring.rotated(now, keep_for))


def revoke_key_ring_in(store: Store, now: datetime) -> KeyRing:
    """Replace the ring in the database with one new key."""
    return _change_key_ring(store, now, lambda ring: ring.revoked(now))


class KeyRingRow:
    """The key ring of a running controller on PostgreSQL, following its row.

    ``refresh()`` is one primary-key read: the controller calls it every 30 s, at once when a
    change is announced (NOTIFY), and when a token names a key id it does not hold. A key is
    only ever sealed with after its row committed, so that last read always finds it: no
    controller refuses a token another sealed with a key it has just learnt.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        #: How many times the row was read: for tests.
        self.reads = 0
        self._text = self._read()
        self._ring = key_ring_from_text(self._text, KEY_RING_SOURCE)

    @property
    def ring(self) -> KeyRing:
        return self._ring

    def _read(self) -> str:
        self.reads += 1
        try:
            text = read_shared(self._store, TOKEN_KEYS)
        except StoreError as error:
            raise KeyRingError(KEY_RING_SOURCE, f"cannot be read: {error}") from None
        if text is None:
            raise KeyRingError(
                KEY_RING_SOURCE, "does not exist (rolecall-controller init makes it)"
            )
        return text

    def refresh(self) -> bool:
        text = self._read()
        if text == self._text:
            return False
        self._ring = key_ring_from_text(text, KEY_RING_SOURCE)
        self._text = text
        return True


# --- the node CA and the instance identity ----------------------------------------------------


def ensure_pair_in(
    store: Store,
    names: tuple[str, str],
    make: Callable[[], tuple[bytes, bytes]],
    now: datetime,
    adopt: tuple[Path, Path] | None = None,
) -> tuple[bytes, bytes, str]:
    """The key and certificate PEM stored under ``names``, made by ``make`` when absent (or
    taken from the files ``adopt`` when both exist); and ``"existing"``, ``"adopted"`` or
    ``"created"``. Never replaces a stored pair."""
    key_name, cert_name = names
    found = load_pair_in(store, names)
    if found is not None:
        return *found, "existing"
    if adopt is not None and adopt[0].exists() and adopt[1].exists():
        key_pem, cert_pem, how = adopt[0].read_bytes(), adopt[1].read_bytes(), "adopted"
    else:
        (key_pem, cert_pem), how = make(), "created"
    rows = {key_name: key_pem.decode("ascii"), cert_name: cert_pem.decode("ascii")}
    if _insert_all(store, rows, now):
        return key_pem, cert_pem, how
    found = load_pair_in(store, names)  # another init made it meanwhile: theirs it is
    if found is None:
        raise StoreError(f"{key_name} and {cert_name} in the database: one exists, not both")
    return *found, "existing"


def load_pair_in(store: Store, names: tuple[str, str]) -> tuple[bytes, bytes] | None:
    """The key and certificate PEM stored under ``names``, or None when neither is; a
    StoreError when only one is."""
    with store.transaction() as tx:
        key, cert = tx.get_shared_state(names[0]), tx.get_shared_state(names[1])
    if key is None and cert is None:
        return None
    if key is None or cert is None:
        present, missing = (names[0], names[1]) if key is not None else (names[1], names[0])
        raise StoreError(
            f"the database holds {present} but not {missing} (table shared_state): restore it"
            " from a backup"
        )
    return key.encode("ascii"), cert.encode("ascii")


# --- moving a state directory's files into the database (migrate-store) ------------------------


def adopt_pair_in(
    store: Store, names: tuple[str, str], paths: tuple[Path, Path], now: datetime
) -> str | None:
    """Put the key and certificate files ``paths`` under ``names`` unless the database has
    them: ``"adopted"``, ``"existing"``, or None when the files are not both there."""
    if load_pair_in(store, names) is not None:
        return "existing"
    if not (paths[0].exists() and paths[1].exists()):
        return None
    _, _, how = ensure_pair_in(store, names, _no_new_pair, now, adopt=paths)
    return how


def _no_new_pair() -> tuple[bytes, bytes]:
    raise AssertionError("adopt_pair_in makes no new pair")


def adopt_files(store: Store, config: ControllerConfig, now: datetime) -> list[str]:
    """Copy into the database what the state directory of an SQLite controller holds as files
    and PostgreSQL shares: the key ring, the node CA, the instance identity and the audit log's
    records. Each only while the database has none of it (so a second run changes nothing);
    what was done, one line each, for the operator."""
    done = []
    ring_path = config.token_keys_path
    if not ring_path.exists():
        done.append(f"token key ring: {ring_path} does not exist; init will make one")
    else:
        _, how = ensure_key_ring_in(store, now, adopt=ring_path)
        done.append(
            f"token key ring: copied from {ring_path}"
            if how == "adopted"
            else "token key ring: the database has one already; the file was not copied"
        )
    for what, names, paths in (
        ("node CA", (NODE_CA_KEY, NODE_CA_CERT), (config.ca_key_path, config.ca_cert_path)),
        (
            "instance identity",
            (IDENTITY_KEY, IDENTITY_CERT),
            (config.identity_key_path, config.identity_cert_path),
        ),
    ):
        how_pair = adopt_pair_in(store, names, paths, now)
        if how_pair == "adopted":
            done.append(f"{what}: copied from {paths[0]} and {paths[1]}")
        elif how_pair == "existing":
            done.append(f"{what}: the database has one already; the files were not copied")
        else:
            done.append(f"{what}: not in {config.state_dir}; init will make one")
    done.append(_adopt_audit_log(store, config.audit_log_path))
    return done


def _adopt_audit_log(store: Store, path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return f"audit log: {path} does not exist; nothing to copy"
    rows: list[AuditRow] = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash: not a record
        if isinstance(record, dict):
            instance_id = record.get("instance_id")
            rows.append(
                (
                    str(record.get("time", "")),
                    instance_id if isinstance(instance_id, str) else None,
                    line,
                )
            )

    def copy(tx: Transaction) -> bool:
        if tx.list_audit_records(None, None, 0, 1):
            return False
        for start in range(0, len(rows), _AUDIT_BATCH):
            tx.insert_audit_records(rows[start : start + _AUDIT_BATCH])
        return True

    if not store.run(copy):
        return "audit log: the database's audit_log has records already; the file was not copied"
    return f"audit log: {len(rows)} records copied from {path} (the file stays)"


#: Audit records per INSERT when a file is copied.
_AUDIT_BATCH = 500
