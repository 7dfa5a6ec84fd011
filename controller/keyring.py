"""The token key ring on disk: a JSON file only its owner may read, always replaced atomically.

``rolecall-controller init`` creates it (:func:`ensure_key_ring`), ``rotate-token-key`` rotates it
(:func:`rotate_key_ring`), and a running controller holds it in a :class:`KeyRingFile` whose
``refresh()`` re-reads it only when it changed. The file::

    {"format": 1, "active": "1f2e3d4c",
     "keys": [{"id": "1f2e3d4c", "secret": "<base64 of 32 bytes>",
               "created": "2024-05-01T12:00:00+00:00", "retire_after": null}, ...]}

Every error is a :class:`KeyRingError` naming the file; none shows a secret.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import pwd
import stat
import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from controller.tokens import DEFAULT_KEEP_FOR, KeyRing, TokenKey, new_key_ring

FORMAT = 1
FILE_MODE = 0o600
#: Far more than any ring needs; a bigger file is not a key ring.
MAX_FILE_BYTES = 1024 * 1024

_TOP_KEYS = frozenset({"format", "active", "keys"})
_KEY_KEYS = frozenset({"id", "secret", "created", "retire_after"})

StrPath = str | os.PathLike[str]


class KeyRingError(Exception):
    """The key ring file cannot be used; the message names the file and says why."""

    def __init__(self, path: StrPath, problem: str) -> None:
        super().__init__(f"token key ring {os.fspath(path)}: {problem}")
        self.path = Path(path)
        self.problem = problem


class StateDirectoryError(Exception):
    """The state directory is not safe to serve from; the message names it and says why."""

    def __init__(self, path: StrPath, problem: str) -> None:
        super().__init__(f"state directory {os.fspath(path)}: {problem}")


# --- text -------------------------------------------------------------------------------------


def key_ring_to_text(ring: KeyRing) -> str:
    """The file's JSON text for ``ring``."""
    keys = [
        {
            "id": key.key_id,
            "secret": base64.b64encode(key.secret).decode("ascii"),
            "created": key.created.isoformat(),
            "retire_after": None if key.retire_after is None else key.retire_after.isoformat(),
        }
        for key in ring.keys
    ]
    document = {"format": FORMAT, "active": ring.active_id, "keys": keys}
    return json.dumps(document, indent=2) + "\n"


def _moment(value: object, where: str) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be an ISO 8601 time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{where} must be an ISO 8601 time") from None
    if moment.utcoffset() is None:
        raise ValueError(f"{where} must include a UTC offset")
    return moment


def _key(entry: object, index: int) -> TokenKey:
    where = f"keys[{index}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object")
    if set(entry) != _KEY_KEYS:
        raise ValueError(f"{where} must have exactly the members {', '.join(sorted(_KEY_KEYS))}")
    key_id = entry["id"]
    if not isinstance(key_id, str):
        raise ValueError(f"{where}.id must be a string")
    secret = entry["secret"]
    # The value is never quoted back: it is (or should be) a secret.
    try:
        if not isinstance(secret, str):
            raise ValueError
        raw = base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}.secret must be base64 text") from None
    retire_after = entry["retire_after"]
    return TokenKey(
        key_id=key_id,
        secret=raw,
        created=_moment(entry["created"], f"{where}.created"),
        retire_after=None
        if retire_after is None
        else _moment(retire_after, f"{where}.retire_after"),
    )


def key_ring_from_text(text: str, source: StrPath = "<key ring>") -> KeyRing:
    """The ring in a file's text; KeyRingError naming ``source`` when it is not a valid ring."""
    try:
        document = json.loads(text)
    except ValueError as error:
        # The position only: JSONDecodeError's own message is safe, its .doc is not shown.
        position = getattr(error, "lineno", None)
        at = f" (line {position})" if position is not None else ""
        raise KeyRingError(source, f"is not valid JSON{at}") from None
    try:
        if not isinstance(document, dict) or set(document) != _TOP_KEYS:
            raise ValueError("must be a JSON object with the members active, format and keys")
        if type(document["format"]) is not int or document["format"] != FORMAT:
            raise ValueError(f"has an unknown format; this RoleCall reads format {FORMAT}")
        entries = document["keys"]
        if not isinstance(entries, list) or not entries:
            raise ValueError("keys must be a non-empty list")
        active = document["active"]
        if not isinstance(active, str):
            raise ValueError("active must be a key id")
        return KeyRing(active, tuple(_key(entry, index) for index, entry in enumerate(entries)))
    except ValueError as error:
        raise KeyRingError(source, str(error)) from None


