"""What a guest boots from, end to end (issue 12): RunInstances' UserData, SecurityGroups,
MetadataOptions and ClientToken, the parameters it refuses, each instance's MAC, address and
interface, instance attributes and tags, all through real clients (boto3, the ``aws`` command
line, signed Query requests) against a real controller process, and read back from the node
API's assignment over TLS with an enrolled node's certificate."""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import botocore.session
import pytest

from common.nodemessages import parse_assignments
from controller.ec2 import registry
from controller.ec2.instances import PLACEMENT, RUN_INSTANCES_REFUSED
from controller.query import ListOf, Struct
from tests.e2e.conftest import ACCOUNT_ID, Controller, start_controller, stop_controller
from tests.e2e.test_aws_cli import aws, aws_json
from tests.e2e.test_ec2 import error_of
from tests.e2e.test_node_api import NodeClient, enroll
from tests.e2e.test_query_protocol import send, signed, xml_error

EC2_VERSION = "2016-11-15"
DEFAULT_SUBNET = ipaddress.IPv4Network("169.254.0.0/16")
NEVER = [
    ipaddress.IPv4Network(block)
    for block in ("169.254.0.0/24", "169.254.169.0/24", "169.254.255.0/24")
]
MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
#: Not UTF-8 (a lone continuation byte, 0xff, 0xfe), with NUL and CR LF in it.
BINARY = b"\xff\xfe\x00\x80#!/bin/sh\r\n\x00\xc3\x28" + bytes(range(256))


# --- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ec2(controller: Controller) -> Any:
    return controller.client("ec2")


@pytest.fixture(scope="module")
def node(controller: Controller, tmp_path_factory: pytest.TempPathFactory) -> NodeClient:
    """A node enrolled without a subnet of its own: ``ec2.subnet``, 169.254.0.0/16."""
    return NodeClient(controller, enroll(controller, "guest-hv", tmp_path_factory.mktemp("hv")))


def enrolled(
    controller: Controller, tmp_path_factory: pytest.TempPathFactory, name: str, subnet: str
) -> NodeClient:
    """A node enrolled with ``rolecall-controller enroll-node NAME --subnet CIDR``."""
    out = tmp_path_factory.mktemp(name)
    return NodeClient(controller, enroll(controller, name, out, "--subnet", subnet))


def launch(ec2: Any, host: str, count: int = 1, **extra: Any) -> list[dict[str, Any]]:
    """RunInstances of `count` instances on node `host`; the launched instances."""
    answer = ec2.run_instances(
        ImageId="emi-1", MinCount=count, MaxCount=count, Placement={"HostId": host}, **extra
    )
    instances: list[dict[str, Any]] = answer["Instances"]
    assert len(instances) == count
    return instances


def launch_one(ec2: Any, host: str = "guest-hv", **extra: Any) -> str:
    return str(launch(ec2, host, **extra)[0]["InstanceId"])


def described(ec2: Any, instance_id: str) -> dict[str, Any]:
    answer = ec2.describe_instances(InstanceIds=[instance_id])
    instance: dict[str, Any] = answer["Reservations"][0]["Instances"][0]
    return instance


def refused_launch(
    ec2: Any, placement: dict[str, str] | None = None, **extra: Any
) -> tuple[str, int, str]:
    """RunInstances of one instance on guest-hv (with `placement` added) that must be refused:
    EC2's (code, status, message), after checking that nothing was launched."""
    before = instance_count(ec2)
    refused = error_of(
        ec2.run_instances,
        ImageId="emi-1",
        MinCount=1,
        MaxCount=1,
        Placement={"HostId": "guest-hv", **(placement or {})},
        **extra,
    )
    assert instance_count(ec2) == before, "a refused RunInstances launched instances"
    return refused


def instance_count(ec2: Any) -> int:
    """Every instance the account has, in any state."""
    return sum(
        len(reservation["Instances"])
        for page in ec2.get_paginator("describe_instances").paginate()
        for reservation in page["Reservations"]
    )


def assignment(node: NodeClient, instance_id: str) -> tuple[int, dict[str, Any]]:
    """(revision, the instance's entry) of the node's assignments, as the agent reads them:
    the agent's own parser takes the entry and writes it back as sent."""
    answer = node.assignments()
    parsed, refused = parse_assignments(answer)
    assert refused == ()
    assert parsed.to_wire() == answer
    entries = [entry for entry in answer["instances"] if entry["instance_id"] == instance_id]
    assert entries, f"{instance_id} is not in the node's assignment"
    return int(answer["revision"]), entries[0]


def assigned_user_data(node: NodeClient, instance_id: str) -> bytes | None:
    _, entry = assignment(node, instance_id)
    text = entry["user_data"]
    return None if text is None else base64.b64decode(text, validate=True)


def attribute_user_data(ec2: Any, instance_id: str) -> bytes | None:
    answer = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    assert answer["InstanceId"] == instance_id
    value = answer["UserData"].get("Value")
    return None if value is None else base64.b64decode(value, validate=True)


def body_text(request: Any) -> str:
    """The form body of a request botocore is about to send."""
    body = request.body
    return body.decode("ascii") if isinstance(body, bytes) else str(body or "")


def raw_ec2(controller: Controller, action: str, params: dict[str, str]) -> tuple[int, str, str]:
    """A signed EC2 Query POST built by hand (botocore's signer): (status, code, message);
    for a success, the code is empty and the message is the answer's XML."""
    request = {"Action": action, "Version": EC2_VERSION, **params}
    response = send(controller, "POST", *signed(controller, request, service="ec2"))
    body = response.body  # type: ignore[attr-defined]
    if response.status == 200:
        return 200, "", body.decode("utf-8")
    code, message = xml_error(body)
    return response.status, code, message


def raw_run(controller: Controller, **params: str) -> tuple[int, str, str]:
    return raw_ec2(
        controller,
        "RunInstances",
        {"ImageId": "emi-1", "MinCount": "1", "MaxCount": "1", **params},
    )


def raw_launch(controller: Controller, **params: str) -> str:
    """The id of the one instance a hand-made RunInstances launches on guest-hv."""
    status, code, body = raw_run(controller, **{"Placement.HostId": "guest-hv", **params})
    assert (status, code) == (200, ""), body
    found = re.findall(r"<instanceId>(i-[0-9a-f]{17})</instanceId>", body)
    assert len(found) == 1, body
    return found[0]


