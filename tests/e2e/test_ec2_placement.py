"""ModifyInstancePlacement (issue 13) through boto3 against a real controller process, with the
nodes' node API over real TLS: what a live migration asks of the controller."""

from __future__ import annotations

import configparser
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.e2e.conftest import ACCOUNT_ID, BIN, Controller
from tests.e2e.principals import Keys
from tests.e2e.test_aws_cli import aws_json
from tests.e2e.test_ec2 import ec2_user, error_of
from tests.e2e.test_node_api import (
    NodeClient,
    _poll_in_background,
    enroll,
    launch,
    profile,
    unique,
)


@pytest.fixture(scope="module")
def source(controller: Controller, tmp_path_factory: pytest.TempPathFactory) -> NodeClient:
    return NodeClient(controller, enroll(controller, "mv-src", tmp_path_factory.mktemp("src")))


@pytest.fixture(scope="module")
def destination(controller: Controller, tmp_path_factory: pytest.TempPathFactory) -> NodeClient:
    return NodeClient(controller, enroll(controller, "mv-dst", tmp_path_factory.mktemp("dst")))


@pytest.fixture
def ec2(controller: Controller, source: NodeClient, destination: NodeClient) -> Any:
    return controller.client("ec2")


@pytest.fixture
def extra_node(controller: Controller, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Enrolls a node for one test (``extra_node(*enroll_flags)``, its name) and retires it
    after, so that launches without a node in later tests never land on it."""
    names: list[str] = []

    def enrolled(*flags: str) -> str:
        name = unique("mv-extra")
        enroll(controller, name, tmp_path / name, *flags)
        names.append(name)
        return name

    yield enrolled
    for name in names:
        subprocess.run(
            [BIN / "rolecall-controller", "--state-dir", controller.state_dir, "retire-node",
             name],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip


@pytest.fixture(scope="module")
def tenant(controller: Controller) -> Keys:
    """A second account's root keys, made with the CLI next to the running controller."""
    created = subprocess.run(
        [BIN / "rolecall-controller", "--state-dir", controller.state_dir, "account", "create",
         "mv-tenant"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    match = re.search(r"root key\s+in (\S+) \(profile rolecall\)", created.stdout)
    assert match is not None, created.stdout
    credentials = configparser.ConfigParser()
    credentials.read(match.group(1))
    section = credentials["rolecall"]
    return Keys(section["aws_access_key_id"], section["aws_secret_access_key"])


def listed(node: NodeClient) -> set[str]:
    return {entry["instance_id"] for entry in node.assignments()["instances"]}


def described(ec2: Any, instance_id: str) -> dict[str, Any]:
    reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return dict(reservations[0]["Instances"][0])


def move(ec2: Any, instance_id: str, node: str) -> Any:
    answer = ec2.modify_instance_placement(InstanceId=instance_id, HostId=node)
    answer.pop("ResponseMetadata")
    return answer


def sts_with(controller: Controller, issued: dict[str, Any]) -> Any:
    return boto3.client(
        "sts",
        endpoint_url=controller.url,
        region_name="us-east-1",
        aws_access_key_id=issued["AccessKeyId"],
        aws_secret_access_key=issued["SecretAccessKey"],
        aws_session_token=issued["Token"],
    )


def test_a_move_shows_in_describe_and_in_both_nodes_assignments(
    controller: Controller, ec2: Any, source: NodeClient, destination: NodeClient
) -> None:
    instance_id = launch(controller, "mv-src")
    assert instance_id in listed(source) and instance_id not in listed(destination)
    before = described(ec2, instance_id)
    assert move(ec2, instance_id, "mv-dst") == {"Return": True}
    after = described(ec2, instance_id)
    assert before["Placement"]["HostId"] == "mv-src"
    assert after["Placement"]["HostId"] == "mv-dst"
    assert instance_id not in listed(source) and instance_id in listed(destination)
    # Address, MAC, interface and state travel with it.
    kept = ("PrivateIpAddress", "NetworkInterfaces", "LaunchTime", "State", "InstanceType")
    assert {key: after[key] for key in kept} == {key: before[key] for key in kept}


def test_the_move_wakes_both_nodes_long_polls(
    controller: Controller, ec2: Any, source: NodeClient, destination: NodeClient
) -> None:
    instance_id = launch(controller, "mv-src")
    polls = []
    for node in (source, destination):
        revision = node.assignments()["revision"]
        thread, answers = _poll_in_background(node, revision, wait=60)
        polls.append((thread, answers, revision))
    for thread, _, _ in polls:
        thread.join(timeout=0.5)
        assert thread.is_alive(), "a long poll answered before anything changed"
    move(ec2, instance_id, "mv-dst")
    for thread, _, _ in polls:
        thread.join(timeout=20)  # far below the 60 s wait: only a wake-up ends it this soon
        assert not thread.is_alive(), "a long poll did not wake on the move"
    (_, from_source, source_revision), (_, from_destination, destination_revision) = polls
    assert from_source[0]["revision"] > source_revision
    assert instance_id not in {entry["instance_id"] for entry in from_source[0]["instances"]}
    assert from_destination[0]["revision"] > destination_revision
    entry = next(e for e in from_destination[0]["instances"] if e["instance_id"] == instance_id)
    assert entry["netns"] == f"rc-{instance_id}"


def test_credentials_follow_the_instance_and_the_guests_keep_working(
    controller: Controller,
    ec2: Any,
    iam: Any,
    source: NodeClient,
    destination: NodeClient,
    extra_node: Callable[..., str],
) -> None:
    """The guest carries the credentials its source node served across the migration: they
    keep working; the source gets no new ones, the destination does. A second move leaves only
    the node just left's credentials standing."""
    name, _ = profile(iam)
    instance_id = launch(controller, "mv-src", name)
    carried = source.credentials(instance_id).json()
    move(ec2, instance_id, "mv-dst")
    arn = f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{name}/{instance_id}"
    assert sts_with(controller, carried).get_caller_identity()["Arn"] == arn
    assert source.credentials(instance_id).status_code == 403
    fresh = destination.credentials(instance_id)
    assert fresh.status_code == 200, fresh.text
    third_name = extra_node()
    move(ec2, instance_id, third_name)
    assert sts_with(controller, fresh.json()).get_caller_identity()["Arn"] == arn
    with pytest.raises(ClientError) as raised:
        sts_with(controller, carried).get_caller_identity()
    assert raised.value.response["Error"]["Code"] == "InvalidClientTokenId"


def test_moving_to_the_node_it_is_on_succeeds_and_wakes_no_one(
    controller: Controller, ec2: Any, source: NodeClient
) -> None:
    instance_id = launch(controller, "mv-src")
    revision = source.assignments()["revision"]
    assert move(ec2, instance_id, "mv-src") == {"Return": True}
    assert described(ec2, instance_id)["Placement"]["HostId"] == "mv-src"
    assert source.assignments()["revision"] == revision


def test_an_unknown_instance_is_not_found(ec2: Any) -> None:
    code, status, message = error_of(
        ec2.modify_instance_placement, InstanceId="i-0123456789abcdef0", HostId="mv-dst"
    )
    assert (code, status) == ("InvalidInstanceID.NotFound", 400)
    assert message == "The instance ID 'i-0123456789abcdef0' does not exist"


def test_a_terminated_instance_is_incorrect_instance_state(
    controller: Controller, ec2: Any
) -> None:
    instance_id = launch(controller, "mv-src")
    ec2.terminate_instances(InstanceIds=[instance_id])
    code, status, _ = error_of(
        ec2.modify_instance_placement, InstanceId=instance_id, HostId="mv-dst"
    )
    assert (code, status) == ("IncorrectInstanceState", 400)
    assert described(ec2, instance_id)["Placement"]["HostId"] == "mv-src"


def test_an_unknown_node_is_invalid_parameter_value(controller: Controller, ec2: Any) -> None:
    instance_id = launch(controller, "mv-src")
    code, status, message = error_of(
        ec2.modify_instance_placement, InstanceId=instance_id, HostId="nowhere"
    )
    assert (code, status) == ("InvalidParameterValue", 400)
    assert (
        message
        == "Value (nowhere) for parameter hostId is invalid. No enrolled node has that name."
    )


def test_a_full_node_is_insufficient_instance_capacity(
    controller: Controller, ec2: Any, extra_node: Callable[..., str]
) -> None:
    full = extra_node("--capacity", "1")
    launch(controller, full)
    instance_id = launch(controller, "mv-src")
    code, status, _ = error_of(ec2.modify_instance_placement, InstanceId=instance_id, HostId=full)
    assert (code, status) == ("InsufficientInstanceCapacity", 500)
    assert described(ec2, instance_id)["Placement"]["HostId"] == "mv-src"


def test_a_node_whose_subnet_cannot_hold_the_address_is_refused(
    controller: Controller, ec2: Any, extra_node: Callable[..., str]
) -> None:
    elsewhere = extra_node("--subnet", "10.99.0.0/24")
    instance_id = launch(controller, "mv-src")
    code, status, message = error_of(
        ec2.modify_instance_placement, InstanceId=instance_id, HostId=elsewhere
    )
    assert (code, status) == ("InvalidParameterValue", 400)
    assert "not one the node's subnet 10.99.0.0/24 gives" in message


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"Affinity": "host"}, "UnsupportedOperation"),
        ({"Tenancy": "dedicated"}, "UnsupportedOperation"),
        ({"GroupName": "spread"}, "UnsupportedOperation"),
        ({"GroupId": "pg-0123456789abcdef0"}, "UnsupportedOperation"),
        ({"PartitionNumber": 2}, "UnsupportedOperation"),
        ({"HostResourceGroupArn": "arn:aws:resource-groups:::group/x"}, "UnsupportedOperation"),
    ],
    ids=lambda value: next(iter(value)) if isinstance(value, dict) else value,
)
def test_what_aws_defines_and_rolecall_does_not_do_is_refused(
    controller: Controller, ec2: Any, extra: dict[str, Any], code: str
) -> None:
    instance_id = launch(controller, "mv-src")
    answer = error_of(
        ec2.modify_instance_placement, InstanceId=instance_id, HostId="mv-dst", **extra
    )
    assert answer[:2] == (code, 400)
    assert f"The parameter {next(iter(extra))} is not supported" in answer[2]
    assert described(ec2, instance_id)["Placement"]["HostId"] == "mv-src"


