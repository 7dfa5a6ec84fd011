"""``iam-policy*``: customer-managed policies and their versions; and attaching managed policies
to roles, users and groups (``iam-roleattachpolicy``, ``iam-userattachpolicy``,
``iam-groupattachpolicy`` and their detach and list tools).

Where a tool asks for a policy's ARN (``-a``) it also takes the policy's NAME, or PATH/NAME, of
the caller's own account: :func:`policy_arn` asks STS who the caller is (GetCallerIdentity, at the
same endpoint) and writes ``arn:aws:iam::ACCOUNT:policy/PATH/NAME``, as ``euca-run-instances -p``
takes an instance profile's name or ARN. AWS-managed policies are named by ARN.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from controller.tools.client import Client
from controller.tools.command import Tool, entry_point
from controller.tools.errors import ServiceError, ToolError
from controller.tools.iam import (
    add_document_source,
    add_path_prefix,
    document_source,
    list_all,
    list_pages,
    path_prefix_params,
)
from controller.tools.policies import decoded_document
from controller.tools.xmldata import members, section

# A policy named on the command line

#: A policy ARN: arn:PARTITION:iam::ACCOUNT:policy/PATH/NAME (ACCOUNT "aws" for AWS-managed).
_POLICY_ARN = re.compile(r"arn:[a-z-]+:iam::(?:\d{12}|aws):policy/\S+")
#: A policy name (AWS's characters, up to 128), optionally after a path of the same characters.
_POLICY_NAME = re.compile(r"/?(?:[\w+=,.@-]+/)*[\w+=,.@-]{1,128}", re.ASCII)
#: A version id as AWS writes it (v1, v2…), or its number alone.
_VERSION = re.compile(r"v?([1-9][0-9]*(?:\.[A-Za-z0-9-]*)?)")

ARN_HELP = (
    "the managed policy's ARN, or the NAME (or PATH/NAME) of one of the account's own policies, "
    "which becomes arn:aws:iam::ACCOUNT:policy/PATH/NAME (ACCOUNT from sts:GetCallerIdentity); "
    "AWS-managed policies by ARN"
)


def policy_reference(text: str) -> str:
    """``-a``'s value as given, if it is a policy ARN or a policy name (with an optional path)."""
    if _POLICY_ARN.fullmatch(text) or (
        not text.startswith("arn:") and _POLICY_NAME.fullmatch(text)
    ):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is neither a policy ARN (arn:aws:iam::ACCOUNT:policy/NAME) nor a policy name"
    )


def policy_arn(client: Client, reference: str) -> str:
    """The ARN a policy reference means: an ARN as it is, a NAME or PATH/NAME the caller's own
    account's policy (GetCallerIdentity says which account, and its partition)."""
    if reference.startswith("arn:"):
        return reference
    identity = client.for_service("sts").call("GetCallerIdentity")
    account = str(identity.get("Account") or "")
    caller = str(identity.get("Arn") or "")
    if not account:
        raise ToolError("GetCallerIdentity answered without an Account: give the policy's ARN")
    partition = caller.split(":")[1] if caller.startswith("arn:") and caller.count(":") > 1 else ""
    return f"arn:{partition or 'aws'}:iam::{account}:policy/{reference.lstrip('/')}"


def version_id(text: str) -> str:
    """``-v``'s value as AWS's version id: ``v2``, or ``2`` made ``v2``."""
    found = _VERSION.fullmatch(text)
    if found is None:
        raise argparse.ArgumentTypeError(
            f"a version is v1, v2… (as iam-policyversionlist prints), not {text!r}"
        )
    return f"v{found.group(1)}"


def add_policy_arn(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-a",
        "--policy-arn",
        dest="policy",
        metavar="ARN|NAME",
        type=policy_reference,
        required=True,
        help=ARN_HELP,
    )


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v",
        "--version-id",
        dest="version",
        metavar="VERSION",
        type=version_id,
        required=True,
        help="the version, e.g. v2 (or 2)",
    )


# iam-policycreate


def _create_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-p",
        "--policy-name",
        dest="name",
        metavar="NAME",
        required=True,
        help="name of the policy to create (unique in the account, whatever the case)",
    )
    add_document_source(parser)
    parser.add_argument("--path", metavar="PATH", help="the policy's path (default: /)")
    parser.add_argument("-d", "--description", metavar="DESCRIPTION", help="what it is for")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also print its id and its document"
    )


