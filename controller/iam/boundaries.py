"""Permissions boundaries of roles and users (issue 15), and the iam:PermissionsBoundary key.

A boundary is a managed policy, customer-managed in the account or AWS-managed from the
operator's catalog (`controller.awsmanaged`), whose default version caps what the identity's
own policies can allow, for the identity's calls and for its sessions' (the intersection is
decided in `controller.permissions.decide`). Policies that delegate administration read the
boundary through the condition key ``iam:PermissionsBoundary``: on the actions that set one it
is the requested boundary, on the other actions on a role or user it is the target's current
boundary (AWS's service authorization reference for IAM), and it is absent when there is none.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from controller import awsmanaged
from controller.actions import Context, Result
from controller.errors import InvalidInput, NoSuchEntity
from controller.iam import registry
from controller.iam.common import require_role, require_user, role_resource, user_resource
from controller.iam.shapes import ARN, ROLE_NAME, USER_NAME, Field, struct

KEY = "iam:PermissionsBoundary"

#: A managed policy's ARN: the account's (12 digits) or AWS's, a path, a name.
_POLICY_ARN = re.compile(r"arn:aws:iam::(aws|[0-9]{12}):policy(/|/[\x21-\x7e]*/)[\w+=,.@-]{1,128}")

Keys = dict[str, tuple[str, ...]]


def check_boundary(context: Context, arn: str) -> str:
    """``arn`` if it names a policy that can be a boundary in this account: one of its
    customer-managed policies, or an AWS-managed policy the operator provides. IAM's errors
    otherwise: InvalidInput for what is not a policy ARN, NoSuchEntity for one that names none."""
    match = _POLICY_ARN.fullmatch(arn)
    if match is None:
        raise InvalidInput(f"ARN {arn} is not valid.")
    if match.group(1) == "aws":
        found = awsmanaged.catalog.get(arn) is not None
    else:
        policy = None
        if match.group(1) == context.account_id:
            policy = context.tx.get_managed_policy(context.account_id, arn.rpartition("/")[2])
        found = policy is not None and policy.arn == arn
    if not found:
        raise NoSuchEntity(f"Scope ARN: {arn} does not exist or is not attachable.")
    return arn


# The key's value, by action (`Registry.action(condition_keys=...)`).


def requested_boundary(context: Context, params: dict[str, Any]) -> Keys:
    """The boundary the request sets (CreateRole, CreateUser, Put*PermissionsBoundary)."""
    arn = params.get("PermissionsBoundary")
    return {KEY: (arn,)} if arn else {}


def role_boundary(context: Context, params: dict[str, Any]) -> Keys:
    """The named role's current boundary (its policies, its boundary's removal, GetRole…)."""
    role = context.tx.get_role(context.account_id, params["RoleName"])
    if role is None or role.permissions_boundary is None:
        return {}
    return {KEY: (role.permissions_boundary,)}


def user_boundary(context: Context, params: dict[str, Any]) -> Keys:
    """The named user's current boundary (its policies, its boundary's removal)."""
    name = params.get("UserName")
    user = context.tx.get_user(context.account_id, name) if name else None
    if user is None or user.permissions_boundary is None:
        return {}
    return {KEY: (user.permissions_boundary,)}


# Actions


@registry.action(
    "iam",
    "PutRolePermissionsBoundary",
    struct(
        Field("RoleName", ROLE_NAME, required=True),
        Field("PermissionsBoundary", ARN, required=True),
    ),
    resource=role_resource,
    condition_keys=requested_boundary,
)
def put_role_permissions_boundary(context: Context, params: dict[str, Any]) -> Result:
    role = require_role(context, params["RoleName"])
    arn = check_boundary(context, params["PermissionsBoundary"])
    context.tx.update_role(replace(role, permissions_boundary=arn))
    return None


@registry.action(
    "iam",
    "DeleteRolePermissionsBoundary",
    struct(Field("RoleName", ROLE_NAME, required=True)),
    resource=role_resource,
    condition_keys=role_boundary,
)
def delete_role_permissions_boundary(context: Context, params: dict[str, Any]) -> Result:
    role = require_role(context, params["RoleName"])
    if role.permissions_boundary is not None:
        context.tx.update_role(replace(role, permissions_boundary=None))
    return None


@registry.action(
    "iam",
    "PutUserPermissionsBoundary",
    struct(
        Field("UserName", USER_NAME, required=True),
        Field("PermissionsBoundary", ARN, required=True),
    ),
    resource=user_resource,
    condition_keys=requested_boundary,
)
def put_user_permissions_boundary(context: Context, params: dict[str, Any]) -> Result:
    user = require_user(context, params["UserName"])
    arn = check_boundary(context, params["PermissionsBoundary"])
    context.tx.set_user_permissions_boundary(user.user_id, arn)
    return None


@registry.action(
    "iam",
    "DeleteUserPermissionsBoundary",
    struct(Field("UserName", USER_NAME, required=True)),
    resource=user_resource,
    condition_keys=user_boundary,
)
def delete_user_permissions_boundary(context: Context, params: dict[str, Any]) -> Result:
    user = require_user(context, params["UserName"])
    if user.permissions_boundary is not None:
        context.tx.set_user_permissions_boundary(user.user_id, None)
    return None
