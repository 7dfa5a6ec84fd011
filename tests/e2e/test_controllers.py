"""Several controllers on one real PostgreSQL: two controller processes, each with its own state
directory (its own host), share one database. Any answers any call; tokens, the node CA and the
audit log are shared; a change through one wakes the long polls held by the other; rotation and
revocation reach both while they run.

The controllers start once for the module (about 3 s each with their init); the PostgreSQL
cluster is the session's (tests/pg.py)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography import x509

from controller.tokens import token_key_id
from tests.e2e.conftest import ACCOUNT_ID, Controller, watch_serving
from tests.e2e.test_node_api import EC2_TRUST, NodeClient, launch, profile, unique
from tests.pg import SUPERUSER, Cluster
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "controller.cli"]


def environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def cli(config: Path, state_dir: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--config", str(config), "--state-dir", str(state_dir), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
        check=False,
    )


def serve(config: Path, state_dir: Path, credentials: Path) -> Controller:
    process = subprocess.Popen(
        [*CLI, "--config", str(config), "--state-dir", str(state_dir), "serve", "--port", "0",
         "--node-api-port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment(),
    )  # fmt: skip
    url, output, node_api_urls, metrics_urls = watch_serving(process)
    text = credentials.read_text()
    keys = dict(line.split(" = ", 1) for line in text.splitlines() if line.startswith("aws_"))
    return Controller(
        url=url,
        state_dir=state_dir,
        credentials_file=credentials,
        access_key_id=keys["aws_access_key_id"],
        secret_access_key=keys["aws_secret_access_key"],
        process=process,
        output=output,
        node_api_urls=node_api_urls,
        metrics_urls=metrics_urls,
    )


def stop(controller: Controller) -> None:
    if controller.process.poll() is None:
        controller.process.send_signal(signal.SIGTERM)
        try:
            controller.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            controller.process.kill()
            controller.process.wait()


class Pair:
    def __init__(self, config: Path, dsn: str, a: Controller, b: Controller, init_b: str) -> None:
        self.config, self.dsn, self.a, self.b, self.init_b = config, dsn, a, b, init_b

    def client(self, controller: Controller, service: str, **keys: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=controller.url,
            region_name="us-east-1",
            aws_access_key_id=keys.get("AccessKeyId", self.a.access_key_id),
            aws_secret_access_key=keys.get("SecretAccessKey", self.a.secret_access_key),
            aws_session_token=keys.get("SessionToken"),
            config=Config(retries={"max_attempts": 1}),
        )

    def cli(self, on: Controller, *arguments: str) -> subprocess.CompletedProcess[str]:
        return cli(self.config, on.state_dir, *arguments)


@pytest.fixture(scope="module")
def pair(pg_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    base = tmp_path_factory.mktemp("controllers")
    with pg_cluster.database() as dsn:
        config = base / "controller.toml"
        # pool_size 1: nothing a request does may need a second connection of the pool (the
        # key ring's re-read on an unknown key id goes through the controller's side store).
        config.write_text(f'[store]\nbackend = "postgresql"\ndsn = "{dsn}"\npool_size = 1\n')
        host_a, host_b = base / "host-a", base / "host-b"
        init_a = cli(config, host_a, "init", "--account-id", ACCOUNT_ID)
        assert init_a.returncode == 0, init_a.stderr
        init_b = cli(config, host_b, "init", "--node-api-name", "127.0.0.1")
        assert init_b.returncode == 0, init_b.stderr
        # Host B uses the root key host A's init wrote (as an operator copies it over).
        started: list[Controller] = []
        try:
            started.append(serve(config, host_a, host_a / "root-credentials"))
            started.append(serve(config, host_b, host_a / "root-credentials"))
            yield Pair(config, dsn, started[0], started[1], init_b.stdout)
        finally:
            for controller in started:
                stop(controller)
        for controller in started:
            log = "".join(controller.output)
            assert controller.process.returncode == 0, log
            assert "Traceback" not in log, log
            assert controller.secret_access_key not in log


def eventually(check: Callable[[], bool], what: str, seconds: float = 60) -> None:
    """Poll ``check`` until it holds (the deadline is far above what it takes: milliseconds)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.02)


