"""Customer-managed and AWS-managed policies: their versions, tags, and attachments to roles,
users and groups (issue 15).

A customer-managed policy lives in the store (`ManagedPolicy`, its documents `PolicyVersion`s);
an AWS-managed one (``arn:aws:iam::aws:policy/…``) in the operator's directory
(`controller.awsmanaged.catalog`): it can be read, listed and attached, never changed.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from controller import awsmanaged
from controller.actions import Context, KeysOf, Result
from controller.awsmanaged import AwsManagedPolicy
from controller.errors import (
    AccessDenied,
    DeleteConflict,
    EntityAlreadyExists,
    InvalidInput,
    LimitExceeded,
    NoSuchEntity,
)
from controller.iam import registry
from controller.iam.boundaries import role_boundary, user_boundary
from controller.iam.common import (
    add_tags,
    check_identity_policy,
    encode_document,
    new_id,
    now_text,
    page_in_memory,
    require_role,
    role_resource,
    tag_list,
    tags_from_params,
    user_resource,
)
from controller.iam.groups import group_resource, require_group
from controller.iam.shapes import (
    ARN,
    GROUP_NAME,
    PAGING,
    PATH,
    POLICY_DOCUMENT,
    POLICY_NAME,
    ROLE_NAME,
    TAG_KEY_LIST,
    TAG_LIST,
    USER_NAME,
    Bool,
    Field,
    struct,
)
from controller.iam.users import require_user
from controller.policy.document import policy_size
from controller.query import Str
from controller.store.base import Conflict
from controller.store.records import ManagedPolicy, PolicyAttachment, PolicyVersion

#: AWS's quotas: versions per managed policy, managed policies attached per role, user or group,
#: characters of a managed policy's document (whitespace not counted).
VERSIONS_PER_POLICY = 5
ATTACHED_PER_ENTITY = 10
POLICY_SIZE_QUOTA = 6144

# botocore's shapes that only these actions use.
POLICY_PATH = Str(1, 512, r"((/[A-Za-z0-9\.,\+@=_-]+)*)/")
POLICY_DESCRIPTION = Str(0, 1000)
POLICY_VERSION_ID = Str(pattern=r"v[1-9][0-9]*(\.[A-Za-z0-9-]*)?")
POLICY_SCOPE = Str(enum=("All", "AWS", "Local"))
POLICY_USAGE = Str(enum=("PermissionsPolicy", "PermissionsBoundary"))
ENTITY_FILTER = Str(enum=("User", "Role", "Group", "LocalManagedPolicy", "AWSManagedPolicy"))

_POLICY_ARN = re.compile(r"arn:aws:iam::(\d{12}|aws):policy((?:/[^/]+)*/)([\w+=,.@-]+)")

Policy = ManagedPolicy | AwsManagedPolicy


# Finding policies


def _parse_arn(arn: str) -> tuple[str, str, str]:
    """(account id or "aws", path, name) of a policy ARN; InvalidInput for anything else."""
    match = _POLICY_ARN.fullmatch(arn)
    if match is None:
        raise InvalidInput(f"ARN {arn} is not valid.")
    return match.group(1), match.group(2), match.group(3)


def _find(context: Context, arn: str) -> Policy | None:
    """The policy this exact ARN names, readable by the caller's account, or None."""
    account, _, name = _parse_arn(arn)
    if account == "aws":
        return awsmanaged.catalog.get(arn)
    if account != context.account_id:
        return None
    policy = context.tx.get_managed_policy(account, name)
    return policy if policy is not None and policy.arn == arn else None


def _require(context: Context, arn: str) -> Policy:
    found = _find(context, arn)
    if found is None:
        raise NoSuchEntity(f"Policy {arn} was not found.")
    return found


def _require_attachable(context: Context, arn: str) -> Policy:
    found = _find(context, arn)
    if found is None:
        raise NoSuchEntity(f"Policy {arn} does not exist or is not attachable.")
    return found


