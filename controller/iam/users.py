"""IAM users, their access keys and inline policies: the restricted callers of an account."""

from __future__ import annotations

from typing import Any

from controller.accounts import new_access_key
from controller.actions import Context, Result
from controller.errors import (
    DeleteConflict,
    EntityAlreadyExists,
    InvalidInput,
    LimitExceeded,
    NoSuchEntity,
    ValidationError,
)
from controller.iam import registry
from controller.iam.boundaries import check_boundary, requested_boundary, user_boundary
from controller.iam.common import (
    DEFAULT_MAX_ITEMS,
    add_tags,
    boundary_shape,
    check_inline_policy,
    decode_marker,
    inline_policy,
    inline_policy_names,
    new_id,
    now_text,
    own_user_name,
    page_fields,
    page_in_memory,
    tag_list,
    tags_from_params,
    user_resource,
)

# Defined in common (boundaries needs it too); modules that import it from here still may.
from controller.iam.common import require_user as require_user
from controller.iam.shapes import (
    ACCESS_KEY_ID,
    ACCESS_KEY_STATUS,
    ARN,
    EXISTING_USER_NAME,
    PAGING,
    PATH,
    PATH_PREFIX,
    POLICY_DOCUMENT,
    POLICY_NAME,
    TAG_LIST,
    USER_NAME,
    Field,
    struct,
)
from controller.store.base import Conflict
from controller.store.records import AccessKey, User, UserPolicy

ACCESS_KEYS_PER_USER = 2


def user_shape(context: Context, user: User, *, with_tags: bool) -> dict[str, Any]:
    shape: dict[str, Any] = {
        "Path": user.path,
        "UserName": user.name,
        "UserId": user.user_id,
        "Arn": user.arn,
        "CreateDate": user.created,
    }
    if with_tags and user.permissions_boundary is not None:  # not in ListUsers, as IAM
        shape["PermissionsBoundary"] = boundary_shape(user.permissions_boundary)
    if with_tags:
        tags = context.tx.get_tags(user.user_id)
        if tags:
            shape["Tags"] = tag_list(tags)
    return shape


#: AWS's text when a call that defaults to the caller's own user comes from a role or session.
NON_USER_CREDENTIALS = "Must specify userName when calling with non-User credentials"


def _key_owner(context: Context, params: dict[str, Any]) -> str | None:
    """Whose keys: the named user, else the caller's own user (None: the account's root)."""
    name = params.get("UserName")
    if name is not None:
        return require_user(context, name).name
    if context.caller.kind in ("root", "user"):
        return own_user_name(context)
    raise ValidationError(NON_USER_CREDENTIALS)


def _require_key(context: Context, owner: str | None, access_key_id: str) -> AccessKey:
    key = context.tx.get_access_key(access_key_id)
    if (
        key is None
        or key.account_id != context.account_id
        or (key.user_name or "").lower() != (owner or "").lower()
    ):
        raise NoSuchEntity(f"The Access Key with id {access_key_id} cannot be found.")
    return key


@registry.action(
    "iam",
    "CreateUser",
    struct(
        Field("Path", PATH),
        Field("UserName", USER_NAME, required=True),
        Field("PermissionsBoundary", ARN),
        Field("Tags", TAG_LIST),
    ),
    resource=user_resource,
    condition_keys=requested_boundary,
)
def create_user(context: Context, params: dict[str, Any]) -> Result:
    name = params["UserName"]
    tags = tags_from_params(params)
    if context.tx.get_user(context.account_id, name) is not None:
        raise EntityAlreadyExists(f"User with name {name} already exists.")
    boundary = params.get("PermissionsBoundary")
    if boundary is not None:
        check_boundary(context, boundary)
    user = User(
        new_id("AIDA"),
        context.account_id,
        name,
        params.get("Path", "/"),
        now_text(context),
        permissions_boundary=boundary,
    )
    try:
        context.tx.insert_user(user)
    except Conflict as error:
        raise EntityAlreadyExists(f"User with name {name} already exists.") from error
    if tags:
        add_tags(context, user.user_id, tags)
    return {"User": user_shape(context, user, with_tags=True)}


@registry.action(
    "iam", "GetUser", struct(Field("UserName", EXISTING_USER_NAME)), resource=user_resource
)
def get_user(context: Context, params: dict[str, Any]) -> Result:
    name = params.get("UserName") or own_user_name(context)
    if name is None:
        if context.caller.kind != "root":
            raise ValidationError(NON_USER_CREDENTIALS)
        account = context.tx.get_account(context.account_id)
        return {
            "User": {
                "Path": "/",
                "UserName": "root",  # what IAM answers for the account's root
                "UserId": context.account_id,
                "Arn": context.caller.arn,
                "CreateDate": account.created if account else now_text(context),
            }
        }
    return {"User": user_shape(context, require_user(context, name), with_tags=True)}


@registry.action("iam", "ListUsers", struct(Field("PathPrefix", PATH_PREFIX), *PAGING))
def list_users(context: Context, params: dict[str, Any]) -> Result:
    limit = params.get("MaxItems", DEFAULT_MAX_ITEMS)
    users = context.tx.list_users(
        context.account_id,
        params.get("PathPrefix", "/"),
        decode_marker(params.get("Marker")),
        limit + 1,
    )
    shown = users[:limit]
    return {
        "Users": [user_shape(context, user, with_tags=False) for user in shown],
        **page_fields(shown, len(users) > limit, shown[-1].name.lower() if shown else None),
    }