def test_init_on_a_second_host_shares_the_database_and_issues_only_its_node_api_certificate(
    pair: Pair,
) -> None:
    assert "already initialised in the store (PostgreSQL" in pair.init_b
    assert "issued now from the shared node CA" in pair.init_b
    host_b = pair.b.state_dir
    assert (host_b / "node-api.pem").exists()
    for name in ("token-keys.json", "node-ca.key", "node-ca.pem", "instance-identity.key"):
        assert not (host_b / name).exists() and not (pair.a.state_dir / name).exists()
    with psycopg.connect(pair.dsn) as connection:
        row = connection.execute(
            "SELECT value FROM shared_state WHERE name = 'node-ca.pem'"
        ).fetchone()
    assert row is not None
    authority = x509.load_pem_x509_certificate(row[0].encode())
    for host in (pair.a.state_dir, host_b):
        served = x509.load_pem_x509_certificate((host / "node-api.pem").read_bytes())
        served.verify_directly_issued_by(authority)


def test_a_role_made_through_one_controller_is_seen_through_the_other(pair: Pair) -> None:
    name = unique("shared")
    pair.client(pair.a, "iam").create_role(RoleName=name, AssumeRolePolicyDocument=EC2_TRUST)
    assert pair.client(pair.b, "iam").get_role(RoleName=name)["Role"]["RoleName"] == name


def federation_token(pair: Pair, on: Controller) -> dict[str, str]:
    answer = pair.client(on, "sts").get_federation_token(
        Name="shared",
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
            }
        ),
    )
    return dict(answer["Credentials"])


def works_on(pair: Pair, on: Controller, credentials: dict[str, str]) -> bool:
    try:
        pair.client(on, "sts", **credentials).get_caller_identity()
    except ClientError as error:
        assert error.response["Error"]["Code"] == "InvalidClientTokenId"
        return False
    return True


def test_a_session_token_from_one_controller_works_on_the_other(pair: Pair) -> None:
    from_a = federation_token(pair, pair.a)
    assert works_on(pair, pair.b, from_a)
    sts = pair.client(pair.b, "sts", **from_a)
    assert "federated-user/shared" in sts.get_caller_identity()["Arn"]


def test_a_rotation_while_both_run_keeps_old_tokens_and_seals_new_ones_both_verify(
    pair: Pair,
) -> None:
    before = federation_token(pair, pair.a)
    rotated = pair.cli(pair.b, "rotate-token-key")
    assert rotated.returncode == 0, rotated.stderr
    new_key = rotated.stdout.split("sealed with key ")[1].split(".")[0]
    for sealer, verifier in ((pair.a, pair.b), (pair.b, pair.a)):
        eventually(
            lambda sealer=sealer: (
                token_key_id(federation_token(pair, sealer)["SessionToken"]) == new_key
            ),
            "the controller seals with the rotated-in key",
        )
        assert works_on(pair, verifier, federation_token(pair, sealer))
        assert works_on(pair, verifier, before)


def test_revocation_reaches_both_controllers(pair: Pair) -> None:
    tokens = [federation_token(pair, pair.a), federation_token(pair, pair.b)]
    revoked = pair.cli(pair.a, "rotate-token-key", "--revoke-previous")
    assert revoked.returncode == 0, revoked.stderr
    assert "within a minute" in revoked.stdout
    for controller in (pair.a, pair.b):
        for credentials in tokens:
            eventually(
                lambda controller=controller, credentials=credentials: (
                    not works_on(pair, controller, credentials)
                ),
                "a revoked token is refused",
            )
    assert works_on(pair, pair.a, federation_token(pair, pair.b))