def _create(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    document = document_source(args)
    params = [("PolicyName", args.name), ("PolicyDocument", document)]
    if args.path:
        params.append(("Path", args.path))
    if args.description is not None:
        params.append(("Description", args.description))
    policy = section(client.call("CreatePolicy", params), "Policy", "CreatePolicy")
    print(policy.get("Arn", ""), file=out)
    if args.verbose:
        print(policy.get("PolicyId", ""), file=out)
        print(document.rstrip("\n"), file=out)


POLICY_CREATE = Tool(
    name="iam-policycreate",
    service="iam",
    summary="Create a customer-managed policy and print its ARN.",
    add_arguments=_create_arguments,
    run=_create,
    example="  $ iam-policycreate -p s3read -f s3read.json\n"
    "  arn:aws:iam::123456789012:policy/s3read",
)


# iam-policydel


def _delete_arguments(parser: argparse.ArgumentParser) -> None:
    add_policy_arn(parser)
    parser.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="first delete its non-default versions and detach it from every role, user and "
        "group (never from a permissions boundary)",
    )


@dataclass(frozen=True)
class EntityKind:
    """Roles, users or groups as the managed-policy actions name them."""

    #: "role", "user" or "group".
    kind: str
    #: The word in the action names: Role, User, Group.
    word: str
    #: Their short flag: -r, -u, -g.
    flag: str
    #: ListEntitiesForPolicy's list of them: PolicyRoles…
    entities_key: str

    @property
    def name_parameter(self) -> str:
        return f"{self.word}Name"

    @property
    def id_key(self) -> str:
        return f"{self.word}Id"


ROLES = EntityKind("role", "Role", "-r", "PolicyRoles")
USERS = EntityKind("user", "User", "-u", "PolicyUsers")
GROUPS = EntityKind("group", "Group", "-g", "PolicyGroups")
#: In the order ListEntitiesForPolicy lists them.
ENTITY_KINDS = (GROUPS, USERS, ROLES)


def policy_entities(
    client: Client, arn: str, usage: str | None = None
) -> list[tuple[EntityKind, str, str]]:
    """(kind, name, id) of every entity a policy is attached to (``usage`` PermissionsPolicy) or
    is the boundary of (PermissionsBoundary), or both (None), reading every page."""
    params = [("PolicyArn", arn), *([("PolicyUsageFilter", usage)] if usage else [])]
    found = []
    for page in list_pages(client, "ListEntitiesForPolicy", params):
        for kind in ENTITY_KINDS:
            for entity in members(page.get(kind.entities_key)):
                found.append(
                    (kind, entity.get(kind.name_parameter, ""), entity.get(kind.id_key, ""))
                )
    return found


