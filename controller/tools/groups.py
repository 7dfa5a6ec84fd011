"""``iam-group*``: create and delete groups, put users in them, and manage their inline
policies, with the flags of Euca2ools' ``euare-group*`` commands."""

from __future__ import annotations

import argparse
from typing import TextIO

from controller.tools.client import Client
from controller.tools.command import Tool, entry_point
from controller.tools.errors import ServiceError, ToolError
from controller.tools.iam import (
    add_document_source,
    add_path_prefix,
    add_policy_name,
    add_statement_arguments,
    document_source,
    list_all,
    path_prefix_params,
)
from controller.tools.policies import decoded_document, statement_policy
from controller.tools.xmldata import section


def _group(parser: argparse.ArgumentParser, help_text: str = "name of the group") -> None:
    parser.add_argument(
        "-g", "--group-name", dest="group", metavar="GROUP", required=True, help=help_text
    )


def _user(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "-u", "--user-name", dest="user", metavar="USER", required=True, help=help_text
    )


def _named(args: argparse.Namespace) -> list[tuple[str, str]]:
    return [("GroupName", args.group)]


# iam-groupcreate


def _create_arguments(parser: argparse.ArgumentParser) -> None:
    _group(parser, "name of the group to create")
    parser.add_argument("-p", "--path", metavar="PATH", help="the group's path (default: /)")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print the new group's ARN and id"
    )


def _create(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    params = _named(args) + ([("Path", args.path)] if args.path else [])
    group = section(client.call("CreateGroup", params), "Group", "CreateGroup")
    if args.verbose:
        print(group.get("Arn", ""), file=out)
        print(group.get("GroupId", ""), file=out)


GROUP_CREATE = Tool(
    name="iam-groupcreate",
    service="iam",
    summary="Create a group.",
    add_arguments=_create_arguments,
    run=_create,
    example="  $ iam-groupcreate -g developers -p /eng/ -v\n"
    "  arn:aws:iam::123456789012:group/eng/developers\n"
    "  AGPAEXAMPLEEXAMPLE123",
)


# iam-groupdel


def _delete_arguments(parser: argparse.ArgumentParser) -> None:
    _group(parser, "name of the group to delete")
    parser.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="first take its users out, delete its inline policies and detach its managed ones",
    )


def _attached_policies(client: Client, group: list[tuple[str, str]]) -> list[str]:
    """The ARNs of the managed policies attached to the group; none from a service that has no
    managed policies (it answers InvalidAction), since none can be attached there."""
    try:
        attached = list(list_all(client, "ListAttachedGroupPolicies", group, "AttachedPolicies"))
    except ServiceError as error:
        if error.code == "InvalidAction":
            return []
        raise
    return [policy.get("PolicyArn", "") for policy in attached]


