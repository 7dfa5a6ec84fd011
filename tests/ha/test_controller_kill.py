"""Kill -9 the controller an agent uses, under guest and API load.

Two controllers share one store; a real agent lists both node API URLs and serves an instance
in its namespace, whose guest fetches its credentials over and over; two API clients write
through both controllers (CreateRole, PutRolePolicy, unique names), every acknowledged write
recorded. Then the controller the agent is connected to gets SIGKILL. The scenario runs once
for the module (about 10 s: two controllers, an agent and namespaces, then long enough under
load to see both sides of the kill); each test asserts one thing about it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import pytest

from tests.ha.cluster import Agent, Controller, established_to, initialise, root_key
from tests.ha.load import ApiLoad, GuestLoad, missing_writes
from tests.netns.harness import (
    EC2_TRUST,
    MADE,
    READ_ROLES,
    delete_namespace,
    make_guest,
    namespace_of,
    remove_guest,
    serves_tokens,
    unique,
    wait_until,
)


@dataclass
class Outcome:
    """What was seen around the kill."""

    killed: Controller
    survivor: Controller
    agent: Agent
    guest: GuestLoad
    api: ApiLoad
    #: Writes acknowledged but not read back afterwards through the survivor.
    missing: list[str]
    #: Established connections from the agent to each controller's node API, just before the
    #: kill and once the agent had moved.
    before: dict[str, int]
    after: dict[str, int]
    #: An instance launched through the survivor after the kill, and whether the agent served it.
    launched_after: str
    figures: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    workdir = tmp_path_factory.mktemp("kill")
    with ExitStack() as cleanup:
        state_dir = workdir / "state"
        initialise(state_dir, None)
        key = root_key(state_dir)
        controllers = [Controller(name, state_dir, None, key) for name in ("c1", "c2")]
        for controller in controllers:
            cleanup.callback(controller.stop)
            controller.start()
        first = controllers[0]
        node = unique("hv-")
        credentials = first.enroll(node, workdir / "node")
        agent_dir = workdir / "agent"
        agent_dir.mkdir()
        agent = Agent([each.node_api_url for each in controllers], credentials, agent_dir)
        instances: list[str] = []

        def remove_instances() -> None:
            for instance_id in instances:
                delete_namespace(namespace_of(instance_id))

        cleanup.callback(remove_instances)
        cleanup.callback(agent.remove_plug_directory)
        cleanup.callback(agent.stop)
        agent.start()

        iam, ec2 = first.client("iam"), first.client("ec2")
        profile = unique("ip-")
        iam.create_role(RoleName=profile, AssumeRolePolicyDocument=EC2_TRUST)
        iam.put_role_policy(RoleName=profile, PolicyName="read", PolicyDocument=READ_ROLES)
        iam.create_instance_profile(InstanceProfileName=profile)
        iam.add_role_to_instance_profile(InstanceProfileName=profile, RoleName=profile)

        def launch(client: object) -> str:
            answer = client.run_instances(  # type: ignore[attr-defined]
                ImageId="emi-1",
                MinCount=1,
                MaxCount=1,
                Placement={"HostId": node},
                IamInstanceProfile={"Name": profile},
            )
            instance_id = str(answer["Instances"][0]["InstanceId"])
            instances.append(instance_id)
            MADE.namespaces.add(namespace_of(instance_id))
            return instance_id

        instance_id = launch(ec2)
        wait_until(lambda: serves_tokens(namespace_of(instance_id)), 15, lambda: agent.output)
        guest = make_guest(namespace_of(instance_id), workdir)
        cleanup.callback(remove_guest, guest)

        guest_load = GuestLoad(guest.name)
        cleanup.callback(guest_load.stop)
        guest_load.wait_for_rounds(10)
        api = ApiLoad({each.name: each.client("iam") for each in controllers}, unique("ha"))
        cleanup.callback(api.stop)
        for controller in controllers:
            api.wait_for_writes(controller.name, 10, 0, 15)

        before = {each.name: established_to(each.node_api_port) for each in controllers}
        used = [each for each in controllers if before[each.name]]
        assert len(used) == 1, f"the agent is connected to {before}"
        victim = used[0]
        survivor = next(each for each in controllers if each is not victim)
        rounds_before = guest_load.rounds

        killed_at = time.monotonic()
        victim.kill()
        killed_at_load = api.elapsed()
        wait_until(
            lambda: established_to(survivor.node_api_port), 10, "the agent to reach the survivor"
        )
        connected = time.monotonic() - killed_at
        # A change through the survivor: what wakes the agent's long poll there.
        launched_after = launch(survivor.client("ec2"))
        served = False
        try:
            wait_until(
                lambda: serves_tokens(namespace_of(launched_after)),
                15,
                "the instance launched after the kill",
                interval=0.01,
            )
            served = True
        except AssertionError:
            pass
        served_after = time.monotonic() - killed_at
        last_ack = api.wait_for_writes(survivor.name, 20, killed_at_load, 15)
        guest_load.wait_for_rounds(20)
        after = {each.name: established_to(each.node_api_port) for each in controllers}
        guest_load.stop()
        api.stop()

        rounds = guest_load.rounds - rounds_before
        outcome = Outcome(
            killed=victim,
            survivor=survivor,
            agent=agent,
            guest=guest_load,
            api=api,
            missing=missing_writes(survivor.client("iam"), api.ledger.acknowledged),
            before=before,
            after=after,
            launched_after=launched_after if served else "",
            figures={
                "agent connected to the survivor (s)": round(connected, 3),
                "instance launched after the kill served (s)": round(served_after, 3),
                "writes acknowledged": len(api.ledger.acknowledged),
                "20th write through the survivor after the kill (s)": round(
                    last_ack - killed_at_load, 3
                ),
                "guest rounds since the kill": rounds,
            },
        )
        print(f"\nkill -9 of {victim.name}: {outcome.figures}")
        print(f"API failures: {api.ledger.outcomes()}")
        yield outcome
    problems = [problem for each in controllers for problem in each.problems()]
    assert not problems, "\n".join(problems)


def test_no_guest_request_fails_when_the_agents_controller_is_killed(killed: Outcome) -> None:
    assert killed.guest.failures == [], killed.guest.failures[:5]
    assert killed.guest.rounds > 0


def test_every_write_the_api_acknowledged_is_there_after_the_kill(killed: Outcome) -> None:
    assert killed.api.ledger.acknowledged, "nothing was written"
    assert killed.missing == [], killed.missing[:5]


def test_the_agent_moves_to_the_other_controller(killed: Outcome) -> None:
    assert killed.after[killed.killed.name] == 0, killed.after
    assert killed.after[killed.survivor.name] >= 1, killed.after
    assert killed.launched_after, "the agent did not serve an instance launched after the kill"


def test_a_client_of_the_killed_controller_gets_a_connection_error_not_a_hang(
    killed: Outcome,
) -> None:
    outcomes = set(killed.api.ledger.outcomes())
    assert outcomes <= {"connection refused", "connection closed without an answer"}, outcomes
