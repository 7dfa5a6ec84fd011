"""``euca-*-instances``: the EC2 requests they build and the lines they print, against canned
answers shaped exactly like AWS EC2's (every element checked against botocore's EC2 model, and
botocore's own EC2 parser reading them as we do)."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ElementTree
from datetime import datetime
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.model import Shape
from botocore.parsers import create_parser
from botocore.serialize import create_serializer
from botocore.validate import validate_parameters

from controller.tools import instances
from controller.tools.command import Tool
from controller.tools.xmldata import local_name, members, parse_error, parse_xml, result_data
from tests.unit.test_tools_client import EC2_NS, Outcome, Reply, ec2_error, run_tool

EC2_MODEL = botocore.session.get_session().get_service_model("ec2")
ACCOUNT = "123456789012"
PROFILE_ARN = f"arn:aws:iam::{ACCOUNT}:instance-profile/s3access"


def instance_xml(
    instance_id: str,
    state: tuple[int, str] = (0, "pending"),
    *,
    index: int = 0,
    profile: bool = True,
    tags: dict[str, str] | None = None,
) -> str:
    profile_part = (
        f"<iamInstanceProfile><arn>{PROFILE_ARN}</arn><id>AIPAEXAMPLEEXAMPLE123</id>"
        "</iamInstanceProfile>"
        if profile
        else ""
    )
    tag_items = "".join(
        f"<item><key>{key}</key><value>{value}</value></item>"
        for key, value in (tags or {}).items()
    )
    return f"""
      <item>
        <instanceId>{instance_id}</instanceId>
        <imageId>emi-12345678</imageId>
        <instanceState><code>{state[0]}</code><name>{state[1]}</name></instanceState>
        <privateDnsName>ip-169-254-10-20.ec2.internal</privateDnsName>
        <dnsName/>
        <reason/>
        <amiLaunchIndex>{index}</amiLaunchIndex>
        <productCodes/>
        <instanceType>m1.small</instanceType>
        <launchTime>2024-05-01T12:00:00.000Z</launchTime>
        <placement>
          <availabilityZone>us-east-1a</availabilityZone>
          <groupName/>
          <tenancy>default</tenancy>
          <hostId>node1</hostId>
        </placement>
        <monitoring><state>disabled</state></monitoring>
        <privateIpAddress>169.254.10.20</privateIpAddress>
        <groupSet/>
        <architecture>x86_64</architecture>
        <rootDeviceType>ebs</rootDeviceType>
        <virtualizationType>hvm</virtualizationType>
        <clientToken/>
        <tagSet>{tag_items}</tagSet>
        <hypervisor>xen</hypervisor>
        {profile_part}
        <ebsOptimized>false</ebsOptimized>
        <metadataOptions>
          <state>applied</state>
          <httpTokens>required</httpTokens>
          <httpPutResponseHopLimit>1</httpPutResponseHopLimit>
          <httpEndpoint>enabled</httpEndpoint>
        </metadataOptions>
      </item>"""


def reservation_body(reservation_id: str, items: str, groups: str = "<groupSet/>") -> str:
    return (
        f"<reservationId>{reservation_id}</reservationId><ownerId>{ACCOUNT}</ownerId>"
        f"{groups}<instancesSet>{items}</instancesSet>"
    )


def ec2_reply(action: str, body: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{action}Response xmlns="{EC2_NS}">\n'
        f"  <requestId>59dbff89-35bd-4eac-99ed-be587EXAMPLE</requestId>\n"
        f"{body}\n</{action}Response>"
    ).encode()


RUN = ec2_reply(
    "RunInstances",
    reservation_body("r-0f2b6bd1a6e7c5d3e", instance_xml("i-0a1b2c3d4e5f60718")),
)
DESCRIBE_PAGE_1 = ec2_reply(
    "DescribeInstances",
    "<reservationSet><item>"
    + reservation_body(
        "r-0f2b6bd1a6e7c5d3e",
        instance_xml("i-0a1b2c3d4e5f60718", (16, "running"), tags={"Name": "web"})
        + instance_xml("i-0b2c3d4e5f6071829", (16, "running"), index=1, profile=False),
    )
    + "</item></reservationSet><nextToken>token-2</nextToken>",
)
DESCRIBE_PAGE_2 = ec2_reply(
    "DescribeInstances",
    "<reservationSet><item>"
    + reservation_body(
        "r-1a2b3c4d5e6f70819",
        instance_xml("i-0c3d4e5f607182930", (80, "stopped")),
        "<groupSet><item><groupId>sg-0123</groupId><groupName>default</groupName></item>"
        "</groupSet>",
    )
    + "</item></reservationSet>",
)
DESCRIBE_EMPTY = ec2_reply("DescribeInstances", "<reservationSet/>")
TERMINATE = ec2_reply(
    "TerminateInstances",
    "<instancesSet>"
    + "".join(
        f"<item><instanceId>{instance_id}</instanceId>"
        f"<currentState><code>32</code><name>shutting-down</name></currentState>"
        f"<previousState><code>{code}</code><name>{name}</name></previousState></item>"
        for instance_id, code, name in (
            ("i-0a1b2c3d4e5f60718", 16, "running"),
            ("i-0b2c3d4e5f6071829", 0, "pending"),
        )
    )
    + "</instancesSet>",
)
MOVED = ec2_reply("ModifyInstancePlacement", "<return>true</return>")
CANNED = {
    "RunInstances": [RUN],
    "DescribeInstances": [DESCRIBE_PAGE_1, DESCRIBE_PAGE_2, DESCRIBE_EMPTY],
    "TerminateInstances": [TERMINATE],
    "ModifyInstancePlacement": [MOVED],
}


def instance_line(
    instance_id: str, state: str, index: str = "0", profile: str = PROFILE_ARN
) -> str:
    columns = ["INSTANCE", instance_id, "emi-12345678", "", "ip-169-254-10-20.ec2.internal"]
    columns += [state, "", index, "", "m1.small", "2024-05-01T12:00:00.000Z", "us-east-1a"]
    columns += ["", "", "", "monitoring-disabled", "", "169.254.10.20", "", "", "ebs", "", ""]
    columns += ["", "", "hvm", "xen", "", "", "default", "false", profile, "x86_64"]
    return "\t".join(columns)


def sent_params(outcome: Outcome, index: int = 0) -> dict[str, str]:
    return dict(outcome.service.params(index))


def ok(tool: Tool, argv: list[str], *replies: Reply) -> Outcome:
    outcome = run_tool(tool, argv, *replies)
    assert (outcome.code, outcome.stderr) == (0, ""), outcome.stderr
    assert outcome.service.replies == []
    return outcome


# The canned answers are AWS's shapes


def unknown_elements(element: ElementTree.Element, shape: Shape, path: str) -> list[str]:
    """Elements of ``element`` that ``shape`` (botocore's EC2 model) has no place for."""
    problems = []
    for child in element:
        tag = local_name(child.tag)
        where = f"{path}/{tag}"
        if shape.type_name == "structure":
            by_wire_name = {
                member.serialization.get("name", name): member
                for name, member in shape.members.items()  # type: ignore[attr-defined]
            }
            if tag not in by_wire_name:
                problems.append(where)
            else:
                problems += unknown_elements(child, by_wire_name[tag], where)
        elif shape.type_name == "list":
            member = shape.member  # type: ignore[attr-defined]
            if tag != member.serialization.get("name", "item"):
                problems.append(where)
            else:
                problems += unknown_elements(child, member, where)
        else:
            problems.append(f"{where} (inside a {shape.type_name})")
    return problems


@pytest.mark.parametrize(
    ("action", "body"),
    [(action, body) for action, bodies in CANNED.items() for body in bodies],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_every_element_of_the_canned_answers_is_in_botocores_ec2_model(
    action: str, body: bytes
) -> None:
    root = ElementTree.fromstring(body)
    assert root.tag == f"{{{EC2_NS}}}{action}Response"
    assert root.find(f"{{{EC2_NS}}}requestId") is not None
    shape = EC2_MODEL.operation_model(action).output_shape
    without_request_id = [child for child in root if local_name(child.tag) != "requestId"]
    wrapper = ElementTree.Element("response")
    wrapper.extend(without_request_id)
    assert unknown_elements(wrapper, shape, action) == []


def disagreements(ours: Any, theirs: Any, shape: Shape, path: str) -> list[str]:
    """Where our data (text, by wire name) differs from botocore's parse (typed, by member)."""
    kind = shape.type_name
    if kind == "structure":
        problems = []
        for name, value in theirs.items():
            member = shape.members[name]  # type: ignore[attr-defined]
            wire = member.serialization.get("name", name)
            mine = ours.get(wire) if isinstance(ours, dict) else None
            problems += disagreements(mine, value, member, f"{path}.{wire}")
        return problems
    if kind == "list":
        listed = members(ours)
        if len(listed) != len(theirs):
            return [f"{path}: {len(listed)} members, botocore {len(theirs)}"]
        member = shape.member  # type: ignore[attr-defined]
        return [
            problem
            for index, (mine, value) in enumerate(zip(listed, theirs, strict=True))
            for problem in disagreements(mine, value, member, f"{path}[{index}]")
        ]
    parsed: Any = ours
    if kind == "timestamp":
        parsed = datetime.fromisoformat(ours.replace("Z", "+00:00"))
    elif kind == "integer":
        parsed = int(ours)
    elif kind == "boolean":
        parsed = {"true": True, "false": False}.get(ours)
    return [] if parsed == theirs else [f"{path}: ours {ours!r}, botocore {theirs!r}"]


@pytest.mark.parametrize(
    ("action", "body"),
    [(action, body) for action, bodies in CANNED.items() for body in bodies],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_botocores_ec2_parser_reads_the_canned_answers_as_we_do(action: str, body: bytes) -> None:
    shape = EC2_MODEL.operation_model(action).output_shape
    theirs = create_parser("ec2").parse({"body": body, "headers": {}, "status_code": 200}, shape)
    assert theirs.pop("ResponseMetadata")["RequestId"] == "59dbff89-35bd-4eac-99ed-be587EXAMPLE"
    root = parse_xml(body)
    assert root is not None
    assert disagreements(result_data(root, "ec2"), theirs, shape, action) == []


def test_botocores_ec2_parser_reads_an_ec2_error_as_we_do() -> None:
    status, body = ec2_error("InvalidInstanceID.NotFound", "The instance ID 'i-1' does not exist")
    shape = EC2_MODEL.operation_model("DescribeInstances").output_shape
    theirs = create_parser("ec2").parse({"body": body, "headers": {}, "status_code": status}, shape)
    assert parse_error(body) == (theirs["Error"]["Code"], theirs["Error"]["Message"])


# Requests agree with botocore's EC2 serializer


SERIALIZER_CASES = [
    (
        instances.RUN_INSTANCES,
        ["emi-1", "-n", "2-3", "-t", "m1.small", "-p", PROFILE_ARN, "--placement", "node1",
         "-z", "us-east-1a"],
        RUN,
        {
            "ImageId": "emi-1",
            "MinCount": 2,
            "MaxCount": 3,
            "InstanceType": "m1.small",
            "IamInstanceProfile": {"Arn": PROFILE_ARN},
            "Placement": {"AvailabilityZone": "us-east-1a", "HostId": "node1"},
        },
    ),
    (
        instances.RUN_INSTANCES,
        ["emi-1", "--iam-profile", "s3access"],
        RUN,
        {"ImageId": "emi-1", "MinCount": 1, "MaxCount": 1,
         "IamInstanceProfile": {"Name": "s3access"}},
    ),
    (
        instances.DESCRIBE_INSTANCES,
        ["i-1", "i-2", "-F", "instance-state-name=running", "--filter",
         f"iam-instance-profile.arn={PROFILE_ARN}", "-F", "instance-state-name=pending"],
        DESCRIBE_EMPTY,
        {
            "InstanceIds": ["i-1", "i-2"],
            "Filters": [
                {"Name": "instance-state-name", "Values": ["running", "pending"]},
                {"Name": "iam-instance-profile.arn", "Values": [PROFILE_ARN]},
            ],
        },
    ),
    (instances.DESCRIBE_INSTANCES, [], DESCRIBE_EMPTY, {}),
    (instances.TERMINATE_INSTANCES, ["i-1", "i-2"], TERMINATE, {"InstanceIds": ["i-1", "i-2"]}),
    (instances.MODIFY_INSTANCE_PLACEMENT, ["i-1", "--host-id", "node2"], MOVED,
     {"InstanceId": "i-1", "HostId": "node2"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("tool", "argv", "reply", "arguments"),
    SERIALIZER_CASES,
    ids=["run-by-arn", "run-by-name", "describe-filtered", "describe-all", "terminate", "move"],
)
def test_our_requests_are_the_ones_botocore_serializes_for_the_same_call(
    tool: Tool, argv: list[str], reply: bytes, arguments: dict[str, Any]
) -> None:
    outcome = ok(tool, argv, reply)
    ours = sent_params(outcome)
    operation = EC2_MODEL.operation_model(ours["Action"])
    validate_parameters(arguments, operation.input_shape)
    body = create_serializer("ec2").serialize_to_request(arguments, operation)["body"]
    assert ours == {name: str(value) for name, value in body.items()}  # on the wire all is text


# euca-run-instances


def test_run_instances_prints_the_reservation_then_each_instance() -> None:
    outcome = ok(instances.RUN_INSTANCES, ["emi-12345678", "-p", "s3access"], RUN)
    assert outcome.stdout.splitlines() == [
        f"RESERVATION\tr-0f2b6bd1a6e7c5d3e\t{ACCOUNT}\t",
        instance_line("i-0a1b2c3d4e5f60718", "pending"),
    ]


def test_an_instance_line_has_a_column_for_each_of_instance_columns() -> None:
    line = instance_line("i-0a1b2c3d4e5f60718", "pending")
    assert len(line.split("\t")) == 1 + len(instances.INSTANCE_COLUMNS)
    profile_column = [name for name, _ in instances.INSTANCE_COLUMNS].index("instance profile ARN")
    assert line.split("\t")[1 + profile_column] == PROFILE_ARN


@pytest.mark.parametrize(
    ("profile", "parameter"),
    [(PROFILE_ARN, "IamInstanceProfile.Arn"), ("s3access", "IamInstanceProfile.Name")],
)
def test_run_instances_names_the_profile_by_arn_or_by_name(profile: str, parameter: str) -> None:
    params = sent_params(ok(instances.RUN_INSTANCES, ["emi-1", "-p", profile], RUN))
    assert params[parameter] == profile
    assert not {"IamInstanceProfile.Arn", "IamInstanceProfile.Name"} - {parameter} & set(params)


@pytest.mark.parametrize(("count", "expected"), [("3", ("3", "3")), ("1-5", ("1", "5"))])
def test_run_instances_count_is_n_or_min_max(count: str, expected: tuple[str, str]) -> None:
    params = sent_params(ok(instances.RUN_INSTANCES, ["emi-1", "-n", count], RUN))
    assert (params["MinCount"], params["MaxCount"]) == expected


def test_run_instances_without_flags_launches_one_and_leaves_the_rest_to_ec2() -> None:
    params = sent_params(ok(instances.RUN_INSTANCES, ["emi-1"], RUN))
    assert params == {
        "Action": "RunInstances",
        "Version": "2016-11-15",
        "ImageId": "emi-1",
        "MinCount": "1",
        "MaxCount": "1",
    }


@pytest.mark.parametrize("count", ["0", "5-2", "x", "1-", "-1"])
def test_run_instances_refuses_a_bad_count_with_one_line(count: str) -> None:
    outcome = run_tool(instances.RUN_INSTANCES, ["emi-1", "-n", count])
    assert outcome.code == 2 and outcome.service.sent == []
    assert outcome.stderr.count("\n") == 1
    assert outcome.stderr.startswith("euca-run-instances: argument -n/--instance-count: COUNT")


def test_run_instances_needs_an_image() -> None:
    outcome = run_tool(instances.RUN_INSTANCES, ["-p", "s3access"])
    assert outcome.code == 2
    assert "the following arguments are required: IMAGE" in outcome.stderr


def test_run_instances_reports_an_unknown_profile_as_ec2_says() -> None:
    message = (
        "Value (nosuch) for parameter iamInstanceProfile.name is invalid. "
        "Invalid IAM Instance Profile name"
    )
    outcome = run_tool(
        instances.RUN_INSTANCES,
        ["emi-1", "-p", "nosuch"],
        ec2_error("InvalidParameterValue", message),
    )
    assert (outcome.code, outcome.stdout) == (1, "")
    assert outcome.stderr == f"euca-run-instances: InvalidParameterValue: {message}\n"


# euca-describe-instances


def test_describe_instances_prints_every_page_with_tags_and_groups() -> None:
    outcome = ok(instances.DESCRIBE_INSTANCES, [], DESCRIBE_PAGE_1, DESCRIBE_PAGE_2)
    assert outcome.stdout.splitlines() == [
        f"RESERVATION\tr-0f2b6bd1a6e7c5d3e\t{ACCOUNT}\t",
        instance_line("i-0a1b2c3d4e5f60718", "running"),
        "TAG\tinstance\ti-0a1b2c3d4e5f60718\tName\tweb",
        instance_line("i-0b2c3d4e5f6071829", "running", index="1", profile=""),
        f"RESERVATION\tr-1a2b3c4d5e6f70819\t{ACCOUNT}\tdefault",
        instance_line("i-0c3d4e5f607182930", "stopped"),
    ]
    assert "NextToken" not in sent_params(outcome, 0)
    assert sent_params(outcome, 1)["NextToken"] == "token-2"


def test_describe_instances_keeps_ids_and_filters_on_every_page() -> None:
    outcome = ok(
        instances.DESCRIBE_INSTANCES,
        ["i-0a1b2c3d4e5f60718", "-F", "instance-state-name=running"],
        DESCRIBE_PAGE_1,
        DESCRIBE_PAGE_2,
    )
    for index in (0, 1):
        params = sent_params(outcome, index)
        assert params["InstanceId.1"] == "i-0a1b2c3d4e5f60718"
        assert (params["Filter.1.Name"], params["Filter.1.Value.1"]) == (
            "instance-state-name",
            "running",
        )


def test_describe_instances_with_none_prints_nothing() -> None:
    assert ok(instances.DESCRIBE_INSTANCES, [], DESCRIBE_EMPTY).stdout == ""


def test_describe_instances_refuses_a_filter_without_a_value() -> None:
    outcome = run_tool(instances.DESCRIBE_INSTANCES, ["-F", "instance-state-name"])
    assert outcome.code == 2
    assert "a filter is NAME=VALUE, not 'instance-state-name'" in outcome.stderr


# euca-terminate-instances


def test_terminate_instances_prints_each_previous_and_current_state() -> None:
    outcome = ok(
        instances.TERMINATE_INSTANCES, ["i-0a1b2c3d4e5f60718", "i-0b2c3d4e5f6071829"], TERMINATE
    )
    assert outcome.stdout == (
        "INSTANCE\ti-0a1b2c3d4e5f60718\trunning\tshutting-down\n"
        "INSTANCE\ti-0b2c3d4e5f6071829\tpending\tshutting-down\n"
    )
    assert sent_params(outcome) == {
        "Action": "TerminateInstances",
        "Version": "2016-11-15",
        "InstanceId.1": "i-0a1b2c3d4e5f60718",
        "InstanceId.2": "i-0b2c3d4e5f6071829",
    }


def test_terminate_instances_needs_an_instance() -> None:
    outcome = run_tool(instances.TERMINATE_INSTANCES, [])
    assert outcome.code == 2 and outcome.service.sent == []


def test_terminate_instances_reports_an_unknown_instance_as_ec2_says() -> None:
    outcome = run_tool(
        instances.TERMINATE_INSTANCES,
        ["i-0000000000000000f"],
        ec2_error(
            "InvalidInstanceID.NotFound", "The instance ID 'i-0000000000000000f' does not exist"
        ),
    )
    assert outcome.code == 1
    assert outcome.stderr == (
        "euca-terminate-instances: InvalidInstanceID.NotFound: "
        "The instance ID 'i-0000000000000000f' does not exist\n"
    )


# euca-modify-instance-placement


def test_modify_instance_placement_sends_the_node_and_prints_where_it_is_now() -> None:
    outcome = ok(
        instances.MODIFY_INSTANCE_PLACEMENT, ["i-0a1b2c3d4e5f60718", "--host-id", "node2"], MOVED
    )
    assert outcome.stdout == "INSTANCE\ti-0a1b2c3d4e5f60718\tnode2\n"
    assert sent_params(outcome) == {
        "Action": "ModifyInstancePlacement",
        "Version": "2016-11-15",
        "InstanceId": "i-0a1b2c3d4e5f60718",
        "HostId": "node2",
    }


@pytest.mark.parametrize(
    ("argv", "missing"),
    [(["i-1"], "--host-id"), (["--host-id", "node2"], "INSTANCE")],
    ids=["no-node", "no-instance"],
)
def test_modify_instance_placement_names_what_is_missing(argv: list[str], missing: str) -> None:
    outcome = run_tool(instances.MODIFY_INSTANCE_PLACEMENT, argv)
    assert outcome.code == 2 and outcome.service.sent == []
    assert missing in outcome.stderr and outcome.stderr.count("\n") == 1


def test_modify_instance_placement_reports_an_unknown_node_as_ec2_says() -> None:
    outcome = run_tool(
        instances.MODIFY_INSTANCE_PLACEMENT,
        ["i-0a1b2c3d4e5f60718", "--host-id", "node2"],
        ec2_error("InvalidParameterValue", "Value (node2) for parameter hostId is invalid.", 400),
    )
    assert (outcome.code, outcome.stdout) == (1, "")
    assert outcome.stderr == (
        "euca-modify-instance-placement: InvalidParameterValue: "
        "Value (node2) for parameter hostId is invalid.\n"
    )


def test_euca_tools_sign_for_ec2_and_use_the_ec2_endpoint_variable() -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "AKIAEC2",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_ENDPOINT_URL": "http://general.test:1",
        "AWS_ENDPOINT_URL_EC2": "http://ec2.test:2",
    }
    outcome = run_tool(instances.DESCRIBE_INSTANCES, [], DESCRIBE_EMPTY, env=env)
    sent = outcome.service.sent[0]
    assert sent.url == "http://ec2.test:2/"
    assert "/us-east-1/ec2/aws4_request" in sent.headers["Authorization"]


def test_run_instances_sends_user_data_in_base64_from_d_or_f(tmp_path: Path) -> None:
    params = sent_params(ok(instances.RUN_INSTANCES, ["emi-1", "-d", "#!/bin/sh\necho hi"], RUN))
    assert base64.b64decode(params["UserData"]) == b"#!/bin/sh\necho hi"
    data = tmp_path / "user-data"
    data.write_bytes(b"#cloud-config\n\xff\x00")
    params = sent_params(ok(instances.RUN_INSTANCES, ["emi-1", "-f", str(data)], RUN))
    assert base64.b64decode(params["UserData"]) == b"#cloud-config\n\xff\x00"


def test_run_instances_sends_each_group_and_the_key() -> None:
    argv = ["emi-1", "-g", "default", "--group", "web", "-k", "ops"]
    params = sent_params(ok(instances.RUN_INSTANCES, argv, RUN))
    assert (params["SecurityGroup.1"], params["SecurityGroup.2"]) == ("default", "web")
    assert params["KeyName"] == "ops"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-f", "/nonexistent/user-data"], "-f/--user-data-file: cannot read /nonexistent"),
        (["-d", "x", "-f", "/etc/hostname"], "-d/--user-data and -f/--user-data-file cannot"),
        (["-d", "x" * 16385], "-d/--user-data: user data is limited to 16384 bytes"),
    ],
)
def test_run_instances_refuses_user_data_it_cannot_send_naming_the_flag(
    argv: list[str], message: str
) -> None:
    outcome = run_tool(instances.RUN_INSTANCES, ["emi-1", *argv])
    assert outcome.code != 0 and outcome.service.sent == []
    assert message in outcome.stderr and outcome.stderr.count("\n") == 1