def _delete(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    group = _named(args)
    if args.recursive:
        # Read whole lists before changing them: deleting while paging would shift the pages.
        users = [user.get("UserName", "") for user in list_all(client, "GetGroup", group, "Users")]
        policies = list(list_all(client, "ListGroupPolicies", group, "PolicyNames"))
        attached = _attached_policies(client, group)
        for user in users:
            client.call("RemoveUserFromGroup", [*group, ("UserName", user)])
        for policy in policies:
            client.call("DeleteGroupPolicy", [*group, ("PolicyName", policy)])
        for arn in attached:
            client.call("DetachGroupPolicy", [*group, ("PolicyArn", arn)])
    client.call("DeleteGroup", group)


GROUP_DELETE = Tool(
    name="iam-groupdel",
    service="iam",
    summary="Delete a group; with -r, take its users out and remove its policies first.",
    add_arguments=_delete_arguments,
    run=_delete,
    example="  $ iam-groupdel -g developers -r\n  (prints nothing)",
)


# iam-grouplistbypath


def _list(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    for group in list_all(client, "ListGroups", path_prefix_params(args), "Groups"):
        print(group.get("Arn", ""), file=out)


GROUP_LIST_BY_PATH = Tool(
    name="iam-grouplistbypath",
    service="iam",
    summary="List the ARNs of the account's groups, one a line.",
    add_arguments=add_path_prefix,
    run=_list,
    example="  $ iam-grouplistbypath -p /eng/\n  arn:aws:iam::123456789012:group/eng/developers",
)


# iam-groupadduser, iam-groupremoveuser, iam-grouplistusers


def _membership_arguments(parser: argparse.ArgumentParser) -> None:
    _group(parser)
    _user(parser, "name of the user")


def _add_user(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    client.call("AddUserToGroup", [*_named(args), ("UserName", args.user)])


def _remove_user(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    client.call("RemoveUserFromGroup", [*_named(args), ("UserName", args.user)])


GROUP_ADD_USER = Tool(
    name="iam-groupadduser",
    service="iam",
    summary="Put a user in a group (a user is in at most 10 groups).",
    add_arguments=_membership_arguments,
    run=_add_user,
    example="  $ iam-groupadduser -g developers -u alice\n  (prints nothing)",
)

GROUP_REMOVE_USER = Tool(
    name="iam-groupremoveuser",
    service="iam",
    summary="Take a user out of a group.",
    add_arguments=_membership_arguments,
    run=_remove_user,
    example="  $ iam-groupremoveuser -g developers -u alice\n  (prints nothing)",
)


def _list_users(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    for user in list_all(client, "GetGroup", _named(args), "Users"):
        print(user.get("Arn", ""), file=out)


GROUP_LIST_USERS = Tool(
    name="iam-grouplistusers",
    service="iam",
    summary="List the ARNs of a group's users, one a line.",
    add_arguments=_group,
    run=_list_users,
    example="  $ iam-grouplistusers -g developers\n  arn:aws:iam::123456789012:user/alice",
)


# iam-groupaddpolicy, iam-groupuploadpolicy


def _add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    _group(parser)
    add_policy_name(parser, "name of the inline policy (replaced if the group has it already)")
    add_statement_arguments(parser, "-r")


def _put_policy(client: Client, args: argparse.Namespace, document: str) -> None:
    client.call(
        "PutGroupPolicy",
        [*_named(args), ("PolicyName", args.policy), ("PolicyDocument", document)],
    )


def _add_policy(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    document = statement_policy(args.effect, args.actions, args.resources)
    _put_policy(client, args, document)
    if args.output:
        print(document, file=out)


GROUP_ADD_POLICY = Tool(
    name="iam-groupaddpolicy",
    service="iam",
    summary="Give a group an inline policy of one statement built from the flags.",
    add_arguments=_add_policy_arguments,
    run=_add_policy,
    example="  $ iam-groupaddpolicy -g developers -p s3read -e Allow -a s3:Get\\* -r \\* -o\n"
    '  {"Version":"2008-10-17","Statement":[{"Effect":"Allow","Action":["s3:Get*"],'
    '"Resource":["*"]}]}',
)


def _upload_arguments(parser: argparse.ArgumentParser) -> None:
    _group(parser)
    add_policy_name(parser, "name of the inline policy (replaced if the group has it already)")
    add_document_source(parser)


def _upload(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    _put_policy(client, args, document_source(args))


GROUP_UPLOAD_POLICY = Tool(
    name="iam-groupuploadpolicy",
    service="iam",
    summary="Give a group an inline policy written by hand (from a file or the command line).",
    add_arguments=_upload_arguments,
    run=_upload,
    example="  $ iam-groupuploadpolicy -g developers -p s3read -f s3read.json\n  (prints nothing)",
)


# iam-grouplistpolicies, iam-groupdelpolicy


def _list_policies_arguments(parser: argparse.ArgumentParser) -> None:
    _group(parser)
    parser.add_argument(
        "-p", "--policy-name", metavar="POLICY", dest="policy", help="print only this policy"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print each policy after its name"
    )


def _policy_document(client: Client, group: str, policy: str) -> str:
    result = client.call("GetGroupPolicy", [("GroupName", group), ("PolicyName", policy)])
    document = result.get("PolicyDocument")
    if not isinstance(document, str):
        raise ToolError(f"GetGroupPolicy answered without a PolicyDocument for {policy}")
    return decoded_document(document).rstrip("\n")


def _list_policies(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    if args.policy:
        print(_policy_document(client, args.group, args.policy), file=out)
        return
    for name in list_all(client, "ListGroupPolicies", _named(args), "PolicyNames"):
        print(name, file=out)
        if args.verbose:
            print(_policy_document(client, args.group, name), file=out)


GROUP_LIST_POLICIES = Tool(
    name="iam-grouplistpolicies",
    service="iam",
    summary="List a group's inline policy names, one a line; -v or -p for the policies.",
    add_arguments=_list_policies_arguments,
    run=_list_policies,
    example="  $ iam-grouplistpolicies -g developers\n  s3read",
)


def _delete_policy_arguments(parser: argparse.ArgumentParser) -> None:
    _group(parser)
    add_policy_name(parser, "name of the inline policy to delete")


def _delete_policy(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    client.call("DeleteGroupPolicy", [*_named(args), ("PolicyName", args.policy)])


GROUP_DELETE_POLICY = Tool(
    name="iam-groupdelpolicy",
    service="iam",
    summary="Delete one of a group's inline policies.",
    add_arguments=_delete_policy_arguments,
    run=_delete_policy,
    example="  $ iam-groupdelpolicy -g developers -p s3read\n  (prints nothing)",
)


TOOLS = (
    GROUP_CREATE,
    GROUP_DELETE,
    GROUP_LIST_BY_PATH,
    GROUP_ADD_USER,
    GROUP_REMOVE_USER,
    GROUP_LIST_USERS,
    GROUP_ADD_POLICY,
    GROUP_UPLOAD_POLICY,
    GROUP_LIST_POLICIES,
    GROUP_DELETE_POLICY,
)

groupcreate = entry_point(GROUP_CREATE)
groupdel = entry_point(GROUP_DELETE)
grouplistbypath = entry_point(GROUP_LIST_BY_PATH)
groupadduser = entry_point(GROUP_ADD_USER)
groupremoveuser = entry_point(GROUP_REMOVE_USER)
grouplistusers = entry_point(GROUP_LIST_USERS)
groupaddpolicy = entry_point(GROUP_ADD_POLICY)
groupuploadpolicy = entry_point(GROUP_UPLOAD_POLICY)
grouplistpolicies = entry_point(GROUP_LIST_POLICIES)
groupdelpolicy = entry_point(GROUP_DELETE_POLICY)
