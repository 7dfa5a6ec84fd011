"""EC2 instances: launch with an instance profile, describe, terminate, metadata options."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from itertools import groupby
from typing import Any

from common.nodemessages import MAX_USER_DATA_BYTES
from controller.actions import Context, Result
from controller.authorize import authorize
from controller.ec2 import registry
from controller.ec2.common import (
    AVAILABILITY_ZONE,
    DRY_RUN,
    FILTERS,
    HOP_LIMIT,
    HTTP_ENDPOINT,
    HTTP_TOKENS,
    METADATA_TAGS,
    PROFILE_SPEC,
    TAG_SPECIFICATIONS,
    assignment_changed,
    check_dry_run,
    group_shape,
    instance_resource,
    instance_shape,
    instances_resource,
    metadata_options_shape,
    new_hex_id,
    now_text,
    profile_shape,
    require_instance,
    resolve_profile,
    state_shape,
    tag_specification_tags,
)
from controller.ec2.guest import AVAILABILITY_ZONE_ID, identity_of
from controller.ec2.keypairs import require_key_pair
from controller.ec2.limits import Ec2Limits, check_tag_count, instances_allowed, place
from controller.ec2.metadata_defaults import launch_options
from controller.ec2.network import AddressPool, new_mac
from controller.errors import (
    IdempotentParameterMismatch,
    IncorrectInstanceState,
    InsufficientFreeAddressesInSubnet,
    InvalidParameterValue,
    UnauthorizedOperation,
    UnsupportedOperation,
)
from controller.iam.common import decode_marker, encode_marker
from controller.query import Field, Int, ListOf, Str, Struct
from controller.store.records import Instance, Node

MAX_LAUNCH = 100
#: UserData is base64: 16 KiB decoded is at most this many characters (and a little slack for
#: line breaks, which base64 decoders skip).
MAX_USER_DATA_TEXT = 4 * MAX_USER_DATA_BYTES // 3 + 1024

# RunInstances' input is closed (`Struct.refused`), and so are the structures in it
# (TAG_SPECIFICATIONS, PROFILE_SPEC too): a member EC2 has that RoleCall does not honour is
# refused, never accepted and dropped.
METADATA_OPTIONS = Struct(
    (
        Field("HttpTokens", HTTP_TOKENS),
        Field("HttpPutResponseHopLimit", HOP_LIMIT),
        Field("HttpEndpoint", HTTP_ENDPOINT),
        Field("InstanceMetadataTags", METADATA_TAGS),
        Field("HttpProtocolIpv6", Str(enum=("disabled", "enabled"))),
    ),
    refused={},
)
_NO_PLACEMENT_GROUPS = "placement groups are not implemented"
_NO_DEDICATED_HOSTS = "dedicated hosts are not implemented; HostId names a node"
#: Placement: the node (HostId, the operator's), and RoleCall's one zone and tenancy.
PLACEMENT = Struct(
    (
        Field("HostId", Str(1, 128)),
        Field("AvailabilityZone", Str(enum=(AVAILABILITY_ZONE,))),
        Field("AvailabilityZoneId", Str(enum=(AVAILABILITY_ZONE_ID,))),
        Field("Tenancy", Str(enum=("default",))),
    ),
    refused={
        "Affinity": _NO_DEDICATED_HOSTS,
        "GroupId": _NO_PLACEMENT_GROUPS,
        "GroupName": _NO_PLACEMENT_GROUPS,
        "HostResourceGroupArn": _NO_DEDICATED_HOSTS,
        "PartitionNumber": _NO_PLACEMENT_GROUPS,
        "SpreadDomain": _NO_PLACEMENT_GROUPS,
    },
)
#: A security group name, as EC2 allows it in a VPC. The metadata service lists the names one a
#: line (``security-groups``): a line break would make one name two.
GROUP_NAME = Str(1, 255, pattern=r"[a-zA-Z0-9 ._\-:/()#,@\[\]+=&;{}!$*]+")

_NOT_THE_NETWORK = "RoleCall does not run the cloud's network; the node's subnet applies"
_NO_STORAGE = "RoleCall does not manage block storage"
_NO_BILLING = "RoleCall has no purchasing or billing options"
_NO_HARDWARE = "RoleCall does not choose the VM's hardware; the hypervisor does"
#: RunInstances' other parameters (the botocore model's), each refused with why.
RUN_INSTANCES_REFUSED = {
    "AdditionalInfo": "it is reserved by EC2",
    "BlockDeviceMapping": _NO_STORAGE,
    "CapacityReservationSpecification": _NO_BILLING,
    "CpuOptions": _NO_HARDWARE,
    "CreditSpecification": _NO_BILLING,
    "DisableApiStop": "instances have no stopped state",
    "DisableApiTermination": "termination protection is not implemented",
    "EbsOptimized": _NO_STORAGE,
    "ElasticGpuSpecification": _NO_HARDWARE,
    "ElasticInferenceAccelerator": _NO_HARDWARE,
    "EnablePrimaryIpv6": "IPv6 is not supported yet",
    "EnclaveOptions": _NO_HARDWARE,
    "HibernationOptions": "instances have no stopped state",
    "InstanceInitiatedShutdownBehavior": "instances have no stopped state",
    "InstanceMarketOptions": _NO_BILLING,
    "Ipv6Address": "IPv6 is not supported yet",
    "Ipv6AddressCount": "IPv6 is not supported yet",
    "KernelId": "images are the hypervisor's",
    "LaunchTemplate": "launch templates are not implemented",
    "LicenseSpecification": _NO_BILLING,
    "MaintenanceOptions": "maintenance events are the hypervisor's",
    "Monitoring": "RoleCall has no CloudWatch",
    "NetworkInterface": _NOT_THE_NETWORK,
    "NetworkPerformanceOptions": _NO_HARDWARE,
    "Operator": "managed instances are not implemented",
    "PrivateDnsNameOptions": _NOT_THE_NETWORK,
    "PrivateIpAddress": _NOT_THE_NETWORK,
    "RamdiskId": "images are the hypervisor's",
    "SecurityGroupId": "security groups are names only in RoleCall; use SecurityGroup",
    "SecondaryInterface": _NOT_THE_NETWORK,
    "SubnetId": _NOT_THE_NETWORK,
}


@registry.action(
    "ec2",
    "RunInstances",
    Struct(
        (
            Field("ImageId", Str(1, 256), required=True),
            Field("MinCount", Int(1, MAX_LAUNCH), required=True),
            Field("MaxCount", Int(1, MAX_LAUNCH), required=True),
            Field("InstanceType", Str(1, 64)),
            Field("KeyName", Str()),
            Field("IamInstanceProfile", PROFILE_SPEC),
            Field("MetadataOptions", METADATA_OPTIONS),
            Field("TagSpecifications", TAG_SPECIFICATIONS, wire_name="TagSpecification"),
            Field("Placement", PLACEMENT),
            Field("UserData", Str(0, MAX_USER_DATA_TEXT)),
            Field("ClientToken", Str(1, 64)),
            Field("SecurityGroups", ListOf(GROUP_NAME), wire_name="SecurityGroup"),
            DRY_RUN,
        ),
        refused=RUN_INSTANCES_REFUSED,
    ),
    resource=instance_resource,
)
def run_instances(context: Context, params: dict[str, Any]) -> Result:
    token = params.get("ClientToken")
    digest = _request_digest(params)
    if token is not None:
        earlier = context.tx.instances_by_client_token(context.account_id, token)
        if earlier:
            if earlier[0].request_digest != digest:
                raise IdempotentParameterMismatch(
                    "Arguments on this idempotent request are inconsistent with arguments used"
                    " in previous request(s)."
                )
            check_dry_run(params)
            return _reservation(context, earlier)
    if params["MinCount"] > params["MaxCount"]:
        raise InvalidParameterValue(
            f"Value ({params['MinCount']}) for parameter MinCount is invalid."
            " It must not be greater than MaxCount."
        )
    profile_id = None
    if "IamInstanceProfile" in params:
        profile, _role = resolve_profile(context, params["IamInstanceProfile"])
        profile_id = profile.profile_id
    key_pair = None
    if "KeyName" in params:
        key_pair = require_key_pair(context, params["KeyName"])
        # As EC2: launching with a key pair is RunInstances on the key pair's resource too.
        authorize(context, "ec2:RunInstances", key_pair.arn)
    tags = tag_specification_tags(params, "instance")
    check_tag_count(len(tags))
    _check_ipv6(params.get("MetadataOptions", {}))
    # The request's MetadataOptions, else the account's defaults, else RoleCall's.
    options = launch_options(context, params.get("MetadataOptions", {}))
    user_data = check_user_data(params.get("UserData"))
    groups = _group_names(params.get("SecurityGroups", []))
    node_hint = params.get("Placement", {}).get("HostId")
    if node_hint is not None:
        check_may_choose_node(context, "Placement.HostId")
    check_dry_run(params)
    limits = context.services.ec2_limits or Ec2Limits()
    count = instances_allowed(
        context.tx.account_instance_count(context.account_id),
        params["MinCount"],
        params["MaxCount"],
        limits.max_instances_per_account,
    )
    nodes = place(
        candidate_nodes(context, node_hint, "placement.hostId"),
        context.tx.active_instance_counts(),
        limits.node_capacity,
        params["MinCount"],
        count,
    )
    reservation_id = new_hex_id("r-")
    launched = []
    pools: dict[str, AddressPool] = {}
    subnets = {node.name: node.subnet for node in context.tx.list_nodes()}
    macs: set[str] = set()
    for index, node in enumerate(nodes):
        instance_id = new_hex_id("i-")
        subnet = subnets.get(node) or limits.subnet
        pool = pools.get(subnet)
        if pool is None:
            pool = pools[subnet] = AddressPool(subnet, context.tx.live_addresses(subnet))
        try:
            address = pool.take()
        except InsufficientFreeAddressesInSubnet:
            if index < params["MinCount"]:
                raise  # and the transaction takes back what this request launched
            break  # as many as fit, as for the account's quota and the nodes' capacity
        instance = Instance(
            instance_id=instance_id,
            account_id=context.account_id,
            reservation_id=reservation_id,
            image_id=params["ImageId"],
            instance_type=params.get("InstanceType", "m1.small"),
            node_name=node,
            netns=f"rc-{instance_id}",
            state="pending",
            launched=now_text(context),
            terminated=None,
            private_ip=address,
            http_tokens=options["HttpTokens"],
            hop_limit=options["HttpPutResponseHopLimit"],
            http_endpoint=options["HttpEndpoint"],
            association_id=new_hex_id("iip-assoc-") if profile_id else None,
            association_state="associated" if profile_id else None,
            profile_id=profile_id,
            launch_index=index,
            user_data=user_data,
            mac=new_mac(context.tx.mac_in_use, macs),
            interface_id=new_hex_id("eni-"),
            subnet=subnet,
            security_groups=json.dumps(groups),
            metadata_tags=options["InstanceMetadataTags"],
            client_token=token,
            request_digest=digest,
            key_name=key_pair.name if key_pair is not None else None,
            public_key=key_pair.public_key if key_pair is not None else None,
        )
        instance = identity_of(instance, context.services.identity_signer)
        context.tx.insert_instance(instance)
        if tags:
            context.tx.put_tags(instance_id, tags)
        assignment_changed(context, node)
        launched.append(instance)
    return _reservation(context, launched)


def _reservation(context: Context, instances: list[Instance]) -> dict[str, Any]:
    first = instances[0]
    return {
        "reservationId": first.reservation_id,
        "ownerId": context.account_id,
        "groupSet": [group_shape(name) for name in first.group_names],
        "instancesSet": [instance_shape(context, instance) for instance in instances],
    }


def _request_digest(params: dict[str, Any]) -> str:
    """What a repeated ClientToken must repeat: the request but for the token and DryRun."""
    rest = {key: value for key, value in params.items() if key not in ("ClientToken", "DryRun")}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def _check_ipv6(options: dict[str, Any]) -> None:
    if options.get("HttpProtocolIpv6") == "enabled":
        raise UnsupportedOperation(
            "HttpProtocolIpv6 is not supported with the value enabled: the metadata service"
            " is IPv4 only (fd00:ec2::254 is not served yet)."
        )


def check_user_data(text: str | None) -> str | None:
    """RunInstances' UserData as stored (base64, as given, without whitespace), or EC2's error.

    Empty user data is none: DescribeInstanceAttribute shows none and the metadata service's
    ``user-data`` is a 404, as after ModifyInstanceAttribute with an empty value.
    """
    if text is None:
        return None
    text = "".join(text.split())
    if not text:
        return None
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameterValue("Invalid BASE64 encoding of user data.") from None
    if len(decoded) > MAX_USER_DATA_BYTES:
        raise InvalidParameterValue(
            f"User data is limited to {MAX_USER_DATA_BYTES} bytes (got {len(decoded)})."
        )
    return text


def _group_names(names: list[str]) -> list[str]:
    """Security group names as given, each once, in order."""
    return list(dict.fromkeys(names))


def check_may_choose_node(context: Context, parameter: str) -> None:
    """Naming a node (RunInstances' Placement.HostId, ModifyInstancePlacement's HostId) is the
    operator's: only the bootstrap account's root may do it.

    Nodes are shared by every account; a tenant choosing one could crowd it or learn which
    nodes exist. See docs/decisions.md (issue 16, item 10).
    """
    accounts = context.tx.list_accounts()
    operator = accounts[0].account_id if accounts else None
    if context.caller.kind != "root" or context.account_id != operator:
        raise UnauthorizedOperation(
            f"You are not authorized to perform this operation. {parameter} chooses the"
            " node, which only the operator (the bootstrap account's root) may do."
        )


def candidate_nodes(context: Context, node_name: str | None, parameter: str) -> list[Node]:
    """The nodes that may take new instances: the one named (by `parameter`, as EC2's error
    spells it), else every enrolled node."""
    if node_name is None:
        return [node for node in context.tx.list_nodes() if node.retired is None]
    node = context.tx.get_node(node_name)
    if node is None or node.retired is not None:
        raise InvalidParameterValue(
            f"Value ({node_name}) for parameter {parameter} is invalid."
            " No enrolled node has that name."
        )
    return [node]


#: A filter's values for one instance.
_FILTERS: dict[str, Callable[[Context, Instance], list[str]]] = {
    "instance-state-name": lambda context, instance: [instance.state],
    "instance-id": lambda context, instance: [instance.instance_id],
    "iam-instance-profile.arn": lambda context, instance: [
        shape["arn"] for shape in [profile_shape(context, instance)] if shape
    ],
    "image-id": lambda context, instance: [instance.image_id],
    "instance-type": lambda context, instance: [instance.instance_type],
    "key-name": lambda context, instance: [instance.key_name] if instance.key_name else [],
}


def _matches(context: Context, instance: Instance, filters: list[dict[str, Any]]) -> bool:
    for item in filters:
        name = item.get("Name", "")
        wanted = set(item.get("Values", []))
        if name.startswith("tag:"):
            values = [
                t.value for t in context.tx.get_tags(instance.instance_id) if t.key == name[4:]
            ]
        elif name in _FILTERS:
            values = _FILTERS[name](context, instance)
        else:
            raise InvalidParameterValue(f"The filter '{name}' is invalid")
        if not wanted.intersection(values):
            return False
    return True


@registry.action(
    "ec2",
    "DescribeInstances",
    Struct(
        (
            Field("InstanceIds", ListOf(Str()), wire_name="InstanceId"),
            Field("Filters", FILTERS, wire_name="Filter"),
            Field("MaxResults", Int(5, 1000)),
            Field("NextToken", Str(1, 1024)),
            DRY_RUN,
        )
    ),
)
def describe_instances(context: Context, params: dict[str, Any]) -> Result:
    check_dry_run(params)
    ids = params.get("InstanceIds")
    if ids:
        if "MaxResults" in params:
            raise InvalidParameterValue("MaxResults cannot be used with InstanceIds.")
        chosen = [require_instance(context, instance_id) for instance_id in ids]
        more = False
    else:
        limit = params.get("MaxResults", 1000)
        after = decode_marker(params.get("NextToken"))
        chosen = context.tx.list_instances(context.account_id, after, limit + 1)
        more = len(chosen) > limit
        chosen = chosen[:limit]
    last = chosen[-1].instance_id if more and chosen else None
    chosen = [i for i in chosen if _matches(context, i, params.get("Filters", []))]
    reservations = []
    ordered = sorted(chosen, key=lambda instance: (instance.reservation_id, instance.launch_index))
    for reservation_id, members in groupby(ordered, key=lambda instance: instance.reservation_id):
        instances = list(members)
        reservations.append(
            {
                "reservationId": reservation_id,
                "ownerId": context.account_id,
                # One RunInstances: its instances have the same groups, shown as it showed them.
                "groupSet": [group_shape(name) for name in instances[0].group_names],
                "instancesSet": [instance_shape(context, instance) for instance in instances],
            }
        )
    return {
        "reservationSet": reservations,
        "nextToken": encode_marker(last) if last else None,
    }


@registry.action(
    "ec2",
    "TerminateInstances",
    Struct((Field("InstanceIds", ListOf(Str()), required=True, wire_name="InstanceId"), DRY_RUN)),
    resource=instances_resource,
)
def terminate_instances(context: Context, params: dict[str, Any]) -> Result:
    instances = [require_instance(context, instance_id) for instance_id in params["InstanceIds"]]
    check_dry_run(params)
    changes = []
    for instance in instances:
        previous = instance.state
        if previous != "terminated":
            context.tx.update_instance(
                replace(
                    instance,
                    state="terminated",
                    terminated=now_text(context),
                    association_state="disassociated" if instance.association_id else None,
                )
            )
            assignment_changed(context, instance.node_name)
        changes.append(
            {
                "instanceId": instance.instance_id,
                "currentState": state_shape("terminated"),
                "previousState": state_shape(previous),
            }
        )
    return {"instancesSet": changes}


@registry.action(
    "ec2",
    "ModifyInstanceMetadataOptions",
    Struct(
        (
            Field("InstanceId", Str(), required=True),
            Field("HttpTokens", HTTP_TOKENS),
            Field("HttpPutResponseHopLimit", HOP_LIMIT),
            Field("HttpEndpoint", HTTP_ENDPOINT),
            Field("InstanceMetadataTags", METADATA_TAGS),
            Field("HttpProtocolIpv6", Str(enum=("disabled", "enabled"))),
            DRY_RUN,
        )
    ),
    resource=instance_resource,
)
def modify_instance_metadata_options(context: Context, params: dict[str, Any]) -> Result:
    instance = require_instance(context, params["InstanceId"])
    _check_ipv6(params)
    check_dry_run(params)
    if instance.state == "terminated":
        raise IncorrectInstanceState(
            f"The instance '{instance.instance_id}' is not in a state from which it can be"
            " modified."
        )
    updated = replace(
        instance,
        http_tokens=params.get("HttpTokens", instance.http_tokens),
        hop_limit=params.get("HttpPutResponseHopLimit", instance.hop_limit),
        http_endpoint=params.get("HttpEndpoint", instance.http_endpoint),
        metadata_tags=params.get("InstanceMetadataTags", instance.metadata_tags),
    )
    context.tx.update_instance(updated)
    assignment_changed(context, instance.node_name)
    return {
        "instanceId": instance.instance_id,
        "instanceMetadataOptions": metadata_options_shape(updated),
    }
