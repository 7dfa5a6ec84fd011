"""``euca-run-instances``, ``euca-describe-instances``, ``euca-terminate-instances``: EC2
instances, launched with an instance profile, printed as euca2ools prints them; and
``euca-modify-instance-placement``, which moves one to another node (live migration).

Output is tab-separated lines: ``RESERVATION id owner groups``, then for each instance an
``INSTANCE`` line whose columns are :data:`INSTANCE_COLUMNS` (euca2ools' order, so scripts that cut
columns keep working; blank where EC2 gave nothing), then a ``TAG`` line per tag.
"""

from __future__ import annotations

import argparse
import base64
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from common.nodemessages import MAX_USER_DATA_BYTES
from controller.tools.client import Client
from controller.tools.command import Tool, entry_point
from controller.tools.errors import ToolError
from controller.tools.xmldata import members

#: The RunInstances parameter ``--placement NODE`` fills: the node (hypervisor host) to run on.
PLACEMENT_NODE_PARAMETER = "Placement.HostId"


def _field(path: str) -> Callable[[dict[str, Any]], str]:
    def read(data: dict[str, Any]) -> str:
        return value_at(data, path)

    return read


def value_at(data: Any, path: str) -> str:
    """The text at a dotted path in EC2 data, ``""`` where there is none."""
    for key in path.split("."):
        if not isinstance(data, dict):
            return ""
        data = data.get(key)
    return data if isinstance(data, str) else ""


def _product_codes(instance: dict[str, Any]) -> str:
    return ",".join(value_at(code, "productCode") for code in members(instance.get("productCodes")))


def _monitoring(instance: dict[str, Any]) -> str:
    state = value_at(instance, "monitoring.state")
    return f"monitoring-{state}" if state else ""


def _group_ids(instance: dict[str, Any]) -> str:
    return ",".join(value_at(group, "groupId") for group in members(instance.get("groupSet")))


def _blank(instance: dict[str, Any]) -> str:
    return ""


#: The columns of an INSTANCE line after the word INSTANCE: (what, how to read it).
INSTANCE_COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("instance id", _field("instanceId")),
    ("image id", _field("imageId")),
    ("public DNS name", _field("dnsName")),
    ("private DNS name", _field("privateDnsName")),
    ("state", _field("instanceState.name")),
    ("key name", _field("keyName")),
    ("launch index", _field("amiLaunchIndex")),
    ("product codes", _product_codes),
    ("instance type", _field("instanceType")),
    ("launch time", _field("launchTime")),
    ("availability zone", _field("placement.availabilityZone")),
    ("kernel id", _field("kernelId")),
    ("ramdisk id", _field("ramdiskId")),
    ("platform", _field("platform")),
    ("monitoring", _monitoring),
    ("public IP address", _field("ipAddress")),
    ("private IP address", _field("privateIpAddress")),
    ("VPC id", _field("vpcId")),
    ("subnet id", _field("subnetId")),
    ("root device type", _field("rootDeviceType")),
    ("lifecycle", _field("instanceLifecycle")),
    ("spot request id", _field("spotInstanceRequestId")),
    ("license", _blank),
    ("placement group", _field("placement.groupName")),
    ("virtualization type", _field("virtualizationType")),
    ("hypervisor", _field("hypervisor")),
    ("client token", _field("clientToken")),
    ("security group ids", _group_ids),
    ("tenancy", _field("placement.tenancy")),
    ("EBS optimized", _field("ebsOptimized")),
    ("instance profile ARN", _field("iamInstanceProfile.arn")),
    ("architecture", _field("architecture")),
)


def tabbed(*fields: str) -> str:
    return "\t".join(fields)


def instance_lines(instance: dict[str, Any]) -> list[str]:
    """The INSTANCE line of one instance, then its TAG lines."""
    lines = [tabbed("INSTANCE", *(read(instance) for _, read in INSTANCE_COLUMNS))]
    instance_id = value_at(instance, "instanceId")
    for tag in members(instance.get("tagSet")):
        lines.append(
            tabbed("TAG", "instance", instance_id, value_at(tag, "key"), value_at(tag, "value"))
        )
    return lines


def reservation_lines(reservation: dict[str, Any]) -> list[str]:
    """The RESERVATION line, then the lines of each of its instances."""
    groups = ", ".join(
        value_at(group, "groupName") or value_at(group, "groupId")
        for group in members(reservation.get("groupSet"))
    )
    lines = [
        tabbed(
            "RESERVATION",
            value_at(reservation, "reservationId"),
            value_at(reservation, "ownerId"),
            groups,
        )
    ]
    for instance in members(reservation.get("instancesSet")):
        lines += instance_lines(instance)
    return lines