@pytest.fixture(scope="module")
def node_on_b(pair: Pair, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    name = unique("hv")
    out = tmp_path_factory.mktemp("node")
    enrolled = pair.cli(pair.b, "enroll-node", name, "--out", str(out))
    assert enrolled.returncode == 0, enrolled.stderr
    return name, out


def test_a_node_enrolled_on_one_host_is_served_by_every_controller(
    pair: Pair, node_on_b: tuple[str, Path]
) -> None:
    _, files = node_on_b
    for controller in (pair.a, pair.b):
        assert "revision" in NodeClient(controller, files).assignments()


def test_a_node_long_polling_one_controller_is_woken_by_a_launch_through_the_other(
    pair: Pair, node_on_b: tuple[str, Path]
) -> None:
    name, files = node_on_b
    node = NodeClient(pair.b, files)
    revision = node.assignments()["revision"]
    answers: queue.Queue[Any] = queue.Queue()
    # 120 s: the poll answers at its end anyway; a woken poll answers with the new instance.
    threading.Thread(
        target=lambda: answers.put(node.assignments(since=revision, wait=120, timeout=150)),
        daemon=True,
    ).start()
    eventually(lambda: waiting(pair.b) == 1, "the long poll waits on controller B")
    instance_id = launch(pair.a, name)
    answer = answers.get(timeout=60)
    assert answer["revision"] > revision
    assert instance_id in [instance["instance_id"] for instance in answer["instances"]]


def waiting(controller: Controller) -> float:
    import requests

    text = requests.get(f"{controller.metrics_url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("rolecall_node_long_polls_waiting "):
            return float(line.split()[1])
    return -1


def test_every_controller_reports_its_database_listener_connected(pair: Pair) -> None:
    import requests

    for controller in (pair.a, pair.b):
        text = requests.get(f"{controller.metrics_url}/metrics", timeout=10).text
        assert "rolecall_database_listener_connected 1.0" in text


def test_instance_credentials_from_either_controller_are_in_the_audit_table(
    pair: Pair, node_on_b: tuple[str, Path]
) -> None:
    name, files = node_on_b
    profile_name, _ = profile(pair.client(pair.a, "iam"))
    instance_id = launch(pair.a, name, profile_name)
    issued = []
    for controller in (pair.a, pair.b):
        response = NodeClient(controller, files).credentials(instance_id)
        assert response.status_code == 200, response.text
        issued.append(response.json())
    listed = pair.cli(pair.b, "audit", "--instance", instance_id)
    assert listed.returncode == 0, listed.stderr
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [record["access_key_id"] for record in records] == [
        credentials["AccessKeyId"] for credentials in issued
    ]
    assert all(record["node"] == name for record in records)
    for credentials in issued:  # never a secret
        assert credentials["SecretAccessKey"] not in listed.stdout
        assert credentials["Token"] not in listed.stdout


def test_another_database_role_cannot_read_the_shared_secrets(
    pair: Pair, pg_cluster: Cluster
) -> None:
    intruder = unique("intruder").replace("-", "_")
    pg_cluster._superuser_sql(
        f"CREATE ROLE {intruder} LOGIN PASSWORD '{pg_cluster.password}'",
    )
    dbname = dict(part.split("=", 1) for part in pair.dsn.split())["dbname"]
    try:
        with psycopg.connect(
            pg_cluster.dsn(dbname=dbname, user=SUPERUSER).replace(
                f"user={SUPERUSER}", f"user={intruder} password={pg_cluster.password}"
            )
        ) as connection:
            for table in ("shared_state", "audit_log", "access_keys"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    connection.execute(f"SELECT * FROM {table}")  # noqa: S608 (our names)
                connection.rollback()
    finally:
        pg_cluster._superuser_sql(f"DROP ROLE {intruder}")


def test_an_audit_table_that_cannot_be_written_fails_the_issue_with_503(
    pair: Pair, pg_cluster: Cluster, node_on_b: tuple[str, Path]
) -> None:
    name, files = node_on_b
    profile_name, _ = profile(pair.client(pair.a, "iam"))
    instance_id = launch(pair.a, name, profile_name)
    dbname = dict(part.split("=", 1) for part in pair.dsn.split())["dbname"]
    superuser = pg_cluster.dsn(dbname=dbname, user=SUPERUSER)
    with psycopg.connect(superuser, autocommit=True) as connection:
        connection.execute("REVOKE INSERT ON audit_log FROM rolecall")
        try:
            refused = NodeClient(pair.a, files).credentials(instance_id)
        finally:
            connection.execute("GRANT INSERT ON audit_log TO rolecall")
    assert refused.status_code == 503
    assert refused.json()["error"] == "AuditUnavailable"
    # The controller's output is read by a thread: its log line may come after the answer.
    logged = "cannot write the audit log: cannot insert into audit_log"
    wait_until(
        lambda: logged in "".join(pair.a.output),
        10,
        "the controller to log why it could not write the audit log",
    )
    assert NodeClient(pair.a, files).credentials(instance_id).status_code == 200


def test_a_controller_whose_listener_is_cut_off_reconnects_and_is_woken_again(
    pair: Pair, pg_cluster: Cluster, node_on_b: tuple[str, Path]
) -> None:
    dbname = dict(part.split("=", 1) for part in pair.dsn.split())["dbname"]
    with psycopg.connect(pg_cluster.dsn(dbname=dbname, user=SUPERUSER), autocommit=True) as db:
        cut = db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'rolecall-controller listener' AND datname = %s",
            (dbname,),
        ).fetchall()
    assert len(cut) == 2  # one per controller
    for controller in (pair.a, pair.b):
        eventually(
            lambda controller=controller: listener_gauge(controller) == 1,
            "the listener is connected again",
        )
    test_a_node_long_polling_one_controller_is_woken_by_a_launch_through_the_other(pair, node_on_b)


def listener_gauge(controller: Controller) -> float:
    import requests

    text = requests.get(f"{controller.metrics_url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("rolecall_database_listener_connected "):
            return float(line.split()[1])
    return -1
