"""The node API over real TLS on loopback: client certificates, the assignments long poll and
instance credentials, against a real controller process."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import requests
from botocore.exceptions import ClientError

from agent.imds.credentials import CredentialSet
from common.nodemessages import (
    HttpEndpoint,
    HttpTokens,
    InstanceProfile,
    MetadataOptions,
    parse_assignments,
    parse_credentials,
    parse_error,
)
from tests.e2e.conftest import ACCOUNT_ID, BIN, Controller, start_controller, stop_controller

EC2_TRUST = json.dumps(
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
READ_ROLES = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "iam:GetRole", "Resource": "*"}],
    }
)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def enroll(controller: Controller, name: str, out: Path, *extra: str) -> Path:
    subprocess.run(
        [BIN / "rolecall-controller", "--state-dir", controller.state_dir, "enroll-node", name,
         "--out", out, *extra],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return out


class NodeClient:
    """What an agent does: HTTPS with its node certificate."""

    def __init__(self, controller: Controller, credentials: Path) -> None:
        self.url = controller.node_api_url
        self.session = requests.Session()
        # REQUESTS_CA_BUNDLE in the environment would silently replace the node CA below.
        self.session.trust_env = False
        self.session.cert = (str(credentials / "node.pem"), str(credentials / "node.key"))
        self.session.verify = str(credentials / "ca.pem")

    def assignments(self, since: int = -1, wait: int = 0, timeout: float = 30) -> Any:
        response = self.session.get(
            f"{self.url}/v1/assignments", params={"since": since, "wait": wait}, timeout=timeout
        )
        assert response.status_code == 200, response.text
        return response.json()

    def credentials(self, instance_id: str) -> requests.Response:
        return self.session.post(f"{self.url}/v1/instances/{instance_id}/credentials", timeout=30)


@pytest.fixture(scope="module")
def node(controller: Controller, tmp_path_factory: pytest.TempPathFactory) -> NodeClient:
    return NodeClient(controller, enroll(controller, "hv-1", tmp_path_factory.mktemp("hv-1")))


@pytest.fixture(scope="module")
def other_node(controller: Controller, tmp_path_factory: pytest.TempPathFactory) -> NodeClient:
    return NodeClient(controller, enroll(controller, "hv-2", tmp_path_factory.mktemp("hv-2")))


def profile(iam: Any, trust: str = EC2_TRUST) -> tuple[str, str]:
    name = unique("ip")
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=trust)
    iam.put_role_policy(RoleName=name, PolicyName="read", PolicyDocument=READ_ROLES)
    iam.create_instance_profile(InstanceProfileName=name)
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return name, f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/{name}"


def launch(controller: Controller, host: str, profile_name: str | None = None) -> str:
    ec2 = controller.client("ec2")
    extra: dict[str, Any] = {"Placement": {"HostId": host}}
    if profile_name:
        extra["IamInstanceProfile"] = {"Name": profile_name}
    return str(
        ec2.run_instances(ImageId="emi-1", MinCount=1, MaxCount=1, **extra)["Instances"][0][
            "InstanceId"
        ]
    )


def test_assignments_list_the_nodes_instances_with_profile_and_metadata(
    controller: Controller, node: NodeClient, iam: Any
) -> None:
    name, arn = profile(iam)
    instance_id = launch(controller, "hv-1", name)
    answer = node.assignments()
    entry = next(i for i in answer["instances"] if i["instance_id"] == instance_id)
    assert entry["netns"] == f"rc-{instance_id}"
    assert entry["account_id"] == ACCOUNT_ID
    assert entry["instance_profile"]["arn"] == arn
    assert entry["instance_profile"]["id"].startswith("AIPA")
    assert entry["instance_profile"]["role_name"] == name
    assert entry["metadata_options"] == {
        "http_tokens": "required",
        "http_put_response_hop_limit": 1,
        "http_endpoint": "enabled",
    }
    assert entry["metadata"]["instance-id"] == instance_id
    assert entry["metadata"]["placement/region"] == "us-east-1"
    assert answer["revision"] >= 1
    # The agent's parser takes the controller's real answer whole, and writes it back as sent.
    parsed, refused = parse_assignments(answer)
    assert refused == ()
    assert parsed.to_wire() == answer
    typed = next(i for i in parsed.instances if i.instance_id == instance_id)
    assert typed.instance_profile == InstanceProfile(arn, entry["instance_profile"]["id"], name)
    assert typed.metadata_options == MetadataOptions(HttpTokens.REQUIRED, 1, HttpEndpoint.ENABLED)
    assert typed.metadata.instance_id == instance_id and typed.metadata.launch_time is not None


def test_an_instance_becomes_running_once_its_node_has_it(
    controller: Controller, node: NodeClient
) -> None:
    instance_id = launch(controller, "hv-1")
    ec2 = controller.client("ec2")
    state = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert state["State"]["Name"] == "pending"
    node.assignments()
    state = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert state["State"]["Name"] == "running"


def test_a_node_sees_only_its_own_instances(
    controller: Controller, node: NodeClient, other_node: NodeClient
) -> None:
    mine = launch(controller, "hv-1")
    theirs = launch(controller, "hv-2")
    ids = {i["instance_id"] for i in node.assignments()["instances"]}
    assert mine in ids and theirs not in ids


def _poll_in_background(
    node: NodeClient, since: int, wait: int
) -> tuple[threading.Thread, list[Any]]:
    answers: list[Any] = []
    thread = threading.Thread(
        target=lambda: answers.append(node.assignments(since=since, wait=wait, timeout=wait + 10)),
        daemon=True,
    )
    thread.start()
    return thread, answers


@pytest.mark.parametrize("change", ["launch", "terminate", "associate", "metadata"])
def test_the_long_poll_wakes_on_each_kind_of_change(
    controller: Controller, node: NodeClient, iam: Any, change: str
) -> None:
    ec2 = controller.client("ec2")
    name, arn = profile(iam)
    instance_id = launch(controller, "hv-1")
    revision = node.assignments()["revision"]
    thread, answers = _poll_in_background(node, revision, wait=60)
    thread.join(timeout=0.5)
    assert thread.is_alive(), "the long poll answered before anything changed"
    if change == "launch":
        instance_id = launch(controller, "hv-1")
    elif change == "terminate":
        ec2.terminate_instances(InstanceIds=[instance_id])
    elif change == "associate":
        ec2.associate_iam_instance_profile(
            IamInstanceProfile={"Name": name}, InstanceId=instance_id
        )
    else:
        ec2.modify_instance_metadata_options(InstanceId=instance_id, HttpTokens="optional")
    thread.join(timeout=20)  # far below the 60 s wait: only a wake-up can end it this soon
    assert not thread.is_alive(), "the long poll did not wake on the change"
    answer = answers[0]
    assert answer["revision"] > revision
    entries = {i["instance_id"]: i for i in answer["instances"]}
    if change == "terminate":
        assert instance_id not in entries
    elif change == "associate":
        assert entries[instance_id]["instance_profile"]["arn"] == arn
    elif change == "metadata":
        assert entries[instance_id]["metadata_options"]["http_tokens"] == "optional"
    else:
        assert instance_id in entries


def test_instance_credentials_act_as_the_role_of_the_instance(
    controller: Controller, node: NodeClient, iam: Any
) -> None:
    name, arn = profile(iam)
    instance_id = launch(controller, "hv-1", name)
    response = node.credentials(instance_id)
    assert response.status_code == 200, response.text
    issued = response.json()
    assert issued["AccessKeyId"].startswith("ASIA")
    assert issued["RoleArn"] == f"arn:aws:iam::{ACCOUNT_ID}:role/{name}"
    assert issued["InstanceProfileArn"] == arn
    assert issued["AccountId"] == ACCOUNT_ID
    assert issued["Expiration"].endswith("Z") and len(issued["Expiration"]) == 20
    # The agent's parser takes the real answer, and writes it back as sent.
    assert parse_credentials(issued).to_wire() == issued
    assert CredentialSet.from_node_api(issued, datetime.now(UTC)).role_name == name
    session = boto3.Session(
        aws_access_key_id=issued["AccessKeyId"],
        aws_secret_access_key=issued["SecretAccessKey"],
        aws_session_token=issued["Token"],
        region_name="us-east-1",
    )
    identity = session.client("sts", endpoint_url=controller.url).get_caller_identity()
    assert identity["Arn"] == f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{name}/{instance_id}"
    assert session.client("iam", endpoint_url=controller.url).get_role(RoleName=name)
    audit = (controller.state_dir / "audit.log").read_text().splitlines()
    record = json.loads(next(line for line in audit if issued["AccessKeyId"] in line))
    assert record["instance_id"] == instance_id and record["node"] == "hv-1"
    assert record["role_arn"] == issued["RoleArn"] and record["expiration"] == issued["Expiration"]
    assert issued["SecretAccessKey"] not in "\n".join(audit)
    assert issued["Token"] not in "\n".join(audit)


def test_credentials_for_another_nodes_instance_are_403(
    controller: Controller, node: NodeClient, other_node: NodeClient, iam: Any
) -> None:
    name, _ = profile(iam)
    theirs = launch(controller, "hv-2", name)
    assert node.credentials(theirs).status_code == 403
    assert other_node.credentials(theirs).status_code == 200


def test_credentials_for_a_terminated_instance_are_403(
    controller: Controller, node: NodeClient, iam: Any
) -> None:
    name, _ = profile(iam)
    instance_id = launch(controller, "hv-1", name)
    controller.client("ec2").terminate_instances(InstanceIds=[instance_id])
    assert node.credentials(instance_id).status_code == 403


def test_credentials_for_an_instance_without_a_profile_are_404(
    controller: Controller, node: NodeClient
) -> None:
    assert node.credentials(launch(controller, "hv-1")).status_code == 404


def test_credentials_for_a_role_that_does_not_trust_ec2_are_409(
    controller: Controller, node: NodeClient, iam: Any
) -> None:
    name, _ = profile(iam)
    instance_id = launch(controller, "hv-1", name)
    other = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": ACCOUNT_ID}, "Action": "sts:AssumeRole"}
        ],
    }
    iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(other))
    response = node.credentials(instance_id)
    assert response.status_code == 409
    assert "ec2.amazonaws.com" in response.json()["message"]
    assert parse_error(response.json()).error == "RoleNotTrusted"


def test_a_connection_without_a_client_certificate_is_refused(
    controller: Controller, node: NodeClient
) -> None:
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(
            f"{controller.node_api_url}/v1/assignments",
            verify=node.session.verify,
            timeout=10,
        ).raise_for_status()


def test_a_certificate_from_another_ca_is_refused(
    controller: Controller, node: NodeClient, tmp_path: Path
) -> None:
    stranger = start_controller(tmp_path / "other-controller")
    try:
        foreign = enroll(stranger, "hv-1", tmp_path / "foreign")
    finally:
        stop_controller(stranger)
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(
            f"{controller.node_api_url}/v1/assignments",
            cert=(str(foreign / "node.pem"), str(foreign / "node.key")),
            verify=node.session.verify,
            timeout=10,
        ).raise_for_status()


def test_a_reissued_or_retired_nodes_old_certificate_is_403(
    controller: Controller, tmp_path: Path
) -> None:
    old = NodeClient(controller, enroll(controller, "hv-old", tmp_path / "first"))
    assert old.assignments()["instances"] == []
    new = NodeClient(controller, enroll(controller, "hv-old", tmp_path / "second", "--force"))
    assert old.session.get(f"{old.url}/v1/assignments", timeout=10).status_code == 403
    assert new.assignments()["instances"] == []
    subprocess.run(
        [BIN / "rolecall-controller", "--state-dir", controller.state_dir, "retire-node", "hv-old"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    assert new.session.get(f"{new.url}/v1/assignments", timeout=10).status_code == 403


async def _hold_long_polls(
    host: str, port: int, context: ssl.SSLContext, since: int, count: int
) -> list[bytes]:
    request = (
        f"GET /v1/assignments?since={since}&wait=120 HTTP/1.1\r\nHost: {host}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()

    async def one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
        writer.write(request)
        await writer.drain()
        return reader, writer

    semaphore = asyncio.Semaphore(200)  # connect in waves: handshakes cost the server CPU

    async def limited() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with semaphore:
            return await one()

    return list(await asyncio.gather(*(limited() for _ in range(count))))


def test_two_thousand_long_polls_are_held_and_all_woken(
    controller: Controller, node: NodeClient
) -> None:
    parts = urlsplit(node.url)
    context = ssl.create_default_context(cafile=node.session.verify)
    context.load_cert_chain(*node.session.cert)
    revision = node.assignments()["revision"]

    async def scenario() -> tuple[int, int]:
        connections = await _hold_long_polls(
            parts.hostname or "", parts.port or 0, context, revision, 2000
        )
        early = 0
        for reader, _ in connections:  # nobody may have been answered yet
            early += bool(reader._buffer)  # type: ignore[attr-defined]
        await asyncio.get_running_loop().run_in_executor(None, launch, controller, "hv-1")

        async def answered(reader: asyncio.StreamReader) -> bool:
            head = await asyncio.wait_for(reader.readline(), 60)
            return head.startswith(b"HTTP/1.1 200")

        results = await asyncio.gather(*(answered(reader) for reader, _ in connections))
        for _, writer in connections:
            writer.close()
        return early, sum(results)

    early, woken = asyncio.run(scenario())
    assert early == 0
    assert woken == 2000


def _revoke_by_terminating(controller: Controller, iam: Any, instance_id: str, node: str) -> None:
    controller.client("ec2").terminate_instances(InstanceIds=[instance_id])


def _association_of(ec2: Any, instance_id: str) -> str:
    """The id of the instance's profile association."""
    associations = ec2.describe_iam_instance_profile_associations(
        Filters=[{"Name": "instance-id", "Values": [instance_id]}]
    )["IamInstanceProfileAssociations"]
    return str(associations[0]["AssociationId"])