# --- files ------------------------------------------------------------------------------------


def _read(path: Path) -> tuple[bytes, os.stat_result]:
    """The file's bytes and the status of the very file they came from, after the safety checks."""
    try:
        # O_NONBLOCK: a FIFO put in its place must not hang the controller.
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KeyRingError(path, "does not exist (rolecall-controller init creates it)") from None
    except OSError as error:
        raise KeyRingError(path, f"cannot be opened: {error.strerror}") from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise KeyRingError(path, "is not a regular file")
        if status.st_uid != os.geteuid():
            raise KeyRingError(path, _not_ours(status.st_uid, "the controller's state"))
        mode = stat.S_IMODE(status.st_mode)
        if mode & 0o077:
            raise KeyRingError(
                path,
                f"is open to group or others (mode {mode:04o}); it holds the keys that seal "
                f"every session token, so it must be readable by its owner only: chmod 600 {path}",
            )
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(descriptor, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as error:
        raise KeyRingError(path, f"cannot be read: {error.strerror}") from None
    finally:
        os.close(descriptor)
    data = b"".join(chunks)
    if len(data) > MAX_FILE_BYTES:
        raise KeyRingError(path, f"is larger than {MAX_FILE_BYTES} bytes")
    return data, status


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _not_ours(owner: int, what: str) -> str:
    """Why a file or directory of another user is refused, and what to run instead."""
    name = _user_name(owner)
    return (
        f"belongs to {name}, not to {_user_name(os.geteuid())} who runs this command; run it as"
        f" the owner of {what} (runuser -u {name} -- rolecall-controller ...)"
    )


def check_state_owner(directory: StrPath) -> os.stat_result | None:
    """Every command that reads or writes the state runs as the state directory's owner: a file
    another user makes there (SQLite's journal, a key ring, a certificate) is one the service
    cannot open afterwards. The directory's status, or None if it does not exist yet."""
    directory = Path(directory)
    try:
        status = os.stat(directory)
    except FileNotFoundError:
        return None  # not initialised: init makes it, and any other command says to run init
    except OSError as error:
        raise StateDirectoryError(directory, f"cannot be examined: {error.strerror}") from None
    if not stat.S_ISDIR(status.st_mode):
        raise StateDirectoryError(directory, "is not a directory")
    if status.st_uid != os.geteuid():
        raise StateDirectoryError(directory, _not_ours(status.st_uid, "the state directory"))
    return status


def check_state_directory(directory: StrPath) -> None:
    """What serving needs of the state directory: it holds the store's long-term secret keys
    and the key ring, so it belongs to whoever runs the controller and is closed to everyone
    else (mode 0700)."""
    status = check_state_owner(directory)
    if status is None:
        return
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o077:
        raise StateDirectoryError(
            directory,
            f"is open to group or others (mode {mode:04o}); it holds secret keys, so it must be"
            f" its owner's only: chmod 700 {directory}",
        )


def _parse(path: Path, data: bytes) -> KeyRing:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyRingError(path, "is not UTF-8 text") from None
    return key_ring_from_text(text, path)


def load_key_ring(path: StrPath) -> KeyRing:
    """The ring in the file at ``path``, which must be readable by its owner only."""
    path = Path(path)
    data, _ = _read(path)
    return _parse(path, data)


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write(path: Path, data: bytes, *, overwrite: bool) -> bool:
    """Put ``data`` at ``path`` whole or not at all, mode 0600.

    A temporary file in the same directory is written and synced, then renamed over the path
    (``overwrite``) or hard-linked to it, which fails if the path exists: then nothing changes
    and the answer is False. A symbolic link is followed, so the file it names is replaced and
    the link stays.
    """
    shown, path = path, Path(os.path.realpath(path))
    directory = path.parent
    try:
        descriptor, temporary = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp", dir=directory
        )
    except OSError as error:
        raise KeyRingError(shown, f"cannot be written: {error.strerror}") from None
    placed = False
    try:
        with os.fdopen(descriptor, "wb") as stream:
            os.fchmod(stream.fileno(), FILE_MODE)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        if overwrite:
            os.replace(temporary, path)
            placed = True
        else:
            try:
                os.link(temporary, path)
            except FileExistsError:
                return False
            placed = True
        _sync_directory(directory)  # the rename itself must survive a crash
        return True
    except OSError as error:
        raise KeyRingError(shown, f"cannot be written: {error.strerror}") from None
    finally:
        if not (placed and overwrite):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)


