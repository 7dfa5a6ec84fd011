"""Who may do what, end to end: identity policies, session policies, federation, PassRole."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ACCOUNT_ID, Controller, start_controller, stop_controller
from tests.e2e.principals import (
    Keys,
    allow,
    assert_no_issued_secret_in_log,
    deny,
    error_of,
    new_role,
    new_user,
    policy,
    role_arn,
    trust,
    unique,
    user_arn,
)

ROOT_ARN = f"arn:aws:iam::{ACCOUNT_ID}:root"
EC2_TRUST = trust({"Service": "ec2.amazonaws.com"})
ROOT_TRUST = trust({"AWS": ROOT_ARN})


def denied(call: Any, **kwargs: Any) -> str:
    """The message of an AccessDenied (HTTP 403) the call must end in."""
    code, status, message = error_of(call, **kwargs)
    assert (code, status) == ("AccessDenied", 403), message
    return message


def user_iam(controller: Controller, *documents: str) -> tuple[str, Any]:
    """A new user with these inline policies, and an IAM client signed with its key."""
    name = unique("user")
    return name, new_user(controller, name, *documents).client(controller, "iam")


def make_role(controller: Controller, name: str, path: str = "/") -> str:
    return new_role(controller, name, EC2_TRUST, Path=path)


# -- identity policies of a user -----------------------------------------------------------------


@pytest.fixture(scope="module")
def path_reader(controller: Controller) -> dict[str, Any]:
    """A user allowed iam:GetRole on the roles under one path, and two roles in and out of it."""
    path = f"/{unique('team')}/"
    inside, outside = unique("in"), unique("out")
    make_role(controller, inside, path)
    make_role(controller, outside)
    name, iam = user_iam(
        controller, policy(allow("iam:GetRole", f"arn:aws:iam::{ACCOUNT_ID}:role{path}*"))
    )
    return {"name": name, "iam": iam, "inside": inside, "outside": outside}


def test_a_user_may_do_what_its_inline_policy_allows(path_reader: dict[str, Any]) -> None:
    role = path_reader["iam"].get_role(RoleName=path_reader["inside"])["Role"]
    assert role["RoleName"] == path_reader["inside"]


def test_a_user_is_denied_the_same_action_outside_the_allowed_resources(
    path_reader: dict[str, Any],
) -> None:
    message = denied(path_reader["iam"].get_role, RoleName=path_reader["outside"])
    assert message.startswith(
        f"User: {user_arn(path_reader['name'])} is not authorized to perform: iam:GetRole"
        f" on resource: {role_arn(path_reader['outside'])}"
    )


def test_a_user_is_denied_other_actions_in_aws_words(path_reader: dict[str, Any]) -> None:
    name = unique("new")
    message = denied(
        path_reader["iam"].create_role, RoleName=name, AssumeRolePolicyDocument=EC2_TRUST
    )
    assert message.startswith(
        f"User: {user_arn(path_reader['name'])} is not authorized to perform: iam:CreateRole"
        f" on resource: arn:aws:iam::{ACCOUNT_ID}:role/{name}"
    )


def test_an_explicit_deny_beats_an_allow(controller: Controller) -> None:
    kept, refused = unique("kept"), unique("refused")
    make_role(controller, kept)
    make_role(controller, refused)
    _, iam = user_iam(
        controller, policy(allow("iam:*")), policy(deny("iam:GetRole", role_arn(refused)))
    )
    assert iam.get_role(RoleName=kept)["Role"]["RoleName"] == kept
    message = denied(iam.get_role, RoleName=refused)
    assert f"iam:GetRole on resource: {role_arn(refused)}" in message


def test_not_action_allows_every_action_but_the_ones_it_names(controller: Controller) -> None:
    role = unique("na")
    make_role(controller, role)
    statement = {"Effect": "Allow", "NotAction": ["iam:CreateRole", "iam:Delete*"], "Resource": "*"}
    _, iam = user_iam(controller, policy(statement))
    assert iam.get_role(RoleName=role)["Role"]["RoleName"] == role
    denied(iam.create_role, RoleName=unique("na"), AssumeRolePolicyDocument=EC2_TRUST)
    denied(iam.delete_role, RoleName=role)


def test_not_resource_allows_every_resource_but_the_ones_it_names(
    controller: Controller,
) -> None:
    public, secret = unique("public"), unique("secret")
    make_role(controller, public)
    make_role(controller, secret)
    statement = {
        "Effect": "Allow",
        "Action": "iam:GetRole",
        "NotResource": f"arn:aws:iam::{ACCOUNT_ID}:role/secret-*",
    }
    _, iam = user_iam(controller, policy(statement))
    assert iam.get_role(RoleName=public)["Role"]["RoleName"] == public
    denied(iam.get_role, RoleName=secret)


@pytest.mark.parametrize(("cidr", "allowed"), [("127.0.0.1/32", True), ("10.0.0.0/8", False)])
def test_a_source_ip_condition_allows_only_requests_from_its_network(
    controller: Controller, cidr: str, allowed: bool
) -> None:
    role = unique("ip")
    make_role(controller, role)
    condition = {"IpAddress": {"aws:SourceIp": cidr}}
    _, iam = user_iam(controller, policy(allow("iam:GetRole", Condition=condition)))
    if allowed:
        assert iam.get_role(RoleName=role)["Role"]["RoleName"] == role
    else:
        denied(iam.get_role, RoleName=role)


def test_aws_username_in_a_resource_stands_for_the_calling_user(controller: Controller) -> None:
    other = unique("other")
    controller.client("iam").create_user(UserName=other)
    own_user = f"arn:aws:iam::{ACCOUNT_ID}:user/${{aws:username}}"
    name, iam = user_iam(controller, policy(allow(["iam:GetUser", "iam:ListAccessKeys"], own_user)))
    assert iam.get_user(UserName=name)["User"]["Arn"] == user_arn(name)
    assert iam.get_user()["User"]["UserName"] == name
    assert len(iam.list_access_keys()["AccessKeyMetadata"]) == 1
    message = denied(iam.get_user, UserName=other)
    assert f"iam:GetUser on resource: {user_arn(other)}" in message
    denied(iam.list_access_keys, UserName=other)


def test_session_token_credentials_cannot_call_iam_even_when_the_user_can(
    controller: Controller,
) -> None:
    name = unique("user")
    keys = new_user(controller, name, policy(allow("iam:*")))
    session = Keys.of(keys.client(controller, "sts").get_session_token())
    assert keys.client(controller, "iam").get_user(UserName=name)["User"]["UserName"] == name
    message = denied(session.client(controller, "iam").get_user, UserName=name)
    assert message.startswith(f"User: {user_arn(name)} is not authorized to perform: iam:GetUser")


def test_a_deleted_users_session_gets_nothing_from_a_new_user_of_the_same_name(
    controller: Controller,
) -> None:
    """A session belongs to the user that started it (its UserId), not to whoever bears the name
    later: deleting a user ends what its sessions may do, and recreating the name restores none."""
    iam = controller.client("iam")
    name = unique("reborn")
    keys = new_user(controller, name)
    session = Keys.of(keys.client(controller, "sts").get_session_token())
    iam.delete_access_key(UserName=name, AccessKeyId=keys.access_key_id)
    iam.delete_user(UserName=name)
    reborn = new_user(controller, name, policy(allow("sts:AssumeRole")))
    arn = new_role(controller, unique("target"), ROOT_TRUST)
    # The control: a session of the new user may assume the role.
    own_session = Keys.of(reborn.client(controller, "sts").get_session_token())
    own_session.client(controller, "sts").assume_role(RoleArn=arn, RoleSessionName="s1")
    denied(session.client(controller, "sts").assume_role, RoleArn=arn, RoleSessionName="s1")


# -- assumed roles and session policies ----------------------------------------------------------


@pytest.fixture(scope="module")
def reader_role(controller: Controller) -> str:
    """A role the root may assume that allows iam:Get* and iam:List*."""
    return new_role(
        controller, unique("reader"), ROOT_TRUST, policy(allow(["iam:Get*", "iam:List*"]))
    )


def assumed_iam(controller: Controller, arn: str, **kwargs: Any) -> Any:
    sts = Keys.root(controller).client(controller, "sts")
    response = sts.assume_role(RoleArn=arn, RoleSessionName="s1", **kwargs)
    return Keys.of(response).client(controller, "iam")


def test_an_assumed_role_may_do_what_its_policies_allow(
    controller: Controller, reader_role: str
) -> None:
    iam = assumed_iam(controller, reader_role)
    name = reader_role.rpartition("/")[2]
    assert iam.get_role(RoleName=name)["Role"]["Arn"] == reader_role
    assert "Roles" in iam.list_roles(MaxItems=1)
    denied(iam.create_role, RoleName=unique("no"), AssumeRolePolicyDocument=EC2_TRUST)


def test_a_session_policy_narrows_an_assumed_role_to_what_both_allow(
    controller: Controller, reader_role: str
) -> None:
    iam = assumed_iam(controller, reader_role, Policy=policy(allow("iam:GetRole")))
    name = reader_role.rpartition("/")[2]
    session_arn = f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{name}/s1"
    assert iam.get_role(RoleName=name)["Role"]["Arn"] == reader_role
    message = denied(iam.list_roles)
    assert message.startswith(f"User: {session_arn} is not authorized to perform: iam:ListRoles")
    denied(iam.create_role, RoleName=unique("no"), AssumeRolePolicyDocument=EC2_TRUST)


def test_a_session_policy_cannot_widen_an_assumed_role(
    controller: Controller, reader_role: str
) -> None:
    iam = assumed_iam(controller, reader_role, Policy=policy(allow("iam:*")))
    denied(iam.create_role, RoleName=unique("no"), AssumeRolePolicyDocument=EC2_TRUST)


def test_deleting_a_roles_policy_takes_effect_for_existing_sessions(
    controller: Controller,
) -> None:
    name = unique("revoke")
    arn = new_role(controller, name, ROOT_TRUST, policy(allow("iam:GetRole")))
    iam = assumed_iam(controller, arn)
    assert iam.get_role(RoleName=name)["Role"]["Arn"] == arn
    controller.client("iam").delete_role_policy(RoleName=name, PolicyName="p1")
    denied(iam.get_role, RoleName=name)


def test_a_role_session_must_name_the_user_in_get_user(controller: Controller) -> None:
    """GetUser without UserName means the caller's own user, which a role session has not.

    Whoever assumed the role is not the session's identity: in AWS the call is refused.
    """
    user = unique("assumer")
    keys = new_user(controller, user)
    arn = new_role(
        controller, unique("getuser"), trust({"AWS": user_arn(user)}), policy(allow("iam:GetUser"))
    )
    response = keys.client(controller, "sts").assume_role(RoleArn=arn, RoleSessionName="s1")
    iam = Keys.of(response).client(controller, "iam")
    assert error_of(iam.get_user) == (
        "ValidationError",
        400,
        "Must specify userName when calling with non-User credentials",
    )


# -- federated users ---------------------------------------------------------------------------


def federated(controller: Controller, keys: Keys, **kwargs: Any) -> Keys:
    sts = keys.client(controller, "sts")
    return Keys.of(sts.get_federation_token(Name=unique("fed"), **kwargs))


def test_a_federated_user_without_a_session_policy_can_only_ask_who_it_is(
    controller: Controller,
) -> None:
    keys = federated(controller, Keys.root(controller))
    sts, iam = keys.client(controller, "sts"), keys.client(controller, "iam")
    assert ":federated-user/" in sts.get_caller_identity()["Arn"]
    denied(iam.list_roles)
    denied(iam.get_user, UserName="anyone")
    denied(sts.get_federation_token, Name=unique("again"))
    denied(sts.get_session_token)


@pytest.mark.parametrize("issuer", ["root", "user"])
def test_a_federated_user_cannot_call_iam_even_when_its_session_policy_allows_it(
    controller: Controller, reader_role: str, issuer: str
) -> None:
    if issuer == "root":
        keys = Keys.root(controller)
    else:
        name = unique("issuer")
        keys = new_user(controller, name, policy(allow(["iam:*", "sts:GetFederationToken"])))
    session_policy = policy(allow("iam:GetRole"))
    fed = federated(controller, keys, Policy=session_policy)
    iam = fed.client(controller, "iam")
    message = denied(iam.get_role, RoleName=reader_role.rpartition("/")[2])
    assert message.startswith(f"User: arn:aws:sts::{ACCOUNT_ID}:federated-user/")
    assert f"is not authorized to perform: iam:GetRole on resource: {reader_role}" in message


# -- iam:PassRole --------------------------------------------------------------------------------


def test_adding_a_role_to_a_profile_needs_pass_role_on_the_role(controller: Controller) -> None:
    role, profile = unique("pass"), unique("prof")
    make_role(controller, role)
    controller.client("iam").create_instance_profile(InstanceProfileName=profile)
    name, iam = user_iam(controller, policy(allow("iam:AddRoleToInstanceProfile")))
    message = denied(iam.add_role_to_instance_profile, InstanceProfileName=profile, RoleName=role)
    assert message.startswith(
        f"User: {user_arn(name)} is not authorized to perform: iam:PassRole"
        f" on resource: {role_arn(role)}"
    )
    controller.client("iam").put_user_policy(
        UserName=name,
        PolicyName="pass",
        PolicyDocument=policy(allow("iam:PassRole", role_arn(role))),
    )
    iam.add_role_to_instance_profile(InstanceProfileName=profile, RoleName=role)
    roles = controller.client("iam").get_instance_profile(InstanceProfileName=profile)
    assert [r["RoleName"] for r in roles["InstanceProfile"]["Roles"]] == [role]


def test_no_issued_secret_reaches_the_controller_log(controller: Controller) -> None:
    assert_no_issued_secret_in_log(controller)


# -- a Deny names the entity, not one spelling of its name ----------------------------------------


def test_a_deny_on_a_user_and_a_role_holds_when_the_request_changes_the_case_of_the_name(
    controller: Controller,
) -> None:
    """The review's two reproductions: IAM finds names ignoring case, so the Deny must match
    the entity found, not the caller's spelling of it."""
    admin = unique("Admin")
    make_role(controller, admin)
    controller.client("iam").create_user(UserName=admin)
    _, iam = user_iam(
        controller,
        policy(allow("iam:*"), deny("*", [role_arn(admin), user_arn(admin)])),
    )
    message = denied(iam.create_access_key, UserName=admin.lower())
    assert message.endswith(
        f"on resource: {user_arn(admin)} with an explicit deny in an identity-based policy"
    )
    message = denied(
        iam.put_role_policy,
        RoleName=admin.upper(),
        PolicyName="all",
        PolicyDocument=policy(allow("*")),
    )
    assert message.endswith(
        f"on resource: {role_arn(admin)} with an explicit deny in an identity-based policy"
    )
    root = controller.client("iam")
    assert root.list_access_keys(UserName=admin)["AccessKeyMetadata"] == []
    assert root.list_role_policies(RoleName=admin)["PolicyNames"] == []


