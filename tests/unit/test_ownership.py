"""agent.netns.OwnershipRecord: what the agent made, kept in /run across restarts, with a change
costing one append and a crash losing nothing the agent made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.netns import NamespaceError, Ownership, OwnershipRecord, Plug

MADE = Ownership("rc-i-1", created_namespace=True, added_address=True)
ADOPTED = Ownership("rc-i-2", created_namespace=False, added_address=True)
OTHER = Ownership("rc-i-3", created_namespace=True, added_address=True)


def listed(path: Path) -> list[dict[str, object]]:
    entries: list[dict[str, object]] = json.loads(path.read_text(encoding="utf-8"))
    return entries


def test_a_missing_record_says_the_agent_made_nothing(tmp_path: Path) -> None:
    assert OwnershipRecord(tmp_path / "namespaces.json").load() == {}


def test_changes_appended_since_the_last_save_are_replayed_by_the_next_agent(
    tmp_path: Path,
) -> None:
    record = OwnershipRecord(tmp_path / "namespaces.json")
    record.save({MADE.namespace: MADE})
    record.remember(ADOPTED)
    record.remember(OTHER)
    record.forget(MADE.namespace)
    # The agent dies here: no save. The next one reads the list and the journal.
    assert OwnershipRecord(record.path).load() == {
        ADOPTED.namespace: ADOPTED,
        OTHER.namespace: OTHER,
    }


def test_a_change_appends_a_line_and_leaves_the_whole_list_alone(tmp_path: Path) -> None:
    record = OwnershipRecord(tmp_path / "namespaces.json")
    record.save({MADE.namespace: MADE})
    before = record.path.read_bytes()
    for number in range(100):
        record.remember(Ownership(f"rc-i-{number + 10}", True, True))
    assert record.path.read_bytes() == before
    assert len(record.journal.read_text(encoding="utf-8").splitlines()) == 100


def test_loading_only_reads_and_saving_folds_the_journal_into_the_list(tmp_path: Path) -> None:
    record = OwnershipRecord(tmp_path / "namespaces.json")
    record.remember(MADE)
    record.remember(ADOPTED)
    journal = record.journal.read_bytes()
    restarted = OwnershipRecord(record.path)
    owned = restarted.load()
    assert record.journal.read_bytes() == journal and not record.path.exists()
    restarted.save(owned)
    assert not record.journal.exists()
    # Still a JSON list of entries, as operators' scripts (and the demo) read it.
    assert sorted(entry["namespace"] for entry in listed(record.path)) == [
        MADE.namespace,
        ADOPTED.namespace,
    ]


def test_compact_writes_the_list_only_when_something_changed(tmp_path: Path) -> None:
    record = OwnershipRecord(tmp_path / "namespaces.json")
    record.compact({MADE.namespace: MADE})
    assert not record.path.exists()
    record.remember(MADE)
    record.compact({MADE.namespace: MADE})
    assert listed(record.path) == [
        {"namespace": MADE.namespace, "created_namespace": True, "added_address": True}
    ]
    assert not record.journal.exists()


def test_dying_between_writing_the_list_and_emptying_the_journal_loses_nothing(
    tmp_path: Path,
) -> None:
    record = OwnershipRecord(tmp_path / "namespaces.json")
    record.remember(MADE)
    record.remember(ADOPTED)
    record.forget(MADE.namespace)
    journal = record.journal.read_bytes()
    record.save({ADOPTED.namespace: ADOPTED})
    record.journal.write_bytes(journal)  # as if the agent died before removing it
    assert OwnershipRecord(record.path).load() == {ADOPTED.namespace: ADOPTED}


def test_a_line_torn_by_dying_mid_append_is_ignored(tmp_path: Path) -> None:
    record = OwnershipRecord(tmp_path / "namespaces.json")
    record.remember(MADE)
    with record.journal.open("a", encoding="utf-8") as journal:
        journal.write('{"remember": {"namespace": "rc-i-')
    assert OwnershipRecord(record.path).load() == {MADE.namespace: MADE}


def test_a_damaged_line_before_the_last_is_an_error_naming_the_file(tmp_path: Path) -> None:
    record = OwnershipRecord(tmp_path / "namespaces.json")
    record.remember(MADE)
    with record.journal.open("a", encoding="utf-8") as journal:
        journal.write("not json\n")
    record.remember(ADOPTED)
    with pytest.raises(NamespaceError, match=r"namespaces\.json\.journal:2"):
        OwnershipRecord(record.path).load()


def test_plugs_and_released_namespaces_survive_a_restart_and_the_list_reads_as_before(
    tmp_path: Path,
) -> None:
    record = OwnershipRecord(tmp_path / "namespaces.json")
    record.load()
    released = Ownership("rc-i-4", created_namespace=True, added_address=True, released=True)
    record.remember(released)
    record.plug(Plug("rc-i-4", "vnet4", 14))
    record.plug(Plug("rc-i-5", "vnet5", 15))
    record.unplug("rc-i-5")
    restarted = OwnershipRecord(record.path)  # from the journal
    assert restarted.load() == {"rc-i-4": released}
    assert restarted.plugs == {"rc-i-4": Plug("rc-i-4", "vnet4", 14)}
    restarted.save({"rc-i-4": released, MADE.namespace: MADE})
    again = OwnershipRecord(record.path)  # from the saved lists
    assert again.load() == {"rc-i-4": released, MADE.namespace: MADE}
    assert again.plugs == {"rc-i-4": Plug("rc-i-4", "vnet4", 14)}
    # An entry that is not released reads exactly as before the field existed.
    assert {"namespace": MADE.namespace, "created_namespace": True, "added_address": True} in (
        listed(record.path)
    )


def test_a_record_written_before_plugs_existed_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "namespaces.json"
    path.write_text(
        json.dumps([{"namespace": "rc-i-1", "created_namespace": True, "added_address": True}])
    )
    record = OwnershipRecord(path)
    assert record.load() == {MADE.namespace: MADE}
    assert record.plugs == {}
