"""The ``iam-*`` tools as installed console scripts, run through bash against a real controller,
with credentials and endpoint found the way AWS tools find them; boto3 checks what they did."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.conftest import ACCOUNT_ID, Controller

THE_THREE_LINES = (
    r"iam-rolecreate -r s3access -s ec2.amazonaws.com",
    r"iam-roleaddpolicy -r s3access -e Allow -a s3:\* -c \* -p s3star -o",
    r"iam-instanceprofilecreate -s s3access -r s3access",
)
S3STAR = (
    '{"Version":"2008-10-17","Statement":[{"Effect":"Allow","Action":["s3:*"],"Resource":["*"]}]}'
)
EC2_TRUST = (
    '{"Version":"2008-10-17","Statement":[{"Effect":"Allow",'
    '"Principal":{"Service":["ec2.amazonaws.com"]},"Action":["sts:AssumeRole"]}]}'
)
LOGS = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"logs:*","Resource":"*"}]}'


def shell(
    controller: Controller, line: str, *, endpoint: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    """``line`` run by bash as a user would type it: the venv's bin on PATH, the rolecall profile
    of the controller's credentials file, and AWS_ENDPOINT_URL set."""
    environment = controller.cli_env()
    if endpoint:
        environment["AWS_ENDPOINT_URL"] = controller.url
    environment.update(env)
    return subprocess.run(
        ["bash", "-c", line], env=environment, capture_output=True, text=True, timeout=60
    )


def ok(controller: Controller, line: str, **env: str) -> str:
    result = shell(controller, line, **env)
    assert (result.returncode, result.stderr) == (0, ""), f"{line}: {result.stderr}"
    return result.stdout


def failed(controller: Controller, line: str, **env: str) -> str:
    """The one line a failing command printed on stderr."""
    result = shell(controller, line, **env)
    assert result.returncode != 0, f"{line} succeeded: {result.stdout}"
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def error_code(call: Any, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as raised:
        call(**kwargs)
    return str(raised.value.response["Error"]["Code"])


@pytest.fixture
def role_arn(iam: Any) -> str:
    """A role of the controller's account for the list tools to find."""
    role = unique("listed")
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=EC2_TRUST)
    return f"arn:aws:iam::{ACCOUNT_ID}:role/{role}"


def test_the_tools_are_installed_next_to_the_controller(controller: Controller) -> None:
    path = controller.cli_env()["PATH"]
    for name in ("iam-rolecreate", "iam-instanceprofilecreate", "euca-run-instances"):
        assert shutil.which(name, path=path), f"{name} is not installed"


def test_the_three_original_lines_work_verbatim(controller: Controller, iam: Any) -> None:
    create_role, add_policy, create_profile = (ok(controller, line) for line in THE_THREE_LINES)

    assert create_role == ""
    assert add_policy == S3STAR + "\n"
    assert create_profile == f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/s3access\n"

    role = iam.get_role(RoleName="s3access")["Role"]
    assert role["AssumeRolePolicyDocument"] == json.loads(EC2_TRUST)
    policy = iam.get_role_policy(RoleName="s3access", PolicyName="s3star")
    assert policy["PolicyDocument"] == json.loads(S3STAR)
    profile = iam.get_instance_profile(InstanceProfileName="s3access")["InstanceProfile"]
    assert profile["Arn"] == f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/s3access"
    assert [member["RoleName"] for member in profile["Roles"]] == ["s3access"]


