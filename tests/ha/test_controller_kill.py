"""Kill -9 the controller an agent uses, under guest and API load.

Two controllers share one PostgreSQL database; a real agent lists both node API URLs and serves
an instance in its namespace, whose guest fetches its credentials over and over (IMDSv2: token,
role name, credentials); two API clients write through both controllers (CreateRole,
PutRolePolicy, unique names), every acknowledged write recorded. Then the controller the agent
is connected to gets SIGKILL (`tests.ha.scenarios.controller_killed`). The scenario runs once
for the module (about 8 s on an idle 2-core machine, after the session's PostgreSQL: two
controllers, an agent and namespaces, then long enough under load to see both sides of the
kill); each test asserts one thing about it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ha.scenarios import Killed, controller_killed
from tests.pg import Cluster


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory, pg_cluster: Cluster) -> Iterator[Killed]:
    with (
        pg_cluster.database() as dsn,
        controller_killed(tmp_path_factory.mktemp("kill"), dsn) as outcome,
    ):
        print(f"\nkill -9 of {outcome.killed.name}: {outcome.figures}")
        print(f"API failures: {outcome.api.ledger.outcomes()}")
        yield outcome
    problems = [problem for each in outcome.controllers for problem in each.problems()]
    assert not problems, "\n".join(problems)


def test_no_guest_request_fails_when_the_agents_controller_is_killed(killed: Killed) -> None:
    assert killed.guest.failures == [], killed.guest.failures[:5]
    assert killed.guest.rounds > 0


def test_every_write_the_api_acknowledged_is_there_after_the_kill(killed: Killed) -> None:
    assert killed.api.ledger.acknowledged, "nothing was written"
    assert killed.missing == [], killed.missing[:5]


def test_the_agents_next_successful_call_is_on_the_other_controller(killed: Killed) -> None:
    survivor, victim = killed.survivor.node_api_url, killed.killed.node_api_url
    assert killed.failover_to == survivor, killed.failover_after
    assert victim in killed.failover_after, killed.failover_after
    metrics = killed.agent_metrics
    assert metrics[f'rolecall_agent_node_api_controller_in_use{{url="{survivor}"}}'] == 1
    assert metrics[f'rolecall_agent_node_api_controller_in_use{{url="{victim}"}}'] == 0
    assert metrics['rolecall_agent_node_api_failovers_total{reason="unreachable"}'] == 1
    assert killed.after[killed.killed.name] == 0, killed.after
    assert killed.served_after_kill, "the agent did not serve an instance launched after the kill"


def test_a_client_of_the_killed_controller_gets_a_connection_error_not_a_hang(
    killed: Killed,
) -> None:
    outcomes = set(killed.api.ledger.outcomes())
    assert outcomes <= {"connection refused", "connection closed without an answer"}, outcomes
