"""IAM roles and instance profiles through boto3 against a real controller process."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.conftest import ACCOUNT_ID, Controller

EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}
S3STAR = (
    '{"Version":"2008-10-17","Statement":[{"Effect":"Allow","Action":["s3:*"],"Resource":["*"]}]}'
)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def error_of(call: Any, **kwargs: Any) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as raised:
        call(**kwargs)
    response = raised.value.response
    return (
        response["Error"]["Code"],
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Message"],
    )


def make_role(iam: Any, name: str, **extra: Any) -> dict[str, Any]:
    return iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(EC2_TRUST), **extra)[
        "Role"
    ]


def test_the_original_example_reads_back_exactly_what_was_written(iam: Any) -> None:
    role = make_role(iam, "s3access")
    iam.put_role_policy(RoleName="s3access", PolicyName="s3star", PolicyDocument=S3STAR)
    profile = iam.create_instance_profile(InstanceProfileName="s3access")["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName="s3access", RoleName="s3access")

    assert profile["Arn"] == f"arn:aws:iam::{ACCOUNT_ID}:instance-profile/s3access"
    assert role["Arn"] == f"arn:aws:iam::{ACCOUNT_ID}:role/s3access"
    got_role = iam.get_role(RoleName="s3access")["Role"]
    assert got_role["AssumeRolePolicyDocument"] == EC2_TRUST
    assert got_role["RoleId"] == role["RoleId"]
    assert got_role["MaxSessionDuration"] == 3600
    policy = iam.get_role_policy(RoleName="s3access", PolicyName="s3star")
    assert policy["PolicyDocument"] == json.loads(S3STAR)
    assert iam.list_role_policies(RoleName="s3access")["PolicyNames"] == ["s3star"]
    got = iam.get_instance_profile(InstanceProfileName="s3access")["InstanceProfile"]
    assert got["Arn"] == profile["Arn"]
    assert got["InstanceProfileId"] == profile["InstanceProfileId"]
    assert [r["RoleName"] for r in got["Roles"]] == ["s3access"]
    assert got["Roles"][0]["AssumeRolePolicyDocument"] == EC2_TRUST
    listed = iam.list_instance_profiles_for_role(RoleName="s3access")["InstanceProfiles"]
    assert [p["InstanceProfileName"] for p in listed] == ["s3access"]


def test_ids_have_the_aws_prefix_and_length(iam: Any) -> None:
    role = make_role(iam, unique("ids"))
    profile = iam.create_instance_profile(InstanceProfileName=unique("ids"))["InstanceProfile"]
    assert re.fullmatch(r"AROA[A-Z2-7]{17}", role["RoleId"])
    assert re.fullmatch(r"AIPA[A-Z2-7]{17}", profile["InstanceProfileId"])


def test_role_names_are_unique_ignoring_case(iam: Any) -> None:
    name = unique("Case")
    make_role(iam, name)
    code, status, message = error_of(make_role, iam=iam, name=name.lower())
    assert (code, status) == ("EntityAlreadyExists", 409)
    assert name.lower() in message
    assert iam.get_role(RoleName=name.upper())["Role"]["RoleName"] == name


def test_instance_profile_names_are_unique_ignoring_case(iam: Any) -> None:
    name = unique("Prof")
    iam.create_instance_profile(InstanceProfileName=name)
    code, status, _ = error_of(iam.create_instance_profile, InstanceProfileName=name.upper())
    assert (code, status) == ("EntityAlreadyExists", 409)


def test_list_roles_pages_with_marker_and_path_prefix(iam: Any) -> None:
    path = f"/{unique('page')}/"
    names = sorted(unique("r") for _ in range(5))
    for name in names:
        make_role(iam, name, Path=path)
    first = iam.list_roles(PathPrefix=path, MaxItems=2)
    assert first["IsTruncated"] is True
    assert [r["RoleName"] for r in first["Roles"]] == names[:2]
    second = iam.list_roles(PathPrefix=path, MaxItems=2, Marker=first["Marker"])
    assert [r["RoleName"] for r in second["Roles"]] == names[2:4]
    paginated = [
        role["RoleName"]
        for page in iam.get_paginator("list_roles").paginate(
            PathPrefix=path, PaginationConfig={"PageSize": 2}
        )
        for role in page["Roles"]
    ]
    assert paginated == names
    assert iam.list_roles(PathPrefix=path)["IsTruncated"] is False
    assert all(r["Path"] == path for r in iam.list_roles(PathPrefix=path)["Roles"])


def test_list_instance_profiles_pages_and_filters_by_path(iam: Any) -> None:
    path = f"/{unique('ipp')}/"
    names = sorted(unique("p") for _ in range(3))
    for name in names:
        iam.create_instance_profile(InstanceProfileName=name, Path=path)
    pages = list(
        iam.get_paginator("list_instance_profiles").paginate(
            PathPrefix=path, PaginationConfig={"PageSize": 1}
        )
    )
    assert [p["InstanceProfiles"][0]["InstanceProfileName"] for p in pages] == names
    assert pages[0]["IsTruncated"] is True
    assert pages[-1]["IsTruncated"] is False


def test_a_marker_not_from_a_previous_call_is_invalid_input(iam: Any) -> None:
    code, status, message = error_of(iam.list_roles, Marker="not-a-marker")
    assert (code, status) == ("InvalidInput", 400)
    assert "Marker" in message


def test_role_tags_round_trip_and_page(iam: Any) -> None:
    name = unique("tags")
    make_role(iam, name, Tags=[{"Key": "team", "Value": "compute"}])
    iam.tag_role(RoleName=name, Tags=[{"Key": f"k{i:02}", "Value": str(i)} for i in range(5)])
    iam.tag_role(RoleName=name, Tags=[{"Key": "TEAM", "Value": "storage"}])
    tags = iam.list_role_tags(RoleName=name)["Tags"]
    assert {"Key": "TEAM", "Value": "storage"} in tags
    assert len(tags) == 6
    page = iam.list_role_tags(RoleName=name, MaxItems=4)
    assert page["IsTruncated"] is True and len(page["Tags"]) == 4
    rest = iam.list_role_tags(RoleName=name, Marker=page["Marker"])
    assert len(rest["Tags"]) == 2
    iam.untag_role(RoleName=name, TagKeys=["team", "k00"])
    assert {t["Key"] for t in iam.list_role_tags(RoleName=name)["Tags"]} == {
        "k01",
        "k02",
        "k03",
        "k04",
    }
    assert len(iam.get_role(RoleName=name)["Role"]["Tags"]) == 4


def test_more_than_fifty_tags_is_limit_exceeded(iam: Any) -> None:
    name = unique("many")
    make_role(iam, name, Tags=[{"Key": f"a{i}", "Value": ""} for i in range(50)])
    code, status, _ = error_of(iam.tag_role, RoleName=name, Tags=[{"Key": "one-more", "Value": ""}])
    assert (code, status) == ("LimitExceeded", 409)


def test_duplicate_tag_keys_in_one_request_are_invalid_input(iam: Any) -> None:
    code, status, message = error_of(
        make_role,
        iam=iam,
        name=unique("dup"),
        Tags=[{"Key": "a", "Value": "1"}, {"Key": "A", "Value": "2"}],
    )
    assert (code, status) == ("InvalidInput", 400)
    assert "Duplicate" in message


def test_instance_profile_tags_round_trip(iam: Any) -> None:
    name = unique("iptag")
    iam.create_instance_profile(InstanceProfileName=name, Tags=[{"Key": "a", "Value": "1"}])
    iam.tag_instance_profile(InstanceProfileName=name, Tags=[{"Key": "b", "Value": "2"}])
    iam.untag_instance_profile(InstanceProfileName=name, TagKeys=["a"])
    assert iam.list_instance_profile_tags(InstanceProfileName=name)["Tags"] == [
        {"Key": "b", "Value": "2"}
    ]
    assert iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Tags"] == [
        {"Key": "b", "Value": "2"}
    ]


def test_update_role_and_description_and_trust_policy_read_back(iam: Any) -> None:
    name = unique("upd")
    make_role(iam, name, Description="first")
    iam.update_role(RoleName=name, MaxSessionDuration=43200)
    updated = iam.update_role_description(RoleName=name, Description="second")["Role"]
    assert updated["Description"] == "second"
    trust = dict(EC2_TRUST, Statement=[dict(EC2_TRUST["Statement"][0], Sid="OnlyEc2")])
    iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))
    role = iam.get_role(RoleName=name)["Role"]
    assert role["MaxSessionDuration"] == 43200
    assert role["Description"] == "second"
    assert role["AssumeRolePolicyDocument"] == trust


@pytest.mark.parametrize("duration", [3599, 43201])
def test_max_session_duration_out_of_range_is_a_validation_error(
    controller: Controller, duration: int
) -> None:
    unchecked = controller.client("iam", parameter_validation=False)
    code, status, message = error_of(
        make_role, iam=unchecked, name=unique("dur"), MaxSessionDuration=duration
    )
    assert (code, status) == ("ValidationError", 400)
    assert "maxSessionDuration" in message


def test_role_with_a_policy_cannot_be_deleted(iam: Any) -> None:
    name = unique("delpol")
    make_role(iam, name)
    iam.put_role_policy(RoleName=name, PolicyName="p", PolicyDocument=S3STAR)
    code, status, message = error_of(iam.delete_role, RoleName=name)
    assert (code, status) == ("DeleteConflict", 409)
    assert "policies" in message
    iam.delete_role_policy(RoleName=name, PolicyName="p")
    iam.delete_role(RoleName=name)
    assert error_of(iam.get_role, RoleName=name)[:2] == ("NoSuchEntity", 404)


def test_role_in_a_profile_cannot_be_deleted_nor_the_profile(iam: Any) -> None:
    name = unique("delprof")
    make_role(iam, name)
    iam.create_instance_profile(InstanceProfileName=name)
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    assert error_of(iam.delete_role, RoleName=name)[:2] == ("DeleteConflict", 409)
    assert error_of(iam.delete_instance_profile, InstanceProfileName=name)[:2] == (
        "DeleteConflict",
        409,
    )
    iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=name)
    iam.delete_instance_profile(InstanceProfileName=name)
    iam.delete_role(RoleName=name)
    assert error_of(iam.get_instance_profile, InstanceProfileName=name)[:2] == (
        "NoSuchEntity",
        404,
    )


def test_a_profile_holds_one_role(iam: Any) -> None:
    profile, first, second = unique("one"), unique("r1"), unique("r2")
    make_role(iam, first)
    make_role(iam, second)
    iam.create_instance_profile(InstanceProfileName=profile)
    iam.add_role_to_instance_profile(InstanceProfileName=profile, RoleName=first)
    code, status, _ = error_of(
        iam.add_role_to_instance_profile, InstanceProfileName=profile, RoleName=second
    )
    assert (code, status) == ("LimitExceeded", 409)


def test_removing_a_role_that_is_not_in_the_profile_is_no_such_entity(iam: Any) -> None:
    profile, role = unique("rm"), unique("rm")
    make_role(iam, role)
    iam.create_instance_profile(InstanceProfileName=profile)
    code, status, _ = error_of(
        iam.remove_role_from_instance_profile, InstanceProfileName=profile, RoleName=role
    )
    assert (code, status) == ("NoSuchEntity", 404)


def test_trust_policy_over_2048_characters_is_limit_exceeded(iam: Any) -> None:
    trust = dict(EC2_TRUST, Statement=[dict(EC2_TRUST["Statement"][0], Sid="S" * 2100)])
    code, status, message = error_of(
        iam.create_role, RoleName=unique("big"), AssumeRolePolicyDocument=json.dumps(trust)
    )
    assert (code, status) == ("LimitExceeded", 409)
    assert "2048" in message


def test_inline_policies_over_10240_in_total_are_limit_exceeded(iam: Any) -> None:
    name = unique("quota")
    make_role(iam, name)
    resources = [f"arn:aws:s3:::bucket-{i:04}" for i in range(160)]  # ~4,300 characters
    document = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": resources}],
        }
    )
    iam.put_role_policy(RoleName=name, PolicyName="a", PolicyDocument=document)
    iam.put_role_policy(RoleName=name, PolicyName="b", PolicyDocument=document)
    iam.put_role_policy(RoleName=name, PolicyName="a", PolicyDocument=document)  # replacing
    code, status, _ = error_of(
        iam.put_role_policy, RoleName=name, PolicyName="c", PolicyDocument=document
    )
    assert (code, status) == ("LimitExceeded", 409)
    assert iam.list_role_policies(RoleName=name)["PolicyNames"] == ["a", "b"]


def test_whitespace_does_not_count_against_the_policy_quota(iam: Any) -> None:
    name = unique("space")
    make_role(iam, name)
    document = json.dumps(json.loads(S3STAR), indent=4).replace("\n", "\n" + " " * 1000)
    assert len(document) > 10240
    iam.put_role_policy(RoleName=name, PolicyName="spacious", PolicyDocument=document)


@pytest.mark.parametrize(
    ("document", "aws_message"),
    [
        ("{not json", "Syntax errors in policy."),
        (
            '{"Version":"2012-10-17","Statement":[{"Effect":"Permit","Action":"s3:*","Resource":"*"}]}',
            "Syntax errors in policy.",
        ),
        (
            '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*"}]}',
            "Policy statement must contain resources.",
        ),
        (
            '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"GetObject",'
            '"Resource":"*"}]}',
            "Actions/Conditions must be prefaced by a vendor, e.g., iam, sdb, ec2, etc.",
        ),
        (
            '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*",'
            '"Resource":"*","Principal":"*"}]}',
            "Policy document should not specify a principal.",
        ),
    ],
)
def test_malformed_inline_policies_are_refused_with_aws_message(
    iam: Any, document: str, aws_message: str
) -> None:
    name = unique("bad")
    make_role(iam, name)
    assert error_of(
        iam.put_role_policy, RoleName=name, PolicyName="p", PolicyDocument=document
    ) == ("MalformedPolicyDocument", 400, aws_message)


def trust_statement(**changes: Any) -> str:
    """EC2_TRUST's one statement with some elements changed or added."""
    statement: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": {"Service": "ec2.amazonaws.com"},
        "Action": "sts:AssumeRole",
        **changes,
    }
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


