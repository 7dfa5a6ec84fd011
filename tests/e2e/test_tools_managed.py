"""The managed-policy tools as installed console scripts, run through bash against a real
controller (one for the module); boto3 checks what they did."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ACCOUNT_ID, Controller
from tests.e2e.test_tools import EC2_TRUST, error_code, failed, ok, shell, unique

S3READ = (
    '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:Get*","Resource":"*"}]}'
)
S3LIST = (
    '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:List*","Resource":"*"}]}'
)


@pytest.fixture
def policy(controller: Controller, iam: Any) -> Iterator[tuple[str, str]]:
    """A policy's path and name, deleted with its versions and attachments after the test if
    the test left it."""
    path, name = f"/{unique('team')}/", unique("s3read")
    yield path, name
    arn = f"arn:aws:iam::{ACCOUNT_ID}:policy{path}{name}"
    if shell(controller, f"iam-policydel -a {arn} -r").returncode != 0:
        assert error_code(iam.get_policy, PolicyArn=arn) == "NoSuchEntity"


def test_a_policy_and_its_versions(
    controller: Controller, iam: Any, policy: tuple[str, str], tmp_path: Path
) -> None:
    path, name = policy
    arn = f"arn:aws:iam::{ACCOUNT_ID}:policy{path}{name}"
    (tmp_path / "s3read.json").write_text(S3READ + "\n")

    created = ok(
        controller,
        f"iam-policycreate -p {name} -f {tmp_path}/s3read.json --path {path} -d 'read S3' -v",
    )
    arn_line, policy_id, document = created.splitlines()
    stored = iam.get_policy(PolicyArn=arn)["Policy"]
    assert (arn_line, policy_id, document) == (arn, stored["PolicyId"], S3READ)
    assert (stored["Description"], stored["DefaultVersionId"]) == ("read S3", "v1")

    # By PATH/NAME: the tool asks STS for the account and writes the ARN.
    assert ok(controller, f"iam-policygetattributes -a {path}{name}").splitlines() == [
        arn,
        policy_id,
        "v1",
        S3READ,
    ]
    assert ok(controller, f"iam-policylistbypath -p {path} --scope local") == arn + "\n"
    assert arn in ok(controller, "iam-policylistbypath").splitlines()
    assert ok(controller, f"iam-policylistbypath -p {path} --only-attached") == ""

    assert ok(controller, f"iam-policyversioncreate -a {arn} -o '{S3LIST}' --set-as-default") == (
        "v2\n"
    )
    assert ok(controller, f"iam-policygetattributes -a {arn}").splitlines()[2:] == ["v2", S3LIST]
    listed = [
        line.split("\t") for line in ok(controller, f"iam-policyversionlist -a {arn}").splitlines()
    ]
    assert sorted((version, default) for version, default, _ in listed) == [
        ("v1", "false"),
        ("v2", "true"),
    ]
    ok(controller, f"iam-policysetdefaultversion -a {arn} -v 1")
    assert iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"] == "v1"
    refused = failed(controller, f"iam-policyversiondel -a {arn} -v v1")
    assert refused == (
        "iam-policyversiondel: DeleteConflict: Cannot delete the default version of a policy.\n"
    )
    ok(controller, f"iam-policyversiondel -a {arn} -v v2")
    versions = iam.list_policy_versions(PolicyArn=arn)["Versions"]
    assert [version["VersionId"] for version in versions] == ["v1"]

    ok(controller, f"iam-policydel -a {arn}")
    assert error_code(iam.get_policy, PolicyArn=arn) == "NoSuchEntity"


def test_attaching_to_roles_and_users_and_deleting_recursively(
    controller: Controller, iam: Any, policy: tuple[str, str]
) -> None:
    path, name = policy
    arn = f"arn:aws:iam::{ACCOUNT_ID}:policy{path}{name}"
    role, user = unique("app"), unique("alice")
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=EC2_TRUST)
    iam.create_user(UserName=user)
    try:
        ok(controller, f"iam-policycreate -p {name} -o '{S3READ}' --path {path}")
        ok(controller, f"iam-policyversioncreate -a {arn} -o '{S3LIST}'")
        ok(controller, f"iam-roleattachpolicy -r {role} -a {path}{name}")
        ok(controller, f"iam-userattachpolicy --user-name {user} -a {arn}")
        assert ok(controller, f"iam-rolelistattachedpolicies -r {role}") == arn + "\n"
        assert ok(controller, f"iam-userlistattachedpolicies -u {user}") == arn + "\n"
        assert ok(controller, f"iam-policylistbypath -p {path} --only-attached") == arn + "\n"
        role_id = iam.get_role(RoleName=role)["Role"]["RoleId"]
        user_id = iam.get_user(UserName=user)["User"]["UserId"]
        assert ok(controller, f"iam-policylistentities -a {arn}").splitlines() == [
            f"USER\t{user}\t{user_id}",
            f"ROLE\t{role}\t{role_id}",
        ]

        conflict = failed(controller, f"iam-policydel -a {arn}")
        assert conflict == (
            "iam-policydel: DeleteConflict: Cannot delete a policy attached to entities.\n"
        )
        ok(controller, f"iam-roledetachpolicy -r {role} -a {arn}")
        assert iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"] == []

        ok(controller, f"iam-roleattachpolicy -r {role} -a {arn}")
        ok(controller, f"iam-policydel -a {arn} -r")
        assert error_code(iam.get_policy, PolicyArn=arn) == "NoSuchEntity"
        assert iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"] == []
        assert iam.list_attached_user_policies(UserName=user)["AttachedPolicies"] == []
    finally:
        for attached in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
            iam.detach_role_policy(RoleName=role, PolicyArn=attached["PolicyArn"])
        for attached in iam.list_attached_user_policies(UserName=user)["AttachedPolicies"]:
            iam.detach_user_policy(UserName=user, PolicyArn=attached["PolicyArn"])
        iam.delete_role(RoleName=role)
        iam.delete_user(UserName=user)


def test_policydel_recursive_attaches_again_when_the_caller_may_not_delete(
    controller: Controller, iam: Any, policy: tuple[str, str]
) -> None:
    path, name = policy
    arn = f"arn:aws:iam::{ACCOUNT_ID}:policy{path}{name}"
    role, operator = unique("app"), unique("operator")
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=EC2_TRUST)
    iam.create_user(UserName=operator)
    rights = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["iam:List*", "iam:Get*", "iam:*Policy"],
                "Resource": "*",
            },
            {"Effect": "Deny", "Action": "iam:DeletePolicy", "Resource": "*"},
        ],
    }
    iam.put_user_policy(UserName=operator, PolicyName="detach", PolicyDocument=json.dumps(rights))
    key = iam.create_access_key(UserName=operator)["AccessKey"]
    as_operator = {
        "AWS_PROFILE": "",
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }
    try:
        ok(controller, f"iam-policycreate -p {name} -o '{S3READ}' --path {path}")
        ok(controller, f"iam-roleattachpolicy -r {role} -a {arn}")
        refused = failed(controller, f"iam-policydel -a {path}{name} -r", **as_operator)
        assert refused.startswith("iam-policydel: AccessDenied: ")
        assert refused.endswith(f"(it was attached again to role {role})\n")
        attached = iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]
        assert [policy["PolicyArn"] for policy in attached] == [arn]
    finally:
        iam.delete_access_key(UserName=operator, AccessKeyId=key["AccessKeyId"])
        iam.delete_user_policy(UserName=operator, PolicyName="detach")
        iam.delete_user(UserName=operator)
        for attached in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
            iam.detach_role_policy(RoleName=role, PolicyArn=attached["PolicyArn"])
        iam.delete_role(RoleName=role)


def test_attaching_to_a_group(controller: Controller, iam: Any, policy: tuple[str, str]) -> None:
    path, name = policy
    arn = f"arn:aws:iam::{ACCOUNT_ID}:policy{path}{name}"
    group = unique("developers")
    iam.create_group(GroupName=group)
    try:
        ok(controller, f"iam-policycreate -p {name} -o '{S3READ}' --path {path}")
        ok(controller, f"iam-groupattachpolicy -g {group} -a {path}{name}")
        assert ok(controller, f"iam-grouplistattachedpolicies --group-name {group}") == arn + "\n"
        group_id = iam.get_group(GroupName=group)["Group"]["GroupId"]
        assert ok(controller, f"iam-policylistentities -a {arn}") == f"GROUP\t{group}\t{group_id}\n"
        ok(controller, f"iam-groupdetachpolicy -g {group} -a {arn}")
        assert iam.list_attached_group_policies(GroupName=group)["AttachedPolicies"] == []
    finally:
        for attached in iam.list_attached_group_policies(GroupName=group)["AttachedPolicies"]:
            iam.detach_group_policy(GroupName=group, PolicyArn=attached["PolicyArn"])
        iam.delete_group(GroupName=group)


def test_bad_input_is_one_line(controller: Controller) -> None:
    flag = shell(controller, "iam-policydel -a 'not a policy'")
    assert flag.returncode == 2
    assert flag.stderr == (
        "iam-policydel: argument -a/--policy-arn: 'not a policy' is neither a policy ARN "
        "(arn:aws:iam::ACCOUNT:policy/NAME) nor a policy name (see iam-policydel --help)\n"
    )
    missing = unique("nosuch")
    assert failed(controller, f"iam-policygetattributes -a {missing}") == (
        f"iam-policygetattributes: NoSuchEntity: Policy arn:aws:iam::{ACCOUNT_ID}:policy/{missing}"
        " was not found.\n"
    )
    unknown_aws = failed(
        controller, f"iam-roleattachpolicy -r {missing} -a arn:aws:iam::aws:policy/{missing}"
    )
    assert unknown_aws.startswith("iam-roleattachpolicy: NoSuchEntity: ")


def test_roleuploadpolicy_takes_euca2ools_flags(
    controller: Controller, iam: Any, tmp_path: Path
) -> None:
    role = unique("upload")
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=EC2_TRUST)
    try:
        (tmp_path / "s3read.json").write_text(S3READ)
        ok(
            controller,
            f"iam-roleuploadpolicy --role-name {role} --policy-name file "
            f"--policy-document {tmp_path}/s3read.json",
        )
        ok(controller, f"iam-roleuploadpolicy -r {role} -p text --policy-content '{S3LIST}'")
        for policy_name, document in (("file", S3READ), ("text", S3LIST)):
            stored = iam.get_role_policy(RoleName=role, PolicyName=policy_name)
            assert stored["PolicyDocument"] == json.loads(document)
    finally:
        for policy_name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
            iam.delete_role_policy(RoleName=role, PolicyName=policy_name)
        iam.delete_role(RoleName=role)
