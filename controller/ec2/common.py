"""What EC2's actions share: ids, the instance profile an request names, placement, shapes."""

from __future__ import annotations

import re
import secrets
from typing import Any

from controller.actions import Context
from controller.authorize import authorize
from controller.errors import (
    DryRunOperation,
    InvalidInstanceIDMalformed,
    InvalidInstanceIDNotFound,
    InvalidParameterCombination,
    InvalidParameterValue,
)
from controller.query import Field, Int, ListOf, Str, Struct
from controller.store.records import REGION, Instance, InstanceProfile, Role, Tag
from controller.xmlout import format_time

AVAILABILITY_ZONE = f"{REGION}a"
STATE_CODES = {
    "pending": 0,
    "running": 16,
    "shutting-down": 32,
    "terminated": 48,
    "stopping": 64,
    "stopped": 80,
}
INSTANCE_ID = re.compile(r"i-[0-9a-f]{8}(?:[0-9a-f]{9})?")

#: Closed (`Struct.refused`): checked member by member where the action's input is closed.
PROFILE_SPEC = Struct((Field("Arn", Str(1, 2048)), Field("Name", Str(1, 128))), refused={})
FILTERS = ListOf(Struct((Field("Name", Str()), Field("Values", ListOf(Str()), wire_name="Value"))))
HTTP_TOKENS = Str(enum=("optional", "required"))
HTTP_ENDPOINT = Str(enum=("disabled", "enabled"))
HOP_LIMIT = Int(1, 64)
METADATA_TAGS = Str(enum=("disabled", "enabled"))
DRY_RUN = Field("DryRun", Str(enum=("true", "false")))
#: Closed (`Struct.refused`): checked member by member where the action's input is closed.
TAG_SPECIFICATIONS = ListOf(
    Struct(
        (
            Field("ResourceType", Str()),
            Field(
                "Tags",
                ListOf(
                    Struct((Field("Key", Str(1, 128)), Field("Value", Str(0, 256))), refused={})
                ),
                wire_name="Tag",
            ),
        ),
        refused={},
    )
)


def new_hex_id(prefix: str) -> str:
    """An EC2 id: a prefix and 17 lower-case hex characters."""
    return prefix + secrets.token_hex(9)[:17]


def check_dry_run(params: dict[str, Any]) -> None:
    """After authorization: a DryRun that would have succeeded says so, as EC2 does."""
    if params.get("DryRun") == "true":
        raise DryRunOperation("Request would have succeeded, but DryRun flag is set.")


def instance_resource(context: Context, params: dict[str, Any]) -> str:
    instance_id = params.get("InstanceId")
    if isinstance(instance_id, str):
        return f"arn:aws:ec2:{REGION}:{context.account_id}:instance/{instance_id}"
    return f"arn:aws:ec2:{REGION}:{context.account_id}:instance/*"


def instances_resource(context: Context, params: dict[str, Any]) -> tuple[str, ...]:
    """Each instance an action names (InstanceIds), so that a Deny on one of them refuses it."""
    prefix = f"arn:aws:ec2:{REGION}:{context.account_id}:instance/"
    return tuple(dict.fromkeys(prefix + instance_id for instance_id in params["InstanceIds"]))


def require_instance(context: Context, instance_id: str, *, any_account: bool = False) -> Instance:
    """The caller's account's instance of that id (of any account with ``any_account``: only
    for what the operator alone may do), or EC2's error."""
    if not INSTANCE_ID.fullmatch(instance_id):
        raise InvalidInstanceIDMalformed(f'Invalid id: "{instance_id}"')
    instance = context.tx.get_instance(instance_id)
    if instance is None or (not any_account and instance.account_id != context.account_id):
        raise InvalidInstanceIDNotFound(f"The instance ID '{instance_id}' does not exist")
    return instance


def resolve_profile(context: Context, spec: dict[str, str]) -> tuple[InstanceProfile, Role]:
    """The instance profile an IamInstanceProfile parameter names (by ARN, name, or both
    agreeing), with its role; the caller must be allowed iam:PassRole on that role."""
    arn, name = spec.get("Arn"), spec.get("Name")
    if arn is None and name is None:
        raise InvalidParameterValue("IamInstanceProfile needs an Arn or a Name.")
    profile: InstanceProfile | None = None
    if arn is not None:
        prefix = f"arn:aws:iam::{context.account_id}:instance-profile/"
        by_arn = (
            context.tx.get_instance_profile(context.account_id, arn.rpartition("/")[2])
            if arn.startswith(prefix)
            else None
        )
        if by_arn is None or by_arn.arn != arn:
            raise InvalidParameterValue(
                f"Value ({arn}) for parameter iamInstanceProfile.arn is invalid."
                " Invalid IAM Instance Profile ARN"
            )
        profile = by_arn
    if name is not None:
        by_name = context.tx.get_instance_profile(context.account_id, name)
        if by_name is None:
            raise InvalidParameterValue(
                f"Value ({name}) for parameter iamInstanceProfile.name is invalid."
                " Invalid IAM Instance Profile name"
            )
        if profile is not None and profile.profile_id != by_name.profile_id:
            raise InvalidParameterCombination(
                f"The parameters iamInstanceProfile.arn ({arn}) and iamInstanceProfile.name"
                f" ({name}) name different instance profiles."
            )
        profile = by_name
    assert profile is not None
    role = context.tx.get_role_by_id(profile.role_id) if profile.role_id else None
    if role is None:
        raise InvalidParameterValue(
            f"Value ({profile.arn}) for parameter iamInstanceProfile is invalid."
            f" The instance profile {profile.name} has no role."
        )
    authorize(context, "iam:PassRole", role.arn)
    return profile, role