def _require_local(context: Context, arn: str, action: str) -> ManagedPolicy:
    """A customer-managed policy to change: AWS's own belong to another account (``aws``), so
    changing one is refused as a cross-account request is."""
    found = _require(context, arn)
    if isinstance(found, AwsManagedPolicy):
        raise AccessDenied(
            f"User: {context.caller.arn} is not authorized to perform: iam:{action} on"
            f" resource: policy {arn} because AWS managed policies cannot be changed"
        )
    return found


def _version_number(version_id: str) -> int | None:
    """N of "vN"; None for a form the pattern allows but no version has ("v1.beta")."""
    number, dot, _ = version_id[1:].partition(".")
    return None if dot else int(number)


def _require_version(context: Context, policy: ManagedPolicy, version_id: str) -> PolicyVersion:
    number = _version_number(version_id)
    version = None if number is None else context.tx.get_policy_version(policy.policy_id, number)
    if version is None:
        raise NoSuchEntity(
            f"Policy {policy.arn} version {version_id} does not exist or is not attachable."
        )
    return version


def check_managed_document(document: str) -> None:
    check_identity_policy(document)
    if policy_size(document) > POLICY_SIZE_QUOTA:
        raise LimitExceeded(f"Cannot exceed quota for PolicySize: {POLICY_SIZE_QUOTA}")


def aws_policy_id(policy: AwsManagedPolicy) -> str:
    """A stable ``ANPA…`` id for an AWS-managed policy (the same on every controller)."""
    digest = base64.b32encode(hashlib.sha256(policy.arn.encode()).digest()).decode("ascii")
    return "ANPA" + digest[:17]


def _arn_path(arn: str) -> str:
    return _parse_arn(arn)[1]


def _arn_name(arn: str) -> str:
    return _parse_arn(arn)[2]


# Shapes


class _Counts:
    """The account's attachment and boundary counts by ARN, read once per request."""

    def __init__(self, context: Context) -> None:
        self.attached = context.tx.count_policy_attachments(context.account_id)
        self.bounding = context.tx.count_boundary_uses(context.account_id)


def policy_shape(
    context: Context, policy: Policy, counts: _Counts, *, detail: bool
) -> dict[str, Any]:
    """A Policy as IAM returns it; ``detail`` (Get, Create) adds the description and tags."""
    if isinstance(policy, AwsManagedPolicy):
        policy_id, default = aws_policy_id(policy), "v1"
        created = updated = policy.created
        description, tags = None, []
    else:
        policy_id, default = policy.policy_id, f"v{policy.default_version}"
        created, updated, description = policy.created, policy.updated, policy.description
        tags = context.tx.get_tags(policy.policy_id) if detail else []
    shape: dict[str, Any] = {
        "PolicyName": policy.name,
        "PolicyId": policy_id,
        "Arn": policy.arn,
        "Path": policy.path,
        "DefaultVersionId": default,
        "AttachmentCount": counts.attached.get(policy.arn, 0),
        "PermissionsBoundaryUsageCount": counts.bounding.get(policy.arn, 0),
        "IsAttachable": True,
    }
    if detail and description is not None:
        shape["Description"] = description
    shape["CreateDate"] = created
    shape["UpdateDate"] = updated
    if tags:
        shape["Tags"] = tag_list(tags)
    return shape


def _version_shape(version: PolicyVersion, default: int, *, document: bool) -> dict[str, Any]:
    shape: dict[str, Any] = {}
    if document:
        shape["Document"] = encode_document(version.document)
    shape["VersionId"] = version.version_id
    shape["IsDefaultVersion"] = version.version == default
    shape["CreateDate"] = version.created
    return shape


# Authorization resources


def policy_resource(context: Context, params: dict[str, Any]) -> str:
    if "PolicyArn" in params:
        return str(params["PolicyArn"])
    return (
        f"arn:aws:iam::{context.account_id}:policy{params.get('Path', '/')}{params['PolicyName']}"
    )


