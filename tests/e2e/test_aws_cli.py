"""The original example through the real ``aws`` command line, with only an endpoint URL."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.e2e.conftest import ACCOUNT_ID, BIN, Controller

TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)
S3STAR = (
    '{"Version":"2008-10-17","Statement":[{"Effect":"Allow","Action":["s3:*"],"Resource":["*"]}]}'
)


def aws(controller: Controller, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "aws"), "--endpoint-url", controller.url, "--output", "json", *args],
        env=controller.cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def aws_json(controller: Controller, *args: str) -> Any:
    return json.loads(aws(controller, *args).stdout)


def test_the_original_example_through_the_aws_cli(controller: Controller) -> None:
    aws(
        controller,
        "iam",
        "create-role",
        "--role-name",
        "cli-s3access",
        "--assume-role-policy-document",
        TRUST,
    )
    aws(
        controller,
        "iam",
        "put-role-policy",
        "--role-name",
        "cli-s3access",
        "--policy-name",
        "s3star",
        "--policy-document",
        S3STAR,
    )
    created = aws_json(
        controller, "iam", "create-instance-profile", "--instance-profile-name", "cli-s3access"
    )
    aws(
        controller,
        "iam",
        "add-role-to-instance-profile",
        "--instance-profile-name",
        "cli-s3access",
        "--role-name",
        "cli-s3access",
    )

    arn = f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/cli-s3access"
    assert created["InstanceProfile"]["Arn"] == arn
    profile = aws_json(
        controller, "iam", "get-instance-profile", "--instance-profile-name", "cli-s3access"
    )["InstanceProfile"]
    assert profile["Arn"] == arn
    assert [role["RoleName"] for role in profile["Roles"]] == ["cli-s3access"]
    policy = aws_json(
        controller,
        "iam",
        "get-role-policy",
        "--role-name",
        "cli-s3access",
        "--policy-name",
        "s3star",
    )
    assert policy["PolicyDocument"] == json.loads(S3STAR)
    role = aws_json(controller, "iam", "get-role", "--role-name", "cli-s3access")["Role"]
    assert role["AssumeRolePolicyDocument"] == json.loads(TRUST)
    names = [r["RoleName"] for r in aws_json(controller, "iam", "list-roles")["Roles"]]
    assert "cli-s3access" in names


def test_the_aws_cli_reports_service_errors_with_their_code(controller: Controller) -> None:
    result = aws(controller, "iam", "get-role", "--role-name", "no-such-role", check=False)
    assert result.returncode != 0
    assert "NoSuchEntity" in result.stderr
    assert "no-such-role" in result.stderr