def test_without_host_id_the_parameter_is_named(controller: Controller, ec2: Any) -> None:
    instance_id = launch(controller, "mv-src")
    code, status, message = error_of(ec2.modify_instance_placement, InstanceId=instance_id)
    assert (code, status) == ("MissingParameter", 400)
    assert "HostId" in message


def test_a_user_denied_the_action_on_the_instance_is_unauthorized(
    controller: Controller, ec2: Any, iam: Any
) -> None:
    instance_id = launch(controller, "mv-src")
    arn = f"arn:aws:ec2:us-east-1:{ACCOUNT_ID}:instance/{instance_id}"
    deny = {"Effect": "Deny", "Action": "ec2:ModifyInstancePlacement", "Resource": arn}
    as_user = ec2_user(controller, iam, "mover", deny)
    code, status, message = error_of(
        as_user.modify_instance_placement, InstanceId=instance_id, HostId="mv-dst"
    )
    assert (code, status) == ("UnauthorizedOperation", 403)
    assert "ec2:ModifyInstancePlacement" in message and arn in message
    assert described(ec2, instance_id)["Placement"]["HostId"] == "mv-src"


def test_a_user_allowed_the_action_still_may_not_choose_the_node(
    controller: Controller, ec2: Any, iam: Any
) -> None:
    """As Placement.HostId: the node is the operator's choice (the bootstrap account's root),
    whatever an account's policies allow."""
    instance_id = launch(controller, "mv-src")
    as_user = ec2_user(controller, iam, "mover")
    code, status, message = error_of(
        as_user.modify_instance_placement, InstanceId=instance_id, HostId="mv-dst"
    )
    assert (code, status) == ("UnauthorizedOperation", 403)
    assert "HostId chooses the node" in message
    assert described(ec2, instance_id)["Placement"]["HostId"] == "mv-src"


