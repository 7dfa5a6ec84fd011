"""The invariants the callers check in one transaction hold when controllers race on PostgreSQL.

Each racer is its own PostgreSQLStore (as each controller is), in its own thread. A barrier makes
every racer finish its reads before any of them writes, on its first try: the worst interleaving
for a read-then-write rule, every time. SERIALIZABLE must then abort all but one, and their
retries (Store.run) must see the winner's write and refuse.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TypeVar

import pytest

from controller.store.base import Conflict, StoreError, Transaction
from controller.store.postgresql import PostgreSQLStore
from controller.store.records import Account, InstanceProfile, Node, Role
from tests.unit.test_store import ACCOUNT, CREATED, instance, profile, role

T = TypeVar("T")
RACERS = 4


class Refused(Exception):
    """The rule a racer checked said no (what the API answers as an AWS error)."""


@pytest.fixture
def stores(pg_dsn: str) -> Iterator[list[PostgreSQLStore]]:
    opened = [PostgreSQLStore(pg_dsn, pool_size=1) for _ in range(RACERS)]
    with opened[0].transaction() as tx:
        tx.insert_account(Account(ACCOUNT, "first", CREATED))
        tx.insert_node(Node("hv1", "01", CREATED, None, None, 0))
    try:
        yield opened
    finally:
        for store in opened:
            store.close()


def race(
    stores: list[PostgreSQLStore], work: Callable[[int, Transaction], T]
) -> list[T | BaseException]:
    """``work(racer, tx)`` in every store at once; what each run returned or raised. `work`
    calls `reads_done(racer)` between its reads and its writes."""
    outcomes: list[T | BaseException] = [RuntimeError("did not finish")] * len(stores)

    def one(racer: int) -> None:
        try:
            outcomes[racer] = stores[racer].run(lambda tx: work(racer, tx))
        except BaseException as error:
            outcomes[racer] = error

    threads = [threading.Thread(target=one, args=(racer,)) for racer in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


class Gate:
    """All racers' first tries meet here after their reads; later tries pass straight on."""

    def __init__(self, racers: int) -> None:
        self._barrier = threading.Barrier(racers, timeout=20)
        self._tried: set[int] = set()

    def reads_done(self, racer: int) -> None:
        if racer not in self._tried:
            self._tried.add(racer)
            self._barrier.wait()


def winners(outcomes: list[object]) -> int:
    unexpected = [o for o in outcomes if isinstance(o, BaseException) and not _expected(o)]
    assert unexpected == [], unexpected
    return sum(not isinstance(outcome, BaseException) for outcome in outcomes)


def _expected(error: BaseException) -> bool:
    return isinstance(error, Refused | Conflict)


def test_racing_adds_of_a_role_to_one_instance_profile_leave_exactly_one(
    stores: list[PostgreSQLStore],
) -> None:
    the_profile = profile("web")
    roles = [role(f"role-{racer}") for racer in range(RACERS)]
    with stores[0].transaction() as tx:
        tx.insert_instance_profile(the_profile)
        for each in roles:
            tx.insert_role(each)
    gate = Gate(RACERS)

    def add_role(racer: int, tx: Transaction) -> str:
        found = tx.get_instance_profile("111111111111", "web")
        assert found is not None
        gate.reads_done(racer)
        if found.role_id is not None:
            raise Refused("Cannot exceed quota for InstanceSessionsPerInstanceProfile: 1")
        tx.set_instance_profile_role(found.profile_id, roles[racer].role_id)
        return roles[racer].role_id

    outcomes = race(stores, add_role)
    assert winners(outcomes) == 1
    (winner,) = [outcome for outcome in outcomes if isinstance(outcome, str)]
    stored = stores[0].run(lambda tx: tx.get_instance_profile_by_id(the_profile.profile_id))
    assert isinstance(stored, InstanceProfile) and stored.role_id == winner