def tag_pairs(entry: dict[str, Any]) -> list[tuple[str, str]] | None:
    tags = entry["tags"]
    return None if tags is None else [(tag["key"], tag["value"]) for tag in tags]


# --- user data ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"#cloud-config\nhostname: web-1\n", id="cloud-config"),
        pytest.param(BINARY, id="binary-not-utf8"),
        pytest.param(bytes(range(256)) * 64, id="exactly-16384-bytes"),
        pytest.param(b"", id="empty"),
    ],
)
def test_user_data_round_trips_to_the_attribute_and_the_assignment(
    ec2: Any, node: NodeClient, data: bytes
) -> None:
    instance_id = launch_one(ec2, UserData=data)  # boto3 base64-encodes it
    # Empty user data is none: DescribeInstanceAttribute and the metadata service agree.
    assert attribute_user_data(ec2, instance_id) == (data or None)
    assert assigned_user_data(node, instance_id) == (data or None)


def test_the_exact_limit_is_16384_bytes(ec2: Any, node: NodeClient) -> None:
    assert len(bytes(range(256)) * 64) == 16384  # the parametrized case above is the limit
    code, status, message = refused_launch(ec2, UserData=b"x" * 16385)
    assert (code, status) == ("InvalidParameterValue", 400)
    assert "16384" in message and "16385" in message


def test_without_user_data_there_is_none(ec2: Any, node: NodeClient) -> None:
    instance_id = launch_one(ec2)
    assert attribute_user_data(ec2, instance_id) is None
    assert assigned_user_data(node, instance_id) is None


def test_user_data_that_is_not_base64_is_refused_in_ec2_words(
    controller: Controller, ec2: Any, node: NodeClient
) -> None:
    before = instance_count(ec2)
    for bad in ("not base64!", "aGVs*bG8=", "aGVsbG8=aGVs", "a"):
        assert raw_run(controller, UserData=bad, **{"Placement.HostId": "guest-hv"}) == (
            400,
            "InvalidParameterValue",
            "Invalid BASE64 encoding of user data.",
        ), bad
    assert instance_count(ec2) == before


def test_whitespace_in_base64_user_data_is_ignored(
    controller: Controller, ec2: Any, node: NodeClient
) -> None:
    data = b"#!/bin/sh\necho a guest booted from this\n" * 4
    text = base64.encodebytes(data).decode("ascii").replace("\n", "\r\n ")  # MIME lines, CR LF
    assert "\n" in text.strip()
    instance_id = raw_launch(controller, UserData=text)
    assert assigned_user_data(node, instance_id) == data
    assert attribute_user_data(ec2, instance_id) == data
    # Nothing but whitespace is no user data at all.
    blank = raw_launch(controller, UserData=" \r\n\t ")
    assert assigned_user_data(node, blank) is None
    assert attribute_user_data(ec2, blank) is None


def test_the_aws_cli_base64_encodes_user_data_from_a_file_itself(
    controller: Controller, ec2: Any, node: NodeClient, tmp_path: Path
) -> None:
    script = tmp_path / "user-data.sh"
    script.write_text("#!/bin/sh\necho 'booted by the aws command line' > /tmp/x\n")
    binary = tmp_path / "user-data.bin"
    binary.write_bytes(BINARY)
    for path, scheme, expected in (
        (script, "file://", script.read_bytes()),
        (binary, "fileb://", BINARY),
    ):
        launched = aws_json(
            controller, "ec2", "run-instances", "--image-id", "emi-1", "--count", "1",
            "--placement", "HostId=guest-hv", "--user-data", f"{scheme}{path}",
        )  # fmt: skip
        instance_id = launched["Instances"][0]["InstanceId"]
        attribute = aws_json(
            controller, "ec2", "describe-instance-attribute", "--instance-id", instance_id,
            "--attribute", "userData",
        )  # fmt: skip
        assert attribute["InstanceId"] == instance_id
        assert base64.b64decode(attribute["UserData"]["Value"]) == expected
        assert assigned_user_data(node, instance_id) == expected
        assert attribute_user_data(ec2, instance_id) == expected


def test_the_aws_cli_changes_user_data_with_modify_instance_attribute(
    controller: Controller, ec2: Any, node: NodeClient
) -> None:
    instance_id = launch_one(ec2, UserData=b"first")
    new = b"#!/bin/sh\necho second\n"
    aws(
        controller, "ec2", "modify-instance-attribute", "--instance-id", instance_id,
        "--attribute", "userData", "--value", base64.b64encode(new).decode("ascii"),
    )  # fmt: skip
    assert attribute_user_data(ec2, instance_id) == new
    assert assigned_user_data(node, instance_id) == new


def test_modify_instance_attribute_changes_user_data_and_bumps_the_revision(
    ec2: Any, node: NodeClient
) -> None:
    instance_id = launch_one(ec2, UserData=b"#!/bin/sh\necho one\n")
    revision, entry = assignment(node, instance_id)
    assert base64.b64decode(entry["user_data"]) == b"#!/bin/sh\necho one\n"
    assert ec2.modify_instance_attribute(InstanceId=instance_id, UserData={"Value": BINARY})
    changed, entry = assignment(node, instance_id)
    assert changed > revision
    assert base64.b64decode(entry["user_data"]) == BINARY
    assert attribute_user_data(ec2, instance_id) == BINARY
    # More than 16 KiB is refused here too, and changes nothing.
    code, _, _ = error_of(
        ec2.modify_instance_attribute, InstanceId=instance_id, UserData={"Value": b"y" * 16385}
    )
    assert code == "InvalidParameterValue"
    assert attribute_user_data(ec2, instance_id) == BINARY
    assert node.assignments()["revision"] == changed
    # An empty value removes it.
    ec2.modify_instance_attribute(InstanceId=instance_id, UserData={"Value": b""})
    cleared, entry = assignment(node, instance_id)
    assert cleared > changed
    assert entry["user_data"] is None
    assert attribute_user_data(ec2, instance_id) is None