# -- aws:SourceIp behind a trusted proxy ---------------------------------------------------------


def test_source_ip_is_read_from_x_forwarded_for_only_behind_a_trusted_proxy(
    tmp_path: Path,
) -> None:
    """A controller behind a proxy on 127.0.0.1 believes what that proxy appended; one without
    trusted proxies keeps the TCP peer, whatever a client writes in the header."""
    behind = tmp_path / "behind.toml"
    behind.write_text('[api]\ntrusted_proxies = ["127.0.0.1/32"]\n')
    with ExitStack() as stack:
        plain = start_controller(tmp_path / "plain")
        stack.callback(stop_controller, plain)
        proxied = start_controller(tmp_path / "proxied", behind)
        stack.callback(stop_controller, proxied)
        office = {"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}}
        for controller in (plain, proxied):
            role = unique("ip")
            make_role(controller, role)
            _, iam = user_iam(controller, policy(allow("iam:GetRole", Condition=office)))

            def forwarded(request: Any, **_: Any) -> None:
                request.headers["X-Forwarded-For"] = "192.0.2.1, 203.0.113.9"

            iam.meta.events.register_first("before-sign.iam.GetRole", forwarded)
            if controller is proxied:
                assert iam.get_role(RoleName=role)["Role"]["RoleName"] == role
            else:
                denied(iam.get_role, RoleName=role)