def test_racing_launches_never_exceed_the_accounts_instance_quota(
    stores: list[PostgreSQLStore],
) -> None:
    quota = 2
    gate = Gate(RACERS)

    def launch(racer: int, tx: Transaction) -> str:
        running = tx.account_instance_count(ACCOUNT)
        gate.reads_done(racer)
        if running >= quota:
            raise Refused("InstanceLimitExceeded")
        launched = replace(instance(f"i-{racer:08x}", ACCOUNT, "running"), private_ip="169.254.1.9")
        tx.insert_instance(launched)
        return launched.instance_id

    outcomes = race(stores, launch)
    assert winners(outcomes) == quota
    assert stores[0].run(lambda tx: tx.account_instance_count(ACCOUNT)) == quota


def test_racing_creates_of_one_role_name_in_different_cases_leave_one_and_conflicts(
    stores: list[PostgreSQLStore],
) -> None:
    names = ["web", "WEB", "Web", "wEb"]
    gate = Gate(RACERS)

    def create(racer: int, tx: Transaction) -> Role:
        taken = tx.get_role(ACCOUNT, names[racer])
        gate.reads_done(racer)
        if taken is not None:
            raise Refused(f"Role with name {names[racer]} already exists.")
        made = role(names[racer])
        tx.insert_role(made)
        return made

    outcomes = race(stores, create)
    assert winners(outcomes) == 1
    listed = stores[0].run(lambda tx: tx.list_roles(ACCOUNT, "/", None, 10))
    assert [each.name for each in listed] == [
        outcome.name for outcome in outcomes if isinstance(outcome, Role)
    ]


def test_a_decision_resting_on_a_cached_read_is_still_checked_against_a_racing_write(
    stores: list[PostgreSQLStore],
) -> None:
    """Write skew through the read cache: one controller associates an instance profile it read
    (from its cache) with an instance, another deletes the profile it read as unused. Reads
    served by the cache take no SIREAD lock (and instances.profile_id has no foreign key), so
    the store reads them again before the first write: one of the two must lose, and no
    instance may be left associated with a deleted profile."""
    associating, deleting = stores[0], stores[1]
    the_profile = profile("web")
    the_instance = instance("i-00000001", ACCOUNT, "running")
    with associating.transaction() as tx:
        tx.insert_instance_profile(the_profile)
        tx.insert_instance(the_instance)
    profile_id = the_profile.profile_id
    # Cached from now on, until the database changes.
    assert associating.run(lambda tx: tx.get_instance_profile_by_id(profile_id)) is not None
    gate = Gate(2)

    def associate(tx: Transaction) -> str:
        found = tx.get_instance_profile_by_id(profile_id)
        gate.reads_done(0)
        if found is None:
            raise Refused("no such instance profile")
        tx.update_instance(
            replace(
                the_instance,
                profile_id=profile_id,
                association_id="iip-assoc-1",
                association_state="associated",
            )
        )
        return "associated"

    def delete(tx: Transaction) -> str:
        users = tx.count_instances_with_profile(profile_id)
        gate.reads_done(1)
        if users:
            raise Refused("the profile is in use")
        tx.delete_instance_profile(profile_id)
        return "deleted"

    outcomes = race([associating, deleting], lambda racer, tx: (associate, delete)[racer](tx))
    assert winners(outcomes) == 1, outcomes
    left = associating.run(lambda tx: tx.get_instance_profile_by_id(profile_id))
    placed = associating.run(lambda tx: tx.get_instance("i-00000001"))
    assert placed is not None
    assert left is not None or placed.profile_id is None


def test_a_transaction_block_that_loses_a_race_fails_saying_nothing_changed(
    stores: list[PostgreSQLStore],
) -> None:
    """`transaction()` (the CLI's way in) cannot replay its block: a serialization failure is a
    StoreError saying so, and the loser's write is gone."""
    first, second = stores[0], stores[1]
    with pytest.raises(StoreError, match="nothing was changed"):
        with first.transaction() as tx_first:
            tx_first.account_instance_count(ACCOUNT)
            with second.transaction() as tx_second:
                tx_second.account_instance_count(ACCOUNT)
                tx_second.insert_instance(instance("i-00000002", ACCOUNT, "running"))
                tx_first.insert_instance(instance("i-00000001", ACCOUNT, "running"))
    listed = first.run(lambda tx: tx.list_instances(ACCOUNT, None, 10))
    assert [each.instance_id for each in listed] == ["i-00000002"]