def test_user_data_of_a_terminated_instance_cannot_be_changed(ec2: Any, node: NodeClient) -> None:
    instance_id = launch_one(ec2, UserData=b"kept")
    ec2.terminate_instances(InstanceIds=[instance_id])
    code, status, message = error_of(
        ec2.modify_instance_attribute, InstanceId=instance_id, UserData={"Value": b"changed"}
    )
    assert (code, status) == ("IncorrectInstanceState", 400)
    assert instance_id in message
    assert attribute_user_data(ec2, instance_id) == b"kept"


def test_modify_instance_attribute_refuses_the_attributes_it_does_not_manage(
    ec2: Any, node: NodeClient
) -> None:
    instance_id = launch_one(ec2, InstanceType="m1.small")
    for kwargs, named in (
        ({"InstanceType": {"Value": "m1.large"}}, "The parameter InstanceType is not supported"),
        (
            {"DisableApiTermination": {"Value": True}},
            "The parameter DisableApiTermination is not supported",
        ),
        (
            {"Attribute": "instanceType", "Value": "m1.large"},
            "The attribute instanceType cannot be modified",
        ),
    ):
        code, _, message = error_of(ec2.modify_instance_attribute, InstanceId=instance_id, **kwargs)
        assert code == "UnsupportedOperation", kwargs
        assert message.startswith(named), message
    assert described(ec2, instance_id)["InstanceType"] == "m1.small"


def test_describe_instance_attribute_answers_each_attribute_it_has(
    ec2: Any, node: NodeClient
) -> None:
    instance_id = launch_one(ec2, InstanceType="m1.large", SecurityGroups=["web", "ssh"])

    def attribute(name: str) -> dict[str, Any]:
        answer = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute=name)
        assert answer["InstanceId"] == instance_id
        return dict(answer)

    assert attribute("instanceType")["InstanceType"] == {"Value": "m1.large"}
    assert attribute("groupSet")["Groups"] == [{"GroupName": "web"}, {"GroupName": "ssh"}]
    assert attribute("rootDeviceName")["RootDeviceName"] == {"Value": "/dev/vda"}
    assert attribute("disableApiTermination")["DisableApiTermination"] == {"Value": False}
    assert attribute("disableApiStop")["DisableApiStop"] == {"Value": False}
    assert attribute("instanceInitiatedShutdownBehavior")["InstanceInitiatedShutdownBehavior"] == {
        "Value": "terminate"
    }
    for other in ("kernel", "ramdisk", "blockDeviceMapping", "sourceDestCheck", "enaSupport"):
        code, _, message = error_of(
            ec2.describe_instance_attribute, InstanceId=instance_id, Attribute=other
        )
        assert code == "UnsupportedOperation" and other in message


# --- parameters RunInstances refuses --------------------------------------------------------------

#: For each refused parameter, a real value as boto3 sends it.
REFUSED_BY_BOTO3: dict[str, dict[str, Any]] = {
    "AdditionalInfo": {"AdditionalInfo": "reserved"},
    "BlockDeviceMapping": {
        "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 8}}]
    },
    "CapacityReservationSpecification": {
        "CapacityReservationSpecification": {"CapacityReservationPreference": "none"}
    },
    "CpuOptions": {"CpuOptions": {"CoreCount": 1, "ThreadsPerCore": 1}},
    "CreditSpecification": {"CreditSpecification": {"CpuCredits": "standard"}},
    "DisableApiStop": {"DisableApiStop": True},
    "DisableApiTermination": {"DisableApiTermination": True},
    "EbsOptimized": {"EbsOptimized": True},
    "ElasticGpuSpecification": {"ElasticGpuSpecification": [{"Type": "eg1.medium"}]},
    "ElasticInferenceAccelerator": {"ElasticInferenceAccelerators": [{"Type": "eia1.medium"}]},
    "EnablePrimaryIpv6": {"EnablePrimaryIpv6": True},
    "EnclaveOptions": {"EnclaveOptions": {"Enabled": True}},
    "HibernationOptions": {"HibernationOptions": {"Configured": True}},
    "InstanceInitiatedShutdownBehavior": {"InstanceInitiatedShutdownBehavior": "stop"},
    "InstanceMarketOptions": {"InstanceMarketOptions": {"MarketType": "spot"}},
    "Ipv6Address": {"Ipv6Addresses": [{"Ipv6Address": "2001:db8::10"}]},
    "Ipv6AddressCount": {"Ipv6AddressCount": 1},
    "KernelId": {"KernelId": "aki-12345678"},
    "LaunchTemplate": {"LaunchTemplate": {"LaunchTemplateName": "web"}},
    "LicenseSpecification": {
        "LicenseSpecifications": [
            {
                "LicenseConfigurationArn": (
                    f"arn:aws:license-manager:us-east-1:{ACCOUNT_ID}:license-configuration:lic-1"
                )
            }
        ]
    },
    "MaintenanceOptions": {"MaintenanceOptions": {"AutoRecovery": "disabled"}},
    "Monitoring": {"Monitoring": {"Enabled": True}},
    "NetworkInterface": {"NetworkInterfaces": [{"DeviceIndex": 0, "SubnetId": "subnet-1234"}]},
    "NetworkPerformanceOptions": {"NetworkPerformanceOptions": {"BandwidthWeighting": "vpc-1"}},
    "Operator": {"Operator": {"Principal": "eks"}},
    "PrivateDnsNameOptions": {"PrivateDnsNameOptions": {"HostnameType": "ip-name"}},
    "PrivateIpAddress": {"PrivateIpAddress": "10.0.0.9"},
    "RamdiskId": {"RamdiskId": "ari-12345678"},
    "SecurityGroupId": {"SecurityGroupIds": ["sg-12345678"]},
    "SecondaryInterface": {"SecondaryInterfaces": [{"DeviceIndex": 1, "SecondarySubnetId": "x"}]},
    "SubnetId": {"SubnetId": "subnet-12345678"},
}


#: RunInstances' parameters RoleCall honours, by their names on the wire.
HONOURED = {
    "ImageId",
    "MinCount",
    "MaxCount",
    "InstanceType",
    "KeyName",
    "IamInstanceProfile",
    "MetadataOptions",
    "TagSpecification",
    "Placement",
    "UserData",
    "ClientToken",
    "SecurityGroup",
    "DryRun",
}


