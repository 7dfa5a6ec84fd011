"""An account's instance metadata defaults (issue 15, item 5) on a real SQLite store, through the
handlers as the API calls them (authorization and the wire are tests/e2e/test_metadata_defaults.py):
what Modify keeps and clears, what Get shows, and what RunInstances launches with."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from controller.actions import Context
from controller.ec2.metadata_defaults import (
    ROLECALL_DEFAULTS,
    get_instance_metadata_defaults,
    launch_options,
    modify_instance_metadata_defaults,
)
from controller.errors import DryRunOperation, InvalidParameterValue
from controller.store.records import Account
from controller.store.sqlite import SQLiteStore
from tests.unit.callers import root

ACCOUNT = "111111111111"
OTHER = "222222222222"
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@pytest.fixture
def store() -> Iterator[SQLiteStore]:
    opened = SQLiteStore(":memory:")
    with opened.transaction() as tx:
        tx.insert_account(Account(ACCOUNT, "one", "2026-01-01T00:00:00Z"))
        tx.insert_account(Account(OTHER, "two", "2026-01-02T00:00:00Z"))
    try:
        yield opened
    finally:
        opened.close()


def modify(store: SQLiteStore, account: str = ACCOUNT, **params: Any) -> Any:
    with store.transaction() as tx:
        return modify_instance_metadata_defaults(Context(tx, root(account), NOW), params)


def shown(store: SQLiteStore, account: str = ACCOUNT) -> Any:
    with store.transaction() as tx:
        result = get_instance_metadata_defaults(Context(tx, root(account), NOW), {})
        assert result is not None
        return result["accountLevel"]


def launched_with(store: SQLiteStore, requested: dict[str, Any], account: str = ACCOUNT) -> Any:
    with store.transaction() as tx:
        return launch_options(Context(tx, root(account), NOW), requested)


def test_each_field_is_kept_until_changed_and_cleared_by_no_preference(
    store: SQLiteStore,
) -> None:
    assert modify(store, HttpTokens="optional", HttpPutResponseHopLimit=3) == {"return": True}
    modify(store, InstanceMetadataTags="enabled")
    assert shown(store) == {
        "httpTokens": "optional",
        "httpPutResponseHopLimit": 3,
        "instanceMetadataTags": "enabled",
        "managedBy": "account",
    }
    modify(store, HttpTokens="no-preference", HttpPutResponseHopLimit=-1)
    assert shown(store) == {"instanceMetadataTags": "enabled", "managedBy": "account"}


def test_an_accounts_defaults_are_its_own(store: SQLiteStore) -> None:
    modify(store, HttpTokens="optional", HttpEndpoint="disabled")
    assert shown(store, OTHER) == {"managedBy": "account"}
    assert launched_with(store, {}, OTHER) == ROLECALL_DEFAULTS
    assert ROLECALL_DEFAULTS["HttpTokens"] == "required"  # IMDSv2 unless an account says not


def test_launch_takes_the_request_over_the_account_over_rolecall(store: SQLiteStore) -> None:
    modify(store, HttpTokens="optional", HttpPutResponseHopLimit=4)
    assert launched_with(store, {"HttpPutResponseHopLimit": 2}) == {
        "HttpTokens": "optional",
        "HttpPutResponseHopLimit": 2,
        "HttpEndpoint": "enabled",
        "InstanceMetadataTags": "disabled",
    }
    assert launched_with(store, {"HttpTokens": "required"})["HttpTokens"] == "required"


@pytest.mark.parametrize("hop_limit", [0, -2, 65])
def test_a_hop_limit_other_than_minus_one_or_1_to_64_is_refused(
    store: SQLiteStore, hop_limit: int
) -> None:
    with pytest.raises(InvalidParameterValue, match="HttpPutResponseHopLimit"):
        modify(store, HttpPutResponseHopLimit=hop_limit)
    assert shown(store) == {"managedBy": "account"}


def test_a_dry_run_changes_nothing(store: SQLiteStore) -> None:
    with pytest.raises(DryRunOperation):
        modify(store, HttpTokens="optional", DryRun="true")
    assert shown(store) == {"managedBy": "account"}
