"""What IAM's actions share: ids, paging markers, tags, quotas, the Role and profile shapes."""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from controller.actions import Context
from controller.errors import InvalidInput, LimitExceeded, NoSuchEntity
from controller.policy.document import PolicyKind, parse_policy, policy_size
from controller.query import check_unique
from controller.store.records import (
    GroupPolicy,
    InstanceProfile,
    Role,
    RolePolicy,
    Tag,
    User,
    UserPolicy,
)
from controller.xmlout import format_time

_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
MAX_TAGS = 50
TRUST_POLICY_QUOTA = 2048
ROLE_POLICIES_QUOTA = 10240
DEFAULT_MAX_ITEMS = 100


def new_id(prefix: str) -> str:
    """An IAM unique id: a 4-letter kind prefix and 17 random characters (21 in all)."""
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(17))


def now_text(context: Context) -> str:
    return format_time(context.now)


# Paging: a marker is the last returned name (lower-cased), wrapped so callers treat it as opaque.


def encode_marker(last: str) -> str:
    return base64.urlsafe_b64encode(f"v1:{last}".encode()).decode("ascii")


def decode_marker(marker: str | None) -> str | None:
    if marker is None:
        return None
    try:
        text = base64.urlsafe_b64decode(marker.encode("ascii")).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        text = ""
    if not text.startswith("v1:"):
        raise InvalidInput("Invalid Marker: it was not returned by a previous call of this action.")
    return text[3:]


def page_fields(items: list[Any], more: bool, last_key: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"IsTruncated": more}
    if more and last_key is not None:
        fields["Marker"] = encode_marker(last_key)
    return fields