def test_roles_their_trust_and_their_policies(
    controller: Controller, iam: Any, tmp_path: Path
) -> None:
    role, path = unique("app"), f"/{unique('tools')}/"
    arn = f"arn:aws:iam::{ACCOUNT_ID}:role{path}{role}"

    created = ok(controller, f"iam-rolecreate -r {role} -s ec2.amazonaws.com -p {path} -v")
    arn_line, role_id, trust = created.splitlines()
    assert (arn_line, trust) == (arn, EC2_TRUST)
    assert role_id.startswith("AROA") and role_id == iam.get_role(RoleName=role)["Role"]["RoleId"]
    assert ok(controller, f"iam-rolegetattributes -r {role}") == created
    assert ok(controller, f"iam-rolelistbypath -p {path}") == arn + "\n"
    assert arn in ok(controller, "iam-rolelistbypath").splitlines()

    new_trust = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
    )
    (tmp_path / "trust.json").write_text(new_trust)
    updated = ok(controller, f"iam-roleupdateassumepolicy -r {role} -f {tmp_path}/trust.json -o")
    assert updated == new_trust + "\n"
    assert iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"] == json.loads(new_trust)

    ok(controller, f"iam-roleuploadpolicy -r {role} -p logs -o '{LOGS}'")
    ok(controller, f"iam-roleaddpolicy -r {role} -p s3read -e Allow -a s3:Get\\* -c '*'")
    assert sorted(iam.list_role_policies(RoleName=role)["PolicyNames"]) == ["logs", "s3read"]
    assert sorted(ok(controller, f"iam-rolelistpolicies -r {role}").splitlines()) == [
        "logs",
        "s3read",
    ]
    assert ok(controller, f"iam-rolelistpolicies -r {role} -p logs") == LOGS + "\n"
    verbose = ok(controller, f"iam-rolelistpolicies -r {role} -v").splitlines()
    assert verbose[verbose.index("logs") + 1] == LOGS

    ok(controller, f"iam-roledelpolicy -r {role} -p logs")
    assert iam.list_role_policies(RoleName=role)["PolicyNames"] == ["s3read"]

    conflict = failed(controller, f"iam-roledel -r {role}")
    assert conflict.startswith("iam-roledel: DeleteConflict: ")
    ok(controller, f"iam-instanceprofilecreate -s {role} -r {role}")
    ok(controller, f"iam-roledel -r {role} -c")
    assert error_code(iam.get_role, RoleName=role) == "NoSuchEntity"
    profile = iam.get_instance_profile(InstanceProfileName=role)["InstanceProfile"]
    assert profile["Roles"] == []


def test_instance_profiles_and_the_role_in_them(controller: Controller, iam: Any) -> None:
    role, other, profile, path = unique("web"), unique("db"), unique("web"), f"/{unique('p')}/"
    for name in (role, other):
        ok(controller, f"iam-rolecreate -r {name} -s ec2.amazonaws.com")
    profile_arn = f"arn:aws:iam::{ACCOUNT_ID}:instance-profile{path}{profile}"
    role_arn = f"arn:aws:iam::{ACCOUNT_ID}:role/{role}"

    assert ok(controller, f"iam-instanceprofilecreate -s {profile} -p {path}") == profile_arn + "\n"
    ok(controller, f"iam-instanceprofileaddrole -s {profile} -r {role}")
    arn_line, profile_id, role_line = ok(
        controller, f"iam-instanceprofilegetattributes -s {profile}"
    ).splitlines()
    assert (arn_line, role_line) == (profile_arn, role_arn)
    assert profile_id.startswith("AIPA")
    assert ok(controller, f"iam-instanceprofilelistforrole -r {role}") == profile_arn + "\n"
    assert ok(controller, f"iam-instanceprofilelistbypath -p {path}") == profile_arn + "\n"

    second = failed(controller, f"iam-instanceprofileaddrole -s {profile} -r {other}")
    assert second.startswith("iam-instanceprofileaddrole: LimitExceeded: ")
    busy = failed(controller, f"iam-instanceprofiledel -s {profile}")
    assert busy.startswith("iam-instanceprofiledel: DeleteConflict: ")

    ok(controller, f"iam-instanceprofileremoverole -s {profile} -r {role}")
    assert ok(controller, f"iam-instanceprofilelistforrole -r {role}") == ""
    ok(controller, f"iam-instanceprofileaddrole -s {profile} -r {other}")
    ok(controller, f"iam-instanceprofiledel -s {profile} -c")
    assert error_code(iam.get_instance_profile, InstanceProfileName=profile) == "NoSuchEntity"
    assert ok(controller, f"iam-instanceprofilelistbypath -p {path}") == ""