def wire_members(shape: Any) -> dict[str, Any]:
    """A botocore structure's members by the names botocore's EC2 Query serializer gives them
    on the wire (``queryName``, else ``locationName`` capitalised, else the member's name)."""
    members = {}
    for member, member_shape in shape.members.items():
        query_name = member_shape.serialization.get("queryName")
        location = member_shape.serialization.get("name")
        wire = query_name or (location[0].upper() + location[1:] if location else member)
        members[wire] = member_shape
    return members


def closed_structures(ours: Any, theirs: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    """(path, our Struct, botocore's structure) for each closed structure of an input."""
    if isinstance(ours, ListOf):
        yield from closed_structures(ours.member, theirs.member, path)
    elif isinstance(ours, Struct) and ours.refused is not None:
        yield path, ours, theirs
        members = wire_members(theirs)
        for item in ours.fields:
            wire = item.wire_name or item.name
            if wire in members:
                inner = f"{path}.{wire}" if path else wire
                yield from closed_structures(item.shape, members[wire], inner)


CLOSED_ACTIONS = sorted(action.name for action in registry if action.input.refused is not None)


def closed_shapes(action: str) -> list[tuple[str, Any, Any]]:
    ours = registry.get("ec2", action)
    assert ours is not None
    model = botocore.session.get_session().get_service_model("ec2")
    theirs = model.operation_model(action).input_shape
    return list(closed_structures(ours.input, theirs, ""))


def test_run_instances_and_the_structures_in_it_are_closed() -> None:
    assert {"RunInstances", "ModifyInstanceAttribute"} <= set(CLOSED_ACTIONS)
    assert [path for path, _, _ in closed_shapes("RunInstances")] == [
        "",
        "IamInstanceProfile",
        "MetadataOptions",
        "TagSpecification",
        "TagSpecification.Tag",
        "Placement",
    ]


@pytest.mark.parametrize("action", CLOSED_ACTIONS)
def test_every_parameter_of_a_closed_action_is_honoured_or_refused(action: str) -> None:
    """No parameter is accepted and dropped, nor answered as unknown although EC2 has it: each
    member of botocore's model of a closed structure is a field of it or refused (issue 12,
    item 8)."""
    for path, ours, theirs in closed_shapes(action):
        honoured = {item.wire_name or item.name for item in ours.fields}
        members = set(wire_members(theirs))
        assert honoured <= members, f"{action} {path}: a field EC2 does not have"
        assert members - honoured == set(ours.refused), f"{action} {path}"


def test_run_instances_honours_these_and_refuses_the_rest() -> None:
    action = registry.get("ec2", "RunInstances")
    assert action is not None
    assert {field.wire_name or field.name for field in action.input.fields} == HONOURED
    assert set(REFUSED_BY_BOTO3) == set(RUN_INSTANCES_REFUSED)


@pytest.mark.parametrize("name", sorted(RUN_INSTANCES_REFUSED))
def test_a_refused_parameter_from_boto3_is_unsupported_operation_naming_it(
    controller: Controller, node: NodeClient, name: str
) -> None:
    ec2 = controller.client("ec2")
    sent: list[dict[str, list[str]]] = []
    ec2.meta.events.register(
        "before-send.ec2.RunInstances",
        lambda request, **_: sent.append(parse_qs(body_text(request))),
    )
    code, status, message = refused_launch(ec2, **REFUSED_BY_BOTO3[name])
    [params] = sent
    assert any(key.split(".")[0] == name for key in params), f"boto3 did not send {name}"
    assert (code, status) == ("UnsupportedOperation", 400)
    assert message.startswith(f"The parameter {name} is not supported: ")


@pytest.mark.parametrize("name", sorted(RUN_INSTANCES_REFUSED))
def test_a_refused_parameter_in_a_raw_request_is_unsupported_operation(
    controller: Controller, ec2: Any, node: NodeClient, name: str
) -> None:
    before = instance_count(ec2)
    status, code, message = raw_run(controller, **{name: "1", "Placement.HostId": "guest-hv"})
    assert (status, code) == (400, "UnsupportedOperation")
    assert f"The parameter {name} is not supported" in message
    assert instance_count(ec2) == before


@pytest.mark.parametrize("name", sorted(PLACEMENT.refused or {}))
def test_a_refused_placement_member_is_unsupported_operation_naming_it(
    controller: Controller, node: NodeClient, name: str
) -> None:
    ec2 = controller.client("ec2")
    values = {
        "Affinity": "host",
        "GroupId": "pg-0123456789abcdef0",
        "GroupName": "cluster",
        "HostResourceGroupArn": f"arn:aws:resource-groups:us-east-1:{ACCOUNT_ID}:group/hosts",
        "PartitionNumber": 1,
        "SpreadDomain": "rack",
    }
    code, status, message = refused_launch(ec2, {name: values[name]})
    assert (code, status) == ("UnsupportedOperation", 400)
    assert message.startswith(f"The parameter Placement.{name} is not supported: ")


def test_placement_takes_only_the_one_zone_and_default_tenancy(ec2: Any, node: NodeClient) -> None:
    for placement, named in (
        ({"AvailabilityZone": "us-east-1b"}, "Placement.AvailabilityZone"),
        ({"AvailabilityZoneId": "use1-az2"}, "Placement.AvailabilityZoneId"),
        ({"Tenancy": "dedicated"}, "Placement.Tenancy"),
    ):
        code, _, message = refused_launch(ec2, placement)
        assert code == "InvalidParameterValue", placement
        assert named in message, message
    placed = ec2.run_instances(
        ImageId="emi-1",
        MinCount=1,
        MaxCount=1,
        Placement={
            "HostId": "guest-hv",
            "AvailabilityZone": "us-east-1a",
            "AvailabilityZoneId": "use1-az1",
            "Tenancy": "default",
        },
    )["Instances"]
    assert placed[0]["Placement"]["AvailabilityZone"] == "us-east-1a"


@pytest.mark.parametrize(
    "name",
    [
        "Placement.Colour",
        "MetadataOptions.HttpTokenz",
        "IamInstanceProfile.Id",
        "TagSpecification.1.Colour",
        "TagSpecification.1.Tag.1.Colour",
    ],
)
def test_a_member_a_closed_structure_lacks_is_unknown_parameter(
    controller: Controller, ec2: Any, node: NodeClient, name: str
) -> None:
    before = instance_count(ec2)
    params = {
        name: "x",
        "Placement.HostId": "guest-hv",
        "TagSpecification.1.ResourceType": "instance",
        "TagSpecification.1.Tag.1.Key": "k",
    }
    status, code, message = raw_run(controller, **params)
    assert (status, code) == (400, "UnknownParameter")
    assert message == f"The parameter {name} is not recognized"
    assert instance_count(ec2) == before


@pytest.mark.parametrize("name", ["NoSuchParameter", "Userdata", "KeyPairName.1"])
def test_a_parameter_ec2_does_not_have_is_unknown_parameter(
    controller: Controller, ec2: Any, node: NodeClient, name: str
) -> None:
    before = instance_count(ec2)
    status, code, message = raw_run(controller, **{name: "x", "Placement.HostId": "guest-hv"})
    assert (status, code) == (400, "UnknownParameter")
    assert name.split(".")[0] in message
    assert instance_count(ec2) == before


def test_http_protocol_ipv6_enabled_is_refused_and_disabled_accepted(
    ec2: Any, node: NodeClient
) -> None:
    code, status, message = refused_launch(ec2, MetadataOptions={"HttpProtocolIpv6": "enabled"})
    assert (code, status) == ("UnsupportedOperation", 400)
    assert "HttpProtocolIpv6" in message
    instance_id = launch_one(ec2, MetadataOptions={"HttpProtocolIpv6": "disabled"})
    assert described(ec2, instance_id)["MetadataOptions"]["HttpProtocolIpv6"] == "disabled"
    code, _, _ = error_of(
        ec2.modify_instance_metadata_options, InstanceId=instance_id, HttpProtocolIpv6="enabled"
    )
    assert code == "UnsupportedOperation"


# --- ClientToken --------------------------------------------------------------------------------


def test_the_same_client_token_and_request_give_the_same_reservation(
    ec2: Any, node: NodeClient
) -> None:
    token = "token-same"
    first = ec2.run_instances(
        ImageId="emi-1", MinCount=2, MaxCount=2, Placement={"HostId": "guest-hv"},
        ClientToken=token, UserData=b"once",
    )  # fmt: skip
    count = instance_count(ec2)
    again = ec2.run_instances(
        ImageId="emi-1", MinCount=2, MaxCount=2, Placement={"HostId": "guest-hv"},
        ClientToken=token, UserData=b"once",
    )  # fmt: skip
    assert again["ReservationId"] == first["ReservationId"]
    assert [i["InstanceId"] for i in again["Instances"]] == [
        i["InstanceId"] for i in first["Instances"]
    ]
    assert [i["PrivateIpAddress"] for i in again["Instances"]] == [
        i["PrivateIpAddress"] for i in first["Instances"]
    ]
    assert instance_count(ec2) == count


def test_the_same_client_token_with_another_request_is_a_mismatch(
    ec2: Any, node: NodeClient
) -> None:
    request = {
        "ImageId": "emi-1",
        "MinCount": 1,
        "MaxCount": 1,
        "Placement": {"HostId": "guest-hv"},
        "InstanceType": "m1.small",
        "ClientToken": "token-mismatch",
    }
    first = ec2.run_instances(**request)["Instances"][0]["InstanceId"]
    count = instance_count(ec2)
    for other in (
        {"InstanceType": "m1.large"},
        {"UserData": b"different"},
        {"MinCount": 2, "MaxCount": 2},
        {"SecurityGroups": ["web"]},
    ):
        code, status, message = error_of(ec2.run_instances, **{**request, **other})
        assert (code, status) == ("IdempotentParameterMismatch", 400), other
        assert "inconsistent" in message
    assert instance_count(ec2) == count
    assert described(ec2, first)["InstanceType"] == "m1.small"
    # The same request again is still the same reservation.
    assert ec2.run_instances(**request)["Instances"][0]["InstanceId"] == first


def test_boto3_sends_a_new_client_token_with_each_call(
    controller: Controller, node: NodeClient
) -> None:
    """Without a ClientToken from the caller, boto3 makes one up for each call: two calls are
    two reservations."""
    ec2 = controller.client("ec2")
    tokens: list[str] = []
    ec2.meta.events.register(
        "before-send.ec2.RunInstances",
        lambda request, **_: tokens.extend(parse_qs(body_text(request))["ClientToken"]),
    )
    count = instance_count(ec2)
    first = ec2.run_instances(
        ImageId="emi-1", MinCount=1, MaxCount=1, Placement={"HostId": "guest-hv"}
    )
    second = ec2.run_instances(
        ImageId="emi-1", MinCount=1, MaxCount=1, Placement={"HostId": "guest-hv"}
    )
    assert len(tokens) == 2 and tokens[0] != tokens[1]
    assert first["ReservationId"] != second["ReservationId"]
    assert first["Instances"][0]["InstanceId"] != second["Instances"][0]["InstanceId"]
    assert instance_count(ec2) == count + 2


# --- network identity ---------------------------------------------------------------------------


def test_twenty_instances_get_distinct_macs_addresses_and_interfaces(
    ec2: Any, node: NodeClient
) -> None:
    launched = launch(ec2, "guest-hv", count=20)
    ids = [instance["InstanceId"] for instance in launched]
    answer = node.assignments()
    entries = {entry["instance_id"]: entry for entry in answer["instances"]}
    macs, addresses, interfaces = set(), set(), set()
    for instance_id in ids:
        shown = described(ec2, instance_id)
        [interface] = shown["NetworkInterfaces"]
        network = entries[instance_id]["network"]
        assert MAC.fullmatch(interface["MacAddress"])
        first_octet = int(interface["MacAddress"][:2], 16)
        assert first_octet & 0x03 == 0x02  # locally administered, unicast
        assert interface["MacAddress"] == network["mac"]
        assert interface["NetworkInterfaceId"] == network["interface_id"]
        assert re.fullmatch(r"eni-[0-9a-f]{17}", interface["NetworkInterfaceId"])
        assert interface["PrivateIpAddress"] == shown["PrivateIpAddress"]
        assert entries[instance_id]["metadata"]["local-ipv4"] == shown["PrivateIpAddress"]
        assert network["subnet_cidr"] == str(DEFAULT_SUBNET)
        address = ipaddress.IPv4Address(shown["PrivateIpAddress"])
        assert address in DEFAULT_SUBNET
        assert not any(address in never for never in NEVER)
        macs.add(interface["MacAddress"])
        addresses.add(address)
        interfaces.add(interface["NetworkInterfaceId"])
    assert len(macs) == len(addresses) == len(interfaces) == 20
    # No other live instance shares a MAC or an address with them.
    live = [
        instance
        for reservation in ec2.describe_instances(
            Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
        )["Reservations"]
        for instance in reservation["Instances"]
    ]
    all_macs = [i["NetworkInterfaces"][0]["MacAddress"] for i in live]
    all_addresses = [i["PrivateIpAddress"] for i in live]
    assert len(all_macs) == len(set(all_macs))
    assert len(all_addresses) == len(set(all_addresses))


def test_a_node_enrolled_with_a_subnet_gives_its_addresses_lowest_first(
    controller: Controller, ec2: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    subnet_node = enrolled(controller, tmp_path_factory, "subnet-hv", "10.20.30.0/24")
    launched = launch(ec2, "subnet-hv", count=3)
    assert [i["PrivateIpAddress"] for i in launched] == ["10.20.30.4", "10.20.30.5", "10.20.30.6"]
    assert launched[0]["PrivateDnsName"] == "ip-10-20-30-4.ec2.internal"
    answer = subnet_node.assignments()
    for instance in launched:
        entry = next(e for e in answer["instances"] if e["instance_id"] == instance["InstanceId"])
        assert entry["network"]["subnet_cidr"] == "10.20.30.0/24"
        assert entry["metadata"]["local-ipv4"] == instance["PrivateIpAddress"]
    # A terminated instance's address is free again, and the lowest free one is taken.
    ec2.terminate_instances(InstanceIds=[launched[1]["InstanceId"]])
    reused = launch(ec2, "subnet-hv", count=2)
    assert [i["PrivateIpAddress"] for i in reused] == ["10.20.30.5", "10.20.30.7"]
    # Its MAC is not the terminated one's (the MAC is new for every instance).
    assert (
        reused[0]["NetworkInterfaces"][0]["MacAddress"]
        != (launched[1]["NetworkInterfaces"][0]["MacAddress"])
    )


def test_a_slash_28_takes_eleven_instances_and_refuses_the_twelfth(
    controller: Controller, ec2: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    enrolled(controller, tmp_path_factory, "tiny-hv", "10.99.0.16/28")
    before = instance_count(ec2)
    code, status, message = error_of(
        ec2.run_instances,
        ImageId="emi-1",
        MinCount=12,
        MaxCount=12,
        Placement={"HostId": "tiny-hv"},
    )
    assert (code, status) == ("InsufficientFreeAddressesInSubnet", 400)
    assert "10.99.0.16/28" in message
    assert instance_count(ec2) == before  # nothing of that request was launched
    eleven = launch(ec2, "tiny-hv", count=4) + launch(ec2, "tiny-hv", count=7)
    assert [i["PrivateIpAddress"] for i in eleven] == [f"10.99.0.{n}" for n in range(20, 31)]
    count = instance_count(ec2)
    code, _, _ = error_of(
        ec2.run_instances, ImageId="emi-1", MinCount=1, MaxCount=1, Placement={"HostId": "tiny-hv"}
    )
    assert code == "InsufficientFreeAddressesInSubnet"
    assert instance_count(ec2) == count
    ec2.terminate_instances(InstanceIds=[eleven[-1]["InstanceId"]])
    assert launch(ec2, "tiny-hv")[0]["PrivateIpAddress"] == "10.99.0.30"


def test_a_launch_that_may_take_fewer_takes_as_many_addresses_as_are_free(
    controller: Controller, ec2: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """MinCount below MaxCount: as many as fit, as EC2 does for capacity and quotas."""
    enrolled(controller, tmp_path_factory, "some-hv", "10.98.0.16/28")
    launch(ec2, "some-hv", count=9)
    answer = ec2.run_instances(
        ImageId="emi-1", MinCount=1, MaxCount=5, Placement={"HostId": "some-hv"}
    )
    assert [i["PrivateIpAddress"] for i in answer["Instances"]] == ["10.98.0.29", "10.98.0.30"]
    code, _, _ = error_of(
        ec2.run_instances, ImageId="emi-1", MinCount=1, MaxCount=5, Placement={"HostId": "some-hv"}
    )
    assert code == "InsufficientFreeAddressesInSubnet"


def test_a_node_re_enrolled_with_a_wider_subnet_keeps_its_live_addresses_unique(
    controller: Controller, ec2: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    enrolled(controller, tmp_path_factory, "grow-hv", "10.60.0.0/28")
    first = launch(ec2, "grow-hv", count=2)
    assert [i["PrivateIpAddress"] for i in first] == ["10.60.0.4", "10.60.0.5"]
    out = tmp_path_factory.mktemp("grow-again")
    enroll(controller, "grow-hv", out, "--force", "--subnet", "10.60.0.0/24")
    wider = launch(ec2, "grow-hv", count=2)
    assert [i["PrivateIpAddress"] for i in wider] == ["10.60.0.6", "10.60.0.7"]
    node = NodeClient(controller, out)
    entries = {e["instance_id"]: e for e in node.assignments()["instances"]}
    assert entries[first[0]["InstanceId"]]["network"]["subnet_cidr"] == "10.60.0.0/28"
    assert entries[wider[0]["InstanceId"]]["network"]["subnet_cidr"] == "10.60.0.0/24"


@pytest.fixture
def configured(tmp_path: Path) -> Iterator[Controller]:
    """A controller whose configuration sets ``[ec2] subnet``."""
    config = tmp_path / "controller.toml"
    config.write_text('[ec2]\nsubnet = "172.16.8.0/22"\n')
    running = start_controller(tmp_path / "state", config)
    try:
        yield running
    finally:
        stop_controller(running)


def test_the_configured_subnet_applies_to_nodes_without_their_own(
    configured: Controller, tmp_path_factory: pytest.TempPathFactory
) -> None:
    plain = NodeClient(configured, enroll(configured, "plain", tmp_path_factory.mktemp("p")))
    enrolled(configured, tmp_path_factory, "own", "10.5.5.0/24")
    ec2 = configured.client("ec2")
    first = launch(ec2, "plain", count=2)
    assert [i["PrivateIpAddress"] for i in first] == ["172.16.8.4", "172.16.8.5"]
    assert launch(ec2, "own")[0]["PrivateIpAddress"] == "10.5.5.4"
    entry = next(e for e in plain.assignments()["instances"])
    assert entry["network"]["subnet_cidr"] == "172.16.8.0/22"


# --- security groups ----------------------------------------------------------------------------


def test_security_group_names_are_shown_and_assigned(ec2: Any, node: NodeClient) -> None:
    reservation = ec2.run_instances(
        ImageId="emi-1",
        MinCount=1,
        MaxCount=1,
        Placement={"HostId": "guest-hv"},
        SecurityGroups=["web", "ssh", "web"],
    )
    launched = reservation["Instances"]
    instance_id = launched[0]["InstanceId"]
    expected = [{"GroupName": "web"}, {"GroupName": "ssh"}]
    assert launched[0]["SecurityGroups"] == expected
    assert reservation["Groups"] == expected
    [described_reservation] = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    assert described_reservation["Groups"] == expected  # as RunInstances showed the reservation
    shown = described(ec2, instance_id)
    assert shown["SecurityGroups"] == expected
    assert shown["NetworkInterfaces"][0]["Groups"] == expected
    _, entry = assignment(node, instance_id)
    assert entry["network"]["security_groups"] == ["web", "ssh"]
    plain = launch_one(ec2)
    assert described(ec2, plain).get("SecurityGroups", []) == []
    assert assignment(node, plain)[1]["network"]["security_groups"] == []


def test_a_security_group_name_ec2_would_not_allow_is_refused(ec2: Any, node: NodeClient) -> None:
    for bad in ("web\nadmin", "tab\there", "caf\u00e9", "x" * 256):
        code, _, message = refused_launch(ec2, SecurityGroups=["ok", bad])
        assert code == "InvalidParameterValue", repr(bad)
        assert "SecurityGroup.2" in message
    allowed = "Web Tier._-:/()#,@[]+=&;{}!$*09"
    instance_id = launch_one(ec2, SecurityGroups=[allowed])
    assert assignment(node, instance_id)[1]["network"]["security_groups"] == [allowed]


# --- tags ---------------------------------------------------------------------------------------


def tags_of(ec2: Any, instance_id: str) -> dict[str, str]:
    shown = described(ec2, instance_id).get("Tags", [])
    return {tag["Key"]: tag.get("Value", "") for tag in shown}


def test_create_delete_and_describe_tags(ec2: Any, node: NodeClient) -> None:
    first, second = (launch_one(ec2) for _ in range(2))
    assert ec2.create_tags(
        Resources=[first, second],
        Tags=[{"Key": "env", "Value": "prod"}, {"Key": "team", "Value": "infra"}],
    )
    ec2.create_tags(Resources=[first], Tags=[{"Key": "role", "Value": "web"}])
    assert tags_of(ec2, first) == {"env": "prod", "team": "infra", "role": "web"}
    assert tags_of(ec2, second) == {"env": "prod", "team": "infra"}

    def described_tags(*filters: tuple[str, list[str]]) -> set[tuple[str, str, str, str]]:
        answer = ec2.describe_tags(Filters=[{"Name": n, "Values": v} for n, v in filters])
        return {(t["ResourceId"], t["ResourceType"], t["Key"], t["Value"]) for t in answer["Tags"]}

    assert described_tags(("resource-id", [first])) == {
        (first, "instance", "env", "prod"),
        (first, "instance", "team", "infra"),
        (first, "instance", "role", "web"),
    }
    assert described_tags(("resource-id", [first, second]), ("key", ["team"])) == {
        (first, "instance", "team", "infra"),
        (second, "instance", "team", "infra"),
    }
    assert described_tags(("resource-id", [first, second]), ("value", ["web"])) == {
        (first, "instance", "role", "web")
    }
    assert described_tags(("resource-type", ["instance"]), ("resource-id", [second])) == {
        (second, "instance", "env", "prod"),
        (second, "instance", "team", "infra"),
    }
    code, _, _ = error_of(ec2.describe_tags, Filters=[{"Name": "no-such", "Values": ["x"]}])
    assert code == "InvalidParameterValue"
    # A value given again replaces the old one.
    ec2.create_tags(Resources=[first], Tags=[{"Key": "env", "Value": "staging"}])
    assert tags_of(ec2, first)["env"] == "staging"
    # DeleteTags by key with a value that does not match deletes nothing; one that matches does.
    ec2.delete_tags(Resources=[first], Tags=[{"Key": "role", "Value": "db"}])
    assert "role" in tags_of(ec2, first)
    ec2.delete_tags(Resources=[first], Tags=[{"Key": "role", "Value": "web"}])
    assert "role" not in tags_of(ec2, first)
    # By key alone, whatever the value.
    ec2.delete_tags(Resources=[first, second], Tags=[{"Key": "team"}])
    assert tags_of(ec2, first) == {"env": "staging"}
    assert tags_of(ec2, second) == {"env": "prod"}
    # An empty value deletes only a tag whose value is empty.
    ec2.create_tags(Resources=[second], Tags=[{"Key": "blank", "Value": ""}])
    ec2.delete_tags(Resources=[second], Tags=[{"Key": "env", "Value": ""}])
    assert tags_of(ec2, second) == {"env": "prod", "blank": ""}
    ec2.delete_tags(Resources=[second], Tags=[{"Key": "blank", "Value": ""}])
    assert tags_of(ec2, second) == {"env": "prod"}
    # Without tags: all of them.
    ec2.delete_tags(Resources=[second])
    assert tags_of(ec2, second) == {}
    assert described_tags(("resource-id", [second])) == set()
    assert tags_of(ec2, first) == {"env": "staging"}


def test_tags_on_anything_but_an_instance_are_invalid_id(ec2: Any, node: NodeClient) -> None:
    instance_id = launch_one(ec2)
    for other in ("vol-0123456789abcdef0", "sg-12345678", "ami-12345678", "not-an-id"):
        code, status, message = error_of(
            ec2.create_tags, Resources=[instance_id, other], Tags=[{"Key": "k", "Value": "v"}]
        )
        assert (code, status) == ("InvalidID", 400), other
        assert other in message
        assert error_of(ec2.delete_tags, Resources=[other])[0] == "InvalidID"
    assert tags_of(ec2, instance_id) == {}  # refused whole: not even the instance was tagged
    code, _, _ = error_of(
        ec2.create_tags, Resources=["i-0123456789abcdef0"], Tags=[{"Key": "k", "Value": "v"}]
    )
    assert code == "InvalidInstanceID.NotFound"


def test_tags_in_metadata_follow_create_and_delete_tags(ec2: Any, node: NodeClient) -> None:
    instance_id = launch_one(
        ec2,
        MetadataOptions={"InstanceMetadataTags": "enabled"},
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "web-1"}]}
        ],
    )
    assert described(ec2, instance_id)["MetadataOptions"]["InstanceMetadataTags"] == "enabled"
    revision, entry = assignment(node, instance_id)
    assert tag_pairs(entry) == [("Name", "web-1")]
    ec2.create_tags(Resources=[instance_id], Tags=[{"Key": "env", "Value": "prod"}])
    created, entry = assignment(node, instance_id)
    assert created > revision
    assert tag_pairs(entry) == [("Name", "web-1"), ("env", "prod")]
    ec2.delete_tags(Resources=[instance_id], Tags=[{"Key": "Name"}])
    deleted, entry = assignment(node, instance_id)
    assert deleted > created
    assert tag_pairs(entry) == [("env", "prod")]
    ec2.delete_tags(Resources=[instance_id])
    emptied, entry = assignment(node, instance_id)
    assert emptied > deleted
    assert tag_pairs(entry) == []


def test_a_tag_key_metadata_cannot_show_is_left_out_but_kept(ec2: Any, node: NodeClient) -> None:
    instance_id = launch_one(ec2, MetadataOptions={"InstanceMetadataTags": "enabled"})
    kept = [
        {"Key": "app/tier", "Value": "front"},
        {"Key": "cost center", "Value": "42"},
        {"Key": "Owner", "Value": "ops team/web"},  # a value may have both
        {"Key": "a+b-c=d.e,f_g:h@i", "Value": ""},
    ]
    ec2.create_tags(Resources=[instance_id], Tags=kept)
    assert tags_of(ec2, instance_id) == {tag["Key"]: tag["Value"] for tag in kept}
    _, entry = assignment(node, instance_id)
    assert tag_pairs(entry) == [("Owner", "ops team/web"), ("a+b-c=d.e,f_g:h@i", "")]


def test_with_tags_not_in_metadata_they_are_null_and_no_revision_bumps(
    ec2: Any, node: NodeClient
) -> None:
    instance_id = launch_one(
        ec2, TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "a", "Value": "1"}]}]
    )
    assert described(ec2, instance_id)["MetadataOptions"]["InstanceMetadataTags"] == "disabled"
    revision, entry = assignment(node, instance_id)
    assert entry["tags"] is None
    ec2.create_tags(Resources=[instance_id], Tags=[{"Key": "b", "Value": "2"}])
    ec2.delete_tags(Resources=[instance_id], Tags=[{"Key": "a"}])
    after, entry = assignment(node, instance_id)
    assert after == revision
    assert entry["tags"] is None
    assert tags_of(ec2, instance_id) == {"b": "2"}