def page_in_memory(
    items: Sequence[Any], key: Any, params: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """Paging for short lists that are read whole (tags, inline policy names)."""
    after = decode_marker(params.get("Marker"))
    limit = params.get("MaxItems", DEFAULT_MAX_ITEMS)
    remaining = [item for item in sorted(items, key=key) if after is None or key(item) > after]
    chosen = remaining[:limit]
    more = len(remaining) > limit
    return chosen, page_fields(chosen, more, key(chosen[-1]) if chosen else None)


# Documents


def check_trust_policy(document: str) -> None:
    parse_policy(document, PolicyKind.TRUST)
    if policy_size(document) > TRUST_POLICY_QUOTA:
        raise LimitExceeded(f"Cannot exceed quota for ACLSizePerRole: {TRUST_POLICY_QUOTA}")


def check_identity_policy(document: str) -> None:
    parse_policy(document, PolicyKind.IDENTITY)


def check_inline_policy(
    existing: Sequence[RolePolicy | UserPolicy], name: str, document: str, owner: str
) -> None:
    """A new inline policy `name` for `owner` ("role x", "user y"): well formed, and all of the
    owner's inline policies within the quota (the one it replaces not counted).

    IAM's quota for a user's is 2,048; RoleCall gives users what it gives roles."""
    check_identity_policy(document)
    others = sum(
        policy_size(policy.document) for policy in existing if policy.name.lower() != name.lower()
    )
    if others + policy_size(document) > ROLE_POLICIES_QUOTA:
        raise LimitExceeded(
            f"Maximum policy size of {ROLE_POLICIES_QUOTA} bytes exceeded for {owner}"
        )


def encode_document(document: str) -> str:
    """IAM returns policy documents URL-encoded; SDKs decode them."""
    return quote(document, safe="")


# Tags


def tags_from_params(params: dict[str, Any]) -> list[Tag]:
    tags = [Tag(item["Key"], item["Value"]) for item in params.get("Tags", [])]
    check_unique([tag.key for tag in tags], "tag key")
    return tags


def add_tags(context: Context, entity_id: str, tags: list[Tag]) -> None:
    existing = {tag.key.lower() for tag in context.tx.get_tags(entity_id)}
    added = {tag.key.lower() for tag in tags} - existing
    if len(existing) + len(added) > MAX_TAGS:
        raise LimitExceeded(
            f"The number of tags has reached the maximum limit of {MAX_TAGS} per entity."
        )
    context.tx.put_tags(entity_id, tags)


def tag_list(tags: Sequence[Tag]) -> list[dict[str, str]]:
    return [{"Key": tag.key, "Value": tag.value} for tag in tags]


# Entities


def require_role(context: Context, name: str) -> Role:
    role = context.tx.get_role(context.account_id, name)
    if role is None:
        raise NoSuchEntity(f"The role with name {name} cannot be found.")
    return role


def require_user(context: Context, name: str) -> User:
    user = context.tx.get_user(context.account_id, name)
    if user is None:
        raise NoSuchEntity(f"The user with name {name} cannot be found.")
    return user


def require_instance_profile(context: Context, name: str) -> InstanceProfile:
    profile = context.tx.get_instance_profile(context.account_id, name)
    if profile is None:
        raise NoSuchEntity(f"Instance Profile {name} cannot be found.")
    return profile


def role_shape(context: Context, role: Role, *, with_tags: bool) -> dict[str, Any]:
    """A Role as IAM returns it (tags only where IAM includes them: Get and Create)."""
    shape: dict[str, Any] = {
        "Path": role.path,
        "RoleName": role.name,
        "RoleId": role.role_id,
        "Arn": role.arn,
        "CreateDate": role.created,
        "AssumeRolePolicyDocument": encode_document(role.assume_role_policy),
        "Description": role.description,
        "MaxSessionDuration": role.max_session_duration,
    }
    if with_tags and role.permissions_boundary is not None:  # not in List* answers, as IAM
        shape["PermissionsBoundary"] = boundary_shape(role.permissions_boundary)
    if with_tags:
        tags = context.tx.get_tags(role.role_id)
        if tags:
            shape["Tags"] = tag_list(tags)
    return shape


def boundary_shape(arn: str) -> dict[str, str]:
    """A role's or user's PermissionsBoundary. botocore's model names the type
    "PermissionsBoundaryPolicy"; IAM answers "Policy" (its documentation and the AWS CLI's
    examples), and RoleCall answers as IAM does."""
    return {"PermissionsBoundaryType": "Policy", "PermissionsBoundaryArn": arn}


def instance_profile_shape(
    context: Context, profile: InstanceProfile, *, with_tags: bool
) -> dict[str, Any]:
    roles = []
    if profile.role_id is not None:
        role = context.tx.get_role_by_id(profile.role_id)
        if role is not None:
            roles.append(role_shape(context, role, with_tags=False))
    shape: dict[str, Any] = {
        "Path": profile.path,
        "InstanceProfileName": profile.name,
        "InstanceProfileId": profile.profile_id,
        "Arn": profile.arn,
        "CreateDate": profile.created,
        "Roles": roles,
    }
    if with_tags:
        tags = context.tx.get_tags(profile.profile_id)
        if tags:
            shape["Tags"] = tag_list(tags)
    return shape


# Resources, for authorization: the ARN of what the request acts on. Names are found ignoring
# case and policies match ARNs case-sensitively, so an entity that exists is always authorized
# by its stored ARN (its real name and path), never by the name as the caller spelled it: else a
# Deny on role/Admin would not stop RoleName=ADMIN. Only a name that names nothing yet (a Create*)
# is authorized as given.


def role_resource(context: Context, params: dict[str, Any]) -> str:
    name = params["RoleName"]
    role = context.tx.get_role(context.account_id, name)
    if role is not None:
        return role.arn
    return f"arn:aws:iam::{context.account_id}:role{params.get('Path', '/')}{name}"


def profile_resource(context: Context, params: dict[str, Any]) -> str:
    name = params["InstanceProfileName"]
    profile = context.tx.get_instance_profile(context.account_id, name)
    if profile is not None:
        return profile.arn
    return f"arn:aws:iam::{context.account_id}:instance-profile{params.get('Path', '/')}{name}"


def user_resource(context: Context, params: dict[str, Any]) -> str:
    """The named user, or the caller's own identity when the action defaults to it."""
    name = params.get("UserName") or own_user_name(context)
    if name is None:
        return f"arn:aws:iam::{context.account_id}:root"
    user = context.tx.get_user(context.account_id, name)
    if user is not None:
        return user.arn
    return f"arn:aws:iam::{context.account_id}:user{params.get('Path', '/')}{name}"


def own_user_name(context: Context) -> str | None:
    """The caller's own user name, for actions that default to it: only a user's own long-term
    keys have one (a role session's or federation's user_name is whoever started it)."""
    return context.caller.user_name if context.caller.kind == "user" else None


# Inline policies of roles, users and groups: the answers of Get…Policy and List…Policies.


def inline_policy(
    owner_field: str, owner_name: str, policy: RolePolicy | UserPolicy | GroupPolicy
) -> dict[str, Any]:
    """Get{Role,User,Group}Policy's answer: the owner's name, the policy's, its document
    URL-encoded as IAM returns it."""
    return {
        owner_field: owner_name,
        "PolicyName": policy.name,
        "PolicyDocument": encode_document(policy.document),
    }


def inline_policy_names(
    policies: Sequence[RolePolicy | UserPolicy | GroupPolicy], params: dict[str, Any]
) -> dict[str, Any]:
    """List{Role,User,Group}Policies' answer: the names by name, paged."""
    chosen, paging = page_in_memory(policies, lambda policy: policy.name.lower(), params)
    return {"PolicyNames": [policy.name for policy in chosen], **paging}