# Policies


@registry.action(
    "iam",
    "CreatePolicy",
    struct(
        Field("PolicyName", POLICY_NAME, required=True),
        Field("Path", POLICY_PATH),
        Field("PolicyDocument", POLICY_DOCUMENT, required=True),
        Field("Description", POLICY_DESCRIPTION),
        Field("Tags", TAG_LIST),
    ),
    resource=policy_resource,
)
def create_policy(context: Context, params: dict[str, Any]) -> Result:
    name, document = params["PolicyName"], params["PolicyDocument"]
    check_managed_document(document)
    tags = tags_from_params(params)
    duplicate = f"A policy called {name} already exists. Duplicate names are not allowed."
    if context.tx.get_managed_policy(context.account_id, name) is not None:
        raise EntityAlreadyExists(duplicate)
    now = now_text(context)
    policy = ManagedPolicy(
        policy_id=new_id("ANPA"),
        account_id=context.account_id,
        name=name,
        path=params.get("Path", "/"),
        description=params.get("Description"),
        default_version=1,
        next_version=2,
        created=now,
        updated=now,
    )
    try:
        context.tx.insert_managed_policy(policy)
    except Conflict as error:
        raise EntityAlreadyExists(duplicate) from error
    context.tx.insert_policy_version(PolicyVersion(policy.policy_id, 1, document, now))
    if tags:
        add_tags(context, policy.policy_id, tags)
    shape = policy_shape(context, policy, _Counts(context), detail=True)
    shape.pop("Description", None)  # as AWS: only GetPolicy describes
    return {"Policy": shape}


@registry.action(
    "iam", "GetPolicy", struct(Field("PolicyArn", ARN, required=True)), resource=policy_resource
)
def get_policy(context: Context, params: dict[str, Any]) -> Result:
    policy = _require(context, params["PolicyArn"])
    return {"Policy": policy_shape(context, policy, _Counts(context), detail=True)}


@registry.action(
    "iam",
    "ListPolicies",
    struct(
        Field("Scope", POLICY_SCOPE),
        Field("OnlyAttached", Bool()),
        Field("PathPrefix", POLICY_PATH),
        Field("PolicyUsageFilter", POLICY_USAGE),
        *PAGING,
    ),
)
def list_policies(context: Context, params: dict[str, Any]) -> Result:
    scope, prefix = params.get("Scope", "All"), params.get("PathPrefix", "/")
    counts = _Counts(context)
    policies: list[Policy] = []
    if scope in ("All", "Local"):
        policies += context.tx.list_managed_policies(context.account_id, prefix, None, 1 << 30)
    if scope in ("All", "AWS"):
        policies += [p for p in awsmanaged.catalog.all() if p.path.startswith(prefix)]
    usage = params.get("PolicyUsageFilter")
    if usage == "PermissionsBoundary":
        policies = [p for p in policies if counts.bounding.get(p.arn, 0)]
    elif usage == "PermissionsPolicy" or params.get("OnlyAttached"):
        policies = [p for p in policies if counts.attached.get(p.arn, 0)]
    chosen, paging = page_in_memory(policies, _policy_key, params)
    return {
        "Policies": [policy_shape(context, policy, counts, detail=False) for policy in chosen],
        **paging,
    }


def _policy_key(policy: Policy) -> str:
    return f"{policy.name.lower()} {policy.arn}"