def _print(lines: Sequence[str], out: TextIO) -> None:
    for line in lines:
        print(line, file=out)


# euca-run-instances


def instance_count(text: str) -> tuple[int, int]:
    """``N`` or ``MIN-MAX`` as (MinCount, MaxCount)."""
    low, dash, high = text.partition("-")
    try:
        minimum = int(low)
        maximum = int(high) if dash else minimum
    except ValueError:
        raise argparse.ArgumentTypeError(f"COUNT must be N or MIN-MAX, not {text!r}") from None
    if minimum < 1 or maximum < minimum:
        raise argparse.ArgumentTypeError(
            f"COUNT must be at least 1 and MIN no more than MAX, not {text!r}"
        )
    return minimum, maximum


def run_instances_params(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The RunInstances parameters for the command line."""
    minimum, maximum = args.count
    params = [("ImageId", args.image), ("MinCount", str(minimum)), ("MaxCount", str(maximum))]
    if args.instance_type:
        params.append(("InstanceType", args.instance_type))
    if args.key:
        params.append(("KeyName", args.key))
    user_data = _user_data(args)
    if user_data is not None:
        params.append(("UserData", base64.b64encode(user_data).decode("ascii")))
    for number, group in enumerate(args.group or [], start=1):
        params.append((f"SecurityGroup.{number}", group))
    if args.iam_profile:
        member = "Arn" if args.iam_profile.startswith("arn:") else "Name"
        params.append((f"IamInstanceProfile.{member}", args.iam_profile))
    if args.availability_zone:
        params.append(("Placement.AvailabilityZone", args.availability_zone))
    if args.placement:
        params.append((PLACEMENT_NODE_PARAMETER, args.placement))
    return params


def _user_data(args: argparse.Namespace) -> bytes | None:
    """-d's text or -f's file, as bytes; a ToolError naming the flag if it cannot be used."""
    if args.user_data is not None and args.user_data_file is not None:
        raise ToolError("-d/--user-data and -f/--user-data-file cannot be used together")
    if args.user_data is not None:
        data: bytes = args.user_data.encode("utf-8")
    elif args.user_data_file is not None:
        try:
            with open(args.user_data_file, "rb") as stream:
                data = stream.read(MAX_USER_DATA_BYTES + 1)
        except OSError as error:
            raise ToolError(
                f"-f/--user-data-file: cannot read {args.user_data_file}: {error.strerror}"
            ) from None
    else:
        return None
    if len(data) > MAX_USER_DATA_BYTES:
        flag = "-d/--user-data" if args.user_data is not None else "-f/--user-data-file"
        raise ToolError(f"{flag}: user data is limited to {MAX_USER_DATA_BYTES} bytes")
    return data


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="id of the image to run, e.g. emi-12345678")
    parser.add_argument(
        "-n",
        "--instance-count",
        dest="count",
        metavar="COUNT",
        type=instance_count,
        default=(1, 1),
        help="how many instances: N, or MIN-MAX to accept fewer (default: 1)",
    )
    parser.add_argument("-t", "--instance-type", metavar="TYPE", help="e.g. m1.small")
    parser.add_argument(
        "-k",
        "--key",
        metavar="KEYPAIR",
        help="key pair whose public key the instances' metadata offers (public-keys/0)",
    )
    parser.add_argument(
        "-p",
        "--iam-profile",
        metavar="ARN|NAME",
        help="instance profile to give the instances, by ARN or by name",
    )
    parser.add_argument(
        "-d", "--user-data", metavar="DATA", help="user data for the instances (user-data)"
    )
    parser.add_argument(
        "-f", "--user-data-file", metavar="FILE", help="user data for the instances, from FILE"
    )
    parser.add_argument(
        "-g",
        "--group",
        action="append",
        metavar="GROUP",
        help="security group name (repeat for more); names only in RoleCall",
    )
    parser.add_argument(
        "--placement", metavar="NODE", help="run on this node (default: the least loaded)"
    )
    parser.add_argument("-z", "--availability-zone", metavar="ZONE", help="run in this zone")


def _run(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    _print(reservation_lines(client.call("RunInstances", run_instances_params(args))), out)


RUN_INSTANCES = Tool(
    name="euca-run-instances",
    service="ec2",
    summary="Launch instances of an image, optionally with an IAM instance profile.",
    add_arguments=_run_arguments,
    run=_run,
    example="  $ euca-run-instances emi-12345678 -n 1 -t m1.small -p s3access\n"
    "  RESERVATION\tr-0123456789abcdef0\t123456789012\t\n"
    "  INSTANCE\ti-0123456789abcdef0\temi-12345678\t\t\tpending\t...",
)


# euca-describe-instances


def filter_pair(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` as a pair."""
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"a filter is NAME=VALUE, not {text!r}")
    return name, value