def test_a_bad_flag_fails_with_one_line_on_stderr(controller: Controller) -> None:
    result = shell(controller, "iam-rolecreate -r s3access -s ec2.amazonaws.com --bogus")
    assert result.returncode == 2
    assert result.stderr == (
        "iam-rolecreate: unrecognized arguments: --bogus (see iam-rolecreate --help)\n"
    )


def test_a_service_error_is_one_line_with_the_aws_code(controller: Controller) -> None:
    message = failed(controller, "iam-rolegetattributes -r no-such-role")
    assert message == (
        "iam-rolegetattributes: NoSuchEntity: The role with name no-such-role cannot be found.\n"
    )


def test_help_needs_no_credentials_or_endpoint(controller: Controller) -> None:
    result = shell(controller, "iam-roleaddpolicy --help", endpoint=False, AWS_PROFILE="")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: iam-roleaddpolicy ")


def test_debug_shows_the_exchange_with_the_signature_masked(controller: Controller) -> None:
    result = shell(controller, "iam-rolelistbypath --debug")
    assert result.returncode == 0
    assert f"> POST {controller.url}" in result.stderr
    assert "> Action=ListRoles&Version=2010-05-08" in result.stderr
    assert "< HTTP 200 OK" in result.stderr and "<ListRolesResponse" in result.stderr
    assert "Signature=****" in result.stderr
    assert controller.secret_access_key not in result.stderr + result.stdout


def test_the_endpoint_can_come_from_the_url_flag_or_the_iam_variable(
    controller: Controller, role_arn: str
) -> None:
    for flag in ("-U", "--url"):
        by_flag = shell(controller, f"iam-rolelistbypath {flag} {controller.url}", endpoint=False)
        assert by_flag.returncode == 0 and role_arn in by_flag.stdout.splitlines()
    by_variable = ok(controller, "iam-rolelistbypath", AWS_ENDPOINT_URL_IAM=controller.url)
    assert role_arn in by_variable.splitlines()
    missing = failed(controller, "iam-rolelistbypath", endpoint=False)
    assert missing.startswith("iam-rolelistbypath: no endpoint: set AWS_ENDPOINT_URL")


def test_credentials_can_come_from_the_environment(controller: Controller, role_arn: str) -> None:
    keys = {
        "AWS_PROFILE": "",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_ACCESS_KEY_ID": controller.access_key_id,
        "AWS_SECRET_ACCESS_KEY": controller.secret_access_key,
    }
    assert role_arn in ok(controller, "iam-rolelistbypath", **keys).splitlines()
    wrong = failed(controller, "iam-rolelistbypath", **{**keys, "AWS_SECRET_ACCESS_KEY": "x" * 40})
    assert wrong.startswith("iam-rolelistbypath: SignatureDoesNotMatch: ")
    nothing = failed(
        controller, "iam-rolelistbypath", AWS_PROFILE="", AWS_SHARED_CREDENTIALS_FILE="/nonexistent"
    )
    assert nothing.startswith("iam-rolelistbypath: no credentials: set AWS_ACCESS_KEY_ID")


def test_temporary_credentials_send_their_session_token(controller: Controller) -> None:
    iam = controller.client("iam")
    role = unique("admin")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(trust))
    iam.put_role_policy(
        RoleName=role,
        PolicyName="iam-read",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "iam:List*", "Resource": "*"}],
            }
        ),
    )
    credentials = controller.client("sts").assume_role(
        RoleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/{role}", RoleSessionName="tools"
    )["Credentials"]
    session = {
        "AWS_PROFILE": "",
        "AWS_ACCESS_KEY_ID": credentials["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": credentials["SecretAccessKey"],
        "AWS_SESSION_TOKEN": credentials["SessionToken"],
    }
    assert f"role/{role}" in ok(controller, "iam-rolelistbypath", **session)
    denied = failed(controller, f"iam-rolegetattributes -r {role}", **session)
    assert denied.startswith("iam-rolegetattributes: AccessDenied: ")
    shown = shell(controller, "iam-rolelistbypath --debug", **session).stderr
    assert "X-Amz-Security-Token: ****" in shown
    assert credentials["SessionToken"] not in shown
    assert credentials["SecretAccessKey"] not in shown
