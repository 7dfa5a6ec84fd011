"""How long an agent with several controller URLs takes to be back on another controller when
the one it uses is killed (kill -9) or hangs (SIGSTOP).

A benchmark, never a test; it needs root (the agent makes network namespaces). Each run starts
three ``rolecall-controller serve`` processes on one SQLite state directory (tests/netns/
harness.py's processes) and a real agent listing the three node API URLs, with
``long_poll_seconds = --long-poll``, serving one instance. Then:

- **kill -9**: an instance is launched through the second controller, then the first (the one
  in use, holding the agent's long poll) is killed with SIGKILL;
- **SIGSTOP**: an instance is launched through the third controller, then the second (in use
  now) is stopped with SIGSTOP, and continued once measured.

For each it measures, from the signal: *answered*, until the agent's
``rolecall_agent_node_api_controller_in_use`` names the next controller (it changes when that
controller answers a call: here the long poll, at once, since a change waits); *credentials*,
until that controller has logged the issue of the new instance's credentials. The agent's
metrics are read every 10 ms, so figures are good to about 10 ms. A hang costs the long poll's
wait and its answer bound (agent.failover.Bounds) by design.

Traffic stays on loopback and in the namespaces the run makes, all removed at the end, also on
failure and Ctrl-C.

    .venv/bin/python bench/failover.py [--runs 5] [--long-poll 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.failover import Bounds
from tests.netns.harness import (
    EC2_TRUST,
    READ_ROLES,
    AgentProcess,
    ControllerProcess,
    namespace_of,
    remove_instance_namespaces,
    serves_tokens,
    unique,
    wait_until,
)

POLL_SECONDS = 0.01


def until(condition: Callable[[], bool], started: float, limit: float, what: str) -> float:
    """Seconds from `started` (time.monotonic) until `condition` holds, polled every 10 ms."""
    while not condition():
        if time.monotonic() - started > limit:
            raise SystemExit(f"no {what} within {limit:g} s")
        time.sleep(POLL_SECONDS)
    return time.monotonic() - started


def one_run(work: Path, long_poll: int) -> dict[str, tuple[float, float]]:
    with ExitStack() as cleanup:
        state = work / "state"
        state.mkdir()
        controllers = [ControllerProcess(state)]
        controllers += [ControllerProcess(state, False), ControllerProcess(state, False)]
        for controller in controllers:
            cleanup.callback(controller.stop)
            controller.spawn()
        for controller in controllers:
            controller.wait_listening()
        first, second, third = controllers
        node = unique("hv-")
        (work / "node").mkdir()
        credentials = first.enroll(node, work / "node")
        instances: list[str] = []

        cleanup.callback(remove_instance_namespaces, instances)
        (work / "agent").mkdir()
        urls = [controller.node_api_url for controller in controllers]
        agent = AgentProcess(
            urls,
            credentials,
            work / "agent",
            controller_config=f"long_poll_seconds = {long_poll}\n",
        )
        cleanup.callback(agent.remove_plug_directory)
        cleanup.callback(agent.stop)
        agent.start()
        iam = first.client("iam")
        role = unique("ip-")
        iam.create_role(RoleName=role, AssumeRolePolicyDocument=EC2_TRUST)
        iam.put_role_policy(RoleName=role, PolicyName="read", PolicyDocument=READ_ROLES)
        iam.create_instance_profile(InstanceProfileName=role)
        iam.add_role_to_instance_profile(InstanceProfileName=role, RoleName=role)

        def launch(through: ControllerProcess) -> str:
            answer = through.client("ec2").run_instances(
                ImageId="emi-1", MinCount=1, MaxCount=1,
                Placement={"HostId": node}, IamInstanceProfile={"Name": role},
            )  # fmt: skip
            instance_id = str(answer["Instances"][0]["InstanceId"])
            instances.append(instance_id)
            return instance_id

        def in_use(url: str) -> bool:
            key = f'rolecall_agent_node_api_controller_in_use{{url="{url}"}}'
            return agent.metrics().get(key) == 1.0

        def issued(controller: ControllerProcess, instance_id: str) -> bool:
            assert controller.process is not None
            return f"for {instance_id} on" in controller.process.output

        served = launch(first)
        wait_until(lambda: serves_tokens(namespace_of(served)), 30, "the first instance")
        wait_until(lambda: issued(first, served), 30, "its credentials")
        figures: dict[str, tuple[float, float]] = {}
        limit = long_poll + 2 * Bounds().answer_seconds + 10
        for event, victim, successor in (("kill -9", first, second), ("SIGSTOP", second, third)):
            new = launch(successor)
            assert victim.process is not None
            started = time.monotonic()
            if event == "kill -9":
                victim.process.process.kill()
            else:
                os.kill(victim.process.process.pid, signal.SIGSTOP)
                cleanup.callback(os.kill, victim.process.process.pid, signal.SIGCONT)
            url = successor.node_api_url
            answered = until(lambda url=url: in_use(url), started, limit, "answer")  # type: ignore[misc]
            issue = until(
                lambda by=successor, new=new: issued(by, new),  # type: ignore[misc]
                started,
                limit,
                "credentials",
            )
            if issued(victim, new):
                raise SystemExit("the victim answered the new instance first: run again")
            figures[event] = (answered, issue)
        os.kill(second.process.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
        return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs (default 5)")
    parser.add_argument(
        "--long-poll", type=int, default=5, help="the agent's long_poll_seconds (default 5)"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/failover.py needs root (the agent makes network namespaces)")
        return 1
    results: dict[str, list[tuple[float, float]]] = {"kill -9": [], "SIGSTOP": []}
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="rolecall-bench-") as work:
            for event, figure in one_run(Path(work), args.long_poll).items():
                results[event].append(figure)
        print(f"run {run + 1}: " + ", ".join(f"{e} {a:.3f}/{c:.3f} s" for e, (a, c) in (
            (event, results[event][-1]) for event in results)), flush=True)  # fmt: skip
    bounds = Bounds()
    expected = {
        "kill -9": "at once (connection reset)",
        "SIGSTOP": f"long poll {args.long_poll} s + {bounds.answer_seconds:g} s",
    }
    print()
    print(f"agent long_poll_seconds = {args.long_poll}, {args.runs} runs")
    print("| event | to the next controller's first answer: median / max (s) |"
          " to its first credentials: median / max (s) | by design |")  # fmt: skip
    print("|---|---|---|---|")
    for event, figures in results.items():
        answered = [a for a, _ in figures]
        issued = [c for _, c in figures]
        print(
            f"| {event} | {statistics.median(answered):.3f} / {max(answered):.3f} |"
            f" {statistics.median(issued):.3f} / {max(issued):.3f} | {expected[event]} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