def _delete(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    arn = policy_arn(client, args.policy)
    policy = [("PolicyArn", arn)]
    detached: list[tuple[EntityKind, str]] = []
    if args.recursive:
        # Read whole lists before changing them: deleting while paging would shift the pages.
        versions = [
            version.get("VersionId", "")
            for version in list_all(client, "ListPolicyVersions", policy, "Versions")
            if version.get("IsDefaultVersion", "").strip().lower() != "true"
        ]
        attached = policy_entities(client, arn, "PermissionsPolicy")
        # Versions first: that changes no one's permissions, and detaching can be undone.
        for version in versions:
            client.call("DeletePolicyVersion", [*policy, ("VersionId", version)])
        for kind, name, _ in attached:
            client.call(f"Detach{kind.word}Policy", [(kind.name_parameter, name), *policy])
            detached.append((kind, name))
    try:
        client.call("DeletePolicy", policy)
    except ServiceError as error:
        if not detached:
            raise
        # The policy stays (a boundary still uses it, or the caller may detach but not
        # delete): give its roles, users and groups their permissions back.
        raise ServiceError(
            error.code, f"{error.message} ({_reattach(client, arn, detached)})", error.status
        ) from None


def _reattach(client: Client, arn: str, detached: list[tuple[EntityKind, str]]) -> str:
    names = ", ".join(f"{kind.kind} {name}" for kind, name in detached)
    try:
        for kind, name in detached:
            client.call(
                f"Attach{kind.word}Policy", [(kind.name_parameter, name), ("PolicyArn", arn)]
            )
    except ServiceError as error:
        return f"it was detached from {names} and could not be attached again: {error}"
    return f"it was attached again to {names}"


POLICY_DELETE = Tool(
    name="iam-policydel",
    service="iam",
    summary="Delete a managed policy; with -r, its other versions and attachments first.",
    add_arguments=_delete_arguments,
    run=_delete,
    example="  $ iam-policydel -a arn:aws:iam::123456789012:policy/s3read -r\n  (prints nothing)",
)


# iam-policylistbypath

SCOPES = ("All", "AWS", "Local")


def scope_name(text: str) -> str:
    """``--scope``'s value as AWS spells it, whatever the case given."""
    for scope in SCOPES:
        if text.lower() == scope.lower():
            return scope
    raise argparse.ArgumentTypeError(f"the scope is All, AWS or Local, not {text!r}")


def _list_arguments(parser: argparse.ArgumentParser) -> None:
    add_path_prefix(parser)
    parser.add_argument(
        "--scope",
        type=scope_name,
        metavar="All|AWS|Local",
        help="Local: the account's own policies; AWS: AWS-managed ones (default: All)",
    )
    parser.add_argument(
        "--only-attached",
        action="store_true",
        help="only policies attached to a role, user or group",
    )


def _list(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    params = path_prefix_params(args)
    if args.scope:
        params.append(("Scope", args.scope))
    if args.only_attached:
        params.append(("OnlyAttached", "true"))
    for policy in list_all(client, "ListPolicies", params, "Policies"):
        print(policy.get("Arn", ""), file=out)


POLICY_LIST_BY_PATH = Tool(
    name="iam-policylistbypath",
    service="iam",
    summary="List the ARNs of managed policies, one a line.",
    add_arguments=_list_arguments,
    run=_list,
    example="  $ iam-policylistbypath --scope Local\n  arn:aws:iam::123456789012:policy/s3read",
)


# iam-policygetattributes


def _get(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    arn = policy_arn(client, args.policy)
    policy = section(client.call("GetPolicy", [("PolicyArn", arn)]), "Policy", "GetPolicy")
    default = policy.get("DefaultVersionId", "")
    if not default:
        raise ToolError(f"GetPolicy answered without a DefaultVersionId for {arn}")
    answer = client.call("GetPolicyVersion", [("PolicyArn", arn), ("VersionId", default)])
    version = section(answer, "PolicyVersion", "GetPolicyVersion")
    print(policy.get("Arn", ""), file=out)
    print(policy.get("PolicyId", ""), file=out)
    print(default, file=out)
    print(decoded_document(version.get("Document") or "").rstrip("\n"), file=out)


POLICY_GET_ATTRIBUTES = Tool(
    name="iam-policygetattributes",
    service="iam",
    summary="Print a managed policy's ARN, id, default version and that version's document.",
    add_arguments=add_policy_arn,
    run=_get,
    example="  $ iam-policygetattributes -a s3read\n"
    "  arn:aws:iam::123456789012:policy/s3read\n"
    "  ANPAEXAMPLEEXAMPLE123\n"
    "  v1\n"
    '  {"Version":"2012-10-17","Statement":[...]}',
)


# iam-policyversioncreate


def _version_create_arguments(parser: argparse.ArgumentParser) -> None:
    add_policy_arn(parser)
    add_document_source(parser, "the new version")
    parser.add_argument(
        "--set-as-default",
        action="store_true",
        help="make it the version in effect (default: the default version stays)",
    )


def _version_create(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    document = document_source(args)
    params = [("PolicyArn", policy_arn(client, args.policy)), ("PolicyDocument", document)]
    if args.set_as_default:
        params.append(("SetAsDefault", "true"))
    answer = client.call("CreatePolicyVersion", params)
    print(section(answer, "PolicyVersion", "CreatePolicyVersion").get("VersionId", ""), file=out)


POLICY_VERSION_CREATE = Tool(
    name="iam-policyversioncreate",
    service="iam",
    summary="Add a version to a managed policy (5 at most) and print its id.",
    add_arguments=_version_create_arguments,
    run=_version_create,
    example="  $ iam-policyversioncreate -a s3read -f s3read-v2.json --set-as-default\n  v2",
)


# iam-policyversionlist


def _version_list(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    policy = [("PolicyArn", policy_arn(client, args.policy))]
    for version in list_all(client, "ListPolicyVersions", policy, "Versions"):
        fields = ("VersionId", "IsDefaultVersion", "CreateDate")
        print("\t".join(str(version.get(field, "")) for field in fields), file=out)


POLICY_VERSION_LIST = Tool(
    name="iam-policyversionlist",
    service="iam",
    summary="List a managed policy's versions: id, whether it is the default, when it was made.",
    add_arguments=add_policy_arn,
    run=_version_list,
    example="  $ iam-policyversionlist -a s3read\n"
    "  v2\ttrue\t2026-12-07T20:10:00Z\n"
    "  v1\tfalse\t2026-12-07T20:00:00Z",
)


# iam-policyversiondel and iam-policysetdefaultversion


def _version_arguments(parser: argparse.ArgumentParser) -> None:
    add_policy_arn(parser)
    add_version(parser)


def _version_action(action: str) -> Callable[[argparse.Namespace, Client, TextIO], None]:
    def run(args: argparse.Namespace, client: Client, out: TextIO) -> None:
        client.call(
            action, [("PolicyArn", policy_arn(client, args.policy)), ("VersionId", args.version)]
        )

    return run


POLICY_VERSION_DELETE = Tool(
    name="iam-policyversiondel",
    service="iam",
    summary="Delete a version of a managed policy (not its default version).",
    add_arguments=_version_arguments,
    run=_version_action("DeletePolicyVersion"),
    example="  $ iam-policyversiondel -a s3read -v v1\n  (prints nothing)",
)

POLICY_SET_DEFAULT_VERSION = Tool(
    name="iam-policysetdefaultversion",
    service="iam",
    summary="Make a version of a managed policy the one in effect.",
    add_arguments=_version_arguments,
    run=_version_action("SetDefaultPolicyVersion"),
    example="  $ iam-policysetdefaultversion -a s3read -v v1\n  (prints nothing)",
)


# iam-policylistentities

USAGES = ("PermissionsPolicy", "PermissionsBoundary")


def usage_name(text: str) -> str:
    """``--usage``'s value as AWS spells it, whatever the case given."""
    for usage in USAGES:
        if text.lower() == usage.lower():
            return usage
    raise argparse.ArgumentTypeError(
        f"the usage is PermissionsPolicy or PermissionsBoundary, not {text!r}"
    )


def _entities_arguments(parser: argparse.ArgumentParser) -> None:
    add_policy_arn(parser)
    parser.add_argument(
        "--usage",
        type=usage_name,
        metavar="PermissionsPolicy|PermissionsBoundary",
        help="only entities it is attached to, or only those it is the boundary of (default: both)",
    )


def _entities(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    arn = policy_arn(client, args.policy)
    for kind, name, entity_id in policy_entities(client, arn, args.usage):
        print(f"{kind.word.upper()}\t{name}\t{entity_id}", file=out)


POLICY_LIST_ENTITIES = Tool(
    name="iam-policylistentities",
    service="iam",
    summary="List the groups, users and roles a managed policy is attached to: kind, name, id.",
    add_arguments=_entities_arguments,
    run=_entities,
    example="  $ iam-policylistentities -a s3read\n"
    "  GROUP\tdevelopers\tAGPAEXAMPLEEXAMPLE123\n"
    "  ROLE\ts3access\tAROAEXAMPLEEXAMPLE123",
)


# iam-{role,user,group}{attach,detach,listattached}polic{y,ies}


def _entity_arguments(kind: EntityKind) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            kind.flag,
            f"--{kind.kind}-name",
            dest="entity",
            metavar=kind.kind.upper(),
            required=True,
            help=f"name of the {kind.kind}",
        )

    return add


def _attachment_arguments(kind: EntityKind) -> Callable[[argparse.ArgumentParser], None]:
    entity = _entity_arguments(kind)

    def add(parser: argparse.ArgumentParser) -> None:
        entity(parser)
        add_policy_arn(parser)

    return add


def _attachment(
    kind: EntityKind, verb: str
) -> Callable[[argparse.Namespace, Client, TextIO], None]:
    def run(args: argparse.Namespace, client: Client, out: TextIO) -> None:
        arn = policy_arn(client, args.policy)
        client.call(
            f"{verb}{kind.word}Policy", [(kind.name_parameter, args.entity), ("PolicyArn", arn)]
        )

    return run


def _list_attached(kind: EntityKind) -> Callable[[argparse.Namespace, Client, TextIO], None]:
    def run(args: argparse.Namespace, client: Client, out: TextIO) -> None:
        action = f"ListAttached{kind.word}Policies"
        for policy in list_all(
            client, action, [(kind.name_parameter, args.entity)], "AttachedPolicies"
        ):
            print(policy.get("PolicyArn", ""), file=out)

    return run


def attachment_tools(kind: EntityKind, example_name: str) -> tuple[Tool, Tool, Tool]:
    """Attach, detach and list the managed policies of one kind of entity."""
    flag = f"{kind.flag} {example_name}"
    attach = Tool(
        name=f"iam-{kind.kind}attachpolicy",
        service="iam",
        summary=f"Attach a managed policy to a {kind.kind} (10 at most).",
        add_arguments=_attachment_arguments(kind),
        run=_attachment(kind, "Attach"),
        example=f"  $ iam-{kind.kind}attachpolicy {flag} -a s3read\n  (prints nothing)",
    )
    detach = Tool(
        name=f"iam-{kind.kind}detachpolicy",
        service="iam",
        summary=f"Detach a managed policy from a {kind.kind}.",
        add_arguments=_attachment_arguments(kind),
        run=_attachment(kind, "Detach"),
        example=f"  $ iam-{kind.kind}detachpolicy {flag} -a s3read\n  (prints nothing)",
    )
    listed = Tool(
        name=f"iam-{kind.kind}listattachedpolicies",
        service="iam",
        summary=f"List the ARNs of the managed policies attached to a {kind.kind}, one a line.",
        add_arguments=_entity_arguments(kind),
        run=_list_attached(kind),
        example=f"  $ iam-{kind.kind}listattachedpolicies {flag}\n"
        "  arn:aws:iam::123456789012:policy/s3read",
    )
    return attach, detach, listed


ROLE_ATTACH_POLICY, ROLE_DETACH_POLICY, ROLE_LIST_ATTACHED_POLICIES = attachment_tools(
    ROLES, "s3access"
)
USER_ATTACH_POLICY, USER_DETACH_POLICY, USER_LIST_ATTACHED_POLICIES = attachment_tools(
    USERS, "alice"
)
GROUP_ATTACH_POLICY, GROUP_DETACH_POLICY, GROUP_LIST_ATTACHED_POLICIES = attachment_tools(
    GROUPS, "developers"
)


TOOLS = (
    POLICY_CREATE,
    POLICY_DELETE,
    POLICY_LIST_BY_PATH,
    POLICY_GET_ATTRIBUTES,
    POLICY_VERSION_CREATE,
    POLICY_VERSION_LIST,
    POLICY_VERSION_DELETE,
    POLICY_SET_DEFAULT_VERSION,
    POLICY_LIST_ENTITIES,
    ROLE_ATTACH_POLICY,
    ROLE_DETACH_POLICY,
    ROLE_LIST_ATTACHED_POLICIES,
    USER_ATTACH_POLICY,
    USER_DETACH_POLICY,
    USER_LIST_ATTACHED_POLICIES,
    GROUP_ATTACH_POLICY,
    GROUP_DETACH_POLICY,
    GROUP_LIST_ATTACHED_POLICIES,
)

policycreate = entry_point(POLICY_CREATE)
policydel = entry_point(POLICY_DELETE)
policylistbypath = entry_point(POLICY_LIST_BY_PATH)
policygetattributes = entry_point(POLICY_GET_ATTRIBUTES)
policyversioncreate = entry_point(POLICY_VERSION_CREATE)
policyversionlist = entry_point(POLICY_VERSION_LIST)
policyversiondel = entry_point(POLICY_VERSION_DELETE)
policysetdefaultversion = entry_point(POLICY_SET_DEFAULT_VERSION)
policylistentities = entry_point(POLICY_LIST_ENTITIES)
roleattachpolicy = entry_point(ROLE_ATTACH_POLICY)
roledetachpolicy = entry_point(ROLE_DETACH_POLICY)
rolelistattachedpolicies = entry_point(ROLE_LIST_ATTACHED_POLICIES)
userattachpolicy = entry_point(USER_ATTACH_POLICY)
userdetachpolicy = entry_point(USER_DETACH_POLICY)
userlistattachedpolicies = entry_point(USER_LIST_ATTACHED_POLICIES)
groupattachpolicy = entry_point(GROUP_ATTACH_POLICY)
groupdetachpolicy = entry_point(GROUP_DETACH_POLICY)
grouplistattachedpolicies = entry_point(GROUP_LIST_ATTACHED_POLICIES)
