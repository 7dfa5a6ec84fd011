"""IAM users, their access keys and inline policies, through boto3 against a real controller."""

from __future__ import annotations

import json
from typing import Any

from tests.e2e.conftest import ACCOUNT_ID, Controller
from tests.e2e.principals import (
    Keys,
    allow,
    assert_no_issued_secret_in_log,
    error_of,
    policy,
    unique,
    user_arn,
)


def test_a_created_user_reads_back_and_is_listed_under_its_path(iam: Any) -> None:
    name, path = unique("alice"), f"/{unique('dept')}/"
    created = iam.create_user(UserName=name, Path=path)["User"]
    assert created["Arn"] == f"arn:aws:iam::{ACCOUNT_ID}:user{path}{name}"
    got = iam.get_user(UserName=name)["User"]
    assert (got["UserName"], got["UserId"], got["Path"]) == (name, created["UserId"], path)
    listed = iam.list_users(PathPrefix=path)["Users"]
    assert [user["UserName"] for user in listed] == [name]


def test_a_user_with_access_keys_cannot_be_deleted(controller: Controller, iam: Any) -> None:
    name = unique("keyed")
    iam.create_user(UserName=name)
    key_id = Keys.of(iam.create_access_key(UserName=name)).remember(controller).access_key_id
    code, status, message = error_of(iam.delete_user, UserName=name)
    assert (code, status) == ("DeleteConflict", 409)
    assert "access keys" in message
    iam.delete_access_key(UserName=name, AccessKeyId=key_id)
    iam.delete_user(UserName=name)
    assert error_of(iam.get_user, UserName=name)[:2] == ("NoSuchEntity", 404)


def test_a_user_with_inline_policies_cannot_be_deleted(iam: Any) -> None:
    name = unique("ruled")
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=policy(allow("iam:Get*")))
    code, status, message = error_of(iam.delete_user, UserName=name)
    assert (code, status) == ("DeleteConflict", 409)
    assert "policies" in message
    iam.delete_user_policy(UserName=name, PolicyName="p")
    iam.delete_user(UserName=name)
    assert name not in [user["UserName"] for user in iam.list_users()["Users"]]


def test_a_third_access_key_is_limit_exceeded(controller: Controller, iam: Any) -> None:
    name = unique("keys")
    iam.create_user(UserName=name)
    for _ in range(2):
        Keys.of(iam.create_access_key(UserName=name)).remember(controller)
    code, status, _ = error_of(iam.create_access_key, UserName=name)
    assert (code, status) == ("LimitExceeded", 409)
    assert len(iam.list_access_keys(UserName=name)["AccessKeyMetadata"]) == 2


def test_an_inactive_access_key_is_refused_until_it_is_active_again(
    controller: Controller, iam: Any
) -> None:
    name = unique("sleepy")
    iam.create_user(UserName=name)
    keys = Keys.of(iam.create_access_key(UserName=name))
    sts = keys.client(controller, "sts")
    assert sts.get_caller_identity()["Arn"] == user_arn(name)
    iam.update_access_key(UserName=name, AccessKeyId=keys.access_key_id, Status="Inactive")
    listed = iam.list_access_keys(UserName=name)["AccessKeyMetadata"]
    assert [key["Status"] for key in listed] == ["Inactive"]
    assert error_of(sts.get_caller_identity)[:2] == ("InvalidClientTokenId", 403)
    iam.update_access_key(UserName=name, AccessKeyId=keys.access_key_id, Status="Active")
    assert sts.get_caller_identity()["Arn"] == user_arn(name)


def test_a_deleted_access_key_is_invalid_client_token_id(controller: Controller, iam: Any) -> None:
    name = unique("gone")
    iam.create_user(UserName=name)
    keys = Keys.of(iam.create_access_key(UserName=name))
    sts = keys.client(controller, "sts")
    assert sts.get_caller_identity()["Arn"] == user_arn(name)
    iam.delete_access_key(UserName=name, AccessKeyId=keys.access_key_id)
    assert iam.list_access_keys(UserName=name)["AccessKeyMetadata"] == []
    assert error_of(sts.get_caller_identity)[:2] == ("InvalidClientTokenId", 403)


def test_user_policies_round_trip(iam: Any) -> None:
    name = unique("pol")
    iam.create_user(UserName=name)
    first = policy(allow("iam:GetRole"))
    second = policy(allow(["iam:ListRoles", "iam:ListUsers"]))
    iam.put_user_policy(UserName=name, PolicyName="b-second", PolicyDocument=second)
    iam.put_user_policy(UserName=name, PolicyName="a-first", PolicyDocument=first)
    got = iam.get_user_policy(UserName=name, PolicyName="a-first")
    assert (got["UserName"], got["PolicyName"]) == (name, "a-first")
    assert got["PolicyDocument"] == json.loads(first)
    assert iam.list_user_policies(UserName=name)["PolicyNames"] == ["a-first", "b-second"]
    iam.delete_user_policy(UserName=name, PolicyName="a-first")
    assert iam.list_user_policies(UserName=name)["PolicyNames"] == ["b-second"]
    code, status, _ = error_of(iam.get_user_policy, UserName=name, PolicyName="a-first")
    assert (code, status) == ("NoSuchEntity", 404)


def test_no_issued_secret_reaches_the_controller_log(controller: Controller) -> None:
    assert_no_issued_secret_in_log(controller)
