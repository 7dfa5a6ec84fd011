"""Managed policies through boto3 against a real controller process: policies, versions,
attachments, their effect on the callers they are attached to (users, role sessions, instance
role credentials), and AWS-managed policies from the operator's directory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.e2e.conftest import (
    ACCOUNT_ID,
    Controller,
    start_controller,
    stop_controller,
)
from tests.e2e.principals import (
    ISSUED_SECRETS,
    Keys,
    allow,
    deny,
    error_of,
    policy,
    trust,
    unique,
)
from tests.e2e.test_aws_cli import aws, aws_json
from tests.e2e.test_node_api import NodeClient, enroll, launch

LIST_ROLES = policy(allow("iam:ListRoles"))
DENY_LIST_ROLES = policy(allow("iam:ListRoles"), deny("iam:ListRoles"))
AWS_READ = "arn:aws:iam::aws:policy/RoleCallReadRoles"
AWS_SERVICE = "arn:aws:iam::aws:policy/service-role/RoleCallService"
EC2_TRUST = trust({"Service": "ec2.amazonaws.com"})


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    """A controller serving two AWS-managed policies from a directory of its configuration."""
    base = tmp_path_factory.mktemp("managed")
    directory = base / "aws-managed"
    (directory / "service-role").mkdir(parents=True)
    (directory / "RoleCallReadRoles.json").write_text(
        policy(allow(["iam:GetRole", "iam:ListRoles"]))
    )
    (directory / "service-role" / "RoleCallService.json").write_text(policy(allow("s3:*")))
    config = base / "controller.toml"
    config.write_text(f'[iam]\naws_managed_policies = "{directory}"\n')
    running = start_controller(base / "state", config)
    try:
        yield running
    finally:
        code = stop_controller(running)
    log = "".join(running.output)
    assert code == 0, log
    assert "Traceback" not in log, log
    for secret in [running.secret_access_key, *ISSUED_SECRETS[running.url]]:
        assert secret not in log, "a secret reached the controller's log"


@pytest.fixture(scope="module")
def iam(controller: Controller) -> Any:
    return controller.client("iam")


def local_arn(name: str, path: str = "/") -> str:
    return f"arn:aws:iam::{ACCOUNT_ID}:policy{path}{name}"


def user_with(controller: Controller, iam: Any, arn: str) -> tuple[str, Any]:
    """A new user with only ``arn`` attached, and an IAM client with its keys."""
    name = unique("u")
    iam.create_user(UserName=name)
    iam.attach_user_policy(UserName=name, PolicyArn=arn)
    return name, Keys.of(iam.create_access_key(UserName=name)).client(controller)


# Policies


def test_a_policy_reads_back_as_aws_shapes_it_and_is_deleted(iam: Any) -> None:
    name = unique("pol")
    created = iam.create_policy(
        PolicyName=name,
        Path="/team/",
        PolicyDocument=LIST_ROLES,
        Description="lists roles",
        Tags=[{"Key": "owner", "Value": "ops"}],
    )["Policy"]
    arn = local_arn(name, "/team/")
    assert created["Arn"] == arn and created["PolicyId"].startswith("ANPA")
    assert (created["DefaultVersionId"], created["AttachmentCount"], created["IsAttachable"]) == (
        "v1",
        0,
        True,
    )
    assert created["PermissionsBoundaryUsageCount"] == 0
    assert created["Tags"] == [{"Key": "owner", "Value": "ops"}]
    got = iam.get_policy(PolicyArn=arn)["Policy"]
    assert got["Description"] == "lists roles" and got["Path"] == "/team/"
    version = iam.get_policy_version(PolicyArn=arn, VersionId="v1")["PolicyVersion"]
    assert version["Document"] == json.loads(LIST_ROLES) and version["IsDefaultVersion"]
    listed = iam.list_policies(Scope="Local", PathPrefix="/team/")["Policies"]
    assert arn in [item["Arn"] for item in listed]
    assert all("Description" not in item for item in listed)
    iam.tag_policy(PolicyArn=arn, Tags=[{"Key": "env", "Value": "prod"}])
    iam.untag_policy(PolicyArn=arn, TagKeys=["owner"])
    assert iam.list_policy_tags(PolicyArn=arn)["Tags"] == [{"Key": "env", "Value": "prod"}]
    assert error_of(iam.create_policy, PolicyName=name.upper(), PolicyDocument=LIST_ROLES) == (
        "EntityAlreadyExists",
        409,
        f"A policy called {name.upper()} already exists. Duplicate names are not allowed.",
    )
    iam.delete_policy(PolicyArn=arn)
    assert error_of(iam.get_policy, PolicyArn=arn) == (
        "NoSuchEntity",
        404,
        f"Policy {arn} was not found.",
    )


def test_documents_names_and_paths_are_checked_as_aws_checks_them(iam: Any) -> None:
    big = policy(*(allow(f"s3:GetObject{index:04}") for index in range(200)))
    assert error_of(iam.create_policy, PolicyName=unique("big"), PolicyDocument=big) == (
        "LimitExceeded",
        409,
        "Cannot exceed quota for PolicySize: 6144",
    )
    code, status, _ = error_of(iam.create_policy, PolicyName=unique("bad"), PolicyDocument="{}")
    assert (code, status) == ("MalformedPolicyDocument", 400)
    code, _, message = error_of(
        iam.create_policy, PolicyName="no spaces", PolicyDocument=LIST_ROLES
    )
    assert code == "ValidationError" and "no spaces" in message
    code, _, _ = error_of(
        iam.create_policy, PolicyName=unique("p"), Path="/a//b/", PolicyDocument=LIST_ROLES
    )
    assert code == "ValidationError"
    assert error_of(iam.get_policy, PolicyArn="arn:aws:iam::123456789012:role/x") == (
        "InvalidInput",
        400,
        "ARN arn:aws:iam::123456789012:role/x is not valid.",
    )


def test_versions_are_five_at_most_never_reuse_an_id_and_keep_the_default(iam: Any) -> None:
    name = unique("ver")
    arn = iam.create_policy(PolicyName=name, PolicyDocument=LIST_ROLES)["Policy"]["Arn"]
    for _ in range(3):
        made = iam.create_policy_version(PolicyArn=arn, PolicyDocument=DENY_LIST_ROLES)
        assert not made["PolicyVersion"]["IsDefaultVersion"]
    made = iam.create_policy_version(PolicyArn=arn, PolicyDocument=LIST_ROLES, SetAsDefault=True)
    assert made["PolicyVersion"]["VersionId"] == "v5" and made["PolicyVersion"]["IsDefaultVersion"]
    assert error_of(iam.create_policy_version, PolicyArn=arn, PolicyDocument=LIST_ROLES) == (
        "LimitExceeded",
        409,
        "A managed policy can have up to 5 versions. Before you create a new version, you must"
        " delete an existing version.",
    )
    versions = iam.list_policy_versions(PolicyArn=arn)["Versions"]
    assert [(v["VersionId"], v["IsDefaultVersion"]) for v in versions] == [
        ("v5", True),
        ("v4", False),
        ("v3", False),
        ("v2", False),
        ("v1", False),
    ]
    assert error_of(iam.delete_policy_version, PolicyArn=arn, VersionId="v5") == (
        "DeleteConflict",
        409,
        "Cannot delete the default version of a policy.",
    )
    iam.delete_policy_version(PolicyArn=arn, VersionId="v4")
    made = iam.create_policy_version(PolicyArn=arn, PolicyDocument=LIST_ROLES)
    assert made["PolicyVersion"]["VersionId"] == "v6"
    assert error_of(iam.get_policy_version, PolicyArn=arn, VersionId="v4") == (
        "NoSuchEntity",
        404,
        f"Policy {arn} version v4 does not exist or is not attachable.",
    )
    iam.set_default_policy_version(PolicyArn=arn, VersionId="v2")
    assert iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"] == "v2"
    code, status, message = error_of(iam.delete_policy, PolicyArn=arn)
    assert (code, status) == ("DeleteConflict", 409) and "more than one version" in message
    for version in ("v1", "v3", "v5", "v6"):
        iam.delete_policy_version(PolicyArn=arn, VersionId=version)
    iam.delete_policy(PolicyArn=arn)


# Attachments


def test_attachments_are_counted_listed_limited_and_block_deletion(iam: Any) -> None:
    role = unique("r")
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=EC2_TRUST)
    arns = [
        iam.create_policy(
            PolicyName=unique("a"), Path=f"/p{index % 2}/", PolicyDocument=LIST_ROLES
        )["Policy"]["Arn"]
        for index in range(11)
    ]
    for arn in arns[:10]:
        iam.attach_role_policy(RoleName=role, PolicyArn=arn)
    iam.attach_role_policy(RoleName=role, PolicyArn=arns[0])  # again: nothing changes
    assert error_of(iam.attach_role_policy, RoleName=role, PolicyArn=arns[10]) == (
        "LimitExceeded",
        409,
        "Cannot exceed quota for PoliciesPerRole: 10",
    )
    attached = iam.list_attached_role_policies(RoleName=role, PathPrefix="/p1/")["AttachedPolicies"]
    assert sorted(item["PolicyArn"] for item in attached) == sorted(arns[1:10:2])
    paged = iam.get_paginator("list_attached_role_policies").paginate(
        RoleName=role, PaginationConfig={"PageSize": 3}
    )
    assert sorted(
        item["PolicyArn"] for page in paged for item in page["AttachedPolicies"]
    ) == sorted(arns[:10])
    assert iam.get_policy(PolicyArn=arns[0])["Policy"]["AttachmentCount"] == 1
    entities = iam.list_entities_for_policy(PolicyArn=arns[0], EntityFilter="Role")
    assert [item["RoleName"] for item in entities["PolicyRoles"]] == [role]
    assert (entities["PolicyUsers"], entities["PolicyGroups"]) == ([], [])
    assert error_of(iam.delete_policy, PolicyArn=arns[0]) == (
        "DeleteConflict",
        409,
        "Cannot delete a policy attached to entities.",
    )
    assert error_of(iam.delete_role, RoleName=role) == (
        "DeleteConflict",
        409,
        "Cannot delete entity, must detach all policies first.",
    )
    unknown = local_arn("no-such-policy")
    assert error_of(iam.attach_role_policy, RoleName=role, PolicyArn=unknown) == (
        "NoSuchEntity",
        404,
        f"Policy {unknown} does not exist or is not attachable.",
    )
    assert error_of(iam.detach_role_policy, RoleName=role, PolicyArn=arns[10]) == (
        "NoSuchEntity",
        404,
        f"Policy {arns[10]} was not found.",
    )
    for arn in arns[:10]:
        iam.detach_role_policy(RoleName=role, PolicyArn=arn)
    assert iam.get_policy(PolicyArn=arns[0])["Policy"]["AttachmentCount"] == 0
    iam.delete_role(RoleName=role)
    for arn in arns:
        iam.delete_policy(PolicyArn=arn)


# Evaluation


def test_a_users_attached_policy_follows_its_default_version_and_detachment(
    controller: Controller, iam: Any
) -> None:
    arn = iam.create_policy(PolicyName=unique("eval"), PolicyDocument=LIST_ROLES)["Policy"]["Arn"]
    name, as_user = user_with(controller, iam, arn)
    as_user.list_roles()
    iam.create_policy_version(PolicyArn=arn, PolicyDocument=DENY_LIST_ROLES, SetAsDefault=True)
    code, _, message = error_of(as_user.list_roles)
    assert code == "AccessDenied" and "explicit deny" in message
    iam.set_default_policy_version(PolicyArn=arn, VersionId="v1")
    as_user.list_roles()
    iam.detach_user_policy(UserName=name, PolicyArn=arn)
    assert error_of(as_user.list_roles)[0] == "AccessDenied"
    assert iam.list_attached_user_policies(UserName=name)["AttachedPolicies"] == []
    iam.attach_user_policy(UserName=name, PolicyArn=arn)
    for key in iam.list_access_keys(UserName=name)["AccessKeyMetadata"]:
        iam.delete_access_key(UserName=name, AccessKeyId=key["AccessKeyId"])
    assert error_of(iam.delete_user, UserName=name) == (
        "DeleteConflict",
        409,
        "Cannot delete entity, must detach all policies first.",
    )
    iam.detach_user_policy(UserName=name, PolicyArn=arn)
    iam.delete_user(UserName=name)


def test_iam_policy_arn_lets_an_admin_attach_only_the_policies_it_names(
    controller: Controller, iam: Any
) -> None:
    """Delegation with iam:PolicyARN: an admin allowed AttachRolePolicy and DetachRolePolicy
    only for one policy may attach and detach that one, and no other."""
    allowed = iam.create_policy(PolicyName=unique("ok"), PolicyDocument=LIST_ROLES)["Policy"]
    other = iam.create_policy(PolicyName=unique("no"), PolicyDocument=LIST_ROLES)["Policy"]
    delegation = iam.create_policy(
        PolicyName=unique("delegate"),
        PolicyDocument=policy(
            allow(
                ["iam:AttachRolePolicy", "iam:DetachRolePolicy"],
                Condition={"ArnEquals": {"iam:PolicyARN": allowed["Arn"]}},
            )
        ),
    )["Policy"]
    _, as_admin = user_with(controller, iam, delegation["Arn"])
    role = unique("r")
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=EC2_TRUST)
    as_admin.attach_role_policy(RoleName=role, PolicyArn=allowed["Arn"])
    code, _, message = error_of(as_admin.attach_role_policy, RoleName=role, PolicyArn=other["Arn"])
    assert code == "AccessDenied" and "iam:AttachRolePolicy" in message
    as_admin.detach_role_policy(RoleName=role, PolicyArn=allowed["Arn"])
    assert iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"] == []


def test_a_groups_attached_policy_applies_to_its_members(controller: Controller, iam: Any) -> None:
    arn = iam.create_policy(PolicyName=unique("grp"), PolicyDocument=LIST_ROLES)["Policy"]["Arn"]
    group, member = unique("g"), unique("u")
    iam.create_group(GroupName=group, Path="/team/")
    iam.create_user(UserName=member)
    iam.add_user_to_group(GroupName=group, UserName=member)
    as_member = Keys.of(iam.create_access_key(UserName=member)).client(controller)
    assert error_of(as_member.list_roles)[0] == "AccessDenied"
    iam.attach_group_policy(GroupName=group, PolicyArn=arn)
    as_member.list_roles()
    attached = iam.list_attached_group_policies(GroupName=group)["AttachedPolicies"]
    assert [item["PolicyArn"] for item in attached] == [arn]
    listed = iam.list_entities_for_policy(PolicyArn=arn, PathPrefix="/team/")["PolicyGroups"]
    assert [item["GroupName"] for item in listed] == [group]
    iam.remove_user_from_group(GroupName=group, UserName=member)
    assert error_of(iam.delete_group, GroupName=group) == (
        "DeleteConflict",
        409,
        "Cannot delete entity, must detach all policies first.",
    )
    assert error_of(as_member.list_roles)[0] == "AccessDenied"
    iam.detach_group_policy(GroupName=group, PolicyArn=arn)
    iam.delete_group(GroupName=group)
    assert iam.get_policy(PolicyArn=arn)["Policy"]["AttachmentCount"] == 0


def test_a_role_session_has_its_roles_attached_policy(controller: Controller, iam: Any) -> None:
    arn = iam.create_policy(PolicyName=unique("sess"), PolicyDocument=LIST_ROLES)["Policy"]["Arn"]
    role = unique("r")
    iam.create_role(
        RoleName=role, AssumeRolePolicyDocument=trust({"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"})
    )
    iam.attach_role_policy(RoleName=role, PolicyArn=arn)
    sts = controller.client("sts")
    assumed = sts.assume_role(
        RoleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/{role}", RoleSessionName="session"
    )
    as_role = Keys.of(assumed).client(controller)
    as_role.list_roles()
    assert error_of(as_role.list_users)[0] == "AccessDenied"
    iam.detach_role_policy(RoleName=role, PolicyArn=arn)
    assert error_of(as_role.list_roles)[0] == "AccessDenied"


def test_instance_role_credentials_have_the_roles_attached_policy(
    controller: Controller, iam: Any, tmp_path: Path
) -> None:
    arn = iam.create_policy(PolicyName=unique("inst"), PolicyDocument=LIST_ROLES)["Policy"]["Arn"]
    name = unique("ip")
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=EC2_TRUST)
    iam.attach_role_policy(RoleName=name, PolicyArn=arn)
    iam.create_instance_profile(InstanceProfileName=name)
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    node = NodeClient(controller, enroll(controller, "hv-managed", tmp_path / "hv"))
    response = node.credentials(launch(controller, "hv-managed", name))
    assert response.status_code == 200, response.text
    issued = response.json()
    ISSUED_SECRETS[controller.url].update({issued["SecretAccessKey"], issued["Token"]})
    as_instance = boto3.client(
        "iam",
        endpoint_url=controller.url,
        region_name="us-east-1",
        aws_access_key_id=issued["AccessKeyId"],
        aws_secret_access_key=issued["SecretAccessKey"],
        aws_session_token=issued["Token"],
    )
    as_instance.list_roles()
    iam.detach_role_policy(RoleName=name, PolicyArn=arn)
    assert error_of(as_instance.list_roles)[0] == "AccessDenied"


# AWS-managed policies


def test_aws_managed_policies_come_from_the_directory_and_cannot_be_changed(
    controller: Controller, iam: Any
) -> None:
    got = iam.get_policy(PolicyArn=AWS_SERVICE)["Policy"]
    assert (got["PolicyName"], got["Path"], got["DefaultVersionId"]) == (
        "RoleCallService",
        "/service-role/",
        "v1",
    )
    assert got["PolicyId"].startswith("ANPA") and len(got["PolicyId"]) == 21
    document = iam.get_policy_version(PolicyArn=AWS_READ, VersionId="v1")["PolicyVersion"]
    assert document["Document"]["Statement"][0]["Action"] == ["iam:GetRole", "iam:ListRoles"]
    listed = [item["Arn"] for item in iam.list_policies(Scope="AWS")["Policies"]]
    assert listed == [AWS_READ, AWS_SERVICE]
    # Local and AWS-managed policies page together by name (these sort among the AWS ones).
    local = [
        iam.create_policy(PolicyName=unique(f"RoleCall{letter}"), PolicyDocument=LIST_ROLES)[
            "Policy"
        ]["Arn"]
        for letter in "ART"
    ]
    everything = [item["Arn"] for item in iam.list_policies(MaxItems=1000)["Policies"]]
    pages = iam.get_paginator("list_policies").paginate(PaginationConfig={"PageSize": 2})
    assert [item["Arn"] for page in pages for item in page["Policies"]] == everything
    assert {AWS_READ, AWS_SERVICE, *local} <= set(everything)
    for arn in local:
        iam.delete_policy(PolicyArn=arn)
    unknown = "arn:aws:iam::aws:policy/AdministratorAccess"
    assert error_of(iam.get_policy, PolicyArn=unknown)[:2] == ("NoSuchEntity", 404)
    code, status, _ = error_of(
        iam.create_policy_version, PolicyArn=AWS_READ, PolicyDocument=LIST_ROLES
    )
    assert (code, status) == ("AccessDenied", 403)
    assert error_of(iam.delete_policy, PolicyArn=AWS_READ)[0] == "AccessDenied"
    name, as_user = user_with(controller, iam, AWS_READ)
    as_user.list_roles()
    assert error_of(as_user.list_users)[0] == "AccessDenied"
    assert iam.get_policy(PolicyArn=AWS_READ)["Policy"]["AttachmentCount"] == 1
    only_attached = iam.list_policies(Scope="All", OnlyAttached=True)["Policies"]
    assert AWS_READ in [item["Arn"] for item in only_attached]
    assert AWS_SERVICE not in [item["Arn"] for item in only_attached]
    assert error_of(iam.attach_user_policy, UserName=name, PolicyArn=unknown) == (
        "NoSuchEntity",
        404,
        f"Policy {unknown} does not exist or is not attachable.",
    )
    iam.detach_user_policy(UserName=name, PolicyArn=AWS_READ)
    assert iam.get_policy(PolicyArn=AWS_READ)["Policy"]["AttachmentCount"] == 0


# The aws command line


def test_the_main_actions_through_the_aws_cli(controller: Controller, iam: Any) -> None:
    name, role = unique("cli"), unique("cli-role")
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=EC2_TRUST)
    created = aws_json(
        controller, "iam", "create-policy", "--policy-name", name, "--policy-document", LIST_ROLES
    )
    arn = created["Policy"]["Arn"]
    assert arn == local_arn(name)
    aws(controller, "iam", "attach-role-policy", "--role-name", role, "--policy-arn", arn)
    attached = aws_json(controller, "iam", "list-attached-role-policies", "--role-name", role)
    assert attached["AttachedPolicies"] == [{"PolicyName": name, "PolicyArn": arn}]
    version = aws_json(
        controller, "iam", "create-policy-version", "--policy-arn", arn,
        "--policy-document", DENY_LIST_ROLES, "--set-as-default",
    )  # fmt: skip
    assert version["PolicyVersion"]["VersionId"] == "v2"
    assert version["PolicyVersion"]["IsDefaultVersion"] is True
    refused = aws(controller, "iam", "delete-policy", "--policy-arn", arn, check=False)
    assert refused.returncode != 0
    assert "(DeleteConflict)" in refused.stderr
    assert "Cannot delete a policy attached to entities." in refused.stderr
    iam.detach_role_policy(RoleName=role, PolicyArn=arn)
    iam.delete_policy_version(PolicyArn=arn, VersionId="v1")
    aws(controller, "iam", "delete-policy", "--policy-arn", arn)
    assert error_of(iam.get_policy, PolicyArn=arn)[0] == "NoSuchEntity"
    iam.delete_role(RoleName=role)
