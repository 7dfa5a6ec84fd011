"""IAM roles and their inline policies."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from controller.actions import Context, Result
from controller.errors import (
    DeleteConflict,
    EntityAlreadyExists,
    NoSuchEntity,
)
from controller.iam import registry
from controller.iam.boundaries import check_boundary, requested_boundary, role_boundary
from controller.iam.common import (
    DEFAULT_MAX_ITEMS,
    add_tags,
    check_inline_policy,
    check_trust_policy,
    decode_marker,
    inline_policy,
    inline_policy_names,
    new_id,
    now_text,
    page_fields,
    page_in_memory,
    require_role,
    role_resource,
    role_shape,
    tag_list,
    tags_from_params,
)
from controller.iam.shapes import (
    ARN,
    MAX_SESSION_DURATION,
    PAGING,
    PATH,
    PATH_PREFIX,
    POLICY_DOCUMENT,
    POLICY_NAME,
    ROLE_DESCRIPTION,
    ROLE_NAME,
    TAG_KEY_LIST,
    TAG_LIST,
    Field,
    struct,
)
from controller.store.base import Conflict
from controller.store.records import Role, RolePolicy

DEFAULT_MAX_SESSION_DURATION = 3600


@registry.action(
    "iam",
    "CreateRole",
    struct(
        Field("Path", PATH),
        Field("RoleName", ROLE_NAME, required=True),
        Field("AssumeRolePolicyDocument", POLICY_DOCUMENT, required=True),
        Field("Description", ROLE_DESCRIPTION),
        Field("MaxSessionDuration", MAX_SESSION_DURATION),
        Field("PermissionsBoundary", ARN),
        Field("Tags", TAG_LIST),
    ),
    resource=role_resource,
    condition_keys=requested_boundary,
)
def create_role(context: Context, params: dict[str, Any]) -> Result:
    name = params["RoleName"]
    check_trust_policy(params["AssumeRolePolicyDocument"])
    tags = tags_from_params(params)
    if context.tx.get_role(context.account_id, name) is not None:
        raise EntityAlreadyExists(f"Role with name {name} already exists.")
    boundary = params.get("PermissionsBoundary")
    if boundary is not None:
        check_boundary(context, boundary)
    role = Role(
        role_id=new_id("AROA"),
        account_id=context.account_id,
        name=name,
        path=params.get("Path", "/"),
        assume_role_policy=params["AssumeRolePolicyDocument"],
        description=params.get("Description"),
        max_session_duration=params.get("MaxSessionDuration", DEFAULT_MAX_SESSION_DURATION),
        created=now_text(context),
        permissions_boundary=boundary,
    )
    try:
        context.tx.insert_role(role)
    except Conflict as error:
        raise EntityAlreadyExists(f"Role with name {name} already exists.") from error
    if tags:
        add_tags(context, role.role_id, tags)
    return {"Role": role_shape(context, role, with_tags=True)}


@registry.action(
    "iam",
    "GetRole",
    struct(Field("RoleName", ROLE_NAME, required=True)),
    resource=role_resource,
    condition_keys=role_boundary,
)
def get_role(context: Context, params: dict[str, Any]) -> Result:
    role = require_role(context, params["RoleName"])
    return {"Role": {**role_shape(context, role, with_tags=True), **last_used_shape(role)}}


def last_used_shape(role: Role) -> dict[str, Any]:
    """GetRole's RoleLastUsed: always there, empty until the role's first use is written
    (`controller.lastused`); ListRoles leaves it out, as IAM does."""
    used: dict[str, Any] = {}
    if role.last_used is not None:
        used["LastUsedDate"] = role.last_used
        used["Region"] = role.last_used_region
    return {"RoleLastUsed": used}


@registry.action("iam", "ListRoles", struct(Field("PathPrefix", PATH_PREFIX), *PAGING))
def list_roles(context: Context, params: dict[str, Any]) -> Result:
    limit = params.get("MaxItems", DEFAULT_MAX_ITEMS)
    roles = context.tx.list_roles(
        context.account_id,
        params.get("PathPrefix", "/"),
        decode_marker(params.get("Marker")),
        limit + 1,
    )
    shown = roles[:limit]
    return {
        "Roles": [role_shape(context, role, with_tags=False) for role in shown],
        **page_fields(shown, len(roles) > limit, shown[-1].name.lower() if shown else None),
    }


@registry.action(
    "iam",
    "UpdateRole",
    struct(
        Field("RoleName", ROLE_NAME, required=True),
        Field("Description", ROLE_DESCRIPTION),
        Field("MaxSessionDuration", MAX_SESSION_DURATION),
    ),
    resource=role_resource,
    condition_keys=role_boundary,
)
def update_role(context: Context, params: dict[str, Any]) -> Result:
    role = require_role(context, params["RoleName"])
    changes: dict[str, Any] = {}
    if "Description" in params:
        changes["description"] = params["Description"]
    if "MaxSessionDuration" in params:
        changes["max_session_duration"] = params["MaxSessionDuration"]
    context.tx.update_role(replace(role, **changes))
    return {}


@registry.action(
    "iam",
    "UpdateRoleDescription",
    struct(
        Field("RoleName", ROLE_NAME, required=True),
        Field("Description", ROLE_DESCRIPTION, required=True),
    ),
    resource=role_resource,
    condition_keys=role_boundary,
)
def update_role_description(context: Context, params: dict[str, Any]) -> Result:
    role = replace(require_role(context, params["RoleName"]), description=params["Description"])
    context.tx.update_role(role)
    return {"Role": role_shape(context, role, with_tags=True)}


@registry.action(
    "iam",
    "UpdateAssumeRolePolicy",
    struct(
        Field("RoleName", ROLE_NAME, required=True),
        Field("PolicyDocument", POLICY_DOCUMENT, required=True),
    ),
    resource=role_resource,
    condition_keys=role_boundary,
)
def update_assume_role_policy(context: Context, params: dict[str, Any]) -> Result:
    role = require_role(context, params["RoleName"])
    check_trust_policy(params["PolicyDocument"])
    context.tx.update_role(replace(role, assume_role_policy=params["PolicyDocument"]))
    return None


@registry.action(
    "iam",
    "DeleteRole",
    struct(Field("RoleName", ROLE_NAME, required=True)),
    resource=role_resource,
    condition_keys=role_boundary,
)
def delete_role(context: Context, params: dict[str, Any]) -> Result:
    role = require_role(context, params["RoleName"])
    if context.tx.list_instance_profiles_for_role(role.role_id, None, 1):
        raise DeleteConflict("Cannot delete entity, must remove roles from instance profile first.")
    if context.tx.list_role_policies(role.role_id):
        raise DeleteConflict("Cannot delete entity, must delete policies first.")
    if context.tx.list_attached_policies(role.role_id):
        raise DeleteConflict("Cannot delete entity, must detach all policies first.")
    context.tx.delete_role(role.role_id)
    return None


# Tags


@registry.action(
    "iam",
    "TagRole",
    struct(Field("RoleName", ROLE_NAME, required=True), Field("Tags", TAG_LIST, required=True)),
    resource=role_resource,
)
def tag_role(context: Context, params: dict[str, Any]) -> Result:
    role = require_role(context, params["RoleName"])
    add_tags(context, role.role_id, tags_from_params(params))
    return None


@registry.action(
    "iam",
    "UntagRole",
    struct(
        Field("RoleName", ROLE_NAME, required=True),
        Field("TagKeys", TAG_KEY_LIST, required=True),
    ),
    resource=role_resource,
)
def untag_role(context: Context, params: dict[str, Any]) -> Result:
    role = require_role(context, params["RoleName"])
    context.tx.delete_tags(role.role_id, params["TagKeys"])
    return None


@registry.action(
    "iam",
    "ListRoleTags",
    struct(Field("RoleName", ROLE_NAME, required=True), *PAGING),
    resource=role_resource,
)
def list_role_tags(context: Context, params: dict[str, Any]) -> Result:
    role = require_role(context, params["RoleName"])
    tags, paging = page_in_memory(
        context.tx.get_tags(role.role_id), lambda tag: tag.key.lower(), params
    )
    return {"Tags": tag_list(tags), **paging}


# Inline policies


@registry.action(
    "iam",
    "PutRolePolicy",
    struct(
        Field("RoleName", ROLE_NAME, required=True),
        Field("PolicyName", POLICY_NAME, required=True),
        Field("PolicyDocument", POLICY_DOCUMENT, required=True),
    ),
    resource=role_resource,
    condition_keys=role_boundary,
)
def put_role_policy(context: Context, params: dict[str, Any]) -> Result:
    role = require_role(context, params["RoleName"])
    name, document = params["PolicyName"], params["PolicyDocument"]
    existing = context.tx.list_role_policies(role.role_id)
    check_inline_policy(existing, name, document, f"role {role.name}")
    context.tx.put_role_policy(RolePolicy(role.role_id, name, document))
    return None


@registry.action(
    "iam",
    "GetRolePolicy",
    struct(
        Field("RoleName", ROLE_NAME, required=True),
        Field("PolicyName", POLICY_NAME, required=True),
    ),
    resource=role_resource,
)
def get_role_policy(context: Context, params: dict[str, Any]) -> Result:
    role = require_role(context, params["RoleName"])
    policy = _require_policy(context, role, params["PolicyName"])
    return inline_policy("RoleName", role.name, policy)


@registry.action(
    "iam",
    "ListRolePolicies",
    struct(Field("RoleName", ROLE_NAME, required=True), *PAGING),
    resource=role_resource,
)
def list_role_policies(context: Context, params: dict[str, Any]) -> Result:
    role = require_role(context, params["RoleName"])
    return inline_policy_names(context.tx.list_role_policies(role.role_id), params)


@registry.action(
    "iam",
    "DeleteRolePolicy",
    struct(
        Field("RoleName", ROLE_NAME, required=True),
        Field("PolicyName", POLICY_NAME, required=True),
    ),
    resource=role_resource,
    condition_keys=role_boundary,
)
def delete_role_policy(context: Context, params: dict[str, Any]) -> Result:
    role = require_role(context, params["RoleName"])
    policy = _require_policy(context, role, params["PolicyName"])
    context.tx.delete_role_policy(role.role_id, policy.name)
    return None


def _require_policy(context: Context, role: Role, name: str) -> RolePolicy:
    policy = context.tx.get_role_policy(role.role_id, name)
    if policy is None:
        raise NoSuchEntity(f"The role policy with name {name} cannot be found.")
    return policy
