"""Instance profile associations: attach, replace, detach and list an instance's profile."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from controller.actions import Context, Result
from controller.ec2 import registry
from controller.ec2.common import (
    FILTERS,
    PROFILE_SPEC,
    assignment_changed,
    instance_resource,
    new_hex_id,
    profile_shape,
    require_instance,
    resolve_profile,
)
from controller.errors import IncorrectState, InvalidAssociationIDNotFound, InvalidParameterValue
from controller.iam.common import decode_marker, encode_marker
from controller.query import Field, Int, ListOf, Str, Struct
from controller.store.records import Instance


def association_shape(context: Context, instance: Instance, state: str) -> dict[str, Any]:
    return {
        "associationId": instance.association_id,
        "instanceId": instance.instance_id,
        "iamInstanceProfile": profile_shape(context, instance),
        "state": state,
    }


def _require_association(context: Context, association_id: str) -> Instance:
    instance = context.tx.get_instance_by_association(association_id)
    if (
        instance is None
        or instance.account_id != context.account_id
        or instance.association_state != "associated"
    ):
        raise InvalidAssociationIDNotFound(
            f"An invalid association-id of '{association_id}' was given"
        )
    return instance


def _association_resource(context: Context, params: dict[str, Any]) -> str:
    instance = context.tx.get_instance_by_association(params["AssociationId"])
    instance_id = instance.instance_id if instance is not None else "*"
    return instance_resource(context, {"InstanceId": instance_id})


def _associate(context: Context, instance: Instance, spec: dict[str, str]) -> Result:
    """Give the instance the profile `spec` names, under a new association id."""
    profile, _role = resolve_profile(context, spec)
    updated = replace(
        instance,
        profile_id=profile.profile_id,
        association_id=new_hex_id("iip-assoc-"),
        association_state="associated",
    )
    context.tx.update_instance(updated)
    assignment_changed(context, instance.node_name)
    return {"iamInstanceProfileAssociation": association_shape(context, updated, "associating")}


@registry.action(
    "ec2",
    "AssociateIamInstanceProfile",
    Struct(
        (
            Field("IamInstanceProfile", PROFILE_SPEC, required=True),
            Field("InstanceId", Str(), required=True),
        )
    ),
    resource=instance_resource,
)
def associate_iam_instance_profile(context: Context, params: dict[str, Any]) -> Result:
    instance = require_instance(context, params["InstanceId"])
    if instance.state == "terminated":
        raise IncorrectState(f"The instance '{instance.instance_id}' is terminated.")
    if instance.association_state == "associated":
        raise IncorrectState(
            f"There is an existing association for instance {instance.instance_id}"
        )
    return _associate(context, instance, params["IamInstanceProfile"])


@registry.action(
    "ec2",
    "DisassociateIamInstanceProfile",
    Struct((Field("AssociationId", Str(), required=True),)),
    resource=_association_resource,
)
def disassociate_iam_instance_profile(context: Context, params: dict[str, Any]) -> Result:
    instance = _require_association(context, params["AssociationId"])
    shape = association_shape(context, instance, "disassociating")
    context.tx.update_instance(
        replace(instance, profile_id=None, association_state="disassociated")
    )
    assignment_changed(context, instance.node_name)
    return {"iamInstanceProfileAssociation": shape}


@registry.action(
    "ec2",
    "ReplaceIamInstanceProfileAssociation",
    Struct(
        (
            Field("IamInstanceProfile", PROFILE_SPEC, required=True),
            Field("AssociationId", Str(), required=True),
        )
    ),
    resource=_association_resource,
)
def replace_iam_instance_profile_association(context: Context, params: dict[str, Any]) -> Result:
    instance = _require_association(context, params["AssociationId"])
    return _associate(context, instance, params["IamInstanceProfile"])


@registry.action(
    "ec2",
    "DescribeIamInstanceProfileAssociations",
    Struct(
        (
            Field("AssociationIds", ListOf(Str()), wire_name="AssociationId"),
            Field("Filters", FILTERS, wire_name="Filter"),
            Field("MaxResults", Int(5, 1000)),
            Field("NextToken", Str(1, 1024)),
        )
    ),
)
def describe_iam_instance_profile_associations(context: Context, params: dict[str, Any]) -> Result:
    wanted_ids = set(params.get("AssociationIds", []))
    filters = {item.get("Name"): set(item.get("Values", [])) for item in params.get("Filters", [])}
    for name in filters:
        if name not in ("instance-id", "state"):
            raise InvalidParameterValue(f"The filter '{name}' is invalid")
    limit = params.get("MaxResults", 1000)
    after = decode_marker(params.get("NextToken"))
    found: list[Instance] = []
    last = after
    more = False
    while True:
        batch = context.tx.list_instances(context.account_id, last, 500)
        if not batch:
            break
        for instance in batch:
            last = instance.instance_id
            if instance.association_id is None or instance.association_state != "associated":
                continue
            if wanted_ids and instance.association_id not in wanted_ids:
                continue
            if "instance-id" in filters and instance.instance_id not in filters["instance-id"]:
                continue
            if "state" in filters and "associated" not in filters["state"]:
                continue
            if len(found) == limit:
                more = True
                break
            found.append(instance)
        if more:
            break
    for association_id in wanted_ids - {instance.association_id for instance in found}:
        if not more:
            raise InvalidAssociationIDNotFound(
                f"An invalid association-id of '{association_id}' was given"
            )
    return {
        "iamInstanceProfileAssociationSet": [
            association_shape(context, instance, "associated") for instance in found
        ],
        "nextToken": encode_marker(found[-1].instance_id) if more else None,
    }