def save_key_ring(path: StrPath, ring: KeyRing) -> None:
    """Write ``ring`` to ``path`` atomically, mode 0600: readers see the old ring or the new."""
    _write(Path(path), key_ring_to_text(ring).encode("utf-8"), overwrite=True)


def ensure_key_ring(path: StrPath, now: datetime) -> KeyRing:
    """The ring at ``path``, created with one fresh key when there is no file."""
    path = Path(path)
    if not os.path.lexists(path):
        ring = new_key_ring(now)
        if _write(path, key_ring_to_text(ring).encode("utf-8"), overwrite=False):
            return ring
        # Another process created it meanwhile: theirs is the ring.
    return load_key_ring(path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file at ``path`` against other rotations.

    The lock is on the file itself, so after waiting for it we check that the path still names
    the file we locked (a rotation replaces it) and start again if not.
    """
    while True:
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise KeyRingError(
                path, "does not exist (rolecall-controller init creates it)"
            ) from None
        except OSError as error:
            raise KeyRingError(path, f"cannot be opened: {error.strerror}") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            locked = os.fstat(descriptor)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                continue
            if (locked.st_dev, locked.st_ino) == (current.st_dev, current.st_ino):
                yield
                return
        finally:
            os.close(descriptor)  # closing releases the lock


def rotate_key_ring(
    path: StrPath, now: datetime, keep_for: timedelta = DEFAULT_KEEP_FOR
) -> KeyRing:
    """Rotate the ring in the file: a new active key; the old one verifies for ``keep_for``.

    The default outlasts the longest session RoleCall issues (36 hours) plus clock skew, so no
    token dies early. Keys retired by ``now`` are dropped.
    """
    path = Path(path)
    with _locked(path):
        ring = load_key_ring(path).rotated(now, keep_for)
        save_key_ring(path, ring)
    return ring


def revoke_key_ring(path: StrPath, now: datetime) -> KeyRing:
    """Replace the ring in the file with one new key: tokens sealed by any other stop verifying
    as soon as each controller re-reads the file."""
    path = Path(path)
    with _locked(path):
        ring = load_key_ring(path).revoked(now)
        save_key_ring(path, ring)
    return ring


def _signature(status: os.stat_result) -> tuple[int, ...]:
    # The inode changes on every atomic replace; mtime and size catch edits in place.
    return (
        status.st_dev,
        status.st_ino,
        status.st_size,
        status.st_mtime_ns,
        status.st_ctime_ns,
    )


class KeyRingSource(Protocol):
    """Where a running controller's key ring comes from: this file (SQLite) or a row of the
    database that every controller shares (PostgreSQL: :class:`controller.shared.KeyRingRow`)."""

    @property
    def ring(self) -> KeyRing:
        """The ring as last read."""
        ...

    def refresh(self) -> bool:
        """Read the ring again if it changed; True when it did. KeyRingError when it cannot
        be read (the ring in hand stays in use)."""
        ...


class KeyRingFile:
    """The key ring of a running controller, following the file as the CLI rotates it.

    Call :meth:`refresh` periodically and when a token names a key id the ring does not hold.
    It costs one ``stat`` when the file has not changed.
    """

    def __init__(self, path: StrPath) -> None:
        self.path = Path(path)
        #: How many times the file was read: for tests and metrics.
        self.reads = 0
        self._ring, self._signature = self._load()

    @property
    def ring(self) -> KeyRing:
        """The ring as last read."""
        return self._ring

    def _load(self) -> tuple[KeyRing, tuple[int, ...]]:
        data, status = _read(self.path)
        self.reads += 1
        return _parse(self.path, data), _signature(status)

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when it did.

        On a KeyRingError (file gone, corrupt, loose permissions) the ring in hand stays in use
        and the next refresh tries again.
        """
        try:
            status = os.stat(self.path)
        except OSError as error:
            raise KeyRingError(self.path, f"cannot be examined: {error.strerror}") from None
        if _signature(status) == self._signature:
            return False
        self._ring, self._signature = self._load()
        return True
