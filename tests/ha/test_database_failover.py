"""The PostgreSQL primary is lost under write load and its synchronous standby is promoted.

A cluster of its own (the session's shared one must survive): a primary and a streaming standby
(``pg_basebackup -R``) that every commit waits for (``synchronous_standby_names = '*'``,
``synchronous_commit = remote_apply``). Two controllers reach it by a multi-host DSN,
``host=127.0.0.1,127.0.0.1 port=PRIMARY,STANDBY … target_session_attrs=read-write``, so that
libpq finds whichever server accepts writes. An agent lists both controllers and a guest
fetches its credentials. Under API writes through both controllers the primary is stopped with
``pg_ctl stop -m immediate`` (a crash: no checkpoint, connections cut), then the standby is
promoted (`tests.ha.scenarios.primary_lost`). The controllers are never restarted.

The scenario runs once for the module (about 17 s on an idle 2-core machine: a cluster and its
base backup 7 s, two controllers, the agent, then the outage; there is no cheaper way to lose a
primary for real); each test asserts one thing about it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ha.scenarios import PrimaryLost, primary_lost
from tests.pg import PostgresMissing

#: How a client may see a write that reached a controller while no primary accepted it: a
#: clean AWS error answer, IAM's ServiceUnavailable (HTTP 503: the store is unreachable), or
#: ServiceFailure (HTTP 500) for a write whose COMMIT was in flight (its outcome unknown).
CLEAN_ERRORS = {"ServiceUnavailable (HTTP 503)", "ServiceFailure (HTTP 500)"}


@pytest.fixture(scope="module")
def failed_over(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrimaryLost]:
    try:
        scenario = primary_lost(tmp_path_factory.mktemp("dbfailover"))
        outcome = scenario.__enter__()
    except PostgresMissing as missing:
        pytest.fail(str(missing), pytrace=False)
    try:
        print(f"\nprimary lost: {outcome.figures}\nfailed calls: {outcome.during}")
        yield outcome
    finally:
        scenario.__exit__(None, None, None)
    problems = [problem for each in outcome.controllers for problem in each.problems()]
    assert not problems, "\n".join(problems)


def test_the_controllers_write_again_after_promotion_without_a_restart(
    failed_over: PrimaryLost,
) -> None:
    assert failed_over.promoted
    # Each controller is the process started before the outage (none ended since).
    assert all(each.ended == [] and each.process for each in failed_over.controllers)
    assert all(
        failed_over.api.ledger.acknowledged_through(each.name, 0)
        for each in failed_over.controllers
    )


def test_no_acknowledged_write_is_lost_with_synchronous_replication(
    failed_over: PrimaryLost,
) -> None:
    assert failed_over.api.ledger.acknowledged
    assert failed_over.missing == {each.name: [] for each in failed_over.controllers}


def test_a_write_without_a_primary_gets_a_clean_aws_error(failed_over: PrimaryLost) -> None:
    assert failed_over.during, "no write failed while there was no primary"
    assert set(failed_over.during) <= CLEAN_ERRORS, failed_over.during


def test_guests_see_nothing_of_the_database_failover(failed_over: PrimaryLost) -> None:
    assert failed_over.guest.failures == [], failed_over.guest.failures[:5]
    assert failed_over.served_after_promotion, "an instance launched after it was not served"


def test_the_controllers_log_the_outage_without_a_traceback_or_the_password(
    failed_over: PrimaryLost,
) -> None:
    failed = {failure.controller for failure in failed_over.api.ledger.failures}
    for controller in failed_over.controllers:
        output = controller.output
        if controller.name in failed:  # its error answers are logged, one line each
            assert "store failure" in output, output
        assert "Traceback" not in output, output
        assert failed_over.password not in controller.init_output + output
