"""``iam-role*``: create, inspect and delete roles, and manage their trust and inline policies."""

from __future__ import annotations

import argparse
from typing import TextIO

from controller.tools.client import Client
from controller.tools.command import Tool, entry_point, read_document
from controller.tools.errors import ToolError
from controller.tools.iam import (
    add_document_source,
    add_path_prefix,
    add_policy_name,
    add_role,
    add_statement_arguments,
    document_source,
    list_all,
    path_prefix_params,
)
from controller.tools.policies import (
    decoded_document,
    service_trust_policy,
    statement_policy,
)
from controller.tools.xmldata import section

# iam-rolecreate


def _trust_arguments(parser: argparse.ArgumentParser) -> None:
    trust = parser.add_mutually_exclusive_group(required=True)
    trust.add_argument(
        "-s",
        "--service",
        metavar="SERVICE",
        help="the service that may assume the role, e.g. ec2.amazonaws.com",
    )
    trust.add_argument(
        "-f",
        "--policy-file",
        metavar="FILE",
        help="file holding the trust policy (who may assume the role)",
    )


def _trust_document(args: argparse.Namespace) -> str:
    if args.service:
        return service_trust_policy(args.service)
    return read_document(args.policy_file)


def _create_arguments(parser: argparse.ArgumentParser) -> None:
    add_role(parser, "name of the role to create")
    _trust_arguments(parser)
    parser.add_argument("-p", "--path", metavar="PATH", help="the role's path (default: /)")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print the new role's ARN, id and trust policy",
    )


