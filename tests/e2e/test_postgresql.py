"""A real controller process on PostgreSQL (issue 14), driven by boto3 and a node over TLS: the
SQL of every layer works end to end, readiness reports a store it cannot reach, and the DSN's
password reaches no log line."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.e2e.conftest import ACCOUNT_ID, BIN, Controller, start_controller, stop_controller
from tests.e2e.test_node_api import EC2_TRUST, READ_ROLES, NodeClient
from tests.pg import Cluster, dsn_parts
from tests.waiting import wait_until

#: A line of the daemon's log (common.logs): ``LEVEL namespace: message``.
LOG_LINE = re.compile(r"(DEBUG|INFO|WARN|ERROR|CRITICAL) \S+: [^\n]*\n?\Z")


@pytest.fixture(scope="module")
def database(pg_cluster: Cluster) -> str:
    return pg_cluster.create_database()


@pytest.fixture(scope="module")
def on_postgresql(
    pg_cluster: Cluster, database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Controller, Path]]:
    """A controller whose store is the module's database. Its DSN spells out the password (a
    passfile is what the docs advise) so that the logs can be searched for it."""
    base = tmp_path_factory.mktemp("pg-controller")
    dsn = pg_cluster.dsn(database).replace(
        f"passfile={pg_cluster.passfile}", f"password={pg_cluster.password}"
    )
    config = base / "controller.toml"
    config.write_text(f'[store]\nbackend = "postgresql"\ndsn = "{dsn}"\npool_size = 2\n')
    running = start_controller(base / "state", config)
    try:
        yield running, config
    finally:
        code = stop_controller(running)
    log = "".join(running.output)
    assert code == 0, "controller did not stop cleanly on SIGTERM:\n" + log
    assert pg_cluster.password not in log, "the DSN's password reached the controller's log"
    assert "Traceback" not in log, "the controller logged a traceback:\n" + log


def test_a_role_through_a_profile_on_an_instance_gets_credentials_that_assume_a_role(
    on_postgresql: tuple[Controller, Path], tmp_path: Path, pg_cluster: Cluster
) -> None:
    controller, config = on_postgresql
    assert not (controller.state_dir / "rolecall.db").exists()
    iam = controller.client("iam")
    iam.create_role(RoleName="web", AssumeRolePolicyDocument=EC2_TRUST)
    assume_target = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
    )
    iam.create_role(RoleName="deploy", AssumeRolePolicyDocument=assume_target)
    iam.put_role_policy(
        RoleName="web",
        PolicyName="assume",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}],
            }
        ),
    )
    iam.put_role_policy(RoleName="deploy", PolicyName="read", PolicyDocument=READ_ROLES)
    iam.create_instance_profile(InstanceProfileName="web")
    iam.add_role_to_instance_profile(InstanceProfileName="web", RoleName="web")
    with pytest.raises(iam.exceptions.LimitExceededException):
        iam.add_role_to_instance_profile(InstanceProfileName="web", RoleName="deploy")
    with pytest.raises(iam.exceptions.EntityAlreadyExistsException):
        iam.create_role(RoleName="WEB", AssumeRolePolicyDocument=EC2_TRUST)

    subprocess.run(
        [BIN / "rolecall-controller", "--config", config, "--state-dir", controller.state_dir,
         "enroll-node", "hv-1", "--out", tmp_path / "hv-1"],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    node = NodeClient(controller, tmp_path / "hv-1")
    ec2 = controller.client("ec2")
    launched = ec2.run_instances(
        ImageId="emi-1",
        MinCount=1,
        MaxCount=1,
        Placement={"HostId": "hv-1"},
        IamInstanceProfile={"Name": "web"},
    )
    instance_id = launched["Instances"][0]["InstanceId"]
    assignments = node.assignments()
    assert [each["instance_id"] for each in assignments["instances"]] == [instance_id]

    issued = node.credentials(instance_id)
    assert issued.status_code == 200, issued.text
    answer = issued.json()
    instance_session = boto3.Session(
        aws_access_key_id=answer["AccessKeyId"],
        aws_secret_access_key=answer["SecretAccessKey"],
        aws_session_token=answer["Token"],
        region_name="us-east-1",
    )
    sts: Any = instance_session.client("sts", endpoint_url=controller.url)
    assert sts.get_caller_identity()["Arn"].endswith(f":assumed-role/web/{instance_id}")
    assumed = sts.assume_role(
        RoleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/deploy", RoleSessionName="e2e"
    )["Credentials"]
    deploy = boto3.Session(
        aws_access_key_id=assumed["AccessKeyId"],
        aws_secret_access_key=assumed["SecretAccessKey"],
        aws_session_token=assumed["SessionToken"],
        region_name="us-east-1",
    )
    assert deploy.client("iam", endpoint_url=controller.url).get_role(RoleName="web")

    ec2.terminate_instances(InstanceIds=[instance_id])
    assert node.credentials(instance_id).status_code == 403


def test_with_its_database_stopped_the_controller_answers_at_once_with_a_503_sdks_retry(
    on_postgresql: tuple[Controller, Path], pg_cluster: Cluster
) -> None:
    """The session's PostgreSQL is stopped under a running controller, then started again.
    Meanwhile boto3 gets IAM's ServiceUnavailable and EC2's Unavailable (HTTP 503), which
    botocore retries in its legacy and standard modes; /healthz answers 200 and /readyz says the
    store is unavailable. Afterwards the controller works again without a restart, and what
    psycopg logged meanwhile is in its log as single lines of its own format."""
    controller, _ = on_postgresql
    session = requests.Session()
    session.trust_env = False
    iam: Any = controller.client("iam")
    ec2: Any = controller.client("ec2")
    iam.list_roles()
    lines_before = len(controller.output)
    primary = pg_cluster.primary
    pg_cluster.pg_ctl(primary, "stop", "-m", "immediate", "-w")
    try:
        with pytest.raises(ClientError) as iam_refused:
            iam.list_roles()
        with pytest.raises(ClientError) as ec2_refused:
            ec2.describe_instances()
        retried = {}
        for mode in ("legacy", "standard"):
            client = boto3.client(
                "iam",
                endpoint_url=controller.url,
                region_name="us-east-1",
                aws_access_key_id=controller.access_key_id,
                aws_secret_access_key=controller.secret_access_key,
                config=Config(retries={"total_max_attempts": 2, "mode": mode}),
            )
            with pytest.raises(ClientError) as again:
                client.list_roles()
            retried[mode] = again.value.response["ResponseMetadata"]["RetryAttempts"]
        health = session.get(f"{controller.metrics_url}/healthz", timeout=10)
        ready = session.get(f"{controller.metrics_url}/readyz", timeout=10)
    finally:
        pg_cluster.pg_ctl(primary, "start", "-w", "-o", f"-p {primary.port}")
    assert _code_and_status(iam_refused.value) == ("ServiceUnavailable", 503)
    assert _code_and_status(ec2_refused.value) == ("Unavailable", 503)
    assert retried == {"legacy": 1, "standard": 1}
    assert (health.status_code, health.text) == (200, "ok\n")
    assert ready.status_code == 503 and "is unavailable" in ready.text, ready.text

    def works() -> bool:
        try:
            iam.list_roles()
        except ClientError:
            return False
        return True

    wait_until(works, 20, "the controller to reach its database again")
    logged = controller.output[lines_before:]
    assert any("rolecall.store.driver: psycopg.pool: " in line for line in logged), logged
    strays = [line for line in logged if not LOG_LINE.match(line)]
    assert strays == [], strays


def _code_and_status(error: ClientError) -> tuple[str, int]:
    response: Any = error.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def test_readiness_reports_a_store_it_cannot_reach_without_the_password(
    on_postgresql: tuple[Controller, Path], pg_cluster: Cluster, database: str
) -> None:
    """Runs last in the module: it drops the controller's database."""
    controller, _ = on_postgresql
    session = requests.Session()
    session.trust_env = False
    ready = session.get(f"{controller.metrics_url}/readyz", timeout=10)
    assert (ready.status_code, ready.text) == (200, "ready\n")
    pg_cluster.drop_database(database)

    def not_ready() -> str | None:
        answer = session.get(f"{controller.metrics_url}/readyz", timeout=10)
        return answer.text if answer.status_code == 503 else None

    text = wait_until(not_ready, 15, "/readyz to report the store")
    assert text.startswith("store unreachable:"), text
    assert f"dbname={database}" in text
    assert pg_cluster.password not in text
    assert f"port={dsn_parts(pg_cluster.dsn(database))['port']}" in text
