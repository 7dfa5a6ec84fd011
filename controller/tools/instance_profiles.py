"""``iam-instanceprofile*``: create and delete instance profiles, and put a role in them."""

from __future__ import annotations

import argparse
from typing import TextIO

from controller.tools.client import Client
from controller.tools.command import Tool, entry_point
from controller.tools.errors import ServiceError
from controller.tools.iam import (
    add_path_prefix,
    add_profile,
    add_role,
    list_all,
    path_prefix_params,
)
from controller.tools.xmldata import members, section

# iam-instanceprofilecreate


def _create_arguments(parser: argparse.ArgumentParser) -> None:
    add_profile(parser, "name of the instance profile to create")
    parser.add_argument(
        "-r", "--role-name", dest="role", metavar="ROLE", help="role to put in the new profile"
    )
    parser.add_argument("-p", "--path", metavar="PATH", help="the profile's path (default: /)")


def _create(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    params = [("InstanceProfileName", args.profile_name)]
    if args.path:
        params.append(("Path", args.path))
    result = client.call("CreateInstanceProfile", params)
    profile = section(result, "InstanceProfile", "CreateInstanceProfile")
    if args.role:
        try:
            client.call(
                "AddRoleToInstanceProfile",
                [("InstanceProfileName", args.profile_name), ("RoleName", args.role)],
            )
        except ServiceError as error:
            # The profile exists now: say so, or a second try would only meet EntityAlreadyExists.
            raise ServiceError(
                error.code,
                f"{error.message} (instance profile {args.profile_name} was created without "
                "a role; add one with iam-instanceprofileaddrole)",
                error.status,
            ) from None
    print(profile.get("Arn", ""), file=out)


PROFILE_CREATE = Tool(
    name="iam-instanceprofilecreate",
    service="iam",
    summary="Create an instance profile, put ROLE in it, and print its ARN.",
    add_arguments=_create_arguments,
    run=_create,
    example="  $ iam-instanceprofilecreate -s s3access -r s3access\n"
    "  arn:aws:iam::123456789012:instance-profile/s3access",
)


# iam-instanceprofiledel


def _delete_arguments(parser: argparse.ArgumentParser) -> None:
    add_profile(parser, "name of the instance profile to delete")
    parser.add_argument(
        "-c", "--recursive", action="store_true", help="first take its role out of it"
    )


def _delete(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    name = [("InstanceProfileName", args.profile_name)]
    removed: list[str] = []
    if args.recursive:
        profile = section(
            client.call("GetInstanceProfile", name), "InstanceProfile", "GetInstanceProfile"
        )
        for role in members(profile.get("Roles")):
            role_name = role.get("RoleName", "")
            client.call("RemoveRoleFromInstanceProfile", [*name, ("RoleName", role_name)])
            removed.append(role_name)
    try:
        client.call("DeleteInstanceProfile", name)
    except ServiceError as error:
        if not removed:
            raise
        # Instances may still use the profile (DeleteConflict): they would be left without
        # credentials, so put its role back before saying why the profile stays.
        raise ServiceError(
            error.code, f"{error.message} ({_restore(client, name, removed)})", error.status
        ) from None


def _restore(client: Client, name: list[tuple[str, str]], roles: list[str]) -> str:
    try:
        for role in roles:
            client.call("AddRoleToInstanceProfile", [*name, ("RoleName", role)])
    except ServiceError as error:
        return f"its role {', '.join(roles)} was taken out and could not be put back: {error}"
    return f"its role {', '.join(roles)} was put back"


PROFILE_DELETE = Tool(
    name="iam-instanceprofiledel",
    service="iam",
    summary="Delete an instance profile; with -c, take its role out first.",
    add_arguments=_delete_arguments,
    run=_delete,
    example="  $ iam-instanceprofiledel -s s3access -c\n  (prints nothing)",
)


# iam-instanceprofilelistbypath


def _list(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    for profile in list_all(
        client, "ListInstanceProfiles", path_prefix_params(args), "InstanceProfiles"
    ):
        print(profile.get("Arn", ""), file=out)


PROFILE_LIST_BY_PATH = Tool(
    name="iam-instanceprofilelistbypath",
    service="iam",
    summary="List the ARNs of the account's instance profiles, one a line.",
    add_arguments=add_path_prefix,
    run=_list,
    example="  $ iam-instanceprofilelistbypath\n"
    "  arn:aws:iam::123456789012:instance-profile/s3access",
)


# iam-instanceprofilegetattributes


def _get(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    result = client.call("GetInstanceProfile", [("InstanceProfileName", args.profile_name)])
    profile = section(result, "InstanceProfile", "GetInstanceProfile")
    print(profile.get("Arn", ""), file=out)
    print(profile.get("InstanceProfileId", ""), file=out)
    for role in members(profile.get("Roles")):
        print(role.get("Arn", ""), file=out)


PROFILE_GET_ATTRIBUTES = Tool(
    name="iam-instanceprofilegetattributes",
    service="iam",
    summary="Print an instance profile's ARN and id, then the ARN of its role, one a line.",
    add_arguments=add_profile,
    run=_get,
    example="  $ iam-instanceprofilegetattributes -s s3access\n"
    "  arn:aws:iam::123456789012:instance-profile/s3access\n"
    "  AIPAEXAMPLEEXAMPLE123\n"
    "  arn:aws:iam::123456789012:role/s3access",
)


# iam-instanceprofileaddrole and iam-instanceprofileremoverole


def _membership_arguments(parser: argparse.ArgumentParser) -> None:
    add_profile(parser)
    add_role(parser)


def _add_role(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    client.call(
        "AddRoleToInstanceProfile",
        [("InstanceProfileName", args.profile_name), ("RoleName", args.role)],
    )


def _remove_role(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    client.call(
        "RemoveRoleFromInstanceProfile",
        [("InstanceProfileName", args.profile_name), ("RoleName", args.role)],
    )


PROFILE_ADD_ROLE = Tool(
    name="iam-instanceprofileaddrole",
    service="iam",
    summary="Put a role in an instance profile (a profile holds one role).",
    add_arguments=_membership_arguments,
    run=_add_role,
    example="  $ iam-instanceprofileaddrole -s s3access -r s3access\n  (prints nothing)",
)

PROFILE_REMOVE_ROLE = Tool(
    name="iam-instanceprofileremoverole",
    service="iam",
    summary="Take a role out of an instance profile.",
    add_arguments=_membership_arguments,
    run=_remove_role,
    example="  $ iam-instanceprofileremoverole -s s3access -r s3access\n  (prints nothing)",
)


# iam-instanceprofilelistforrole


def _list_for_role(args: argparse.Namespace, client: Client, out: TextIO) -> None:
    for profile in list_all(
        client, "ListInstanceProfilesForRole", [("RoleName", args.role)], "InstanceProfiles"
    ):
        print(profile.get("Arn", ""), file=out)


PROFILE_LIST_FOR_ROLE = Tool(
    name="iam-instanceprofilelistforrole",
    service="iam",
    summary="List the ARNs of the instance profiles a role is in, one a line.",
    add_arguments=add_role,
    run=_list_for_role,
    example="  $ iam-instanceprofilelistforrole -r s3access\n"
    "  arn:aws:iam::123456789012:instance-profile/s3access",
)


TOOLS = (
    PROFILE_CREATE,
    PROFILE_DELETE,
    PROFILE_LIST_BY_PATH,
    PROFILE_GET_ATTRIBUTES,
    PROFILE_ADD_ROLE,
    PROFILE_REMOVE_ROLE,
    PROFILE_LIST_FOR_ROLE,
)

instanceprofilecreate = entry_point(PROFILE_CREATE)
instanceprofiledel = entry_point(PROFILE_DELETE)
instanceprofilelistbypath = entry_point(PROFILE_LIST_BY_PATH)
instanceprofilegetattributes = entry_point(PROFILE_GET_ATTRIBUTES)
instanceprofileaddrole = entry_point(PROFILE_ADD_ROLE)
instanceprofileremoverole = entry_point(PROFILE_REMOVE_ROLE)
instanceprofilelistforrole = entry_point(PROFILE_LIST_FOR_ROLE)
