"""IAM groups through boto3, the ``aws`` command line and the ``iam-group*`` tools against one
real controller: the records, IAM's errors and quotas, and what a group's policies grant its
users (and their sessions) from the next request on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.conftest import ACCOUNT_ID, Controller
from tests.e2e.principals import (
    Keys,
    allow,
    assert_no_issued_secret_in_log,
    deny,
    error_of,
    policy,
    unique,
)
from tests.e2e.test_aws_cli import aws, aws_json
from tests.e2e.test_tools import failed, ok, shell


def group_arn(name: str, path: str = "/") -> str:
    return f"arn:aws:iam::{ACCOUNT_ID}:group{path}{name}"


def big_policy(characters: int) -> str:
    """An identity policy of about ``characters`` characters, whitespace not counted."""
    resources = [f"arn:aws:s3:::bucket-{index:05d}/*" for index in range(characters // 31)]
    return json.dumps({"Version": "2012-10-17", "Statement": [allow("s3:GetObject", resources)]})


# The records


def test_a_group_reads_back_lists_under_its_path_and_pages_its_users(iam: Any) -> None:
    name, path = unique("devs"), f"/{unique('team')}/"
    created = iam.create_group(GroupName=name, Path=path)["Group"]
    assert created["Arn"] == group_arn(name, path)
    assert created["GroupId"].startswith("AGPA") and len(created["GroupId"]) == 21
    users = sorted(unique(letter) for letter in "abc")
    for user in users:
        iam.create_user(UserName=user)
        iam.add_user_to_group(GroupName=name, UserName=user)

    first = iam.get_group(GroupName=name.upper(), MaxItems=2)
    assert {key: first["Group"][key] for key in ("GroupName", "GroupId", "Path", "Arn")} == {
        key: created[key] for key in ("GroupName", "GroupId", "Path", "Arn")
    }
    assert [user["UserName"] for user in first["Users"]] == users[:2]
    assert first["IsTruncated"] is True
    rest = iam.get_group(GroupName=name, Marker=first["Marker"])
    assert ([user["UserName"] for user in rest["Users"]], rest["IsTruncated"]) == (users[2:], False)

    assert [group["GroupName"] for group in iam.list_groups(PathPrefix=path)["Groups"]] == [name]
    listed = iam.list_groups_for_user(UserName=users[0])["Groups"]
    assert [group["Arn"] for group in listed] == [group_arn(name, path)]


def test_list_groups_pages_by_name(iam: Any) -> None:
    path = f"/{unique('paged')}/"
    names = sorted(unique(letter) for letter in "xyz")
    for name in names:
        iam.create_group(GroupName=name, Path=path)
    paginator = iam.get_paginator("list_groups")
    pages = list(paginator.paginate(PathPrefix=path, PaginationConfig={"PageSize": 2}))
    assert [[group["GroupName"] for group in page["Groups"]] for page in pages] == [
        names[:2],
        names[2:],
    ]


def test_a_group_renamed_and_moved_keeps_its_id_members_and_policies(iam: Any) -> None:
    old, new, taken, user = unique("old"), unique("new"), unique("taken"), unique("member")
    group_id = iam.create_group(GroupName=old)["Group"]["GroupId"]
    iam.create_group(GroupName=taken)
    iam.create_user(UserName=user)
    iam.add_user_to_group(GroupName=old, UserName=user)
    iam.put_group_policy(GroupName=old, PolicyName="p", PolicyDocument=policy(allow("s3:*")))

    code, status, message = error_of(iam.update_group, GroupName=old, NewGroupName=taken.upper())
    assert (code, status, message) == (
        "EntityAlreadyExists",
        409,
        f"Group with name {taken.upper()} already exists.",
    )
    iam.update_group(GroupName=old, NewGroupName=new, NewPath="/moved/")
    assert error_of(iam.get_group, GroupName=old)[:2] == ("NoSuchEntity", 404)
    got = iam.get_group(GroupName=new)
    assert (got["Group"]["GroupId"], got["Group"]["Arn"]) == (group_id, group_arn(new, "/moved/"))
    assert [member["UserName"] for member in got["Users"]] == [user]
    assert iam.list_group_policies(GroupName=new)["PolicyNames"] == ["p"]


def test_group_policies_round_trip_url_encoded_and_sorted(iam: Any) -> None:
    name = unique("pol")
    iam.create_group(GroupName=name)
    first, second = policy(allow("s3:GetObject")), policy(deny("s3:DeleteObject"))
    iam.put_group_policy(GroupName=name, PolicyName="b-second", PolicyDocument=second)
    iam.put_group_policy(GroupName=name, PolicyName="a-first", PolicyDocument=first)
    got = iam.get_group_policy(GroupName=name, PolicyName="A-FIRST")
    assert (got["GroupName"], got["PolicyName"]) == (name, "a-first")
    assert got["PolicyDocument"] == json.loads(first)
    assert iam.list_group_policies(GroupName=name)["PolicyNames"] == ["a-first", "b-second"]
    iam.delete_group_policy(GroupName=name, PolicyName="a-first")
    assert iam.list_group_policies(GroupName=name)["PolicyNames"] == ["b-second"]
    assert error_of(iam.get_group_policy, GroupName=name, PolicyName="a-first") == (
        "NoSuchEntity",
        404,
        "The group policy with name a-first cannot be found.",
    )
    code, status, _ = error_of(
        iam.put_group_policy, GroupName=name, PolicyName="bad", PolicyDocument='{"Statement": 1}'
    )
    assert (code, status) == ("MalformedPolicyDocument", 400)


# IAM's errors and quotas


def test_unknown_groups_and_users_are_no_such_entity_in_iam_words(iam: Any) -> None:
    group, user = unique("nogroup"), unique("nouser")
    missing_group = ("NoSuchEntity", 404, f"The group with name {group} cannot be found.")
    for call, extra in (
        (iam.get_group, {}),
        (iam.delete_group, {}),
        (iam.update_group, {"NewGroupName": unique("x")}),
        (iam.list_group_policies, {}),
        (iam.put_group_policy, {"PolicyName": "p", "PolicyDocument": policy(allow("s3:*"))}),
        (iam.add_user_to_group, {"UserName": user}),
    ):
        assert error_of(call, GroupName=group, **extra) == missing_group, call
    existing = unique("exists")
    iam.create_group(GroupName=existing)
    missing_user = ("NoSuchEntity", 404, f"The user with name {user} cannot be found.")
    assert error_of(iam.add_user_to_group, GroupName=existing, UserName=user) == missing_user
    assert error_of(iam.list_groups_for_user, UserName=user) == missing_user
    assert error_of(iam.create_group, GroupName=existing.upper()) == (
        "EntityAlreadyExists",
        409,
        f"Group with name {existing.upper()} already exists.",
    )


def test_a_group_is_deleted_only_without_users_and_policies(iam: Any) -> None:
    name, user = unique("busy"), unique("member")
    iam.create_group(GroupName=name)
    iam.create_user(UserName=user)
    iam.add_user_to_group(GroupName=name, UserName=user)
    iam.add_user_to_group(GroupName=name, UserName=user)  # again: success, no change
    iam.put_group_policy(GroupName=name, PolicyName="p", PolicyDocument=policy(allow("s3:*")))

    assert error_of(iam.delete_group, GroupName=name) == (
        "DeleteConflict",
        409,
        "Cannot delete entity, must remove users from group first.",
    )
    assert error_of(iam.delete_user, UserName=user) == (
        "DeleteConflict",
        409,
        "Cannot delete entity, must remove user from all groups first.",
    )
    iam.remove_user_from_group(GroupName=name, UserName=user)
    iam.remove_user_from_group(GroupName=name, UserName=user)  # not a member: success
    assert iam.get_group(GroupName=name)["Users"] == []
    assert error_of(iam.delete_group, GroupName=name) == (
        "DeleteConflict",
        409,
        "Cannot delete entity, must delete policies first.",
    )
    iam.delete_group_policy(GroupName=name, PolicyName="p")
    iam.delete_group(GroupName=name)
    iam.delete_user(UserName=user)
    assert error_of(iam.get_group, GroupName=name)[:2] == ("NoSuchEntity", 404)


def test_a_user_is_in_at_most_ten_groups(iam: Any) -> None:
    user = unique("joiner")
    iam.create_user(UserName=user)
    groups = [unique(f"g{index}") for index in range(11)]
    for group in groups:
        iam.create_group(GroupName=group)
    for group in groups[:10]:
        iam.add_user_to_group(GroupName=group, UserName=user)
    assert error_of(iam.add_user_to_group, GroupName=groups[10], UserName=user) == (
        "LimitExceeded",
        409,
        "Cannot exceed quota for GroupsPerUser: 10",
    )
    iam.add_user_to_group(GroupName=groups[0], UserName=user)  # a member already: no new place
    assert len(iam.list_groups_for_user(UserName=user)["Groups"]) == 10
    page = iam.list_groups_for_user(UserName=user, MaxItems=4)
    assert (len(page["Groups"]), page["IsTruncated"]) == (4, True)


def test_a_groups_inline_policies_hold_5120_characters_in_all(iam: Any) -> None:
    name = unique("sized")
    iam.create_group(GroupName=name)
    iam.put_group_policy(GroupName=name, PolicyName="one", PolicyDocument=big_policy(3000))
    too_much = (
        "LimitExceeded",
        409,
        f"Maximum policy size of 5120 bytes exceeded for group {name}",
    )
    assert (
        error_of(
            iam.put_group_policy, GroupName=name, PolicyName="two", PolicyDocument=big_policy(3000)
        )
        == too_much
    )
    # A policy replaced is not counted twice.
    iam.put_group_policy(GroupName=name, PolicyName="ONE", PolicyDocument=big_policy(4000))
    assert iam.list_group_policies(GroupName=name)["PolicyNames"] == ["ONE"]


# What a group grants


def member(controller: Controller, iam: Any, *own: str) -> tuple[str, str, Keys]:
    """A new group and a user in it with an access key (and its own inline policies)."""
    group, user = unique("grp"), unique("usr")
    iam.create_group(GroupName=group)
    iam.create_user(UserName=user)
    for index, document in enumerate(own, start=1):
        iam.put_user_policy(UserName=user, PolicyName=f"own{index}", PolicyDocument=document)
    iam.add_user_to_group(GroupName=group, UserName=user)
    return group, user, Keys.of(iam.create_access_key(UserName=user)).remember(controller)


def test_a_user_allowed_only_by_its_group_loses_it_on_the_next_request_without_it(
    controller: Controller, iam: Any
) -> None:
    group, user, keys = member(controller, iam)
    as_user = keys.client(controller, "iam")
    assert error_of(as_user.list_users)[:2] == ("AccessDenied", 403)
    iam.put_group_policy(
        GroupName=group, PolicyName="read", PolicyDocument=policy(allow("iam:ListUsers"))
    )
    assert user in [each["UserName"] for each in as_user.list_users()["Users"]]
    iam.remove_user_from_group(GroupName=group, UserName=user)
    code, status, message = error_of(as_user.list_users)
    assert (code, status) == ("AccessDenied", 403)
    assert "no identity-based policy allows the iam:ListUsers action" in message
    iam.add_user_to_group(GroupName=group, UserName=user)
    assert as_user.list_users()["Users"]
    iam.delete_group_policy(GroupName=group, PolicyName="read")
    assert error_of(as_user.list_users)[:2] == ("AccessDenied", 403)


def test_a_deny_in_a_group_policy_wins_over_the_users_own_allow(
    controller: Controller, iam: Any
) -> None:
    group, _, keys = member(controller, iam, policy(allow(["iam:ListUsers", "iam:ListGroups"])))
    as_user = keys.client(controller, "iam")
    as_user.list_users()
    iam.put_group_policy(
        GroupName=group, PolicyName="no", PolicyDocument=policy(deny("iam:ListUsers"))
    )
    code, status, message = error_of(as_user.list_users)
    assert (code, status) == ("AccessDenied", 403)
    assert "explicit deny" in message
    assert "Groups" in as_user.list_groups()


def test_the_users_sessions_get_and_lose_what_the_group_grants(
    controller: Controller, iam: Any
) -> None:
    group, user, keys = member(controller, iam)
    grant = policy(allow(["ec2:DescribeInstances", "sts:GetFederationToken"]))
    iam.put_group_policy(GroupName=group, PolicyName="ec2", PolicyDocument=grant)
    sts = keys.client(controller, "sts")
    session = Keys.of(sts.get_session_token()).client(controller, "ec2")
    federated = Keys.of(
        sts.get_federation_token(Name=user[:32], Policy=policy(allow("ec2:*")))
    ).client(controller, "ec2")
    for ec2 in (session, federated):
        assert "Reservations" in ec2.describe_instances()
    iam.remove_user_from_group(GroupName=group, UserName=user)
    for ec2 in (session, federated):
        assert error_of(ec2.describe_instances)[:2] == ("UnauthorizedOperation", 403)


def test_moving_a_group_needs_permission_on_its_new_name_too(
    controller: Controller, iam: Any
) -> None:
    team, other = f"/{unique('team')}/", f"/{unique('other')}/"
    group = unique("movable")
    iam.create_group(GroupName=group, Path=team)
    allowed = policy(allow("iam:UpdateGroup", f"arn:aws:iam::{ACCOUNT_ID}:group{team}*"))
    admin = Keys.of(
        iam.create_access_key(UserName=_user_with(iam, unique("admin"), allowed))
    ).client(controller, "iam")
    code, status, message = error_of(admin.update_group, GroupName=group, NewPath=other)
    assert (code, status) == ("AccessDenied", 403)
    assert f"group{other}{group}" in message
    admin.update_group(GroupName=group, NewGroupName=f"{group}-2")
    assert iam.get_group(GroupName=f"{group}-2")["Group"]["Path"] == team


def _user_with(iam: Any, name: str, document: str) -> str:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=document)
    return name


# The aws command line and the iam-group* tools


def test_groups_through_the_aws_cli(controller: Controller, iam: Any) -> None:
    group, user = unique("cli"), unique("cliuser")
    iam.create_user(UserName=user)
    created = aws_json(controller, "iam", "create-group", "--group-name", group, "--path", "/c/")
    assert created["Group"]["Arn"] == group_arn(group, "/c/")
    aws(controller, "iam", "add-user-to-group", "--group-name", group, "--user-name", user)
    document = policy(allow("s3:GetObject"))
    aws(
        controller,
        "iam",
        "put-group-policy",
        "--group-name",
        group,
        "--policy-name",
        "read",
        "--policy-document",
        document,
    )
    assert iam.get_group_policy(GroupName=group, PolicyName="read")["PolicyDocument"] == (
        json.loads(document)
    )
    got = aws_json(controller, "iam", "get-group", "--group-name", group)
    assert got["Group"]["GroupId"] == created["Group"]["GroupId"]
    assert [member["UserName"] for member in got["Users"]] == [user]
    listed = aws_json(controller, "iam", "list-groups-for-user", "--user-name", user)["Groups"]
    assert [each["GroupName"] for each in listed] == [group]
    iam.remove_user_from_group(GroupName=group, UserName=user)
    iam.delete_group_policy(GroupName=group, PolicyName="read")
    aws(controller, "iam", "delete-group", "--group-name", group)
    assert error_of(iam.get_group, GroupName=group)[:2] == ("NoSuchEntity", 404)


def test_groups_through_the_iam_group_tools(
    controller: Controller, iam: Any, tmp_path: Path
) -> None:
    group, path, user = unique("tools"), f"/{unique('t')}/", unique("tooluser")
    arn = group_arn(group, path)
    iam.create_user(UserName=user)
    arn_line, group_id = ok(controller, f"iam-groupcreate -g {group} -p {path} -v").splitlines()
    assert (arn_line, group_id) == (arn, iam.get_group(GroupName=group)["Group"]["GroupId"])
    assert ok(controller, f"iam-grouplistbypath -p {path}") == arn + "\n"
    ok(controller, f"iam-groupadduser -g {group} -u {user}")
    assert ok(controller, f"iam-grouplistusers -g {group}") == (
        f"arn:aws:iam::{ACCOUNT_ID}:user/{user}\n"
    )
    added = ok(
        controller, f"iam-groupaddpolicy -g {group} -p s3get -e Allow -a s3:Get\\* -r '*' -o"
    )
    assert iam.get_group_policy(GroupName=group, PolicyName="s3get")["PolicyDocument"] == (
        json.loads(added)
    )
    (tmp_path / "logs.json").write_text(policy(allow("logs:*")))
    ok(controller, f"iam-groupuploadpolicy -g {group} -p logs -f {tmp_path}/logs.json")
    assert ok(controller, f"iam-grouplistpolicies -g {group}") == "logs\ns3get\n"
    ok(controller, f"iam-groupdelpolicy -g {group} -p logs")
    assert iam.list_group_policies(GroupName=group)["PolicyNames"] == ["s3get"]

    assert failed(controller, f"iam-groupdel -g {group}") == (
        "iam-groupdel: DeleteConflict: Cannot delete entity, must remove users from group first.\n"
    )
    ok(controller, f"iam-groupdel -g {group} -r")
    assert error_of(iam.get_group, GroupName=group)[:2] == ("NoSuchEntity", 404)
    assert iam.list_groups_for_user(UserName=user)["Groups"] == []
    iam.delete_user(UserName=user)  # no longer in a group


def test_a_bad_group_tool_flag_is_named_on_one_line(controller: Controller) -> None:
    result = shell(controller, "iam-groupadduser -g g --user x")
    assert result.returncode == 2
    assert result.stderr == (
        "iam-groupadduser: unrecognized arguments: --user (see iam-groupadduser --help)\n"
    )
    bad = shell(controller, "iam-groupaddpolicy -g g -p p -e Perhaps -a s3:x -r '*'")
    assert bad.returncode == 2
    assert "argument -e/--effect: effect must be Allow or Deny" in bad.stderr


def test_no_issued_secret_reaches_the_controller_log(controller: Controller) -> None:
    assert_no_issued_secret_in_log(controller)
