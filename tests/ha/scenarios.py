"""The two failures the high-availability tests (and bench/ha.py) put a small cloud
through, each a context manager that builds everything, causes the failure under load, and
yields what it saw; leaving the block removes all of it, however it ended.

- :func:`controller_killed`: SIGKILL to the controller an agent is connected to.
- :func:`primary_lost`: the PostgreSQL primary stopped (immediate) and its synchronous standby
  promoted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.ha.cluster import Agent, Controller, established_to, start_controllers
from tests.ha.load import ApiLoad, GuestLoad, Prober, Write, missing_writes, present_writes
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
from tests.pg import SUPERUSER, Cluster, Server, wait_for_recovery_end

# -- kill -9 of a controller ---------------------------------------------------------------------


@dataclass
class Killed:
    """What was seen around the kill."""

    killed: Controller
    survivor: Controller
    controllers: list[Controller]
    agent: Agent
    guest: GuestLoad
    api: ApiLoad
    #: Writes acknowledged but not read back afterwards through the survivor.
    missing: list[str]
    #: Established connections from the agent to each controller's node API, just before the
    #: kill and once the agent had moved.
    before: dict[str, int]
    after: dict[str, int]
    #: An instance launched through the survivor after the kill, when the agent served it.
    served_after_kill: str
    #: The URL the agent's failover line named, and why it left the one before.
    failover_to: str
    failover_after: str
    #: The agent's metrics at the end.
    agent_metrics: dict[str, float]
    figures: dict[str, float] = field(default_factory=dict)


class Node:
    """A hypervisor: a real agent listing every controller's node API URL (in the order
    given), an instance profile to launch with, and the instances launched on it, whose
    namespaces are removed at `cleanup`'s end."""

    def __init__(self, workdir: Path, controllers: list[Controller], cleanup: ExitStack) -> None:
        first = controllers[0]
        self.name = unique("hv-")
        self.workdir = workdir
        credentials = first.enroll(self.name, workdir / "node")
        agent_dir = workdir / "agent"
        agent_dir.mkdir()
        self.agent = Agent([each.node_api_url for each in controllers], credentials, agent_dir)
        self.instances: list[str] = []
        self._cleanup = cleanup
        cleanup.callback(self._remove_instances)
        cleanup.callback(self.agent.remove_plug_directory)
        cleanup.callback(self.agent.stop)
        self.agent.start()
        iam = first.client("iam")
        self.profile = unique("ip-")
        iam.create_role(RoleName=self.profile, AssumeRolePolicyDocument=EC2_TRUST)
        iam.put_role_policy(RoleName=self.profile, PolicyName="read", PolicyDocument=READ_ROLES)
        iam.create_instance_profile(InstanceProfileName=self.profile)
        iam.add_role_to_instance_profile(InstanceProfileName=self.profile, RoleName=self.profile)

    def _remove_instances(self) -> None:
        for instance_id in self.instances:
            delete_namespace(namespace_of(instance_id))

    def launch(self, controller: Controller) -> str:
        """An instance with the profile, on this node, launched through `controller`."""
        answer = controller.client("ec2").run_instances(
            ImageId="emi-1",
            MinCount=1,
            MaxCount=1,
            Placement={"HostId": self.name},
            IamInstanceProfile={"Name": self.profile},
        )
        instance_id = str(answer["Instances"][0]["InstanceId"])
        self.instances.append(instance_id)
        MADE.namespaces.add(namespace_of(instance_id))
        return instance_id

    def serves(self, instance_id: str) -> bool:
        return serves_tokens(namespace_of(instance_id))

    def guest_load(self, controller: Controller) -> GuestLoad:
        """An instance launched through `controller`, served, and its guest fetching its
        credentials in a loop (a few rounds done already)."""
        instance_id = self.launch(controller)
        wait_until(lambda: self.serves(instance_id), 15, lambda: self.agent.output)
        guest = make_guest(namespace_of(instance_id), self.workdir)
        self._cleanup.callback(remove_guest, guest)
        load = GuestLoad(guest.name)
        self._cleanup.callback(load.stop)
        load.wait_for_rounds(10)
        return load