def add_filter_argument(parser: argparse.ArgumentParser, what: str, example: str) -> None:
    """``-F/--filter NAME=VALUE``, repeatable, into ``args.filters`` (`filter_params`)."""
    parser.add_argument(
        "-F",
        "--filter",
        dest="filters",
        metavar="NAME=VALUE",
        type=filter_pair,
        action="append",
        default=[],
        help=f"only {what} that match, e.g. {example}; repeat for more",
    )


def filter_params(filters: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """``-F NAME=VALUE`` pairs as EC2's Filter parameters, the values of one name merged (EC2
    matches any of a filter's values, and all of the filters)."""
    grouped: dict[str, list[str]] = {}
    for name, value in filters:
        grouped.setdefault(name, []).append(value)
    params = []
    for index, (name, values) in enumerate(grouped.items(), 1):
        params.append((f"Filter.{index}.Name", name))
        params += [
            (f"Filter.{index}.Value.{number}", value) for number, value in enumerate(values, 1)
        ]
    return params


def describe_instances_params(args: argparse.Namespace) -> list[tuple[str, str]]:
    """DescribeInstances parameters: the ids, and the filters."""
    params = [(f"InstanceId.{index}", value) for index, value in enumerate(args.instances, 1)]
    return params + filter_params(args.filters)


def _describe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "instances", metavar="INSTANCE", nargs="*", help="ids of the instances (default: all)"
    )
    add_filter_argument(parser, "instances", "instance-state-name=running")


def _describe(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    params = describe_instances_params(args)
    token = ""
    while True:
        page = client.call(
            "DescribeInstances", [*params, *([("NextToken", token)] if token else [])]
        )
        for reservation in members(page.get("reservationSet")):
            _print(reservation_lines(reservation), out)
        token = value_at(page, "nextToken")
        if not token:
            return


DESCRIBE_INSTANCES = Tool(
    name="euca-describe-instances",
    service="ec2",
    summary="Show instances: a RESERVATION line, then an INSTANCE line for each instance.",
    add_arguments=_describe_arguments,
    run=_describe,
    example="  $ euca-describe-instances i-0123456789abcdef0\n"
    "  RESERVATION\tr-0123456789abcdef0\t123456789012\t\n"
    "  INSTANCE\ti-0123456789abcdef0\temi-12345678\t\t\trunning\t...",
)


# euca-terminate-instances


def _terminate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "instances", metavar="INSTANCE", nargs="+", help="ids of the instances to terminate"
    )


def _terminate(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    params = [(f"InstanceId.{index}", value) for index, value in enumerate(args.instances, 1)]
    result = client.call("TerminateInstances", params)
    for change in members(result.get("instancesSet")):
        print(
            tabbed(
                "INSTANCE",
                value_at(change, "instanceId"),
                value_at(change, "previousState.name"),
                value_at(change, "currentState.name"),
            ),
            file=out,
        )


TERMINATE_INSTANCES = Tool(
    name="euca-terminate-instances",
    service="ec2",
    summary="Terminate instances; print each one's previous and current state.",
    add_arguments=_terminate_arguments,
    run=_terminate,
    example="  $ euca-terminate-instances i-0123456789abcdef0\n"
    "  INSTANCE\ti-0123456789abcdef0\trunning\tshutting-down",
)


# euca-modify-instance-placement


def _placement_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("instance", metavar="INSTANCE", help="id of the instance to move")
    parser.add_argument(
        "--host-id",
        required=True,
        metavar="NODE",
        help="the node it runs on from now (before virsh migrate --live; operator only)",
    )


def _modify_placement(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    client.call(
        "ModifyInstancePlacement", [("InstanceId", args.instance), ("HostId", args.host_id)]
    )
    print(tabbed("INSTANCE", args.instance, args.host_id), file=out)


MODIFY_INSTANCE_PLACEMENT = Tool(
    name="euca-modify-instance-placement",
    service="ec2",
    summary="Move an instance to another node: its metadata service follows it there.",
    add_arguments=_placement_arguments,
    run=_modify_placement,
    example="  $ euca-modify-instance-placement i-0123456789abcdef0 --host-id compute2\n"
    "  INSTANCE\ti-0123456789abcdef0\tcompute2",
)


TOOLS = (RUN_INSTANCES, DESCRIBE_INSTANCES, TERMINATE_INSTANCES, MODIFY_INSTANCE_PLACEMENT)

run_instances = entry_point(RUN_INSTANCES)
describe_instances = entry_point(DESCRIBE_INSTANCES)
terminate_instances = entry_point(TERMINATE_INSTANCES)
modify_instance_placement = entry_point(MODIFY_INSTANCE_PLACEMENT)