@registry.action(
    "iam", "DeletePolicy", struct(Field("PolicyArn", ARN, required=True)), resource=policy_resource
)
def delete_policy(context: Context, params: dict[str, Any]) -> Result:
    policy = _require_local(context, params["PolicyArn"], "DeletePolicy")
    counts = _Counts(context)
    # As AWS: a policy used as a permissions boundary is attached too.
    if counts.attached.get(policy.arn, 0) or counts.bounding.get(policy.arn, 0):
        raise DeleteConflict("Cannot delete a policy attached to entities.")
    if len(context.tx.list_policy_versions(policy.policy_id)) > 1:
        raise DeleteConflict(
            "This policy has more than one version. Before you delete a policy, you must delete"
            " the policy's versions. The default version is deleted with the policy."
        )
    context.tx.delete_managed_policy(policy.policy_id)
    return None


# Tags


@registry.action(
    "iam",
    "TagPolicy",
    struct(Field("PolicyArn", ARN, required=True), Field("Tags", TAG_LIST, required=True)),
    resource=policy_resource,
)
def tag_policy(context: Context, params: dict[str, Any]) -> Result:
    policy = _require_local(context, params["PolicyArn"], "TagPolicy")
    add_tags(context, policy.policy_id, tags_from_params(params))
    return None


@registry.action(
    "iam",
    "UntagPolicy",
    struct(Field("PolicyArn", ARN, required=True), Field("TagKeys", TAG_KEY_LIST, required=True)),
    resource=policy_resource,
)
def untag_policy(context: Context, params: dict[str, Any]) -> Result:
    policy = _require_local(context, params["PolicyArn"], "UntagPolicy")
    context.tx.delete_tags(policy.policy_id, params["TagKeys"])
    return None


@registry.action(
    "iam",
    "ListPolicyTags",
    struct(Field("PolicyArn", ARN, required=True), *PAGING),
    resource=policy_resource,
)
def list_policy_tags(context: Context, params: dict[str, Any]) -> Result:
    policy = _require(context, params["PolicyArn"])
    found = [] if isinstance(policy, AwsManagedPolicy) else context.tx.get_tags(policy.policy_id)
    tags, paging = page_in_memory(found, lambda tag: tag.key.lower(), params)
    return {"Tags": tag_list(tags), **paging}


# Versions

VERSION = (
    Field("PolicyArn", ARN, required=True),
    Field("VersionId", POLICY_VERSION_ID, required=True),
)


@registry.action(
    "iam",
    "CreatePolicyVersion",
    struct(
        Field("PolicyArn", ARN, required=True),
        Field("PolicyDocument", POLICY_DOCUMENT, required=True),
        Field("SetAsDefault", Bool()),
    ),
    resource=policy_resource,
)
def create_policy_version(context: Context, params: dict[str, Any]) -> Result:
    policy = _require_local(context, params["PolicyArn"], "CreatePolicyVersion")
    check_managed_document(params["PolicyDocument"])
    if len(context.tx.list_policy_versions(policy.policy_id)) >= VERSIONS_PER_POLICY:
        raise LimitExceeded(
            f"A managed policy can have up to {VERSIONS_PER_POLICY} versions. Before you create"
            " a new version, you must delete an existing version."
        )
    now = now_text(context)
    version = PolicyVersion(policy.policy_id, policy.next_version, params["PolicyDocument"], now)
    context.tx.insert_policy_version(version)
    default = version.version if params.get("SetAsDefault") else policy.default_version
    # UpdateDate: when the newest version was made, as AWS has it.
    context.tx.update_managed_policy(
        replace(policy, default_version=default, next_version=policy.next_version + 1, updated=now)
    )
    return {"PolicyVersion": _version_shape(version, default, document=False)}


@registry.action("iam", "GetPolicyVersion", struct(*VERSION), resource=policy_resource)
def get_policy_version(context: Context, params: dict[str, Any]) -> Result:
    policy = _require(context, params["PolicyArn"])
    if isinstance(policy, AwsManagedPolicy):
        if params["VersionId"] != "v1":
            raise NoSuchEntity(
                f"Policy {policy.arn} version {params['VersionId']} does not exist or is not"
                " attachable."
            )
        return {
            "PolicyVersion": {
                "Document": encode_document(policy.document),
                "VersionId": "v1",
                "IsDefaultVersion": True,
                "CreateDate": policy.created,
            }
        }
    version = _require_version(context, policy, params["VersionId"])
    return {"PolicyVersion": _version_shape(version, policy.default_version, document=True)}