@contextmanager
def controller_killed(workdir: Path, dsn: str | None) -> Iterator[Killed]:
    """Two controllers on one store (PostgreSQL at `dsn`, else one SQLite state directory), an
    agent listing both, an instance it serves with a guest fetching credentials in a loop, and
    IAM writes through both; then SIGKILL to the controller the agent is connected to."""
    with ExitStack() as cleanup:
        controllers = start_controllers(workdir, dsn, ("c1", "c2"), cleanup)
        node = Node(workdir, controllers, cleanup)
        agent = node.agent
        guest_load = node.guest_load(controllers[0])
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

        assert agent.process is not None
        lines_before = len(agent.process.lines)
        killed_at = time.monotonic()
        victim.kill()
        killed_at_load = api.elapsed()
        wait_until(
            lambda: established_to(survivor.node_api_port),
            10,
            "the agent to reach the survivor",
            interval=0.005,
        )
        connected = time.monotonic() - killed_at
        # A change through the survivor: it answers the agent's long poll held there, the
        # agent's first successful call since the kill (which makes the failover).
        launched_after = node.launch(survivor)
        failover = agent.process.wait_for(
            r"controller (\S+) in use from now on, after (.*)", 15, lines_before
        )
        moved = time.monotonic() - killed_at
        served = ""
        try:
            wait_until(lambda: serves_tokens(namespace_of(launched_after)), 15, "", interval=0.01)
            served = launched_after
        except AssertionError:
            pass
        served_after = time.monotonic() - killed_at
        last_ack = api.wait_for_writes(survivor.name, 20, killed_at_load, 15)
        guest_load.wait_for_rounds(20)
        after = {each.name: established_to(each.node_api_port) for each in controllers}
        guest_load.stop()
        api.stop()

        # Writes the killed controller did not answer (in flight): maybe committed all the same.
        unanswered = [
            failure.write
            for failure in api.ledger.failures
            if failure.outcome == "connection closed without an answer"
        ]
        committed = present_writes(survivor.client("iam"), unanswered)
        yield Killed(
            killed=victim,
            survivor=survivor,
            controllers=controllers,
            agent=agent,
            guest=guest_load,
            api=api,
            missing=missing_writes(survivor.client("iam"), api.ledger.acknowledged),
            before=before,
            after=after,
            served_after_kill=served,
            failover_to=failover.group(1),
            failover_after=failover.group(2),
            agent_metrics=agent.metrics(),
            figures={
                "kill to the agent's connection to the survivor (s)": round(connected, 3),
                "kill to the agent's failover line (a change through the survivor) (s)": round(
                    moved, 3
                ),
                "kill to an instance launched through the survivor served (s)": round(
                    served_after, 3
                ),
                "kill to the 20th write acknowledged by the survivor (s)": round(
                    last_ack - killed_at_load, 3
                ),
                "writes acknowledged": len(api.ledger.acknowledged),
                "writes in flight at the kill (no answer)": len(unanswered),
                "of which there afterwards": len(committed),
                "guest rounds (3 requests each) since the kill": guest_load.rounds - rounds_before,
                "failed guest requests": len(guest_load.failures),
            },
        )


# -- the database primary lost -------------------------------------------------------------------


@dataclass
class PrimaryLost:
    controllers: list[Controller]
    api: ApiLoad
    guest: GuestLoad
    #: An instance launched after the promotion, when its node's agent served it.
    served_after_promotion: str
    #: Acknowledged writes not found afterwards, read through each controller.
    missing: dict[str, list[str]]
    #: Failed calls from the primary's stop on, by outcome.
    during: dict[str, int]
    #: Whether the old standby answered as a primary (not in recovery) at the end.
    promoted: bool
    #: Writes each controller acknowledged after the promotion.
    after_promotion: dict[str, int]
    #: Writes answered with an error from the primary's stop on that are there afterwards
    #: (their COMMIT was in flight: it reached the standby, its answer did not reach the API).
    failed_yet_present: list[Write]
    #: The database password (in the passfile): it must reach no log.
    password: str
    figures: dict[str, float] = field(default_factory=dict)


def execute(cluster: Cluster, server: Server, *statements: str) -> list[tuple[Any, ...]]:
    """Run `statements` as the superuser on `server`; the rows of the last one."""
    rows: list[tuple[Any, ...]] = []
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
    wait_until(
        lambda: (
            execute(cluster, cluster.primary, "SELECT sync_state FROM pg_stat_replication")
            == [("sync",)]
        ),
        30,
        "the standby to become synchronous",
        interval=0.05,
    )
    return standby


def multi_host_dsn(cluster: Cluster, database: str, servers: list[Server]) -> str:
    """Every server of the cluster, libpq to pick the one that accepts writes. The password is
    in the DSN itself, not in the passfile operators are told to use: a failover logs every
    kind of connection error, none of which may show it."""
    hosts = ",".join("127.0.0.1" for _ in servers)
    ports = ",".join(str(server.port) for server in servers)
    return (
        f"host={hosts} port={ports} dbname={database} user=rolecall"
        f" password={cluster.password} target_session_attrs=read-write connect_timeout=2"
    )


