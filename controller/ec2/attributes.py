"""EC2 instance attributes and tags: DescribeInstanceAttribute, ModifyInstanceAttribute,
CreateTags, DeleteTags and DescribeTags (instances only).

RoleCall's instances have no stopped state, so ModifyInstanceAttribute changes ``userData`` of a
running instance: its metadata service serves the new data at once, and cloud-init, which runs
user data on an instance's first boot, sees it at the next boot that runs it (see
docs/decisions.md, "User data"). A tag change reaches the metadata service
(``tags/instance/``) of an instance that has ``InstanceMetadataTags`` enabled.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from controller.actions import Context, Result
from controller.ec2 import registry
from controller.ec2.common import (
    DRY_RUN,
    FILTERS,
    INSTANCE_ID,
    assignment_changed,
    check_dry_run,
    group_shape,
    instance_resource,
    instances_resource,
    require_instance,
)
from controller.ec2.instances import check_user_data
from controller.ec2.limits import check_tag_count
from controller.errors import (
    IncorrectInstanceState,
    InvalidID,
    InvalidParameterValue,
    MissingParameter,
    UnsupportedOperation,
)
from controller.query import Field, ListOf, Str, Struct
from controller.store.records import Instance, Tag

#: The attributes DescribeInstanceAttribute answers; EC2's others are UnsupportedOperation.
ATTRIBUTES = (
    "instanceType",
    "userData",
    "groupSet",
    "rootDeviceName",
    "disableApiTermination",
    "disableApiStop",
    "instanceInitiatedShutdownBehavior",
)
#: EC2's attribute names RoleCall does not have.
OTHER_ATTRIBUTES = (
    "kernel",
    "ramdisk",
    "blockDeviceMapping",
    "productCodes",
    "sourceDestCheck",
    "ebsOptimized",
    "sriovNetSupport",
    "enaSupport",
    "enclaveOptions",
)
ROOT_DEVICE_NAME = "/dev/vda"


def _value(value: object) -> dict[str, object]:
    return {"value": value}


def attribute_shape(instance: Instance, attribute: str) -> dict[str, Any]:
    if attribute == "instanceType":
        return {"instanceType": _value(instance.instance_type)}
    if attribute == "userData":
        return {"userData": _value(instance.user_data) if instance.user_data else {}}
    if attribute == "groupSet":
        return {"groupSet": [group_shape(name) for name in instance.group_names]}
    if attribute == "rootDeviceName":
        return {"rootDeviceName": _value(ROOT_DEVICE_NAME)}
    if attribute == "instanceInitiatedShutdownBehavior":
        return {"instanceInitiatedShutdownBehavior": _value("terminate")}
    return {attribute: _value(False)}  # disableApiTermination, disableApiStop


@registry.action(
    "ec2",
    "DescribeInstanceAttribute",
    Struct(
        (
            Field("InstanceId", Str(), required=True),
            Field("Attribute", Str(enum=(*ATTRIBUTES, *OTHER_ATTRIBUTES)), required=True),
            DRY_RUN,
        )
    ),
    resource=instance_resource,
)
def describe_instance_attribute(context: Context, params: dict[str, Any]) -> Result:
    instance = require_instance(context, params["InstanceId"])
    check_dry_run(params)
    attribute = params["Attribute"]
    if attribute in OTHER_ATTRIBUTES:
        raise UnsupportedOperation(
            f"The attribute {attribute} is not supported: RoleCall does not manage it."
        )
    return {"instanceId": instance.instance_id, **attribute_shape(instance, attribute)}


VALUE = Struct((Field("Value", Str(0, 1 << 20)),), refused={})


@registry.action(
    "ec2",
    "ModifyInstanceAttribute",
    Struct(
        (
            Field("InstanceId", Str(), required=True),
            Field("Attribute", Str()),
            Field("Value", Str(0, 1 << 20)),
            Field("UserData", VALUE),
            DRY_RUN,
        ),
        refused={
            name: "RoleCall does not manage it"
            for name in (
                "BlockDeviceMapping",
                "DisableApiStop",
                "DisableApiTermination",
                "EbsOptimized",
                "EnaSupport",
                "EnclaveOptions",
                "GroupId",
                "InstanceInitiatedShutdownBehavior",
                "InstanceType",
                "Kernel",
                "Ramdisk",
                "SourceDestCheck",
                "SriovNetSupport",
            )
        },
    ),
    resource=instance_resource,
)
def modify_instance_attribute(context: Context, params: dict[str, Any]) -> Result:
    instance = require_instance(context, params["InstanceId"])
    attribute = params.get("Attribute")
    if attribute is not None and attribute != "userData":
        raise UnsupportedOperation(
            f"The attribute {attribute} cannot be modified in RoleCall; only userData can."
        )
    if "UserData" in params:
        text = params["UserData"].get("Value", "")
    elif attribute == "userData" and "Value" in params:
        text = params["Value"]
    else:
        raise MissingParameter("The request must contain the parameter UserData.Value.")
    check_dry_run(params)
    if instance.state == "terminated":
        raise IncorrectInstanceState(
            f"The instance '{instance.instance_id}' is not in a state from which it can be"
            " modified."
        )
    user_data = check_user_data(text)
    context.tx.update_instance(_with_user_data(instance, user_data))
    assignment_changed(context, instance.node_name)
    return {"return": True}


def _with_user_data(instance: Instance, user_data: str | None) -> Instance:
    return replace(instance, user_data=user_data)


# -- tags ----------------------------------------------------------------------------------------

TAGS = ListOf(Struct((Field("Key", Str(1, 128)), Field("Value", Str(0, 256)))))
DELETED_TAGS = ListOf(Struct((Field("Key", Str(1, 128)), Field("Value", Str(0, 256)))))


def _tagged_instances(context: Context, ids: list[str]) -> list[Instance]:
    """The instances named by ResourceId: RoleCall tags instances only."""
    for resource_id in ids:
        if not INSTANCE_ID.fullmatch(resource_id):
            raise InvalidID(
                f"The ID '{resource_id}' is not valid: RoleCall tags instances (\"i-…\") only."
            )
    return [require_instance(context, resource_id) for resource_id in ids]


def _tags_resource(context: Context, params: dict[str, Any]) -> tuple[str, ...]:
    return instances_resource(context, {"InstanceIds": params["Resources"]})


def _tags_changed(context: Context, instance: Instance) -> None:
    """A tag change reaches the metadata service of an instance that shows its tags."""
    if instance.tags_in_metadata and instance.state != "terminated":
        assignment_changed(context, instance.node_name)


@registry.action(
    "ec2",
    "CreateTags",
    Struct(
        (
            Field("Resources", ListOf(Str(1, 256)), required=True, wire_name="ResourceId"),
            Field("Tags", TAGS, required=True, wire_name="Tag"),
            DRY_RUN,
        )
    ),
    resource=_tags_resource,
)
def create_tags(context: Context, params: dict[str, Any]) -> Result:
    instances = _tagged_instances(context, params["Resources"])
    tags = [Tag(tag["Key"], tag.get("Value", "")) for tag in params["Tags"]]
    for tag in tags:
        if tag.key.lower().startswith("aws:"):
            raise InvalidParameterValue(
                f"Value ({tag.key}) for parameter key is invalid. Tag keys starting with 'aws:'"
                " are reserved for internal use"
            )
    check_dry_run(params)
    for instance in instances:
        existing = {tag.key.lower() for tag in context.tx.get_tags(instance.instance_id)}
        check_tag_count(len(existing | {tag.key.lower() for tag in tags}))
        context.tx.put_tags(instance.instance_id, tags)
        _tags_changed(context, instance)
    return {"return": True}


@registry.action(
    "ec2",
    "DeleteTags",
    Struct(
        (
            Field("Resources", ListOf(Str(1, 256)), required=True, wire_name="ResourceId"),
            Field("Tags", DELETED_TAGS, wire_name="Tag"),
            DRY_RUN,
        )
    ),
    resource=_tags_resource,
)
def delete_tags(context: Context, params: dict[str, Any]) -> Result:
    instances = _tagged_instances(context, params["Resources"])
    check_dry_run(params)
    wanted = params.get("Tags")
    for instance in instances:
        if wanted is None:
            context.tx.delete_tags(instance.instance_id)
        else:
            current = {
                tag.key.lower(): tag.value for tag in context.tx.get_tags(instance.instance_id)
            }
            keys = [
                tag["Key"]
                for tag in wanted
                if tag["Key"].lower() in current
                and ("Value" not in tag or current[tag["Key"].lower()] == tag["Value"])
            ]
            context.tx.delete_tags(instance.instance_id, keys)
        _tags_changed(context, instance)
    return {"return": True}


_TAG_FILTERS = ("resource-id", "resource-type", "key", "value")


@registry.action(
    "ec2",
    "DescribeTags",
    Struct((Field("Filters", FILTERS, wire_name="Filter"), DRY_RUN)),
)
def describe_tags(context: Context, params: dict[str, Any]) -> Result:
    check_dry_run(params)
    filters = params.get("Filters", [])
    for item in filters:
        if item.get("Name") not in _TAG_FILTERS:
            raise InvalidParameterValue(f"The filter '{item.get('Name')}' is invalid")
    found = []
    after = None
    while True:
        page = context.tx.list_instances(context.account_id, after, 1000)
        for instance in page:
            for tag in context.tx.get_tags(instance.instance_id):
                values = {
                    "resource-id": instance.instance_id,
                    "resource-type": "instance",
                    "key": tag.key,
                    "value": tag.value,
                }
                if all(values[f["Name"]] in f.get("Values", []) for f in filters):
                    found.append(
                        {
                            "resourceId": instance.instance_id,
                            "resourceType": "instance",
                            "key": tag.key,
                            "value": tag.value,
                        }
                    )
        if len(page) < 1000:
            break
        after = page[-1].instance_id
    return {"tagSet": found}