def _create(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    document = _trust_document(args)
    params = [("RoleName", args.role), ("AssumeRolePolicyDocument", document)]
    if args.path:
        params.append(("Path", args.path))
    role = section(client.call("CreateRole", params), "Role", "CreateRole")
    if args.verbose:
        print(role.get("Arn", ""), file=out)
        print(role.get("RoleId", ""), file=out)
        trust = decoded_document(role.get("AssumeRolePolicyDocument") or "") or document
        print(trust.rstrip("\n"), file=out)


ROLE_CREATE = Tool(
    name="iam-rolecreate",
    service="iam",
    summary="Create a role that SERVICE (or whoever the policy file names) may assume.",
    add_arguments=_create_arguments,
    run=_create,
    example="  $ iam-rolecreate -r s3access -s ec2.amazonaws.com\n  (prints nothing; -v prints "
    "the ARN, id and trust policy)",
)


# iam-roledel


def _delete_arguments(parser: argparse.ArgumentParser) -> None:
    add_role(parser, "name of the role to delete")
    parser.add_argument(
        "-c",
        "--recursive",
        action="store_true",
        help="first delete its inline policies and take it out of its instance profiles",
    )


def _delete(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    role = [("RoleName", args.role)]
    if args.recursive:
        # Read whole lists before changing them: deleting while paging would shift the pages.
        policies = list(list_all(client, "ListRolePolicies", role, "PolicyNames"))
        profiles = list(list_all(client, "ListInstanceProfilesForRole", role, "InstanceProfiles"))
        for policy in policies:
            client.call("DeleteRolePolicy", [*role, ("PolicyName", policy)])
        for profile in profiles:
            client.call(
                "RemoveRoleFromInstanceProfile",
                [("InstanceProfileName", profile.get("InstanceProfileName", "")), *role],
            )
    client.call("DeleteRole", role)


ROLE_DELETE = Tool(
    name="iam-roledel",
    service="iam",
    summary="Delete a role; with -c, its inline policies and profile memberships first.",
    add_arguments=_delete_arguments,
    run=_delete,
    example="  $ iam-roledel -r s3access -c\n  (prints nothing)",
)


# iam-rolelistbypath


def _list(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    for role in list_all(client, "ListRoles", path_prefix_params(args), "Roles"):
        print(role.get("Arn", ""), file=out)


ROLE_LIST_BY_PATH = Tool(
    name="iam-rolelistbypath",
    service="iam",
    summary="List the ARNs of the account's roles, one a line.",
    add_arguments=add_path_prefix,
    run=_list,
    example="  $ iam-rolelistbypath\n  arn:aws:iam::123456789012:role/s3access",
)


# iam-rolegetattributes


def _get(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    role = section(client.call("GetRole", [("RoleName", args.role)]), "Role", "GetRole")
    print(role.get("Arn", ""), file=out)
    print(role.get("RoleId", ""), file=out)
    print(decoded_document(role.get("AssumeRolePolicyDocument") or "").rstrip("\n"), file=out)


ROLE_GET_ATTRIBUTES = Tool(
    name="iam-rolegetattributes",
    service="iam",
    summary="Print a role's ARN, id and trust policy, one a line.",
    add_arguments=add_role,
    run=_get,
    example="  $ iam-rolegetattributes -r s3access\n"
    "  arn:aws:iam::123456789012:role/s3access\n"
    "  AROAEXAMPLEEXAMPLE123\n"
    '  {"Version":"2008-10-17","Statement":[...]}',
)


# iam-roleupdateassumepolicy


def _update_trust_arguments(parser: argparse.ArgumentParser) -> None:
    add_role(parser)
    _trust_arguments(parser)
    parser.add_argument("-o", "--output", action="store_true", help="print the new trust policy")


def _update_trust(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    document = _trust_document(args)
    client.call("UpdateAssumeRolePolicy", [("RoleName", args.role), ("PolicyDocument", document)])
    if args.output:
        print(document.rstrip("\n"), file=out)


ROLE_UPDATE_ASSUME_POLICY = Tool(
    name="iam-roleupdateassumepolicy",
    service="iam",
    summary="Replace a role's trust policy: who may assume it.",
    add_arguments=_update_trust_arguments,
    run=_update_trust,
    example="  $ iam-roleupdateassumepolicy -r s3access -s ec2.amazonaws.com\n  (prints nothing; "
    "-o prints the policy)",
)


# iam-roleuploadpolicy


def _upload_arguments(parser: argparse.ArgumentParser) -> None:
    add_role(parser)
    add_policy_name(parser, "name of the inline policy (replaced if the role has it already)")
    add_document_source(parser)


def _upload(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    document = document_source(args)
    client.call(
        "PutRolePolicy",
        [("RoleName", args.role), ("PolicyName", args.policy), ("PolicyDocument", document)],
    )


ROLE_UPLOAD_POLICY = Tool(
    name="iam-roleuploadpolicy",
    service="iam",
    summary="Give a role an inline policy written by hand (from a file or the command line).",
    add_arguments=_upload_arguments,
    run=_upload,
    example="  $ iam-roleuploadpolicy -r s3access -p s3read -f s3read.json\n  (prints nothing)",
)


# iam-roleaddpolicy


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add_role(parser)
    add_policy_name(parser, "name of the inline policy (replaced if the role has it already)")
    add_statement_arguments(parser, "-c")


def _add(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    document = statement_policy(args.effect, args.actions, args.resources)
    client.call(
        "PutRolePolicy",
        [("RoleName", args.role), ("PolicyName", args.policy), ("PolicyDocument", document)],
    )
    if args.output:
        print(document, file=out)


ROLE_ADD_POLICY = Tool(
    name="iam-roleaddpolicy",
    service="iam",
    summary="Give a role an inline policy of one statement built from the flags.",
    add_arguments=_add_arguments,
    run=_add,
    example="  $ iam-roleaddpolicy -r s3access -e Allow -a s3:\\* -c \\* -p s3star -o\n"
    '  {"Version":"2008-10-17","Statement":[{"Effect":"Allow","Action":["s3:*"],'
    '"Resource":["*"]}]}',
)


# iam-rolelistpolicies


def _list_policies_arguments(parser: argparse.ArgumentParser) -> None:
    add_role(parser)
    parser.add_argument(
        "-p", "--policy-name", metavar="POLICY", dest="policy", help="print only this policy"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print each policy after its name"
    )


def _list_policies(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    role = [("RoleName", args.role)]
    if args.policy:
        print(_policy_document(client, args.role, args.policy), file=out)
        return
    for name in list_all(client, "ListRolePolicies", role, "PolicyNames"):
        print(name, file=out)
        if args.verbose:
            print(_policy_document(client, args.role, name), file=out)


def _policy_document(client: Client, role: str, policy: str) -> str:
    result = client.call("GetRolePolicy", [("RoleName", role), ("PolicyName", policy)])
    document = result.get("PolicyDocument")
    if not isinstance(document, str):
        raise ToolError(f"GetRolePolicy answered without a PolicyDocument for {policy}")
    # Printed one a line: a file's final newline would leave a blank line after it.
    return decoded_document(document).rstrip("\n")


ROLE_LIST_POLICIES = Tool(
    name="iam-rolelistpolicies",
    service="iam",
    summary="List a role's inline policy names, one a line; -v or -p for the policies.",
    add_arguments=_list_policies_arguments,
    run=_list_policies,
    example="  $ iam-rolelistpolicies -r s3access\n  s3star",
)


# iam-roledelpolicy


def _delete_policy_arguments(parser: argparse.ArgumentParser) -> None:
    add_role(parser)
    add_policy_name(parser, "name of the inline policy to delete")


def _delete_policy(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    client.call("DeleteRolePolicy", [("RoleName", args.role), ("PolicyName", args.policy)])


ROLE_DELETE_POLICY = Tool(
    name="iam-roledelpolicy",
    service="iam",
    summary="Delete one of a role's inline policies.",
    add_arguments=_delete_policy_arguments,
    run=_delete_policy,
    example="  $ iam-roledelpolicy -r s3access -p s3star\n  (prints nothing)",
)


TOOLS = (
    ROLE_CREATE,
    ROLE_DELETE,
    ROLE_LIST_BY_PATH,
    ROLE_GET_ATTRIBUTES,
    ROLE_UPDATE_ASSUME_POLICY,
    ROLE_UPLOAD_POLICY,
    ROLE_ADD_POLICY,
    ROLE_LIST_POLICIES,
    ROLE_DELETE_POLICY,
)

rolecreate = entry_point(ROLE_CREATE)
roledel = entry_point(ROLE_DELETE)
rolelistbypath = entry_point(ROLE_LIST_BY_PATH)
rolegetattributes = entry_point(ROLE_GET_ATTRIBUTES)
roleupdateassumepolicy = entry_point(ROLE_UPDATE_ASSUME_POLICY)
roleuploadpolicy = entry_point(ROLE_UPLOAD_POLICY)
roleaddpolicy = entry_point(ROLE_ADD_POLICY)
rolelistpolicies = entry_point(ROLE_LIST_POLICIES)
roledelpolicy = entry_point(ROLE_DELETE_POLICY)
