"""IAM instance profiles: the container that carries one role to an instance."""

from __future__ import annotations

from typing import Any

from controller.actions import Context, Result
from controller.authorize import authorize
from controller.errors import DeleteConflict, EntityAlreadyExists, LimitExceeded, NoSuchEntity
from controller.iam import registry
from controller.iam.common import (
    DEFAULT_MAX_ITEMS,
    add_tags,
    decode_marker,
    instance_profile_shape,
    new_id,
    now_text,
    page_fields,
    page_in_memory,
    profile_resource,
    require_instance_profile,
    require_role,
    role_resource,
    tag_list,
    tags_from_params,
)
from controller.iam.shapes import (
    INSTANCE_PROFILE_NAME,
    PAGING,
    PATH,
    PATH_PREFIX,
    ROLE_NAME,
    TAG_KEY_LIST,
    TAG_LIST,
    Field,
    struct,
)
from controller.store.base import Conflict
from controller.store.records import InstanceProfile

PROFILE = Field("InstanceProfileName", INSTANCE_PROFILE_NAME, required=True)


@registry.action(
    "iam",
    "CreateInstanceProfile",
    struct(PROFILE, Field("Path", PATH), Field("Tags", TAG_LIST)),
    resource=profile_resource,
)
def create_instance_profile(context: Context, params: dict[str, Any]) -> Result:
    name = params["InstanceProfileName"]
    tags = tags_from_params(params)
    if context.tx.get_instance_profile(context.account_id, name) is not None:
        raise EntityAlreadyExists(f"Instance Profile {name} already exists.")
    profile = InstanceProfile(
        profile_id=new_id("AIPA"),
        account_id=context.account_id,
        name=name,
        path=params.get("Path", "/"),
        role_id=None,
        created=now_text(context),
    )
    try:
        context.tx.insert_instance_profile(profile)
    except Conflict as error:
        raise EntityAlreadyExists(f"Instance Profile {name} already exists.") from error
    if tags:
        add_tags(context, profile.profile_id, tags)
    return {"InstanceProfile": instance_profile_shape(context, profile, with_tags=True)}


@registry.action("iam", "GetInstanceProfile", struct(PROFILE), resource=profile_resource)
def get_instance_profile(context: Context, params: dict[str, Any]) -> Result:
    profile = require_instance_profile(context, params["InstanceProfileName"])
    return {"InstanceProfile": instance_profile_shape(context, profile, with_tags=True)}


@registry.action("iam", "ListInstanceProfiles", struct(Field("PathPrefix", PATH_PREFIX), *PAGING))
def list_instance_profiles(context: Context, params: dict[str, Any]) -> Result:
    limit = params.get("MaxItems", DEFAULT_MAX_ITEMS)
    profiles = context.tx.list_instance_profiles(
        context.account_id,
        params.get("PathPrefix", "/"),
        decode_marker(params.get("Marker")),
        limit + 1,
    )
    return _profile_page(context, profiles, limit)


@registry.action(
    "iam",
    "ListInstanceProfilesForRole",
    struct(Field("RoleName", ROLE_NAME, required=True), *PAGING),
    resource=role_resource,
)
def list_instance_profiles_for_role(context: Context, params: dict[str, Any]) -> Result:
    role = require_role(context, params["RoleName"])
    limit = params.get("MaxItems", DEFAULT_MAX_ITEMS)
    profiles = context.tx.list_instance_profiles_for_role(
        role.role_id, decode_marker(params.get("Marker")), limit + 1
    )
    return _profile_page(context, profiles, limit)


def _profile_page(context: Context, profiles: list[InstanceProfile], limit: int) -> Result:
    shown = profiles[:limit]
    return {
        "InstanceProfiles": [
            instance_profile_shape(context, profile, with_tags=False) for profile in shown
        ],
        **page_fields(shown, len(profiles) > limit, shown[-1].name.lower() if shown else None),
    }


@registry.action("iam", "DeleteInstanceProfile", struct(PROFILE), resource=profile_resource)
def delete_instance_profile(context: Context, params: dict[str, Any]) -> Result:
    profile = require_instance_profile(context, params["InstanceProfileName"])
    if profile.role_id is not None:
        raise DeleteConflict("Cannot delete entity, must remove roles from instance profile first.")
    if context.tx.count_instances_with_profile(profile.profile_id):
        raise DeleteConflict(
            "Cannot delete entity, instances still use this instance profile;"
            " disassociate it or terminate them first."
        )
    context.tx.delete_instance_profile(profile.profile_id)
    return None


@registry.action(
    "iam",
    "AddRoleToInstanceProfile",
    struct(PROFILE, Field("RoleName", ROLE_NAME, required=True)),
    resource=profile_resource,
)
def add_role_to_instance_profile(context: Context, params: dict[str, Any]) -> Result:
    profile = require_instance_profile(context, params["InstanceProfileName"])
    role = require_role(context, params["RoleName"])
    # Whoever puts a role in a profile hands it to instances: IAM asks for iam:PassRole on it.
    authorize(context, "iam:PassRole", role.arn)
    if profile.role_id is not None:
        raise LimitExceeded("Cannot exceed quota for InstanceSessionsPerInstanceProfile: 1")
    context.tx.set_instance_profile_role(profile.profile_id, role.role_id)
    return None


@registry.action(
    "iam",
    "RemoveRoleFromInstanceProfile",
    struct(PROFILE, Field("RoleName", ROLE_NAME, required=True)),
    resource=profile_resource,
)
def remove_role_from_instance_profile(context: Context, params: dict[str, Any]) -> Result:
    profile = require_instance_profile(context, params["InstanceProfileName"])
    role = require_role(context, params["RoleName"])
    if profile.role_id != role.role_id:
        raise NoSuchEntity(
            f"The role with name {role.name} is not in instance profile {profile.name}."
        )
    context.tx.set_instance_profile_role(profile.profile_id, None)
    return None


@registry.action(
    "iam",
    "TagInstanceProfile",
    struct(PROFILE, Field("Tags", TAG_LIST, required=True)),
    resource=profile_resource,
)
def tag_instance_profile(context: Context, params: dict[str, Any]) -> Result:
    profile = require_instance_profile(context, params["InstanceProfileName"])
    add_tags(context, profile.profile_id, tags_from_params(params))
    return None


@registry.action(
    "iam",
    "UntagInstanceProfile",
    struct(PROFILE, Field("TagKeys", TAG_KEY_LIST, required=True)),
    resource=profile_resource,
)
def untag_instance_profile(context: Context, params: dict[str, Any]) -> Result:
    profile = require_instance_profile(context, params["InstanceProfileName"])
    context.tx.delete_tags(profile.profile_id, params["TagKeys"])
    return None


@registry.action(
    "iam", "ListInstanceProfileTags", struct(PROFILE, *PAGING), resource=profile_resource
)
def list_instance_profile_tags(context: Context, params: dict[str, Any]) -> Result:
    profile = require_instance_profile(context, params["InstanceProfileName"])
    tags, paging = page_in_memory(
        context.tx.get_tags(profile.profile_id), lambda tag: tag.key.lower(), params
    )
    return {"Tags": tag_list(tags), **paging}
