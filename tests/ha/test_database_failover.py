"""The PostgreSQL primary is lost under write load and its synchronous standby is promoted.

A cluster of its own (the session's shared one must survive): a primary and a streaming standby
(``pg_basebackup -R``) that every commit waits for (``synchronous_standby_names = '*'``,
``synchronous_commit = remote_apply``). Two controllers reach it by a multi-host DSN,
``host=127.0.0.1,127.0.0.1 port=PRIMARY,STANDBY … target_session_attrs=read-write``, so that
libpq finds whichever server accepts writes. Under API writes through both controllers the
primary is stopped with ``pg_ctl stop -m immediate`` (a crash: no checkpoint, connections cut),
then the standby is promoted. The controllers are never restarted.

The scenario runs once for the module (about 10 s: a cluster, a base backup, two controllers,
then the outage); each test asserts one thing about it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from tests.ha.cluster import Controller, initialise, root_key
from tests.ha.load import ApiLoad, missing_writes
from tests.netns.harness import unique
from tests.pg import SUPERUSER, Cluster, PostgresMissing, Server, wait_for_recovery_end

#: How a client may see a write that reached a controller while no primary accepted it: a
#: clean AWS error answer, the store's failure (HTTP 500, as for any other store failure).
CLEAN_ERRORS = {"ServiceFailure (HTTP 500)"}


@dataclass
class Outcome:
    controllers: list[Controller]
    api: ApiLoad
    #: Acknowledged writes not found afterwards, read through each controller.
    missing: dict[str, list[str]]
    #: Failed calls between the primary's stop and the writes' return, by outcome.
    during: dict[str, int]
    #: Whether the new primary is the old standby, no longer in recovery.
    promoted: bool
    #: The database password (in the passfile): it must reach no log.
    password: str
    figures: dict[str, float] = field(default_factory=dict)


def execute(cluster: Cluster, server: Server, *statements: str) -> list[tuple[object, ...]]:
    """Run `statements` as the superuser on `server`; the rows of the last one."""
    rows: list[tuple[object, ...]] = []
    with psycopg.connect(
        cluster.dsn(user=SUPERUSER, port=server.port), autocommit=True, connect_timeout=10
    ) as connection:
        for statement in statements:
            cursor = connection.execute(statement.encode())
            rows = cursor.fetchall() if cursor.description else []
    return rows


def synchronous_standby(cluster: Cluster) -> Server:
    """A streaming standby that every commit on the primary waits for, applied.

    The settings go on the primary after the base backup: the standby's copy of the
    configuration then has no synchronous standby of its own to wait for once promoted (a
    promoted standby that waited for one it lacks would hang every commit)."""
    standby = cluster.start_standby()
    execute(
        cluster,
        cluster.primary,
        "ALTER SYSTEM SET synchronous_standby_names = '*'",
        "ALTER SYSTEM SET synchronous_commit = 'remote_apply'",
        "SELECT pg_reload_conf()",
    )
    deadline = time.monotonic() + 30
    while execute(cluster, cluster.primary, "SELECT sync_state FROM pg_stat_replication") != [
        ("sync",)
    ]:
        assert time.monotonic() < deadline, "the standby did not become synchronous"
        time.sleep(0.05)
    return standby


def controller_config(path: Path, dsn: str) -> Path:
    path.write_text(f'[store]\nbackend = "postgresql"\ndsn = "{dsn}"\n', encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def failed_over(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    workdir = tmp_path_factory.mktemp("dbfailover")
    try:
        cluster = Cluster.start()
    except PostgresMissing as missing:
        pytest.fail(str(missing), pytrace=False)
    with ExitStack() as cleanup:
        cleanup.callback(cluster.stop)
        database = cluster.create_database()
        standby = synchronous_standby(cluster)
        primary = cluster.primary
        dsn = (
            f"host=127.0.0.1,127.0.0.1 port={primary.port},{standby.port} dbname={database}"
            f" user=rolecall passfile={cluster.passfile} target_session_attrs=read-write"
            " connect_timeout=2"
        )
        controllers = []
        for name in ("c1", "c2"):
            state_dir = workdir / name
            config = controller_config(workdir / f"{name}.toml", dsn)
            initialise(state_dir, config)
            controllers.append(Controller(name, state_dir, config, root_key(workdir / "c1")))
        for controller in controllers:
            cleanup.callback(controller.stop)
            controller.start()

        api = ApiLoad({each.name: each.client("iam") for each in controllers}, unique("db"))
        cleanup.callback(api.stop)
        for controller in controllers:
            api.wait_for_writes(controller.name, 10, 0, 15)

        stopped_at = api.elapsed()
        cluster.pg_ctl(primary, "stop", "-m", "immediate", "-w")
        # Promote once each controller has answered a write with an error: the outage is seen.
        deadline = time.monotonic() + 15
        while not all(
            any(at >= stopped_at and who == each.name for at, who, _ in api.ledger.failures)
            for each in controllers
        ):
            assert time.monotonic() < deadline, (
                f"no failure after the primary stopped: {api.ledger.outcomes(stopped_at)}"
            )
            time.sleep(0.01)
        promoting_at = api.elapsed()
        cluster.pg_ctl(standby, "promote", "-w")
        wait_for_recovery_end(cluster, standby)
        promoted_at = api.elapsed()
        back = {
            each.name: api.wait_for_writes(each.name, 10, promoted_at, 30) for each in controllers
        }
        api.stop()
        during = dict(api.ledger.outcomes(stopped_at))
        rows = execute(cluster, standby, "SELECT pg_is_in_recovery()")
        outcome = Outcome(
            controllers=controllers,
            api=api,
            missing={
                each.name: missing_writes(each.client("iam"), api.ledger.acknowledged)
                for each in controllers
            },
            during=during,
            promoted=rows == [(False,)],
            password=cluster.password,
            figures={
                "writes acknowledged": len(api.ledger.acknowledged),
                "failed calls": len(api.ledger.failures),
                "primary stopped until promote started (s)": round(promoting_at - stopped_at, 3),
                "promote took (s)": round(promoted_at - promoting_at, 3),
                **{
                    f"promoted until the 10th write through {name} (s)": round(at - promoted_at, 3)
                    for name, at in back.items()
                },
            },
        )
        print(f"\nprimary lost: {outcome.figures}\nfailed calls: {during}")
        yield outcome
    problems = [problem for each in controllers for problem in each.problems()]
    assert not problems, "\n".join(problems)


def test_the_controllers_write_again_after_promotion_without_a_restart(
    failed_over: Outcome,
) -> None:
    assert failed_over.promoted
    # Each controller is the process started before the outage (none was restarted).
    assert all(each.ended == [] and each.process is not None for each in failed_over.controllers)


def test_no_acknowledged_write_is_lost_with_synchronous_replication(failed_over: Outcome) -> None:
    assert failed_over.api.ledger.acknowledged
    assert failed_over.missing == {each.name: [] for each in failed_over.controllers}


def test_a_write_without_a_primary_gets_a_clean_aws_error(failed_over: Outcome) -> None:
    assert failed_over.during, "no write failed while there was no primary"
    assert set(failed_over.during) <= CLEAN_ERRORS, failed_over.during


def test_the_controllers_log_the_outage_without_a_traceback_or_the_password(
    failed_over: Outcome,
) -> None:
    for controller in failed_over.controllers:
        output = controller.output
        assert "store failure" in output, output
        assert "Traceback" not in output, output
        assert failed_over.password not in output
