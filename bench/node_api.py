"""Benchmark (never a test): the node API's long-poll wake-up latency and instance-credential
issuance rate, against a real controller process on loopback.

    .venv/bin/python bench/node_api.py [--rounds 50] [--seconds 5]

Wake-up latency: a node long-polls; the time from ModifyInstanceMetadataOptions returning to
the poll's answer arriving. Issuance: POST /v1/instances/ID/credentials over one keep-alive TLS
connection per client thread, for a fixed time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.conftest import BIN, start_controller, stop_controller

TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)


def node_session(out: Path) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would replace the node CA
    session.cert = (str(out / "node.pem"), str(out / "node.key"))
    session.verify = str(out / "ca.pem")
    return session


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rolecall-bench-"))
    controller = start_controller(work / "state")
    try:
        out = work / "node"
        subprocess.run(
            [BIN / "rolecall-controller", "--state-dir", controller.state_dir, "enroll-node",
             "bench-node", "--out", out],
            check=True, capture_output=True,
        )  # fmt: skip
        iam, ec2 = controller.client("iam"), controller.client("ec2")
        iam.create_role(RoleName="bench", AssumeRolePolicyDocument=TRUST)
        iam.create_instance_profile(InstanceProfileName="bench")
        iam.add_role_to_instance_profile(InstanceProfileName="bench", RoleName="bench")
        instance_id = ec2.run_instances(
            ImageId="emi-1", MinCount=1, MaxCount=1, IamInstanceProfile={"Name": "bench"}
        )["Instances"][0]["InstanceId"]
        url = controller.node_api_url
        session = node_session(out)

        latencies = []
        revision = session.get(f"{url}/v1/assignments", params={"since": -1}).json()["revision"]
        for round_number in range(args.rounds):
            answered: list[float] = []

            def poll(since: int = revision, answered: list[float] = answered) -> None:
                session_ = node_session(out)
                session_.get(f"{url}/v1/assignments", params={"since": since, "wait": 30})
                answered.append(time.perf_counter())

            thread = threading.Thread(target=poll)
            thread.start()
            time.sleep(0.05)  # let the poll arrive and wait
            ec2.modify_instance_metadata_options(
                InstanceId=instance_id, HttpTokens="required" if round_number % 2 else "optional"
            )
            changed = time.perf_counter()
            thread.join(35)
            latencies.append((answered[0] - changed) * 1000)
            revision += 1

        counts = {}
        for clients in (1, 4):
            issued = [0] * clients
            deadline = time.perf_counter() + args.seconds

            def issue(slot: int, deadline: float = deadline, issued: list[int] = issued) -> None:
                own = node_session(out)
                while time.perf_counter() < deadline:
                    response = own.post(f"{url}/v1/instances/{instance_id}/credentials")
                    assert response.status_code == 200, response.text
                    issued[slot] += 1

            threads = [threading.Thread(target=issue, args=(slot,)) for slot in range(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            counts[clients] = sum(issued) / args.seconds
    finally:
        stop_controller(controller)

    print(f"node API on loopback, {args.rounds} wake-ups, {args.seconds:.0f} s of issuance")
    print("long-poll wake-up after the API call returned (ms)")
    print(f"  p50 {statistics.median(latencies):7.2f}   p99 {percentile(latencies, 0.99):7.2f}"
          f"   max {max(latencies):7.2f}   (target: within 100 ms)")  # fmt: skip
    print("instance credentials issued per second (sealed token + audit line fsync'd)")
    for clients, rate in counts.items():
        print(f"  {clients} client(s): {rate:8.1f} /s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