def test_the_reason_behind_aws_message_is_in_the_controller_log(
    iam: Any, controller: Controller
) -> None:
    """The caller gets IAM's bare text; the operator's log line says what and where."""
    name = unique("why")
    make_role(iam, name)
    statement = {"Effect": "Allow", "Action": "s3:*", "Resource": "*", "Foo": 1}
    document = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    assert error_of(
        iam.put_role_policy, RoleName=name, PolicyName="p", PolicyDocument=document
    ) == ("MalformedPolicyDocument", 400, "Syntax errors in policy.")
    line = "error=MalformedPolicyDocument: Unknown field 'Foo' in statement 1"
    deadline = time.monotonic() + 10
    while not any(line in logged for logged in list(controller.output)):
        assert time.monotonic() < deadline, "the controller did not log the reason"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("document", "aws_message"),
    [
        (
            json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole"}],
                }
            ),
            "Missing required field Principal",
        ),
        (trust_statement(Resource="*"), "Has prohibited field Resource."),
        # Two spaces before "and": AWS's text, which tools compare whole.
        (
            trust_statement(Action=["sts:AssumeRole", "s3:GetObject"]),
            "Trust Policy statement actions can only be sts:AssumeRole,"
            " sts:AssumeRoleWithSAML,  and sts:AssumeRoleWithWebIdentity",
        ),
        (
            trust_statement(Principal={"AWS": "bob"}),
            'Invalid principal in policy: "AWS":"bob"',
        ),
    ],
)
def test_malformed_trust_policies_are_refused_with_aws_message(
    iam: Any, document: str, aws_message: str
) -> None:
    assert error_of(
        iam.create_role, RoleName=unique("trust"), AssumeRolePolicyDocument=document
    ) == ("MalformedPolicyDocument", 400, aws_message)