def test_the_move_is_logged_with_both_nodes(controller: Controller, ec2: Any) -> None:
    instance_id = launch(controller, "mv-src")
    move(ec2, instance_id, "mv-dst")
    line = f"moved {instance_id} from node mv-src to node mv-dst"
    deadline = time.monotonic() + 10  # the line is read from the process's pipe by a thread
    while line not in "".join(controller.output) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert line in "".join(controller.output)


def test_the_operator_moves_a_tenants_instance(
    controller: Controller, ec2: Any, tenant: Keys, destination: NodeClient
) -> None:
    """Live migration is the cloud's business: the operator moves any account's instance."""
    tenant_ec2 = tenant.client(controller, "ec2")
    instance_id = tenant_ec2.run_instances(ImageId="emi-1", MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"
    ]
    before = described(tenant_ec2, instance_id)["Placement"]["HostId"]
    target = "mv-src" if before != "mv-src" else "mv-dst"
    assert move(ec2, instance_id, target) == {"Return": True}
    assert described(tenant_ec2, instance_id)["Placement"]["HostId"] == target
    code, status, message = error_of(
        tenant_ec2.modify_instance_placement, InstanceId=instance_id, HostId=before
    )
    assert (code, status) == ("UnauthorizedOperation", 403)
    assert "HostId chooses the node" in message
    assert described(tenant_ec2, instance_id)["Placement"]["HostId"] == target


def test_the_aws_cli_moves_an_instance_as_operations_md_shows(
    controller: Controller, ec2: Any, destination: NodeClient
) -> None:
    instance_id = launch(controller, "mv-src")
    answer = aws_json(
        controller,
        "ec2",
        "modify-instance-placement",
        "--instance-id",
        instance_id,
        "--host-id",
        "mv-dst",
    )
    assert answer == {"Return": True}
    assert described(ec2, instance_id)["Placement"]["HostId"] == "mv-dst"
    assert instance_id in listed(destination)
