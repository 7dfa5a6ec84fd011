"""euca-run-instances, euca-describe-instances and euca-terminate-instances against a real
controller, after the original three lines, as an operator types them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import ACCOUNT_ID, BIN, Controller
from tests.e2e.test_tools import failed, ok


@pytest.fixture(scope="module")
def enrolled(controller: Controller, tmp_path_factory: pytest.TempPathFactory) -> str:
    out: Path = tmp_path_factory.mktemp("node")
    subprocess.run(
        [BIN / "rolecall-controller", "--state-dir", controller.state_dir, "enroll-node",
         "hv-euca", "--out", out],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    ok(controller, "iam-rolecreate -r eucarole -s ec2.amazonaws.com")
    ok(controller, "iam-roleaddpolicy -r eucarole -e Allow -a s3:\\* -c \\* -p s3star -o")
    ok(controller, "iam-instanceprofilecreate -s eucarole -r eucarole")
    return "hv-euca"


def instance_lines(output: str) -> list[list[str]]:
    return [line.split("\t") for line in output.splitlines() if line.startswith("INSTANCE")]


def test_run_instances_with_a_profile_by_name_gives_every_instance_the_profile(
    controller: Controller, enrolled: str
) -> None:
    output = ok(controller, "euca-run-instances emi-12345678 -n 2 -t m1.small -p eucarole")
    instances = instance_lines(output)
    assert output.startswith("RESERVATION")
    assert len(instances) == 2
    arn = f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/eucarole"
    for fields in instances:
        assert fields[1].startswith("i-")
        assert arn in fields


def test_run_instances_with_a_profile_by_arn_then_describe_and_terminate(
    controller: Controller, enrolled: str
) -> None:
    arn = f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/eucarole"
    instance_id = instance_lines(
        ok(controller, f"euca-run-instances emi-12345678 --iam-profile {arn}")
    )[0][1]
    described = instance_lines(ok(controller, f"euca-describe-instances {instance_id}"))
    assert [fields[1] for fields in described] == [instance_id]
    assert arn in described[0]
    terminated = ok(controller, f"euca-terminate-instances {instance_id}")
    assert terminated.split() == ["INSTANCE", instance_id, "pending", "terminated"]


def test_an_unknown_profile_is_one_line_with_ec2s_code(
    controller: Controller, enrolled: str
) -> None:
    line = failed(controller, "euca-run-instances emi-12345678 -p no-such-profile")
    assert "InvalidParameterValue" in line and "no-such-profile" in line