@contextmanager
def primary_lost(workdir: Path, outage: float = 0.0) -> Iterator[PrimaryLost]:
    """A cluster of its own with a synchronous standby, two controllers on a multi-host DSN, an
    agent listing both with a guest fetching credentials, IAM writes through both; then the
    primary stopped (immediate) and, once a controller has answered a write with an error and
    `outage` seconds have passed (bench/ha.py: a failover manager's seconds), the standby
    promoted; once writes succeed again, an instance launched."""
    cluster = Cluster.start()
    with ExitStack() as cleanup:
        cleanup.callback(cluster.stop)
        database = cluster.create_database()
        standby = synchronous_standby(cluster)
        primary = cluster.primary
        dsn = multi_host_dsn(cluster, database, [primary, standby])
        controllers = start_controllers(workdir, dsn, ("c1", "c2"), cleanup)
        node = Node(workdir, controllers, cleanup)
        guest_load = node.guest_load(controllers[0])

        api = ApiLoad({each.name: each.client("iam") for each in controllers}, unique("db"))
        cleanup.callback(api.stop)
        for controller in controllers:
            api.wait_for_writes(controller.name, 10, 0, 15)
        # c1's /healthz (no store read), to see whether its other ports wait on the store.
        prober = Prober(f"http://127.0.0.1:{controllers[0].metrics_port}/healthz")
        cleanup.callback(prober.stop)

        stopped_at = api.elapsed()
        cluster.pg_ctl(primary, "stop", "-m", "immediate", "-w")
        # Promote once a controller has answered a write with an error: the outage is seen.
        wait_until(
            lambda: any(failure.at >= stopped_at for failure in api.ledger.failures),
            60,
            lambda: f"an error answer: {api.ledger.outcomes(stopped_at)}",
            interval=0.01,
        )
        time.sleep(max(0.0, stopped_at + outage - api.elapsed()))  # 0 in the tests
        promoting_at = api.elapsed()
        cluster.pg_ctl(standby, "promote", "-w")
        wait_for_recovery_end(cluster, standby)
        promoted_at = api.elapsed()
        first_back = {
            each.name: api.wait_for_writes(each.name, 1, promoted_at, 30) for each in controllers
        }
        back = {
            each.name: api.wait_for_writes(each.name, 10, promoted_at, 30) for each in controllers
        }
        api.stop()
        prober.stop()
        # A change after the outage: the agent's long poll, wherever it is, must bring it.
        launched = node.launch(controllers[1])
        try:
            wait_until(lambda: node.serves(launched), 30, "", interval=0.01)
        except AssertionError:
            launched = ""
        served_at = api.elapsed()
        guest_load.wait_for_rounds(10)
        guest_load.stop()
        failures = api.ledger.failures
        last_failure = max(
            (failure.at for failure in failures if failure.at >= promoted_at), default=None
        )
        # Writes in flight when the primary went: answered with an error, yet maybe committed.
        in_doubt = [failure.write for failure in failures if failure.at >= stopped_at]
        committed = present_writes(controllers[1].client("iam"), in_doubt)
        yield PrimaryLost(
            controllers=controllers,
            api=api,
            guest=guest_load,
            served_after_promotion=launched,
            missing={
                each.name: missing_writes(each.client("iam"), api.ledger.acknowledged)
                for each in controllers
            },
            during=dict(api.ledger.outcomes(stopped_at)),
            promoted=execute(cluster, standby, "SELECT pg_is_in_recovery()") == [(False,)],
            after_promotion={
                each.name: api.ledger.acknowledged_through(each.name, promoted_at)
                for each in controllers
            },
            password=cluster.password,
            failed_yet_present=committed,
            figures={
                "writes acknowledged": len(api.ledger.acknowledged),
                "failed calls": len(failures),
                "primary stopped to promote started (s)": round(promoting_at - stopped_at, 3),
                "promote (pg_ctl promote -w) took (s)": round(promoted_at - promoting_at, 3),
                "failed calls after the promotion": sum(
                    1 for failure in failures if failure.at >= promoted_at
                ),
                "promotion to the last failed call (s)": round(last_failure - promoted_at, 3)
                if last_failure is not None
                else 0.0,
                "failed writes there afterwards (commit in doubt)": len(committed),
                "slowest /healthz answer of c1 (s)": round(prober.slowest(), 3),
                "longest wait for an error answer (s)": round(
                    max((failure.seconds for failure in failures), default=0.0), 3
                ),
                **{
                    f"promotion to the 1st write acknowledged by {name} (s)": round(
                        at - promoted_at, 3
                    )
                    for name, at in first_back.items()
                },
                **{
                    f"promotion to the 10th write acknowledged by {name} (s)": round(
                        at - promoted_at, 3
                    )
                    for name, at in back.items()
                },
                "promotion to an instance launched then served (s)": round(
                    served_at - promoted_at, 3
                ),
                "failed guest requests": len(guest_load.failures),
            },
        )