@registry.action(
    "iam",
    "ListPolicyVersions",
    struct(Field("PolicyArn", ARN, required=True), *PAGING),
    resource=policy_resource,
)
def list_policy_versions(context: Context, params: dict[str, Any]) -> Result:
    policy = _require(context, params["PolicyArn"])
    if isinstance(policy, AwsManagedPolicy):
        versions = [PolicyVersion("", 1, policy.document, policy.created)]
        default = 1
    else:
        versions, default = (
            context.tx.list_policy_versions(policy.policy_id),
            policy.default_version,
        )
    # Newest first, as AWS lists them: the key counts down.
    chosen, paging = page_in_memory(versions, lambda v: f"{(1 << 40) - v.version:013d}", params)
    return {
        "Versions": [_version_shape(version, default, document=False) for version in chosen],
        **paging,
    }


@registry.action("iam", "DeletePolicyVersion", struct(*VERSION), resource=policy_resource)
def delete_policy_version(context: Context, params: dict[str, Any]) -> Result:
    policy = _require_local(context, params["PolicyArn"], "DeletePolicyVersion")
    version = _require_version(context, policy, params["VersionId"])
    if version.version == policy.default_version:
        raise DeleteConflict("Cannot delete the default version of a policy.")
    context.tx.delete_policy_version(policy.policy_id, version.version)
    return None


@registry.action("iam", "SetDefaultPolicyVersion", struct(*VERSION), resource=policy_resource)
def set_default_policy_version(context: Context, params: dict[str, Any]) -> Result:
    policy = _require_local(context, params["PolicyArn"], "SetDefaultPolicyVersion")
    version = _require_version(context, policy, params["VersionId"])
    context.tx.update_managed_policy(replace(policy, default_version=version.version))
    return None


# Attachments


def _attach(context: Context, entity_id: str, kind: str, arn: str, quota: str) -> None:
    policy = _require_attachable(context, arn)
    attached = context.tx.list_attached_policies(entity_id)
    if any(attachment.policy_arn == policy.arn for attachment in attached):
        return  # attaching again changes nothing, as in AWS
    if len(attached) >= ATTACHED_PER_ENTITY:
        raise LimitExceeded(f"Cannot exceed quota for {quota}: {ATTACHED_PER_ENTITY}")
    policy_id = policy.policy_id if isinstance(policy, ManagedPolicy) else None
    context.tx.attach_policy(
        PolicyAttachment(entity_id, kind, context.account_id, policy.arn, policy_id)
    )


def _detach(context: Context, entity_id: str, arn: str) -> None:
    # The policy itself may be gone (an AWS-managed one whose file was removed): the
    # attachment can always be taken away.
    _parse_arn(arn)
    if not context.tx.detach_policy(entity_id, arn):
        raise NoSuchEntity(f"Policy {arn} was not found.")


def _list_attached(context: Context, entity_id: str, params: dict[str, Any]) -> Result:
    prefix = params.get("PathPrefix", "/")
    attached = [
        attachment
        for attachment in context.tx.list_attached_policies(entity_id)
        if _arn_path(attachment.policy_arn).startswith(prefix)
    ]
    chosen, paging = page_in_memory(
        attached, lambda a: f"{_arn_name(a.policy_arn).lower()} {a.policy_arn}", params
    )
    return {
        "AttachedPolicies": [
            {"PolicyName": _arn_name(a.policy_arn), "PolicyArn": a.policy_arn} for a in chosen
        ],
        **paging,
    }


