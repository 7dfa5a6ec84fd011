"""RoleLastUsed through boto3 against real controller processes: AssumeRole and instance
credentials record a role's use, written at the next flush (``iam.role_last_used_seconds``) or
when the controller stops; GetRole always shows it, ListRoles never."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from tests.e2e.conftest import (
    ACCOUNT_ID,
    BIN,
    Controller,
    start_controller,
    stop_controller,
    watch_serving,
)
from tests.e2e.test_node_api import NodeClient, enroll, launch, profile, unique

TRUST_ACCOUNT = json.dumps(
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


def configured(directory: Path, seconds: int) -> Path:
    config = directory / "controller.toml"
    config.write_text(f"[iam]\nrole_last_used_seconds = {seconds}\n")
    return config


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    """A controller that writes roles' last uses every second."""
    directory = tmp_path_factory.mktemp("last-used")
    running = start_controller(directory / "state", configured(directory, 1))
    try:
        yield running
    finally:
        assert stop_controller(running) == 0, "".join(running.output)


def sts(controller: Controller, region: str) -> Any:
    return boto3.client(
        "sts",
        endpoint_url=controller.url,
        region_name=region,
        aws_access_key_id=controller.access_key_id,
        aws_secret_access_key=controller.secret_access_key,
    )


def assumable_role(iam: Any) -> str:
    name = unique("used")
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=TRUST_ACCOUNT)
    return name


def written_use(iam: Any, name: str, deadline_seconds: float = 20) -> dict[str, Any]:
    """The role's RoleLastUsed once it has a date (polled until the deadline)."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        used: dict[str, Any] = iam.get_role(RoleName=name)["Role"]["RoleLastUsed"]
        if used or time.monotonic() > deadline:
            return used
        time.sleep(0.2)


def test_assume_role_is_shown_by_get_role_after_the_flush_with_its_region(
    controller: Controller,
) -> None:
    iam = controller.client("iam")
    name = assumable_role(iam)
    try:
        assert iam.get_role(RoleName=name)["Role"]["RoleLastUsed"] == {}
        before = datetime.now(UTC).replace(microsecond=0)
        sts(controller, "eu-west-1").assume_role(
            RoleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/{name}", RoleSessionName="last-used"
        )
        used = written_use(iam, name)
        assert used["Region"] == "eu-west-1"
        assert before - timedelta(seconds=2) <= used["LastUsedDate"] <= datetime.now(UTC)
        listed = [r for r in iam.list_roles()["Roles"] if r["RoleName"] == name]
        assert len(listed) == 1 and "RoleLastUsed" not in listed[0]
    finally:
        iam.delete_role(RoleName=name)


def test_instance_credentials_are_a_use_in_rolecalls_region(
    controller: Controller, tmp_path: Path
) -> None:
    iam, ec2 = controller.client("iam"), controller.client("ec2")
    host = unique("hv")
    node = NodeClient(controller, enroll(controller, host, tmp_path / "node"))
    name, _ = profile(iam)
    instance_id = launch(controller, host, name)
    try:
        assert iam.get_role(RoleName=name)["Role"]["RoleLastUsed"] == {}
        assert node.credentials(instance_id).status_code == 200
        assert written_use(iam, name)["Region"] == "us-east-1"
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])
        iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=name)
        iam.delete_instance_profile(InstanceProfileName=name)
        iam.delete_role_policy(RoleName=name, PolicyName="read")
        iam.delete_role(RoleName=name)


def serve_again(stopped: Controller, config: Path) -> Controller:
    """``serve`` on the state directory of a controller that has stopped."""
    process = subprocess.Popen(
        [BIN / "rolecall-controller", "--config", config, "--state-dir", stopped.state_dir,
         "serve", "--port", "0", "--node-api-port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url, output, node_api_urls, metrics_urls = watch_serving(process)
    return Controller(
        url=url,
        state_dir=stopped.state_dir,
        credentials_file=stopped.credentials_file,
        access_key_id=stopped.access_key_id,
        secret_access_key=stopped.secret_access_key,
        process=process,
        output=output,
        node_api_urls=node_api_urls,
        metrics_urls=metrics_urls,
    )


def pending(controller: Controller) -> float:
    text = requests.get(f"{controller.metrics_url}/metrics", timeout=10).text
    line = next(
        line for line in text.splitlines() if line.startswith("rolecall_role_last_used_pending ")
    )
    return float(line.split()[1])


def test_a_use_waits_in_memory_and_is_written_when_the_controller_stops(
    tmp_path: Path,
) -> None:
    config = configured(tmp_path, 3600)  # no flush but the one at stop during the test
    first = start_controller(tmp_path / "state", config)
    second: Controller | None = None
    try:
        iam = first.client("iam")
        name = assumable_role(iam)
        sts(first, "ap-southeast-2").assume_role(
            RoleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/{name}", RoleSessionName="last-used"
        )
        assert iam.get_role(RoleName=name)["Role"]["RoleLastUsed"] == {}  # not written yet
        assert pending(first) == 1
        assert stop_controller(first) == 0, "".join(first.output)
        second = serve_again(first, config)
        used = second.client("iam").get_role(RoleName=name)["Role"]["RoleLastUsed"]
        assert used["Region"] == "ap-southeast-2"
        assert pending(second) == 0
    finally:
        stop_controller(first)
        if second is not None:
            assert stop_controller(second) == 0, "".join(second.output)
