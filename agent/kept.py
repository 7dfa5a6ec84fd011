"""What the agent keeps across its own restart, so that guests are served at once after it: each
instance's assignment and the credential set it holds (issue: a restart during a controller
outage must not cost a guest its credentials while they are valid).

One file per instance, ``/run/rolecall-agent/instances/<instance-id>``, written whole (a
temporary file renamed over it) by the root process whenever the serving process says that an
instance's assignment or credential set changed, removed when the instance goes. At start the
root process reads them all and hands them over after the hello; the serving process serves each
instance from its entry until the controller answers. The directory is root's, 0700, on tmpfs:
nothing of it reaches a disk, and a reboot, which ends every guest too, clears it
(docs/security.md, "What the agent keeps").

The pure part (`encode_entry`, `decode_entry`) says what an entry is: the assignment and the
set as the node API carries them (`common.nodemessages`, its serializers and parsers), so an
entry is checked as an answer from the controller is; `InstanceFiles` (root
only) keeps them, bounded in number and size since the serving process is not trusted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from agent.imds.credentials import CredentialSet
from agent.names import InvalidName, check_instance_id
from common.nodemessages import InstanceAssignment, MessageError, parse_instance
from common.timestamps import format_timestamp, parse_timestamp

#: The directory, beside the ownership record.
DIRECTORY_NAME = "instances"
#: The format of an entry; another version is not read (served afresh from the controller).
VERSION = 1
#: An entry's largest size. An assignment and a credential set are a few KiB; the most an
#: assignment can carry is some 160 KiB (16 KiB of user data in base64, 50 tags of 256
#: characters escaped as JSON, keys and a signed identity document).
MAX_ENTRY_BYTES = 256 * 1024
#: How many entries and bytes the root process keeps at most (a serving process gone wrong must
#: not fill /run): far above any node's instances (the agent's descriptor limit is 65,536).
MAX_ENTRIES = 65536
MAX_TOTAL_BYTES = 256 * 1024 * 1024


class EntryError(ValueError):
    """An entry that cannot be used; the message says why, never what secret it holds."""


@dataclass(frozen=True)
class Entry:
    """One instance as it was served before the restart."""

    instance_id: str
    assignment: InstanceAssignment
    credentials: CredentialSet | None


def _credentials_to_wire(credentials: CredentialSet) -> dict[str, object]:
    """The credentials answer the set came in, and when it came (``LastUpdated``)."""
    return {
        **credentials.answer().to_wire(),
        "LastUpdated": format_timestamp(credentials.last_updated),
    }


def encode_entry(
    instance_id: str, assignment: InstanceAssignment, credentials: CredentialSet | None
) -> str:
    """The entry's text (JSON); EntryError if it would be over `MAX_ENTRY_BYTES`."""
    text = json.dumps(
        {
            "version": VERSION,
            "instance_id": instance_id,
            "assignment": assignment.to_wire(),
            "credentials": None if credentials is None else _credentials_to_wire(credentials),
        },
        separators=(",", ":"),
    )
    if len(text.encode("utf-8")) > MAX_ENTRY_BYTES:
        raise EntryError(f"the entry of {instance_id} is over {MAX_ENTRY_BYTES} bytes")
    return text


def decode_entry(text: str) -> Entry:
    """The entry in `text`, checked as the node API's answers are; EntryError otherwise."""
    try:
        value = json.loads(text)
    except ValueError:
        raise EntryError("not JSON") from None
    if not isinstance(value, dict) or value.get("version") != VERSION:
        raise EntryError(f"not a version {VERSION} entry")
    try:
        instance_id = check_instance_id(value.get("instance_id"))
    except InvalidName as error:
        raise EntryError(str(error)) from None
    wire = value.get("assignment")
    if not isinstance(wire, dict) or wire.get("instance_id") != instance_id:
        raise EntryError(f"{instance_id}: the assignment is not this instance's")
    try:
        assignment = parse_instance(wire)
    except MessageError as error:
        raise EntryError(f"{instance_id}: {error.within('assignment')}") from None
    credentials = None
    held = value.get("credentials")
    if held is not None:
        if not isinstance(held, dict) or not isinstance(held.get("LastUpdated"), str):
            raise EntryError(f"{instance_id}: the credentials have no LastUpdated")
        try:
            credentials = CredentialSet.from_node_api(held, parse_timestamp(held["LastUpdated"]))
        except ValueError as error:  # MessageError names the field, never a secret
            raise EntryError(f"{instance_id}: {error}") from None
    return Entry(instance_id, assignment, credentials)


