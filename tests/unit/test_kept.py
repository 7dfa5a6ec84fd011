"""What the agent keeps across its restart (agent/kept.py): an entry's shape, and the root
process's files, which refuse what a serving process gone wrong, or another user, could plant."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent import kept
from agent.channel import MAX_REQUEST_BYTES
from agent.imds.credentials import CredentialSet
from common.nodemessages import (
    InstanceAssignment,
    InstanceIdentity,
    InstanceProfile,
    NetworkInterface,
    PublicKey,
    parse_instance,
)

NOW = datetime(2026, 12, 7, 10, 0, 0, tzinfo=UTC)
INSTANCE_ID = "i-0123456789abcdef0"
PROFILE = {
    "arn": "arn:aws:iam::123456789012:instance-profile/web",
    "id": "AIPAEXAMPLEPROFILE01",
    "role_name": "web",
}
ASSIGNMENT = parse_instance(
    {
        "instance_id": INSTANCE_ID,
        "netns": None,
        "instance_profile": PROFILE,
        "metadata": {"instance-id": INSTANCE_ID},
    }
)
OTHER_PROFILE = InstanceProfile("arn:other", PROFILE["id"], "web")
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"


def credentials(left: timedelta = timedelta(hours=5), role: str = "web") -> CredentialSet:
    return CredentialSet.from_node_api(
        {
            "AccessKeyId": "ASIAEXAMPLE000000001",
            "SecretAccessKey": SECRET,
            "Token": "FwoGZXIvYXdzEXAMPLETOKEN",
            "Expiration": (NOW + left).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "RoleArn": f"arn:aws:iam::123456789012:role/{role}",
            "InstanceProfileArn": PROFILE["arn"],
            "InstanceProfileId": PROFILE["id"],
            "AccountId": "123456789012",
        },
        NOW - timedelta(hours=1),
    )


def test_an_entry_comes_back_as_it_was_kept() -> None:
    held = credentials()
    entry = kept.decode_entry(kept.encode_entry(INSTANCE_ID, ASSIGNMENT, held))
    assert entry == kept.Entry(INSTANCE_ID, ASSIGNMENT, held)
    assert entry.credentials is not None
    assert entry.credentials.last_updated == NOW - timedelta(hours=1)


def test_an_entry_keeps_the_assignment_as_the_node_api_sent_it() -> None:
    value = json.loads(kept.encode_entry(INSTANCE_ID, ASSIGNMENT, None))
    assert value["assignment"] == ASSIGNMENT.to_wire()
    assert parse_instance(value["assignment"]) == ASSIGNMENT


def test_an_instance_without_credentials_is_kept_with_none() -> None:
    entry = kept.decode_entry(kept.encode_entry(INSTANCE_ID, ASSIGNMENT, None))
    assert entry.credentials is None


def entry_text(**changes: Any) -> str:
    value = json.loads(kept.encode_entry(INSTANCE_ID, ASSIGNMENT, credentials()))
    for key, replacement in changes.items():
        if key.startswith("credentials_"):
            value["credentials"][key.removeprefix("credentials_")] = replacement
        else:
            value[key] = replacement
    return json.dumps(value)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{", "not JSON"),
        ("[]", "not a version 1 entry"),
        (entry_text(version=2), "not a version 1 entry"),
        (entry_text(instance_id="../../etc/passwd"), "is not i- and 8 or 17"),
        (entry_text(assignment={"instance_id": "i-00000000"}), "not this instance's"),
        (entry_text(assignment=[1]), "not this instance's"),
        (
            entry_text(
                assignment={
                    "instance_id": INSTANCE_ID,
                    "metadata": {"instance-id": INSTANCE_ID, "ami-id": 1.5},
                }
            ),
            f"{INSTANCE_ID}: assignment.metadata.ami-id: must be a string (got 1.5)",
        ),
        (entry_text(credentials=[]), "no LastUpdated"),
        (entry_text(credentials_LastUpdated=None), "no LastUpdated"),
        (entry_text(credentials_Expiration="tomorrow"), "Expiration: must be"),
        (entry_text(credentials_SecretAccessKey=""), "SecretAccessKey: must be a non-empty"),
        (entry_text(credentials_RoleArn="web"), "RoleArn: not a role ARN"),
    ],
)
def test_an_entry_that_cannot_be_used_is_refused_saying_why_never_the_secret(
    text: str, reason: str
) -> None:
    with pytest.raises(kept.EntryError) as refused:
        kept.decode_entry(text)
    assert reason in str(refused.value)
    assert SECRET not in str(refused.value)


def test_the_largest_assignment_the_controller_can_send_is_kept() -> None:
    """16 KiB of user data, 50 tags of 256 characters that JSON escapes most, keys and a signed
    document: the entry and the channel request that carries it stay under their limits."""
    largest = replace(
        ASSIGNMENT,
        user_data=bytes(range(256)) * 64,
        public_keys=tuple(
            PublicKey(f"key-{n}", "ssh-rsa " + "A" * 2800 + " comment") for n in range(2)
        ),
        network=NetworkInterface("0e:00:00:00:00:01", "eni-0", "10.0.0.0/16", ("g" * 255,) * 5),
        tags=tuple((f"key-{n:03}" + "k" * 120, "\U0001f600\x01" * 128) for n in range(50)),
        identity=InstanceIdentity("{" + "d" * 600 + "}", "s" * 400, "p" * 2400, "r" * 2400),
    )
    text = kept.encode_entry(INSTANCE_ID, largest, credentials())
    assert len(text.encode()) <= kept.MAX_ENTRY_BYTES
    assert len(json.dumps({"op": "keep", "entry": text}).encode()) <= MAX_REQUEST_BYTES
    assert kept.decode_entry(text).assignment == largest


def test_an_entry_over_the_size_limit_is_refused() -> None:
    metadata = replace(ASSIGNMENT.metadata, ami_id="y" * kept.MAX_ENTRY_BYTES)
    assignment = replace(ASSIGNMENT, metadata=metadata)
    with pytest.raises(kept.EntryError, match="over"):
        kept.encode_entry(INSTANCE_ID, assignment, None)


@pytest.mark.parametrize(
    ("assignment", "left", "role", "usable"),
    [
        (ASSIGNMENT, timedelta(hours=5), "web", True),
        (ASSIGNMENT, timedelta(minutes=3), "web", True),
        (ASSIGNMENT, timedelta(minutes=2), "web", False),  # not more than the least left
        (ASSIGNMENT, timedelta(hours=5), "db", False),  # another role
        (replace(ASSIGNMENT, instance_profile=OTHER_PROFILE), None, "web", False),
        (replace(ASSIGNMENT, instance_profile=None), None, "web", False),
    ],
)
def test_a_kept_set_is_used_only_for_its_profile_and_role_with_time_left(
    assignment: InstanceAssignment, left: timedelta | None, role: str, usable: bool
) -> None:
    held = credentials(left or timedelta(hours=5), role)
    entry = kept.Entry(INSTANCE_ID, ASSIGNMENT, held)
    found = kept.usable_credentials(entry, assignment, NOW, least_seconds=120)
    assert (found is held) is usable


# -- the root process's files --------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> tuple[kept.InstanceFiles, list[str]]:
    said: list[str] = []
    return kept.InstanceFiles(tmp_path / "instances", said.append), said


def test_written_entries_are_loaded_back_private_to_root(
    files: tuple[kept.InstanceFiles, list[str]],
) -> None:
    store, said = files
    store.write(INSTANCE_ID, "one")
    store.write(INSTANCE_ID, "two")  # replaced whole
    store.write("i-00000001", "three")
    assert kept.InstanceFiles(store.directory, said.append).load() == {
        INSTANCE_ID: "two",
        "i-00000001": "three",
    }
    assert os.stat(store.directory).st_mode & 0o777 == 0o700
    assert os.stat(store.directory / INSTANCE_ID).st_mode & 0o777 == 0o600
    assert sorted(os.listdir(store.directory)) == ["i-00000001", INSTANCE_ID]  # no leftovers
    store.remove(INSTANCE_ID)
    store.remove(INSTANCE_ID)  # twice: nothing happens
    assert store.load() == {"i-00000001": "three"}
    assert said == []


@pytest.mark.parametrize("instance_id", ["../x", "i-0000000", "I-00000000", "", ".hidden"])
def test_a_name_that_is_no_instance_id_is_never_written(
    files: tuple[kept.InstanceFiles, list[str]], instance_id: str
) -> None:
    store, _ = files
    with pytest.raises(ValueError, match="instance id"):
        store.write(instance_id, "x")
    assert not store.directory.exists() or os.listdir(store.directory) == []


def test_the_bounds_refuse_an_entry_too_large_or_too_many(
    files: tuple[kept.InstanceFiles, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = files
    with pytest.raises(ValueError, match="at most"):
        store.write(INSTANCE_ID, "x" * (kept.MAX_ENTRY_BYTES + 1))
    monkeypatch.setattr(kept, "MAX_ENTRIES", 2)
    store.write("i-00000001", "a")
    store.write("i-00000002", "b")
    store.write("i-00000002", "c")  # replacing one is no new entry
    with pytest.raises(ValueError, match="at most 2 entries"):
        store.write("i-00000003", "d")
    monkeypatch.setattr(kept, "MAX_TOTAL_BYTES", 3)
    with pytest.raises(ValueError, match="at most 3 bytes"):
        store.write("i-00000001", "abc")


def test_files_this_agent_could_not_have_written_are_ignored_and_said(
    files: tuple[kept.InstanceFiles, list[str]], tmp_path: Path
) -> None:
    store, said = files
    store.write(INSTANCE_ID, "mine")
    directory = store.directory
    (tmp_path / "elsewhere").write_text("planted")
    (directory / "i-00000001").symlink_to(tmp_path / "elsewhere")
    readable = directory / "i-00000002"
    readable.write_text("readable by others")
    readable.chmod(0o644)
    (directory / "i-00000003").write_bytes(b"x" * (kept.MAX_ENTRY_BYTES + 1))
    (directory / "i-00000003").chmod(0o600)
    (directory / "not-an-instance").write_text("x")
    (directory / f".{INSTANCE_ID}.tmp").write_text("half written")  # a killed agent's
    assert store.load() == {INSTANCE_ID: "mine"}
    assert not (directory / f".{INSTANCE_ID}.tmp").exists()
    assert len(said) == 4, said
    assert any("i-00000002: not 0600" in line for line in said)


def test_a_directory_others_can_enter_is_refused(
    files: tuple[kept.InstanceFiles, list[str]],
) -> None:
    store, _ = files
    store.directory.mkdir(mode=0o755)
    store.directory.chmod(0o755)
    with pytest.raises(OSError, match="0700"):
        store.load()
    with pytest.raises(OSError, match="0700"):
        store.write(INSTANCE_ID, "x")
