"""AssumeRole reads the store once, in `gather_assume_role`, and each fact in it once; the
authorization of other actions reads each fact of the caller once. Counted through a proxy of
the transaction, so that a read added anywhere on the path shows here."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from controller import sts
from controller.accounts import ensure_first_account
from controller.actions import Caller, Context, Services
from controller.authorize import authorize
from controller.errors import ApiError
from controller.store.base import Transaction
from controller.store.records import Role, RolePolicy, Tag, User, UserPolicy
from controller.store.sqlite import SQLiteStore
from tests.unit.callers import root, user

ACCOUNT = "111122223333"
NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)
CREATED = "2024-05-01T00:00:00Z"
ROOT_ARN = f"arn:aws:iam::{ACCOUNT}:root"
ROOT = root(ACCOUNT, issuer_arn=ROOT_ARN)
ALICE = user(ACCOUNT, "alice", issuer_arn=f"arn:aws:iam::{ACCOUNT}:user/alice")
CHAINED = Caller(
    ACCOUNT,
    f"arn:aws:sts::{ACCOUNT}:assumed-role/first/s",
    "ASIACHAINED",
    "AROAFIRST:s",
    "assumed-role",
    role_id="AROAFIRST",
    issuer_arn=ALICE.arn,
    issued=NOW,
)
ALLOW_STS = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)


def trust(*actions: str, condition: dict[str, Any] | None = None) -> str:
    statement: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": {"AWS": ROOT_ARN},
        "Action": list(actions or ("sts:AssumeRole",)),
    }
    if condition:
        statement["Condition"] = condition
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


class CountingTransaction:
    """A transaction that counts the calls made through it, and those made inside a gather."""

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx
        self.reads: Counter[str] = Counter()
        self.outside_gather = 0
        self.gathering = False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._tx, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.reads[name] += 1
            self.outside_gather += not self.gathering
            return method(*args, **kwargs)

        return counted


class _Sessions:
    def seal(self, claims: object) -> str:
        return "sealed"


class _Metrics:
    def credentials_issued(self, kind: str) -> None:
        pass


@pytest.fixture
def store() -> Iterator[SQLiteStore]:
    store = SQLiteStore(":memory:")
    with store.transaction() as tx:
        ensure_first_account(tx, ACCOUNT, "test", CREATED)
        conditioned = trust(
            "sts:AssumeRole",
            "sts:SetSourceIdentity",
            condition={"StringEquals": {"aws:PrincipalTag/team": "a"}},
        )
        for role_id, name, document in (
            ("AROAPLAIN", "plain", trust()),
            ("AROACOND", "conditioned", conditioned),
            ("AROAFIRST", "first", trust()),
        ):
            tx.insert_role(Role(role_id, ACCOUNT, name, "/", document, None, 3600, CREATED))
        tx.put_role_policy(RolePolicy("AROAFIRST", "all", ALLOW_STS))
        tx.insert_user(User("AIDAALICE", ACCOUNT, "alice", "/", CREATED))
        tx.put_user_policy(UserPolicy("AIDAALICE", "all", ALLOW_STS))
        tx.put_tags("AIDAALICE", [Tag("team", "a")])
    yield store
    store.close()


@pytest.fixture
def gathers(monkeypatch: pytest.MonkeyPatch) -> list[CountingTransaction]:
    """Each call of `sts.gather_assume_role`, by the transaction it read through."""
    calls: list[CountingTransaction] = []
    gather = sts.gather_assume_role

    def counted(tx: CountingTransaction, *args: Any) -> Any:
        calls.append(tx)
        tx.gathering = True
        try:
            return gather(tx, *args)  # type: ignore[arg-type]
        finally:
            tx.gathering = False

    monkeypatch.setattr(sts, "gather_assume_role", counted)
    return calls


def run(
    store: SQLiteStore, work: Callable[[Context], object], caller: Caller
) -> tuple[CountingTransaction, str | None]:
    """The reads of ``work`` and the code of the error it answered (None: it succeeded)."""
    with store.transaction() as tx:
        counting = CountingTransaction(tx)
        services = Services(sessions=_Sessions(), metrics=_Metrics())
        context = Context(counting, caller, NOW, services=services)  # type: ignore[arg-type]
        try:
            work(context)
        except ApiError as error:
            return counting, error.code
        return counting, None


def assume_role(role: str, **params: str) -> Callable[[Context], object]:
    action = sts.registry.get("sts", "AssumeRole")
    assert action is not None
    arn = f"arn:aws:iam::{ACCOUNT}:role/{role}"
    return lambda context: action.handler(
        context, {"RoleArn": arn, "RoleSessionName": "s", **params}
    )


#: (case, caller, role, parameters, the reads of its one gather)
ASSUME_ROLE_READS = [
    ("root", ROOT, "plain", {}, {"get_role": 1}),
    (
        "a user",
        ALICE,
        "plain",
        {},
        {
            "get_role": 1,
            "get_user": 1,
            "list_user_policies": 1,
            "list_groups_for_user": 1,
            "attached_documents": 1,
            "get_tags": 1,
        },
    ),
    (
        # Before: 11 reads, the user 5 times and its tags 3 times (trust keys, then each action).
        "a user, a conditioned trust and a source identity",
        ALICE,
        "conditioned",
        {"SourceIdentity": "alice"},
        {
            "get_role": 1,
            "get_user": 1,
            "list_user_policies": 1,
            "list_groups_for_user": 1,
            "attached_documents": 1,
            "get_tags": 1,
        },
    ),
    (
        "a role session (chained)",
        CHAINED,
        "plain",
        {},
        {
            "get_role": 1,
            "get_role_by_id": 1,
            "list_role_policies": 1,
            "attached_documents": 1,
            "get_tags": 1,
        },
    ),
]


@pytest.mark.parametrize(
    ("caller", "role", "params", "reads"),
    [row[1:] for row in ASSUME_ROLE_READS],
    ids=[row[0] for row in ASSUME_ROLE_READS],
)
def test_one_assume_role_gathers_once_and_reads_each_fact_once(
    store: SQLiteStore,
    gathers: list[CountingTransaction],
    caller: Caller,
    role: str,
    params: dict[str, str],
    reads: dict[str, int],
) -> None:
    counting, error = run(store, assume_role(role, **params), caller)
    assert error is None
    assert gathers == [counting]
    assert counting.outside_gather == 0
    assert dict(counting.reads) == reads


def test_a_refused_assume_role_is_read_in_the_same_one_gather(
    store: SQLiteStore, gathers: list[CountingTransaction]
) -> None:
    counting, error = run(store, assume_role("missing"), ALICE)
    assert error == "AccessDenied"
    assert len(gathers) == 1 and counting.outside_gather == 0
    assert counting.reads["get_role"] == 1


def test_a_request_wrong_by_itself_reads_nothing(
    store: SQLiteStore, gathers: list[CountingTransaction]
) -> None:
    counting, error = run(store, assume_role("plain", Tags="x"), ALICE)
    assert error == "InvalidInput"
    assert (gathers, sum(counting.reads.values())) == ([], 0)


@pytest.mark.parametrize(
    ("caller", "action", "reads"),
    [
        (
            ALICE,
            "iam:GetRole",
            {
                "get_user": 1,
                "list_user_policies": 1,
                "list_groups_for_user": 1,
                "attached_documents": 1,
                "get_tags": 1,
            },
        ),
        (
            CHAINED,
            "iam:GetRole",
            {"get_role_by_id": 1, "list_role_policies": 1, "attached_documents": 1, "get_tags": 1},
        ),
        (ROOT, "iam:DeleteRole", {}),
        (ALICE, "sts:GetCallerIdentity", {}),
    ],
)
def test_authorizing_an_action_reads_each_fact_of_the_caller_once(
    store: SQLiteStore, caller: Caller, action: str, reads: dict[str, int]
) -> None:
    resource = f"arn:aws:iam::{ACCOUNT}:role/plain"
    counting, error = run(store, lambda context: authorize(context, action, resource), caller)
    assert error is None
    assert dict(counting.reads) == reads