@pytest.mark.parametrize(
    ("call", "kwargs"),
    [
        ("get_role", {"RoleName": "no-such-role"}),
        ("get_instance_profile", {"InstanceProfileName": "no-such-profile"}),
        ("get_role_policy", {"RoleName": "s3access", "PolicyName": "no-such-policy"}),
        ("delete_role_policy", {"RoleName": "no-such-role", "PolicyName": "p"}),
        ("list_role_tags", {"RoleName": "no-such-role"}),
    ],
)
def test_missing_entities_are_no_such_entity(iam: Any, call: str, kwargs: dict[str, str]) -> None:
    code, status, _ = error_of(getattr(iam, call), **kwargs)
    assert (code, status) == ("NoSuchEntity", 404)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"RoleName": "x" * 65},
            "at 'roleName' failed to satisfy constraint: "
            "Member must have length less than or equal to 64",
        ),
        ({"RoleName": "has space"}, r"Member must satisfy regular expression pattern: [\w+=,.@-]+"),
        ({"RoleName": "ok", "Path": "no-slashes"}, "at 'path' failed to satisfy constraint"),
        ({"RoleName": ""}, "Member must have length greater than or equal to 1"),
    ],
)
def test_bad_parameters_are_validation_errors_in_aws_words(
    controller: Controller, kwargs: dict[str, str], message: str
) -> None:
    unchecked = controller.client("iam", parameter_validation=False)
    code, status, text = error_of(
        unchecked.create_role, AssumeRolePolicyDocument=json.dumps(EC2_TRUST), **kwargs
    )
    assert (code, status) == ("ValidationError", 400)
    assert text.startswith("1 validation error detected: Value ")
    assert message in text


def test_a_missing_required_parameter_is_named(controller: Controller) -> None:
    unchecked = controller.client("iam", parameter_validation=False)
    code, status, text = error_of(unchecked.create_role, RoleName=unique("nodoc"))
    assert (code, status) == ("ValidationError", 400)
    assert (
        "Value null at 'assumeRolePolicyDocument' failed to satisfy constraint: "
        "Member must not be null" in text
    )


def test_a_boundary_naming_no_policy_is_refused_and_no_role_is_made(iam: Any) -> None:
    """Issue 15 accepts boundaries; one naming no policy still never leaves a role unbounded."""
    name, arn = unique("pb"), f"arn:aws:iam::{ACCOUNT_ID}:policy/no-such-boundary"
    code, status, message = error_of(make_role, iam=iam, name=name, PermissionsBoundary=arn)
    assert (code, status) == ("NoSuchEntity", 404)
    assert message == f"Scope ARN: {arn} does not exist or is not attachable."
    assert error_of(iam.get_role, RoleName=name)[0] == "NoSuchEntity"