@registry.action(
    "iam",
    "DeleteUser",
    struct(Field("UserName", EXISTING_USER_NAME, required=True)),
    resource=user_resource,
)
def delete_user(context: Context, params: dict[str, Any]) -> Result:
    user = require_user(context, params["UserName"])
    if context.tx.list_access_keys(context.account_id, user.name):
        raise DeleteConflict("Cannot delete entity, must delete access keys first.")
    if context.tx.list_groups_for_user(user.user_id):
        raise DeleteConflict("Cannot delete entity, must remove user from all groups first.")
    if context.tx.list_user_policies(user.user_id):
        raise DeleteConflict("Cannot delete entity, must delete policies first.")
    if context.tx.list_attached_policies(user.user_id):
        raise DeleteConflict("Cannot delete entity, must detach all policies first.")
    context.tx.delete_user(user.user_id)
    return None


# Access keys


@registry.action(
    "iam",
    "CreateAccessKey",
    struct(Field("UserName", EXISTING_USER_NAME)),
    resource=user_resource,
)
def create_access_key(context: Context, params: dict[str, Any]) -> Result:
    owner = _key_owner(context, params)
    if len(context.tx.list_access_keys(context.account_id, owner)) >= ACCESS_KEYS_PER_USER:
        raise LimitExceeded(f"Cannot exceed quota for AccessKeysPerUser: {ACCESS_KEYS_PER_USER}")
    key = new_access_key(context.account_id, owner, now_text(context))
    context.tx.insert_access_key(key)
    return {
        "AccessKey": {
            "UserName": owner or "root",
            "AccessKeyId": key.access_key_id,
            "Status": key.status,
            "SecretAccessKey": key.secret_access_key,
            "CreateDate": key.created,
        }
    }


@registry.action(
    "iam",
    "ListAccessKeys",
    struct(Field("UserName", EXISTING_USER_NAME), *PAGING),
    resource=user_resource,
)
def list_access_keys(context: Context, params: dict[str, Any]) -> Result:
    owner = _key_owner(context, params)
    keys, paging = page_in_memory(
        context.tx.list_access_keys(context.account_id, owner),
        lambda key: key.access_key_id,
        params,
    )
    return {
        "AccessKeyMetadata": [
            {
                "UserName": owner or "root",
                "AccessKeyId": key.access_key_id,
                "Status": key.status,
                "CreateDate": key.created,
            }
            for key in keys
        ],
        **paging,
    }


@registry.action(
    "iam",
    "UpdateAccessKey",
    struct(
        Field("UserName", EXISTING_USER_NAME),
        Field("AccessKeyId", ACCESS_KEY_ID, required=True),
        Field("Status", ACCESS_KEY_STATUS, required=True),
    ),
    resource=user_resource,
)
def update_access_key(context: Context, params: dict[str, Any]) -> Result:
    key = _require_key(context, _key_owner(context, params), params["AccessKeyId"])
    if params["Status"] == "Expired":
        raise InvalidInput("Status Expired cannot be set; use Inactive.")
    context.tx.set_access_key_status(key.access_key_id, params["Status"])
    return None


@registry.action(
    "iam",
    "DeleteAccessKey",
    struct(
        Field("UserName", EXISTING_USER_NAME),
        Field("AccessKeyId", ACCESS_KEY_ID, required=True),
    ),
    resource=user_resource,
)
def delete_access_key(context: Context, params: dict[str, Any]) -> Result:
    key = _require_key(context, _key_owner(context, params), params["AccessKeyId"])
    context.tx.delete_access_key(key.access_key_id)
    return None


# Inline user policies

USER_POLICY = (
    Field("UserName", EXISTING_USER_NAME, required=True),
    Field("PolicyName", POLICY_NAME, required=True),
)


@registry.action(
    "iam",
    "PutUserPolicy",
    struct(*USER_POLICY, Field("PolicyDocument", POLICY_DOCUMENT, required=True)),
    resource=user_resource,
    condition_keys=user_boundary,
)
def put_user_policy(context: Context, params: dict[str, Any]) -> Result:
    user = require_user(context, params["UserName"])
    name, document = params["PolicyName"], params["PolicyDocument"]
    existing = context.tx.list_user_policies(user.user_id)
    check_inline_policy(existing, name, document, f"user {user.name}")
    context.tx.put_user_policy(UserPolicy(user.user_id, name, document))
    return None


def _require_user_policy(context: Context, user: User, name: str) -> UserPolicy:
    policy = context.tx.get_user_policy(user.user_id, name)
    if policy is None:
        raise NoSuchEntity(f"The user policy with name {name} cannot be found.")
    return policy


@registry.action("iam", "GetUserPolicy", struct(*USER_POLICY), resource=user_resource)
def get_user_policy(context: Context, params: dict[str, Any]) -> Result:
    user = require_user(context, params["UserName"])
    policy = _require_user_policy(context, user, params["PolicyName"])
    return inline_policy("UserName", user.name, policy)


@registry.action(
    "iam",
    "ListUserPolicies",
    struct(Field("UserName", EXISTING_USER_NAME, required=True), *PAGING),
    resource=user_resource,
)
def list_user_policies(context: Context, params: dict[str, Any]) -> Result:
    user = require_user(context, params["UserName"])
    return inline_policy_names(context.tx.list_user_policies(user.user_id), params)


@registry.action(
    "iam",
    "DeleteUserPolicy",
    struct(*USER_POLICY),
    resource=user_resource,
    condition_keys=user_boundary,
)
def delete_user_policy(context: Context, params: dict[str, Any]) -> Result:
    user = require_user(context, params["UserName"])
    policy = _require_user_policy(context, user, params["PolicyName"])
    context.tx.delete_user_policy(user.user_id, policy.name)
    return None