def _revoke_by_disassociating(
    controller: Controller, iam: Any, instance_id: str, node: str
) -> None:
    ec2 = controller.client("ec2")
    ec2.disassociate_iam_instance_profile(AssociationId=_association_of(ec2, instance_id))


def _revoke_by_replacing_the_profile(
    controller: Controller, iam: Any, instance_id: str, node: str
) -> None:
    ec2 = controller.client("ec2")
    other, _ = profile(iam)
    ec2.replace_iam_instance_profile_association(
        AssociationId=_association_of(ec2, instance_id), IamInstanceProfile={"Name": other}
    )


def _revoke_by_emptying_the_profile(
    controller: Controller, iam: Any, instance_id: str, node: str
) -> None:
    name = (
        controller.client("ec2")
        .describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0][
            "IamInstanceProfile"
        ]["Arn"]
        .rpartition("/")[2]
    )
    iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=name)


def _revoke_by_retiring_the_node(
    controller: Controller, iam: Any, instance_id: str, node: str
) -> None:
    subprocess.run(
        [BIN / "rolecall-controller", "--state-dir", controller.state_dir, "retire-node", node],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    "revoke",
    [
        _revoke_by_terminating,
        _revoke_by_disassociating,
        _revoke_by_replacing_the_profile,
        _revoke_by_emptying_the_profile,
        _revoke_by_retiring_the_node,
    ],
    ids=lambda revoke: revoke.__name__.removeprefix("_revoke_by_"),
)
def test_instance_credentials_stop_working_at_once_when_revoked(
    controller: Controller, iam: Any, tmp_path: Path, revoke: Any
) -> None:
    host = unique("hv-rv")
    node = NodeClient(controller, enroll(controller, host, tmp_path / "node"))
    name, _ = profile(iam)
    instance_id = launch(controller, host, name)
    issued = node.credentials(instance_id).json()
    sts = boto3.client(
        "sts",
        endpoint_url=controller.url,
        region_name="us-east-1",
        aws_access_key_id=issued["AccessKeyId"],
        aws_secret_access_key=issued["SecretAccessKey"],
        aws_session_token=issued["Token"],
    )
    assert sts.get_caller_identity()["Arn"].endswith(f"/{instance_id}")
    revoke(controller, iam, instance_id, host)
    with pytest.raises(ClientError) as raised:
        sts.get_caller_identity()
    assert raised.value.response["Error"]["Code"] == "InvalidClientTokenId"
    refused = f"instance credentials {issued['AccessKeyId']} refused"
    deadline = time.monotonic() + 10  # the line is read from the process's pipe by a thread
    while refused not in "".join(controller.output) and time.monotonic() < deadline:
        time.sleep(0.05)
    log = "".join(controller.output)
    assert refused in log
    assert issued["SecretAccessKey"] not in log and issued["Token"] not in log


@pytest.mark.parametrize(
    "query",
    [
        "wait=" + "9" * 400,
        "since=" + "9" * 400,
        "wait=-1",
        "wait=301",
        "wait=1.5",
        "since=-2",
        "since=abc",
        "wait=%D9%A3",  # an Arabic-Indic digit: int() would take it
        "wait=1&wait=2",
    ],
)
def test_an_argument_out_of_range_is_a_400_naming_it(node: NodeClient, query: str) -> None:
    response = node.session.get(f"{node.url}/v1/assignments?{query}", timeout=10)
    assert response.status_code == 400, response.text
    name = query.partition("=")[0]
    assert response.json()["error"] == "BadParameter"
    assert response.json()["message"].startswith(f"{name} must be one integer from ")
    assert "Traceback" not in response.text