def usable_credentials(
    entry: Entry, assignment: InstanceAssignment, now: datetime, least_seconds: float
) -> CredentialSet | None:
    """The entry's credential set if it belongs to `assignment`'s profile and role and has more
    than `least_seconds` left at `now`; else None (the agent fetches a new one)."""
    held = entry.credentials
    profile = assignment.instance_profile
    if held is None or profile is None or held.instance_profile_arn != profile.arn:
        return None
    if held.role_name != profile.role_name:
        return None
    if (held.expiration - now).total_seconds() <= least_seconds:
        return None
    return held


class InstanceFiles:
    """The entries on disk, one file per instance: root's, 0600, in a 0700 directory of root's.

    `write` and `remove` are what the serving process asks for; `load` is what the next agent
    gets. Bounded by `MAX_ENTRIES` and `MAX_TOTAL_BYTES`; a file that is not one this process
    could have written (a link, another owner, group or world bits, too large) is ignored and
    said in one line through `warn`."""

    def __init__(self, directory: Path, warn: Callable[[str], None]) -> None:
        self.directory = directory
        self._warn = warn
        self._sizes: dict[str, int] = {}

    def _open_directory(self) -> int:
        self.directory.mkdir(mode=0o700, exist_ok=True)
        descriptor = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        status = os.fstat(descriptor)
        if status.st_uid != os.geteuid() or status.st_mode & 0o077:
            os.close(descriptor)
            raise OSError(f"{self.directory} must be {os.geteuid()}'s and 0700")
        return descriptor

    def load(self) -> dict[str, str]:
        """Every entry's text, by instance id (nothing if the directory is missing)."""
        if not self.directory.exists():
            return {}
        directory = self._open_directory()
        entries: dict[str, str] = {}
        try:
            for name in sorted(os.listdir(directory)):
                if name.startswith("."):  # a temporary file a killed agent left
                    os.unlink(name, dir_fd=directory)
                    continue
                text = self._read(directory, name)
                if text is not None and len(entries) < MAX_ENTRIES:
                    entries[name] = text
                    self._sizes[name] = len(text)
        finally:
            os.close(directory)
        return entries

    def _read(self, directory: int, name: str) -> str | None:
        try:
            check_instance_id(name)
            descriptor = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
        except (InvalidName, OSError):
            self._warn(f"{self.directory}/{name[:80]!r}: not an entry of this agent's; ignored")
            return None
        try:
            status = os.fstat(descriptor)
            if status.st_uid != os.geteuid() or status.st_mode & 0o077:
                self._warn(f"{self.directory}/{name}: not 0600 and this agent's; ignored")
                return None
            data = os.read(descriptor, MAX_ENTRY_BYTES + 1)
        finally:
            os.close(descriptor)
        if len(data) > MAX_ENTRY_BYTES:
            self._warn(f"{self.directory}/{name}: over {MAX_ENTRY_BYTES} bytes; ignored")
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            self._warn(f"{self.directory}/{name}: not UTF-8; ignored")
            return None

    def write(self, instance_id: str, text: str) -> None:
        """Keep `text` as `instance_id`'s entry (replacing the one before). ValueError if the
        id, the size or the bounds refuse it; OSError if the file system does."""
        check_instance_id(instance_id)
        data = text.encode("utf-8")
        if len(data) > MAX_ENTRY_BYTES:
            raise ValueError(f"keep: an entry is at most {MAX_ENTRY_BYTES} bytes")
        total = sum(self._sizes.values()) - self._sizes.get(instance_id, 0) + len(data)
        if instance_id not in self._sizes and len(self._sizes) >= MAX_ENTRIES:
            raise ValueError(f"keep: at most {MAX_ENTRIES} entries")
        if total > MAX_TOTAL_BYTES:
            raise ValueError(f"keep: at most {MAX_TOTAL_BYTES} bytes in all")
        directory = self._open_directory()
        temporary = f".{instance_id}.tmp"
        try:
            try:
                os.unlink(temporary, dir_fd=directory)
            except FileNotFoundError:
                pass
            descriptor = os.open(
                temporary,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=directory,
            )
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(descriptor, view) :]
            finally:
                os.close(descriptor)
            # tmpfs: no fsync (a crash of the machine ends the guests too).
            os.replace(temporary, instance_id, src_dir_fd=directory, dst_dir_fd=directory)
        finally:
            os.close(directory)
        self._sizes[instance_id] = len(data)

    def remove(self, instance_id: str) -> None:
        """Forget `instance_id`'s entry (nothing happens if there is none)."""
        check_instance_id(instance_id)
        self._sizes.pop(instance_id, None)
        if not self.directory.exists():
            return
        directory = self._open_directory()
        try:
            os.unlink(instance_id, dir_fd=directory)
        except FileNotFoundError:
            pass
        finally:
            os.close(directory)