def _attachment_actions(
    kind: str,
    title: str,
    name_field: Field,
    find: Callable[[Context, str], str],
    resource: Callable[[Context, dict[str, Any]], str],
    boundary: KeysOf | None = None,
) -> None:
    """Attach/Detach/ListAttached{title}Policies for one kind of entity; ``find`` gives the
    named entity's id or raises NoSuchEntity; ``boundary`` its iam:PermissionsBoundary."""
    name = name_field.name
    quota = f"PoliciesPer{title}"

    def attach(context: Context, params: dict[str, Any]) -> Result:
        _attach(context, find(context, params[name]), kind, params["PolicyArn"], quota)
        return None

    def detach(context: Context, params: dict[str, Any]) -> Result:
        _detach(context, find(context, params[name]), params["PolicyArn"])
        return None

    def list_attached(context: Context, params: dict[str, Any]) -> Result:
        return _list_attached(context, find(context, params[name]), params)

    def keys(context: Context, params: dict[str, Any]) -> Mapping[str, tuple[str, ...]]:
        """iam:PolicyARN, the policy attached or detached, and the entity's boundary if any."""
        found = {"iam:PolicyARN": (params["PolicyArn"],)}
        return {**found, **boundary(context, params)} if boundary is not None else found

    arn_field = Field("PolicyArn", ARN, required=True)
    for verb, handler in (("Attach", attach), ("Detach", detach)):
        registry.action(
            "iam", f"{verb}{title}Policy", struct(name_field, arn_field), resource, keys
        )(handler)
    registry.action(
        "iam",
        f"ListAttached{title}Policies",
        struct(name_field, Field("PathPrefix", POLICY_PATH), *PAGING),
        resource,
    )(list_attached)


_attachment_actions(
    "role",
    "Role",
    Field("RoleName", ROLE_NAME, required=True),
    lambda context, name: require_role(context, name).role_id,
    role_resource,
    role_boundary,
)
_attachment_actions(
    "user",
    "User",
    Field("UserName", USER_NAME, required=True),
    lambda context, name: require_user(context, name).user_id,
    user_resource,
    user_boundary,
)
_attachment_actions(
    "group",
    "Group",
    Field("GroupName", GROUP_NAME, required=True),
    lambda context, name: require_group(context, name).group_id,
    group_resource,
)


@registry.action(
    "iam",
    "ListEntitiesForPolicy",
    struct(
        Field("PolicyArn", ARN, required=True),
        Field("EntityFilter", ENTITY_FILTER),
        Field("PathPrefix", PATH),
        Field("PolicyUsageFilter", POLICY_USAGE),
        *PAGING,
    ),
    resource=policy_resource,
)
def list_entities_for_policy(context: Context, params: dict[str, Any]) -> Result:
    policy = _require(context, params["PolicyArn"])
    kinds = {"User": {"user"}, "Role": {"role"}, "Group": {"group"}}.get(
        params.get("EntityFilter", ""), set() if "EntityFilter" in params else None
    )
    usage, prefix = params.get("PolicyUsageFilter"), params.get("PathPrefix", "/")
    found: dict[tuple[str, str], Any] = {}
    for entity in context.tx.list_policy_entities(context.account_id, policy.arn):
        if kinds is not None and entity.kind not in kinds:
            continue
        if usage is not None and entity.usage != usage:
            continue
        if entity.path.startswith(prefix):
            found[(entity.kind, entity.entity_id)] = entity  # one line for both uses
    chosen, paging = page_in_memory(
        list(found.values()), lambda e: f"{e.kind} {e.name.lower()}", params
    )
    listed: dict[str, list[dict[str, str]]] = {"group": [], "user": [], "role": []}
    for entity in chosen:
        title = entity.kind.capitalize()
        listed[entity.kind].append({f"{title}Name": entity.name, f"{title}Id": entity.entity_id})
    return {
        "PolicyGroups": listed["group"],
        "PolicyUsers": listed["user"],
        "PolicyRoles": listed["role"],
        **paging,
    }
