"""IAM groups: their members and inline policies (issue 15).

A user's permissions include its groups' inline policies and the managed policies attached to
them (`controller.authorize.gather_caller`); the actions here only keep the records. Messages
are IAM's own, which infrastructure-as-code tools match on.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from controller.actions import Context, Result
from controller.errors import DeleteConflict, EntityAlreadyExists, LimitExceeded, NoSuchEntity
from controller.iam import registry
from controller.iam.common import (
    DEFAULT_MAX_ITEMS,
    check_identity_policy,
    decode_marker,
    inline_policy,
    inline_policy_names,
    new_id,
    now_text,
    page_fields,
    page_in_memory,
    user_resource,
)
from controller.iam.shapes import (
    EXISTING_USER_NAME,
    GROUP_NAME,
    PAGING,
    PATH,
    PATH_PREFIX,
    POLICY_DOCUMENT,
    POLICY_NAME,
    Field,
    struct,
)
from controller.iam.users import require_user, user_shape
from controller.policy.document import policy_size
from controller.store.base import Conflict
from controller.store.records import Group, GroupPolicy

#: IAM's default quotas: groups a user may be in, and the characters (whitespace not counted)
#: of all of a group's inline policies together.
GROUPS_PER_USER = 10
GROUP_POLICIES_QUOTA = 5120


def require_group(context: Context, name: str) -> Group:
    group = context.tx.get_group(context.account_id, name)
    if group is None:
        raise NoSuchEntity(f"The group with name {name} cannot be found.")
    return group


def group_shape(group: Group) -> dict[str, Any]:
    return {
        "Path": group.path,
        "GroupName": group.name,
        "GroupId": group.group_id,
        "Arn": group.arn,
        "CreateDate": group.created,
    }


def group_resource(context: Context, params: dict[str, Any]) -> str:
    """The named group by its stored ARN; a name that names no group yet as the request spells
    it (CreateGroup's Path), like `controller.iam.common.role_resource`."""
    name = params["GroupName"]
    group = context.tx.get_group(context.account_id, name)
    if group is not None:
        return group.arn
    return f"arn:aws:iam::{context.account_id}:group{params.get('Path', '/')}{name}"


def _renamed_resources(context: Context, params: dict[str, Any]) -> tuple[str, ...]:
    """UpdateGroup acts on the group under its old name and path and under its new ones: the
    caller must be allowed both, as IAM requires."""
    old = group_resource(context, params)
    group = context.tx.get_group(context.account_id, params["GroupName"])
    name = params.get("NewGroupName") or (group.name if group else params["GroupName"])
    path = params.get("NewPath") or (group.path if group else "/")
    new = f"arn:aws:iam::{context.account_id}:group{path}{name}"
    return (old,) if new == old else (old, new)


def _already_exists(name: str) -> EntityAlreadyExists:
    return EntityAlreadyExists(f"Group with name {name} already exists.")


@registry.action(
    "iam",
    "CreateGroup",
    struct(Field("Path", PATH), Field("GroupName", GROUP_NAME, required=True)),
    resource=group_resource,
)
def create_group(context: Context, params: dict[str, Any]) -> Result:
    name = params["GroupName"]
    if context.tx.get_group(context.account_id, name) is not None:
        raise _already_exists(name)
    group = Group(
        new_id("AGPA"), context.account_id, name, params.get("Path", "/"), now_text(context)
    )
    try:
        context.tx.insert_group(group)
    except Conflict as error:
        raise _already_exists(name) from error
    return {"Group": group_shape(group)}


@registry.action(
    "iam",
    "GetGroup",
    struct(Field("GroupName", GROUP_NAME, required=True), *PAGING),
    resource=group_resource,
)
def get_group(context: Context, params: dict[str, Any]) -> Result:
    group = require_group(context, params["GroupName"])
    limit = params.get("MaxItems", DEFAULT_MAX_ITEMS)
    users = context.tx.list_group_members(
        group.group_id, decode_marker(params.get("Marker")), limit + 1
    )
    shown = users[:limit]
    return {
        "Group": group_shape(group),
        "Users": [user_shape(context, user, with_tags=False) for user in shown],
        **page_fields(shown, len(users) > limit, shown[-1].name.lower() if shown else None),
    }


@registry.action("iam", "ListGroups", struct(Field("PathPrefix", PATH_PREFIX), *PAGING))
def list_groups(context: Context, params: dict[str, Any]) -> Result:
    limit = params.get("MaxItems", DEFAULT_MAX_ITEMS)
    groups = context.tx.list_groups(
        context.account_id,
        params.get("PathPrefix", "/"),
        decode_marker(params.get("Marker")),
        limit + 1,
    )
    shown = groups[:limit]
    return {
        "Groups": [group_shape(group) for group in shown],
        **page_fields(shown, len(groups) > limit, shown[-1].name.lower() if shown else None),
    }


@registry.action(
    "iam",
    "UpdateGroup",
    struct(
        Field("GroupName", GROUP_NAME, required=True),
        Field("NewPath", PATH),
        Field("NewGroupName", GROUP_NAME),
    ),
    resource=_renamed_resources,
)
def update_group(context: Context, params: dict[str, Any]) -> Result:
    group = require_group(context, params["GroupName"])
    name = params.get("NewGroupName", group.name)
    other = context.tx.get_group(context.account_id, name)
    if other is not None and other.group_id != group.group_id:
        raise _already_exists(name)
    try:
        context.tx.update_group(replace(group, name=name, path=params.get("NewPath", group.path)))
    except Conflict as error:
        raise _already_exists(name) from error
    return None


@registry.action(
    "iam",
    "DeleteGroup",
    struct(Field("GroupName", GROUP_NAME, required=True)),
    resource=group_resource,
)
def delete_group(context: Context, params: dict[str, Any]) -> Result:
    group = require_group(context, params["GroupName"])
    if context.tx.count_group_members(group.group_id):
        raise DeleteConflict("Cannot delete entity, must remove users from group first.")
    if context.tx.list_group_policies(group.group_id):
        raise DeleteConflict("Cannot delete entity, must delete policies first.")
    if context.tx.list_attached_policies(group.group_id):
        raise DeleteConflict("Cannot delete entity, must detach all policies first.")
    context.tx.delete_group(group.group_id)
    return None


# Members

MEMBERSHIP = struct(
    Field("GroupName", GROUP_NAME, required=True),
    Field("UserName", EXISTING_USER_NAME, required=True),
)


@registry.action("iam", "AddUserToGroup", MEMBERSHIP, resource=group_resource)
def add_user_to_group(context: Context, params: dict[str, Any]) -> Result:
    group = require_group(context, params["GroupName"])
    user = require_user(context, params["UserName"])
    groups = context.tx.list_groups_for_user(user.user_id)
    if any(each.group_id == group.group_id for each in groups):
        return None  # a member already: IAM answers success and changes nothing
    if len(groups) >= GROUPS_PER_USER:
        raise LimitExceeded(f"Cannot exceed quota for GroupsPerUser: {GROUPS_PER_USER}")
    context.tx.add_group_member(group.group_id, user.user_id)
    return None


@registry.action("iam", "RemoveUserFromGroup", MEMBERSHIP, resource=group_resource)
def remove_user_from_group(context: Context, params: dict[str, Any]) -> Result:
    group = require_group(context, params["GroupName"])
    user = require_user(context, params["UserName"])
    context.tx.remove_group_member(group.group_id, user.user_id)  # not a member: nothing to do
    return None


@registry.action(
    "iam",
    "ListGroupsForUser",
    struct(Field("UserName", EXISTING_USER_NAME, required=True), *PAGING),
    resource=user_resource,
)
def list_groups_for_user(context: Context, params: dict[str, Any]) -> Result:
    user = require_user(context, params["UserName"])
    groups, paging = page_in_memory(
        context.tx.list_groups_for_user(user.user_id), lambda group: group.name.lower(), params
    )
    return {"Groups": [group_shape(group) for group in groups], **paging}


# Inline group policies

GROUP_POLICY = (
    Field("GroupName", GROUP_NAME, required=True),
    Field("PolicyName", POLICY_NAME, required=True),
)


def check_group_policy(existing: list[GroupPolicy], name: str, document: str, group: str) -> None:
    """A new inline policy `name` for `group`: well formed, and all of the group's inline
    policies within IAM's quota for a group (the one it replaces not counted)."""
    check_identity_policy(document)
    others = sum(
        policy_size(policy.document) for policy in existing if policy.name.lower() != name.lower()
    )
    if others + policy_size(document) > GROUP_POLICIES_QUOTA:
        raise LimitExceeded(
            f"Maximum policy size of {GROUP_POLICIES_QUOTA} bytes exceeded for group {group}"
        )


def _require_group_policy(context: Context, group: Group, name: str) -> GroupPolicy:
    policy = context.tx.get_group_policy(group.group_id, name)
    if policy is None:
        raise NoSuchEntity(f"The group policy with name {name} cannot be found.")
    return policy


@registry.action(
    "iam",
    "PutGroupPolicy",
    struct(*GROUP_POLICY, Field("PolicyDocument", POLICY_DOCUMENT, required=True)),
    resource=group_resource,
)
def put_group_policy(context: Context, params: dict[str, Any]) -> Result:
    group = require_group(context, params["GroupName"])
    name, document = params["PolicyName"], params["PolicyDocument"]
    check_group_policy(context.tx.list_group_policies(group.group_id), name, document, group.name)
    context.tx.put_group_policy(GroupPolicy(group.group_id, name, document))
    return None


@registry.action("iam", "GetGroupPolicy", struct(*GROUP_POLICY), resource=group_resource)
def get_group_policy(context: Context, params: dict[str, Any]) -> Result:
    group = require_group(context, params["GroupName"])
    policy = _require_group_policy(context, group, params["PolicyName"])
    return inline_policy("GroupName", group.name, policy)


@registry.action(
    "iam",
    "ListGroupPolicies",
    struct(Field("GroupName", GROUP_NAME, required=True), *PAGING),
    resource=group_resource,
)
def list_group_policies(context: Context, params: dict[str, Any]) -> Result:
    group = require_group(context, params["GroupName"])
    return inline_policy_names(context.tx.list_group_policies(group.group_id), params)


@registry.action("iam", "DeleteGroupPolicy", struct(*GROUP_POLICY), resource=group_resource)
def delete_group_policy(context: Context, params: dict[str, Any]) -> Result:
    group = require_group(context, params["GroupName"])
    policy = _require_group_policy(context, group, params["PolicyName"])
    context.tx.delete_group_policy(group.group_id, policy.name)
    return None