def assignment_changed(context: Context, node_name: str) -> None:
    """Bump the node's assignment revision and, once committed, wake its waiting long poll."""
    context.tx.bump_node_revision(node_name)
    assignments = context.services.assignments
    if assignments is not None:
        context.on_commit.append(lambda: assignments.changed(node_name))


def state_shape(state: str) -> dict[str, Any]:
    return {"code": STATE_CODES[state], "name": state}


def profile_shape(context: Context, instance: Instance) -> dict[str, str] | None:
    if instance.profile_id is None:
        return None
    profile = context.tx.get_instance_profile_by_id(instance.profile_id)
    if profile is None:
        return None
    return {"arn": profile.arn, "id": profile.profile_id}


def metadata_options_shape(instance: Instance) -> dict[str, Any]:
    return {
        "state": "applied",
        "httpTokens": instance.http_tokens,
        "httpPutResponseHopLimit": instance.hop_limit,
        "httpEndpoint": instance.http_endpoint,
        "httpProtocolIpv6": "disabled",
        "instanceMetadataTags": instance.metadata_tags or "disabled",
    }


def group_shape(name: str) -> dict[str, str]:
    """A security group: a name only in RoleCall (no id; nothing filters traffic)."""
    return {"groupName": name}


def interface_shape(instance: Instance) -> dict[str, Any]:
    """The instance's primary network interface, as DescribeInstances shows it."""
    return {
        "networkInterfaceId": instance.interface_id,
        "subnetId": None,
        "vpcId": None,
        "description": "Primary network interface",
        "ownerId": instance.account_id,
        "status": "in-use",
        "macAddress": instance.mac,
        "privateIpAddress": instance.private_ip,
        "privateDnsName": hostname(instance),
        "sourceDestCheck": True,
        "groupSet": [group_shape(name) for name in instance.group_names] or None,
        "attachment": {
            "deviceIndex": 0,
            "status": "attached",
            "deleteOnTermination": True,
        },
        "privateIpAddressesSet": [
            {
                "privateIpAddress": instance.private_ip,
                "privateDnsName": hostname(instance),
                "primary": True,
            }
        ],
    }


def tag_specification_tags(params: dict[str, Any], resource_type: str) -> list[Tag]:
    """The tags a request's TagSpecification gives the new ``resource_type`` (``instance``,
    ``key-pair``); a specification for any other type is refused rather than ignored."""
    tags = []
    for spec in params.get("TagSpecifications", []):
        if spec.get("ResourceType") != resource_type:
            raise InvalidParameterValue(
                f"Value ({spec.get('ResourceType')}) for parameter TagSpecification.ResourceType"
                f" is invalid. It must be {resource_type}."
            )
        tags += [Tag(tag["Key"], tag.get("Value", "")) for tag in spec.get("Tags", [])]
    return tags


def instance_shape(context: Context, instance: Instance) -> dict[str, Any]:
    tags = context.tx.get_tags(instance.instance_id)
    return {
        "instanceId": instance.instance_id,
        "imageId": instance.image_id,
        "instanceState": state_shape(instance.state),
        "privateDnsName": hostname(instance),
        "dnsName": "",
        "keyName": instance.key_name,
        "amiLaunchIndex": instance.launch_index,
        "instanceType": instance.instance_type,
        "launchTime": instance.launched,
        "placement": {
            "availabilityZone": AVAILABILITY_ZONE,
            "tenancy": "default",
            "hostId": instance.node_name,
        },
        "monitoring": {"state": "disabled"},
        "privateIpAddress": instance.private_ip,
        "architecture": "x86_64",
        "rootDeviceType": "ebs",
        "virtualizationType": "hvm",
        "hypervisor": "xen",
        "tagSet": [{"key": tag.key, "value": tag.value} for tag in tags] or None,
        "groupSet": [group_shape(name) for name in instance.group_names] or None,
        "networkInterfaceSet": [interface_shape(instance)] if instance.mac else None,
        "iamInstanceProfile": profile_shape(context, instance),
        "metadataOptions": metadata_options_shape(instance),
    }


def hostname(instance: Instance) -> str:
    """EC2's private DNS name form, from the private address."""
    return f"ip-{instance.private_ip.replace('.', '-')}.ec2.internal"


def now_text(context: Context) -> str:
    return format_time(context.now)
