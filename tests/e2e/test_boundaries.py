"""Permissions boundaries through boto3 and the aws CLI against a real controller (issue 15).

A boundary caps what an identity and its sessions can do: effective permissions are the
identity's policies ∩ its boundary (∩ the session policy), a Deny in the boundary wins, and a
change to the boundary (removed, or a new default version) holds from the next request. The
``iam:PermissionsBoundary`` key lets an administrator delegate role creation under a boundary.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import ACCOUNT_ID, BIN, Controller
from tests.e2e.principals import (
    Keys,
    allow,
    assert_no_issued_secret_in_log,
    deny,
    error_of,
    policy,
    trust,
    unique,
    user_arn,
)

EC2_TRUST = policy(
    {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
)


class Cleanup:
    """What a test made, undone at its end even when it fails (roles, users, policies)."""

    def __init__(self, iam: Any) -> None:
        self.iam = iam
        self.undo: list[tuple[Any, dict[str, Any]]] = []

    def policy(self, name: str, document: str) -> str:
        arn: str = self.iam.create_policy(PolicyName=name, PolicyDocument=document)["Policy"]["Arn"]
        self.undo.append((self._delete_policy, {"arn": arn}))
        return arn

    def role(self, name: str, trust_policy: str = EC2_TRUST, **extra: Any) -> dict[str, Any]:
        role: dict[str, Any] = self.iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=trust_policy, **extra
        )["Role"]
        self.undo.append((self._delete_role, {"name": name}))
        return role

    def user(self, name: str, **extra: Any) -> dict[str, Any]:
        user: dict[str, Any] = self.iam.create_user(UserName=name, **extra)["User"]
        self.undo.append((self._delete_user, {"name": name}))
        return user

    def group(self, name: str) -> dict[str, Any]:
        group: dict[str, Any] = self.iam.create_group(GroupName=name)["Group"]
        self.undo.append((self._delete_group, {"name": name}))
        return group

    def keys(self, controller: Controller, name: str) -> Keys:
        return Keys.of(self.iam.create_access_key(UserName=name)).remember(controller)

    def run(self) -> None:
        for call, kwargs in reversed(self.undo):
            try:
                call(**kwargs)
            except self.iam.exceptions.NoSuchEntityException:
                pass

    def _delete_policy(self, arn: str) -> None:
        for version in self.iam.list_policy_versions(PolicyArn=arn)["Versions"]:
            if not version["IsDefaultVersion"]:
                self.iam.delete_policy_version(PolicyArn=arn, VersionId=version["VersionId"])
        self.iam.delete_policy(PolicyArn=arn)

    def _delete_role(self, name: str) -> None:
        self.iam.delete_role_permissions_boundary(RoleName=name)
        for policy_name in self.iam.list_role_policies(RoleName=name)["PolicyNames"]:
            self.iam.delete_role_policy(RoleName=name, PolicyName=policy_name)
        for attached in self.iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
            self.iam.detach_role_policy(RoleName=name, PolicyArn=attached["PolicyArn"])
        self.iam.delete_role(RoleName=name)

    def _delete_group(self, name: str) -> None:
        for member in self.iam.get_group(GroupName=name)["Users"]:
            self.iam.remove_user_from_group(GroupName=name, UserName=member["UserName"])
        for policy_name in self.iam.list_group_policies(GroupName=name)["PolicyNames"]:
            self.iam.delete_group_policy(GroupName=name, PolicyName=policy_name)
        for attached in self.iam.list_attached_group_policies(GroupName=name)["AttachedPolicies"]:
            self.iam.detach_group_policy(GroupName=name, PolicyArn=attached["PolicyArn"])
        self.iam.delete_group(GroupName=name)

    def _delete_user(self, name: str) -> None:
        self.iam.delete_user_permissions_boundary(UserName=name)
        for group in self.iam.list_groups_for_user(UserName=name)["Groups"]:
            self.iam.remove_user_from_group(GroupName=group["GroupName"], UserName=name)
        for key in self.iam.list_access_keys(UserName=name)["AccessKeyMetadata"]:
            self.iam.delete_access_key(UserName=name, AccessKeyId=key["AccessKeyId"])
        for policy_name in self.iam.list_user_policies(UserName=name)["PolicyNames"]:
            self.iam.delete_user_policy(UserName=name, PolicyName=policy_name)
        for attached in self.iam.list_attached_user_policies(UserName=name)["AttachedPolicies"]:
            self.iam.detach_user_policy(UserName=name, PolicyArn=attached["PolicyArn"])
        self.iam.delete_user(UserName=name)


@pytest.fixture
def made(iam: Any) -> Iterator[Cleanup]:
    cleanup = Cleanup(iam)
    try:
        yield cleanup
    finally:
        cleanup.run()


@pytest.fixture(scope="module", autouse=True)
def no_secret_in_the_log(controller: Controller) -> Iterator[None]:
    yield
    assert_no_issued_secret_in_log(controller)


def denied(call: Any, **kwargs: Any) -> str:
    """The message of an AccessDenied the call must get."""
    code, status, message = error_of(call, **kwargs)
    assert (code, status) == ("AccessDenied", 403), message
    return message


def bounded_user(
    controller: Controller, made: Cleanup, boundary: str, *statements: dict[str, Any]
) -> Any:
    """An IAM client of a new user with the given inline policy and boundary."""
    name = unique("bounded")
    made.user(name, PermissionsBoundary=boundary)
    made.iam.put_user_policy(UserName=name, PolicyName="own", PolicyDocument=policy(*statements))
    return made.keys(controller, name).client(controller, "iam")


# Shapes and errors


def test_a_boundary_set_at_creation_reads_back_in_get_but_not_in_list(
    iam: Any, made: Cleanup
) -> None:
    arn = made.policy(unique("cap"), policy(allow("iam:Get*")))
    role_name, user_name = unique("capped"), unique("capped")
    shape = {"PermissionsBoundaryType": "Policy", "PermissionsBoundaryArn": arn}
    assert made.role(role_name, PermissionsBoundary=arn)["PermissionsBoundary"] == shape
    assert made.user(user_name, PermissionsBoundary=arn)["PermissionsBoundary"] == shape
    assert iam.get_role(RoleName=role_name)["Role"]["PermissionsBoundary"] == shape
    assert iam.get_user(UserName=user_name)["User"]["PermissionsBoundary"] == shape
    # IAM's List* answers leave the boundary out.
    listed_role = next(r for r in iam.list_roles()["Roles"] if r["RoleName"] == role_name)
    listed_user = next(u for u in iam.list_users()["Users"] if u["UserName"] == user_name)
    assert "PermissionsBoundary" not in listed_role
    assert "PermissionsBoundary" not in listed_user


def test_put_replaces_and_delete_removes_a_boundary(iam: Any, made: Cleanup) -> None:
    first = made.policy(unique("first"), policy(allow("iam:Get*")))
    second = made.policy(unique("second"), policy(allow("iam:List*")))
    role_name, user_name = unique("swapped"), unique("swapped")
    made.role(role_name)
    made.user(user_name)
    assert "PermissionsBoundary" not in iam.get_role(RoleName=role_name)["Role"]
    for arn in (first, second):
        iam.put_role_permissions_boundary(RoleName=role_name, PermissionsBoundary=arn)
        iam.put_user_permissions_boundary(UserName=user_name, PermissionsBoundary=arn)
        role = iam.get_role(RoleName=role_name)["Role"]
        user = iam.get_user(UserName=user_name)["User"]
        assert role["PermissionsBoundary"]["PermissionsBoundaryArn"] == arn
        assert user["PermissionsBoundary"]["PermissionsBoundaryArn"] == arn
    # A policy in use as a boundary cannot be deleted (it would leave the boundary naming none).
    assert error_of(iam.delete_policy, PolicyArn=second)[:2] == ("DeleteConflict", 409)
    iam.delete_role_permissions_boundary(RoleName=role_name)
    iam.delete_user_permissions_boundary(UserName=user_name)
    assert "PermissionsBoundary" not in iam.get_role(RoleName=role_name)["Role"]
    assert "PermissionsBoundary" not in iam.get_user(UserName=user_name)["User"]


@pytest.mark.parametrize(
    ("boundary", "code", "status", "message"),
    [
        ("not-an-arn-but-long-enough", "InvalidInput", 400, "ARN {arn} is not valid."),
        (
            f"arn:aws:iam::{ACCOUNT_ID}:policy/no-such-policy",
            "NoSuchEntity",
            404,
            "Scope ARN: {arn} does not exist or is not attachable.",
        ),
        (
            "arn:aws:iam::210987654321:policy/another-accounts",
            "NoSuchEntity",
            404,
            "Scope ARN: {arn} does not exist or is not attachable.",
        ),
        (
            "arn:aws:iam::aws:policy/NotProvidedByTheOperator",
            "NoSuchEntity",
            404,
            "Scope ARN: {arn} does not exist or is not attachable.",
        ),
    ],
)
def test_a_boundary_must_name_a_policy_the_account_can_use(
    iam: Any, made: Cleanup, boundary: str, code: str, status: int, message: str
) -> None:
    role_name, user_name = unique("refused"), unique("refused")
    made.role(role_name)
    expected = (code, status, message.format(arn=boundary))
    assert (
        error_of(
            iam.put_role_permissions_boundary, RoleName=role_name, PermissionsBoundary=boundary
        )
        == expected
    )
    assert error_of(iam.create_user, UserName=user_name, PermissionsBoundary=boundary) == expected
    assert error_of(iam.get_user, UserName=user_name)[0] == "NoSuchEntity"
    assert "PermissionsBoundary" not in iam.get_role(RoleName=role_name)["Role"]


def test_a_boundary_on_a_missing_role_or_user_is_no_such_entity(iam: Any, made: Cleanup) -> None:
    arn = made.policy(unique("cap"), policy(allow("iam:Get*")))
    missing = unique("missing")
    assert error_of(iam.put_role_permissions_boundary, RoleName=missing, PermissionsBoundary=arn)[
        :2
    ] == ("NoSuchEntity", 404)
    assert error_of(iam.delete_user_permissions_boundary, UserName=missing)[:2] == (
        "NoSuchEntity",
        404,
    )


# Evaluation: the intersection, end to end


def test_a_user_can_do_only_what_both_its_policy_and_its_boundary_allow(
    controller: Controller, made: Cleanup
) -> None:
    boundary = made.policy(unique("reads"), policy(allow("iam:Get*")))
    user = bounded_user(controller, made, boundary, allow(["s3:*", "iam:*"]))
    target = unique("target")
    made.role(target)
    assert user.get_role(RoleName=target)["Role"]["RoleName"] == target
    message = denied(user.list_roles)
    assert message.endswith("because no permissions boundary allows the iam:ListRoles action")


def test_a_deny_in_the_boundary_wins_over_the_users_allow(
    controller: Controller, made: Cleanup
) -> None:
    boundary = made.policy(unique("nogets"), policy(allow("iam:*"), deny("iam:GetRole")))
    user = bounded_user(controller, made, boundary, allow("iam:*"))
    target = unique("target")
    made.role(target)
    user.list_roles()
    message = denied(user.get_role, RoleName=target)
    assert "with an explicit deny in a permissions boundary" in message


def test_removing_the_boundary_widens_at_once_and_putting_it_back_narrows(
    controller: Controller, iam: Any, made: Cleanup
) -> None:
    boundary = made.policy(unique("reads"), policy(allow("iam:Get*")))
    name = unique("widened")
    made.user(name, PermissionsBoundary=boundary)
    iam.put_user_policy(UserName=name, PolicyName="own", PolicyDocument=policy(allow("iam:*")))
    user = made.keys(controller, name).client(controller, "iam")
    denied(user.list_roles)
    iam.delete_user_permissions_boundary(UserName=name)
    user.list_roles()
    iam.put_user_permissions_boundary(UserName=name, PermissionsBoundary=boundary)
    denied(user.list_roles)


def test_a_new_default_version_of_the_boundary_holds_from_the_next_request(
    controller: Controller, iam: Any, made: Cleanup
) -> None:
    boundary = made.policy(unique("versioned"), policy(allow("iam:Get*")))
    user = bounded_user(controller, made, boundary, allow("iam:*"))
    denied(user.list_roles)
    iam.create_policy_version(
        PolicyArn=boundary, PolicyDocument=policy(allow("iam:List*")), SetAsDefault=True
    )
    user.list_roles()
    iam.set_default_policy_version(PolicyArn=boundary, VersionId="v1")
    denied(user.list_roles)


def test_a_roles_sessions_get_the_intersection_and_a_session_policy_narrows_it_further(
    controller: Controller, iam: Any, made: Cleanup
) -> None:
    boundary = made.policy(unique("rolecap"), policy(allow(["iam:Get*", "iam:List*"])))
    caller_name = unique("assumer")
    made.user(caller_name)
    iam.put_user_policy(
        UserName=caller_name, PolicyName="assume", PolicyDocument=policy(allow("sts:AssumeRole"))
    )
    role_name = unique("bounded-role")
    role_arn = made.role(
        role_name, trust({"AWS": user_arn(caller_name)}), PermissionsBoundary=boundary
    )["Arn"]
    iam.put_role_policy(RoleName=role_name, PolicyName="all", PolicyDocument=policy(allow("*")))
    sts = made.keys(controller, caller_name).client(controller, "sts")

    session = Keys.of(sts.assume_role(RoleArn=role_arn, RoleSessionName="bounded")).client(
        controller
    )
    assert session.get_role(RoleName=role_name)["Role"]["Arn"] == role_arn
    session.list_roles()
    assert "no permissions boundary allows" in denied(session.create_user, UserName=unique("no"))

    narrowed = Keys.of(
        sts.assume_role(
            RoleArn=role_arn,
            RoleSessionName="bounded",
            Policy=policy(allow(["iam:List*", "iam:Create*"])),
        )
    ).client(controller)
    narrowed.list_roles()  # all three allow it
    denied(narrowed.get_role, RoleName=role_name)  # the session policy does not
    denied(narrowed.create_user, UserName=unique("no"))  # the boundary does not


# iam:PermissionsBoundary: delegated administration


def test_a_delegated_admin_creates_roles_only_under_the_required_boundary(
    controller: Controller, iam: Any, made: Cleanup
) -> None:
    required = made.policy(unique("required"), policy(allow("s3:GetObject")))
    other = made.policy(unique("other"), policy(allow("*")))
    condition = {"StringEquals": {"iam:PermissionsBoundary": required}}
    admin = bounded_user(
        controller,
        made,
        other,  # the admin itself is bounded by an allow-all
        allow(["iam:CreateRole", "iam:PutRolePermissionsBoundary"], Condition=condition),
        allow(["iam:GetRole", "iam:DeleteRole", "iam:DeleteRolePermissionsBoundary"]),
        deny("iam:DeleteRolePermissionsBoundary"),
    )
    trust_policy = EC2_TRUST
    name = unique("delegated")
    denied(admin.create_role, RoleName=name, AssumeRolePolicyDocument=trust_policy)
    denied(
        admin.create_role,
        RoleName=name,
        AssumeRolePolicyDocument=trust_policy,
        PermissionsBoundary=other,
    )
    assert error_of(iam.get_role, RoleName=name)[0] == "NoSuchEntity"

    created = admin.create_role(
        RoleName=name, AssumeRolePolicyDocument=trust_policy, PermissionsBoundary=required
    )["Role"]
    made.undo.append((made._delete_role, {"name": name}))
    assert created["PermissionsBoundary"]["PermissionsBoundaryArn"] == required
    # The boundary stays: it cannot be removed nor swapped for another.
    denied(admin.delete_role_permissions_boundary, RoleName=name)
    denied(admin.put_role_permissions_boundary, RoleName=name, PermissionsBoundary=other)
    admin.put_role_permissions_boundary(RoleName=name, PermissionsBoundary=required)
    assert iam.get_role(RoleName=name)["Role"]["PermissionsBoundary"]["PermissionsBoundaryArn"] == (
        required
    )


def test_the_key_is_the_targets_current_boundary_and_absent_without_one(
    controller: Controller, iam: Any, made: Cleanup
) -> None:
    """PutRolePolicy is allowed only on roles bounded by B; a Null condition sees no boundary."""
    required = made.policy(unique("required"), policy(allow("s3:GetObject")))
    admin_name = unique("admin")
    made.user(admin_name)
    statements = [
        allow(
            "iam:PutRolePolicy", Condition={"StringEquals": {"iam:PermissionsBoundary": required}}
        ),
        allow("iam:GetRole", Condition={"Null": {"iam:PermissionsBoundary": "true"}}),
    ]
    iam.put_user_policy(
        UserName=admin_name, PolicyName="delegate", PolicyDocument=policy(*statements)
    )
    admin = made.keys(controller, admin_name).client(controller, "iam")
    bounded, unbounded = unique("bounded"), unique("unbounded")
    made.role(bounded, PermissionsBoundary=required)
    made.role(unbounded)
    document = policy(allow("s3:GetObject"))
    admin.put_role_policy(RoleName=bounded, PolicyName="p", PolicyDocument=document)
    denied(admin.put_role_policy, RoleName=unbounded, PolicyName="p", PolicyDocument=document)
    admin.get_role(RoleName=unbounded)
    denied(admin.get_role, RoleName=bounded)


# The simulator


def only(response: dict[str, Any]) -> dict[str, Any]:
    (result,) = response["EvaluationResults"]
    return result


def test_the_simulator_evaluates_a_users_policies_within_its_boundary(
    iam: Any, made: Cleanup
) -> None:
    boundary = made.policy(unique("reads"), policy(allow("iam:Get*")))
    attached = made.policy(unique("lists"), policy(allow("iam:List*")))
    name = unique("simulated")
    arn = made.user(name, PermissionsBoundary=boundary)["Arn"]
    iam.put_user_policy(UserName=name, PolicyName="own", PolicyDocument=policy(allow("iam:Get*")))
    iam.attach_user_policy(UserName=name, PolicyArn=attached)

    allowed = only(iam.simulate_principal_policy(PolicySourceArn=arn, ActionNames=["iam:GetRole"]))
    assert allowed["EvalDecision"] == "allowed"
    assert allowed["MatchedStatements"][0]["SourcePolicyId"] == "own"
    assert allowed["MatchedStatements"][0]["SourcePolicyType"] == "user"
    assert allowed["PermissionsBoundaryDecisionDetail"] == {"AllowedByPermissionsBoundary": True}

    capped = only(iam.simulate_principal_policy(PolicySourceArn=arn, ActionNames=["iam:ListRoles"]))
    assert capped["EvalDecision"] == "implicitDeny"
    assert capped["PermissionsBoundaryDecisionDetail"] == {"AllowedByPermissionsBoundary": False}

    # A boundary given as input replaces the user's own.
    replaced = only(
        iam.simulate_principal_policy(
            PolicySourceArn=arn,
            ActionNames=["iam:ListRoles"],
            PermissionsBoundaryPolicyInputList=[policy(allow("iam:*"))],
        )
    )
    assert replaced["EvalDecision"] == "allowed"
    assert replaced["MatchedStatements"] == [
        {"SourcePolicyId": attached.rpartition("/")[2], "SourcePolicyType": "user-managed"}
    ]


def test_the_simulator_reads_a_group_and_a_members_group_policies(iam: Any, made: Cleanup) -> None:
    attached = made.policy(unique("lists"), policy(allow("iam:List*")))
    group_name, user_name = unique("simgroup"), unique("member")
    group_arn = made.group(group_name)["Arn"]
    user_arn_ = made.user(user_name)["Arn"]
    iam.put_group_policy(
        GroupName=group_name, PolicyName="team", PolicyDocument=policy(allow("iam:Get*"))
    )
    iam.attach_group_policy(GroupName=group_name, PolicyArn=attached)
    iam.add_user_to_group(GroupName=group_name, UserName=user_name)
    for source in (group_arn, user_arn_):
        results = iam.simulate_principal_policy(
            PolicySourceArn=source, ActionNames=["iam:GetRole", "iam:ListRoles", "iam:CreateRole"]
        )["EvaluationResults"]
        assert [
            (
                r["EvalDecision"],
                [(m["SourcePolicyId"], m["SourcePolicyType"]) for m in r["MatchedStatements"]],
            )
            for r in results
        ] == [
            ("allowed", [("team", "group")]),
            ("allowed", [(attached.rpartition("/")[2], "user-managed")]),
            ("implicitDeny", []),
        ]
        assert all("PermissionsBoundaryDecisionDetail" not in r for r in results)


def test_the_simulator_reads_a_roles_boundary_and_a_custom_boundary(
    iam: Any, made: Cleanup
) -> None:
    boundary = made.policy(unique("nodelete"), policy(allow("iam:*"), deny("iam:DeleteRole")))
    name = unique("simrole")
    arn = made.role(name, PermissionsBoundary=boundary)["Arn"]
    iam.put_role_policy(RoleName=name, PolicyName="all", PolicyDocument=policy(allow("iam:*")))
    result = only(
        iam.simulate_principal_policy(PolicySourceArn=arn, ActionNames=["iam:DeleteRole"])
    )
    assert result["EvalDecision"] == "explicitDeny"
    assert result["MatchedStatements"] == [
        {"SourcePolicyId": boundary.rpartition("/")[2], "SourcePolicyType": "user-managed"}
    ]
    custom = only(
        iam.simulate_custom_policy(
            PolicyInputList=[policy(allow("iam:*"))],
            PermissionsBoundaryPolicyInputList=[policy(allow("iam:Get*"))],
            ActionNames=["iam:CreateRole"],
        )
    )
    assert custom["EvalDecision"] == "implicitDeny"
    assert custom["PermissionsBoundaryDecisionDetail"] == {"AllowedByPermissionsBoundary": False}


# The aws CLI


def aws(controller: Controller, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "aws"), "--endpoint-url", controller.url, "--output", "json", "iam", *args],
        env=controller.cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_aws_cli_sets_reads_and_removes_boundaries(
    controller: Controller, iam: Any, made: Cleanup
) -> None:
    """One call of each action (the CLI starts slowly: the rest is checked through boto3)."""
    arn = made.policy(unique("clicap"), policy(allow("iam:Get*")))
    role_name, user_name = unique("clirole"), unique("cliuser")
    made.role(role_name)
    made.user(user_name)
    for command in (
        ["put-role-permissions-boundary", "--role-name", role_name],
        ["put-user-permissions-boundary", "--user-name", user_name],
    ):
        done = aws(controller, *command, "--permissions-boundary", arn)
        assert done.returncode == 0, done.stderr
    got = aws(controller, "get-role", "--role-name", role_name)
    assert json.loads(got.stdout)["Role"]["PermissionsBoundary"] == {
        "PermissionsBoundaryType": "Policy",
        "PermissionsBoundaryArn": arn,
    }
    assert (
        iam.get_user(UserName=user_name)["User"]["PermissionsBoundary"]["PermissionsBoundaryArn"]
        == arn
    )
    for command in (
        ["delete-role-permissions-boundary", "--role-name", role_name],
        ["delete-user-permissions-boundary", "--user-name", user_name],
    ):
        done = aws(controller, *command)
        assert done.returncode == 0, done.stderr
    assert "PermissionsBoundary" not in iam.get_role(RoleName=role_name)["Role"]
    assert "PermissionsBoundary" not in iam.get_user(UserName=user_name)["User"]