def test_modify_instance_metadata_options_switches_tags_in_metadata(
    ec2: Any, node: NodeClient
) -> None:
    instance_id = launch_one(
        ec2, TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "k", "Value": "v"}]}]
    )
    revision, entry = assignment(node, instance_id)
    assert entry["tags"] is None
    answer = ec2.modify_instance_metadata_options(
        InstanceId=instance_id, InstanceMetadataTags="enabled"
    )
    assert answer["InstanceMetadataOptions"]["InstanceMetadataTags"] == "enabled"
    assert described(ec2, instance_id)["MetadataOptions"]["InstanceMetadataTags"] == "enabled"
    enabled, entry = assignment(node, instance_id)
    assert enabled > revision
    assert tag_pairs(entry) == [("k", "v")]
    # The other options are left as they were.
    assert entry["metadata_options"]["http_tokens"] == "required"
    ec2.modify_instance_metadata_options(InstanceId=instance_id, InstanceMetadataTags="disabled")
    disabled, entry = assignment(node, instance_id)
    assert disabled > enabled
    assert entry["tags"] is None
    assert described(ec2, instance_id)["MetadataOptions"]["InstanceMetadataTags"] == "disabled"


# --- identity document --------------------------------------------------------------------------


def test_the_identity_document_names_the_instance_its_address_and_launch_time(
    ec2: Any, node: NodeClient
) -> None:
    launched = launch(ec2, "guest-hv", InstanceType="m1.medium")[0]
    instance_id = launched["InstanceId"]
    shown = described(ec2, instance_id)
    _, entry = assignment(node, instance_id)
    document = json.loads(entry["identity"]["document"])
    assert document["instanceId"] == instance_id
    assert document["privateIp"] == shown["PrivateIpAddress"]
    assert document["pendingTime"] == shown["LaunchTime"].strftime("%Y-%m-%dT%H:%M:%SZ")
    assert document["pendingTime"] == entry["metadata"]["launch-time"]
    assert document["accountId"] == ACCOUNT_ID
    assert document["imageId"] == "emi-1"
    assert document["instanceType"] == "m1.medium"
    assert document["region"] == "us-east-1"
    assert document["availabilityZone"] == shown["Placement"]["AvailabilityZone"]
    # The document is served as rendered at launch: it does not change with later calls.
    again = assignment(node, instance_id)[1]["identity"]["document"]
    assert again == entry["identity"]["document"]
